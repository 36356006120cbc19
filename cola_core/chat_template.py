"""Chat templates shared by SFT training and every chat front-end: a conversation -> token ids.

Formats are the official SFT script's (``scripts/cola_sft.py``), recorded in a chat-tuned DiT's
config as ``sft_chat_format``, ``sft_stop_token_id`` and ``sft_pad_with_stop``:

* ``text``: ``User: {content}\\n`` per user turn; ``Assistant: `` then the answer, the stop token and
  ``\\n`` per assistant turn.
* ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn (the answer's ``<|im_end|>`` is
  its stop token).
* ``plain``: the template of a checkpoint without chat training: the ``text`` transcript with no stop
  token, so the model simply continues ``... Assistant: `` and a front-end cuts at ``\\nUser:``.

A leading system message is merged into the next turn (``system + "\\n\\n" + content``), as the
official script does. Message contents are encoded literally: a special-token string typed by a
user (``<|im_end|>``) stays text. ``render`` returns the ids with a per-token response flag (the
tokens an SFT step noises and learns); ``prompt`` returns the ids a model continues to answer.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .tokenizer import ColaTokenizer

ROLES = ("system", "user", "assistant")
CHAT_FORMATS = ("text", "chatml")          # formats a checkpoint can be chat-trained in
PLAIN = "plain"
PLAIN_STOP_STRINGS = ("\nUser:",)
Message = tuple[str, str]                   # (role, content)


@dataclass
class Rendered:
    """A rendered conversation: token ids and, per token, whether it belongs to an answer."""

    ids: list[int]
    response: list[bool]

    def add(self, ids: Sequence[int], response: bool) -> None:
        self.ids.extend(ids)
        self.response.extend([response] * len(ids))


@dataclass(frozen=True)
class ChatTemplate:
    """How one checkpoint talks: its format, the token that ends an answer, and what SFT padded with."""

    format: str = PLAIN
    stop_token_id: int | None = None
    pad_with_stop: bool = True

    def __post_init__(self) -> None:
        if self.format not in (*CHAT_FORMATS, PLAIN):
            raise ConfigError(f"unknown chat format {self.format!r}; choose {', '.join(CHAT_FORMATS)} or {PLAIN}")
        if self.format in CHAT_FORMATS and self.stop_token_id is None:
            raise ConfigError(f"the {self.format!r} chat format needs a stop token id")

    @classmethod
    def from_config(cls, dit_extra: Mapping, tokenizer: ColaTokenizer) -> "ChatTemplate":
        """The template recorded in a DiT config (``sft_*`` keys); ``plain`` when it has none."""
        chat_format = dit_extra.get("sft_chat_format")
        if chat_format is None:
            return cls()
        stop = dit_extra.get("sft_stop_token_id")
        if stop is None:
            stop = tokenizer.im_end_id if chat_format == "chatml" else tokenizer.eos_id
        return cls(chat_format, stop, bool(dit_extra.get("sft_pad_with_stop", True)))

    @classmethod
    def for_model(cls, model) -> "ChatTemplate":
        """The template of a loaded :class:`~cola_core.checkpoint.ColaModel`."""
        return cls.from_config(model.dit_config.extra, model.tokenizer)

    @property
    def chat_trained(self) -> bool:
        return self.format != PLAIN

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text a front-end cuts an answer at (the chat formats stop at their stop token instead)."""
        return PLAIN_STOP_STRINGS if self.format == PLAIN else ()

    def config_fields(self) -> dict:
        """The ``sft_*`` keys the official SFT script writes into the DiT config."""
        return {"sft_chat_format": self.format, "sft_stop_token_id": self.stop_token_id,
                "sft_pad_with_stop": self.pad_with_stop}

    def pad_id(self, tokenizer: ColaTokenizer) -> int:
        """The id SFT pads a conversation with (its tail counts as answer): the stop token, or chatml's pad."""
        if self.format == "chatml" and not self.pad_with_stop:
            return tokenizer.pad_id
        return self.stop_token_id if self.stop_token_id is not None else tokenizer.eos_id

    def render(self, tokenizer: ColaTokenizer, messages: Sequence[Message]) -> Rendered:
        """A whole conversation (training): ids and per-token answer flags."""
        out = Rendered([], [])
        for role, content in merge_system(messages):
            self._turn(tokenizer, out, role, content)
        return out

    def prompt(self, tokenizer: ColaTokenizer, messages: Sequence[Message]) -> list[int]:
        """Ids that ask for the next answer: the conversation so far and an open assistant turn."""
        out = self.render(tokenizer, messages)
        out.add(self._assistant_header(tokenizer), False)
        return out.ids

    def _assistant_header(self, tokenizer: ColaTokenizer) -> list[int]:
        if self.format == "chatml":
            return [self._im(tokenizer, "start"), *tokenizer.encode_literal("assistant\n")]
        return tokenizer.encode_literal("Assistant: ")

    def _turn(self, tokenizer: ColaTokenizer, out: Rendered, role: str, content: str) -> None:
        encode = tokenizer.encode_literal
        if self.format == "chatml":
            answer = role == "assistant"
            out.add([self._im(tokenizer, "start"), *encode(f"{role}\n")], False)
            out.add([*encode(content), self._im(tokenizer, "end")], answer)
            out.add(encode("\n"), False)
        elif role == "assistant":
            out.add(self._assistant_header(tokenizer), False)
            stop = [] if self.stop_token_id is None else [self.stop_token_id]
            out.add([*encode(content), *stop, *encode("\n")], self.chat_trained)
        else:
            out.add(encode(f"User: {content}\n"), False)

    @staticmethod
    def _im(tokenizer: ColaTokenizer, which: str) -> int:
        token_id = tokenizer.im_start_id if which == "start" else tokenizer.im_end_id
        if token_id is None:
            raise ConfigError("the chatml format needs a tokenizer with <|im_start|> and <|im_end|>")
        return token_id


def merge_system(messages: Sequence[Message]) -> list[Message]:
    """Fold a leading system message into the next turn, as the official SFT script does."""
    messages = list(messages)
    if len(messages) > 1 and messages[0][0] == "system":
        role, content = messages[1]
        messages = [(role, f"{messages[0][1]}\n\n{content}"), *messages[2:]]
    return messages
