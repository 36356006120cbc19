"""Chat data for SFT: JSONL conversations, checked line by line, rendered into token rows with answer flags.

One conversation per line: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}]}``.
A malformed line (bad JSON, missing or unknown role, non-string content, an empty answer, no answer
at all, a system message after the first turn) raises ``ValueError`` naming the file and line.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from ..chat_template import ROLES, ChatTemplate, Message
from ..tokenizer import ColaTokenizer
from .data import ChatBatch, corpus_split_path


def parse_conversation(record: object) -> list[Message]:
    """(role, content) pairs of one JSON record; ValueError says what is wrong (without the location)."""
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list) or not record["messages"]:
        raise ValueError('expected an object with a non-empty "messages" list')
    messages: list[Message] = []
    for i, message in enumerate(record["messages"]):
        where = f"message {i}"
        if not isinstance(message, dict):
            raise ValueError(f"{where}: expected an object with \"role\" and \"content\", got {type(message).__name__}")
        if "role" not in message:
            raise ValueError(f'{where}: missing "role"')
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            raise ValueError(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f'{where}: "content" must be a string, got {type(content).__name__}')
        if role == "assistant" and not content.strip():
            raise ValueError(f"{where}: empty assistant turn")
        if role == "system" and i > 0:
            raise ValueError(f"{where}: a system message may only come first")
        messages.append((role, content))
    if not any(role == "assistant" for role, _ in messages):
        raise ValueError("no assistant turn to learn from")
    return messages


def read_conversations(path: str | Path) -> list[list[Message]]:
    """Every conversation of a JSONL file; the first malformed line raises ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"conversation file not found: {path}")
    conversations = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                conversations.append(parse_conversation(json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}, line {number}: malformed JSON ({exc.msg})") from None
            except ValueError as exc:
                raise ValueError(f"{path}, line {number}: {exc}") from None
    if not conversations:
        raise ValueError(f"{path}: no conversations")
    return conversations


def write_conversations(path: str | Path, conversations: Iterable[Sequence[Message]]) -> None:
    """Write conversations as JSONL ``messages`` records, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for messages in conversations:
            record = {"messages": [{"role": role, "content": content} for role, content in messages]}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


class ConversationDataset:
    """Conversations rendered by a chat template, cut to ``max_tokens`` and padded (as answer) to a whole
    block with the template's pad id; conversations whose answers were cut away are dropped."""

    def __init__(self, conversations: Sequence[Sequence[Message]], tokenizer: ColaTokenizer, template: ChatTemplate,
                 max_tokens: int, block_size: int, patch_size: int):
        self.tokenizer, self.template, self.patch_size = tokenizer, template, patch_size
        chunk = block_size * patch_size
        self.pad_id = template.pad_id(tokenizer)
        self.rows: list[list[int]] = []
        self.responses: list[list[bool]] = []
        for messages in conversations:
            rendered = template.render(tokenizer, messages)
            ids, response = rendered.ids[:max_tokens], rendered.response[:max_tokens]
            if any(response):
                tail = -len(ids) % chunk
                self.rows.append(ids + [self.pad_id] * tail)
                self.responses.append(response + [True] * tail)
        if not self.rows:
            raise ValueError(f"no conversation keeps an answer within max_tokens={max_tokens}")

    @classmethod
    def from_corpus(cls, corpus: str | Path, split: str, tokenizer: ColaTokenizer, template: ChatTemplate,
                    max_tokens: int, block_size: int, patch_size: int) -> "ConversationDataset":
        return cls(read_conversations(corpus_split_path(corpus, split)), tokenizer, template, max_tokens, block_size,
                   patch_size)

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, indices: Sequence[int]) -> ChatBatch:
        """Rows padded to the longest with the pad id; padding past a row is neither text nor answer."""
        longest = max(len(self.rows[i]) for i in indices)
        ids = torch.full((len(indices), longest), self.pad_id, dtype=torch.long)
        response = torch.zeros(len(indices), longest, dtype=torch.bool)
        lengths = torch.tensor([len(self.rows[i]) for i in indices], dtype=torch.long)
        for b, i in enumerate(indices):
            ids[b, :len(self.rows[i])] = torch.tensor(self.rows[i], dtype=torch.long)
            response[b, :len(self.rows[i])] = torch.tensor(self.responses[i], dtype=torch.bool)
        real = torch.arange(longest)[None] < lengths[:, None]
        return ChatBatch(ids=ids, lengths=lengths, real=real, patch_size=self.patch_size, response=response)
