"""The API's only seam to the model: prompts in, per-block text deltas out.

Built on ``cola_core.generate.BlockwiseSampler`` today; moving the server onto the workbench session
later touches this module only. Each :meth:`GenerationBackend.open` builds a fresh sampler, so KV
caches, noise generators and outputs belong to one request; the model's modules are only read.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from cola_core import ColaModel
from cola_core.generate import BlockwiseSampler, GenerationConfig
from cola_core.tokenizer import ColaTokenizer

REPLACEMENT = "\ufffd"   # what a decoder prints for an incomplete UTF-8 sequence
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Job:
    """One generation request: one prompt per choice row (a prompt repeated n times)."""

    prompts: list[str | list[int]]    # texts, or token ids used as given (chat templates)
    config: GenerationConfig
    max_tokens: int
    stops: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChoiceUpdate:
    """New text of one choice since its previous update; ``finish_reason`` on the last one."""

    index: int
    text: str
    finish_reason: str | None = None


@dataclass
class ChoiceText:
    """One choice's text as blocks arrive: cut at EOS/im_end, ``max_tokens`` and stop strings.

    ``update`` returns the delta that is safe to send: it holds back a trailing U+FFFD (a UTF-8
    character split across blocks) and any tail that could still become a stop string.
    """

    tokenizer: ColaTokenizer
    trim: int                        # re-decoded prompt tokens at the start of the sampler's output
    stop_ids: frozenset[int]
    stops: tuple[str, ...]
    max_tokens: int
    sent: str = ""
    tokens: int = 0                  # completion tokens counted for usage
    finish_reason: str | None = None

    def update(self, untrimmed_ids: Sequence[int], final: bool = False, reason: str = "length") -> str:
        """Advance to the sampler's ids so far; ``final`` ends the choice with ``reason`` unless cut earlier."""
        if self.finish_reason is not None:
            return ""
        ids = list(untrimmed_ids[self.trim:])
        cut = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        if cut is not None:
            ids, self.finish_reason = ids[:cut], "stop"
        if len(ids) > self.max_tokens or (cut is None and len(ids) == self.max_tokens):
            ids, self.finish_reason = ids[:self.max_tokens], "length"
        text = self.tokenizer.decode(ids)
        hits = [pos for pos in (text.find(s) for s in self.stops) if pos >= 0]
        if hits:
            text, self.finish_reason = text[:min(hits)], "stop"
        if final and self.finish_reason is None:
            self.finish_reason = reason
        self.tokens = len(ids)
        end = len(text) if self.finish_reason else self._safe_end(text)
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):end], text[:end]
        return delta

    def _safe_end(self, text: str) -> int:
        text = text.rstrip(REPLACEMENT)
        held = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return len(text) - held


class Run:
    """A started generation: iterate :meth:`updates` once (in a worker thread)."""

    def __init__(self, sampler: BlockwiseSampler, job: Job):
        self.sampler = sampler
        tokenizer = sampler.model.tokenizer
        stop_ids = frozenset(sampler.eos_ids.tolist())
        self.choices = [ChoiceText(tokenizer, trim, stop_ids, job.stops, job.max_tokens)
                        for trim in sampler.prepared.trim]
        self.prompt_tokens = [len(ids) for ids in sampler.prepared.ids]
        self._ids: list[list[int]] = [[] for _ in self.choices]

    def updates(self, cancel: threading.Event | None = None) -> Iterator[list[ChoiceUpdate]]:
        """One list per decoded block, then one closing list; stops early once ``cancel`` is set.

        No grad context is held here: the sampler runs every model call under ``no_grad`` itself, and
        grad mode is thread-local, so a context held across ``yield`` would leak between interleaved runs.
        """
        for event, state in self.sampler.events():
            if cancel is not None and cancel.is_set():
                return
            if event != "decoded":
                continue
            out = []
            for index, (choice, row) in enumerate(zip(self.choices, state.token_ids.tolist())):
                self._ids[index].extend(row)
                eos_in_block = any(token in choice.stop_ids for token in row)
                out.extend(self._step(index, final=eos_in_block, reason="stop"))
            state.interrupt = all(choice.finish_reason for choice in self.choices)
            yield out
        yield [u for index in range(len(self.choices)) for u in self._step(index, final=True, reason="length")]

    def _step(self, index: int, final: bool, reason: str) -> list[ChoiceUpdate]:
        choice = self.choices[index]
        if choice.finish_reason is not None:
            return []
        delta = choice.update(self._ids[index], final=final, reason=reason)
        return [ChoiceUpdate(index, delta, choice.finish_reason)] if delta or choice.finish_reason else []


@dataclass
class GenerationBackend:
    """What the server needs from a loaded model: identity, chat template, and :meth:`open`."""

    model: ColaModel
    model_id: str = "cola-dlm"
    defaults: GenerationConfig = field(default_factory=GenerationConfig)

    @property
    def tokenizer(self) -> ColaTokenizer:
        return self.model.tokenizer

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> tuple[str | list[int], tuple[str, ...]]:
        """(prompt, default stop strings): ChatML token ids when the tokenizer has im_start/im_end, else a
        plain transcript. The ids are built turn by turn, so special-token strings typed into a message stay
        text and cannot open or close a turn."""
        tok = self.tokenizer
        messages = [("system" if role == "developer" else role, content) for role, content in messages]
        if tok.has_chat_tokens:
            ids: list[int] = []
            for role, content in messages:
                ids += [tok.im_start_id, *tok.encode_literal(f"{role}\n{content}"), tok.im_end_id,
                        *tok.encode_literal("\n")]
            return ids + [tok.im_start_id, *tok.encode_literal("assistant\n")], ()
        lines = "".join(f"{PLAIN_ROLES[role]}: {content}\n" for role, content in messages)
        return f"{lines}Assistant:", ("\nUser:",)

    def open(self, job: Job) -> Run:
        """Build this request's own sampler (raises GenerationError for prompts the model cannot take)."""
        with torch.no_grad():
            sampler = BlockwiseSampler(self.model, job.prompts, job.config, sample_ids=range(len(job.prompts)))
        return Run(sampler, job)
