"""Chat templates shared by SFT training and every chat front-end: a conversation -> token ids.

Formats are the official SFT script's (``scripts/cola_sft.py``), recorded in a chat-tuned DiT's
config as ``sft_chat_format``, ``sft_stop_token_id`` and ``sft_pad_with_stop``:

* ``text``: ``User: {content}\\n`` per user turn; ``Assistant: `` then the answer, the stop token and
  ``\\n`` per assistant turn.
* ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per turn (the answer's ``<|im_end|>`` is
  its stop token).
* ``plain``: the template of a checkpoint without chat training: the ``text`` transcript with no stop
  token, so the model simply continues ``... Assistant:`` (no trailing space: plain text puts the space
  in the next word's token) and a front-end cuts at ``\\nUser:``.

Which template a checkpoint gets (:meth:`ChatTemplate.for_model`, the one rule of every front-end):
the ``sft_*`` fields of its DiT config win; else, when ``■`` is a single token of its tokenizer (the
release's, id 47774), the ``text`` format stopping at ``■``, which is what the official chat CLI
(``scripts/cola_chat_cli.py``) uses for such a checkpoint; else ``plain``. The transcript formats
(``text``, ``plain``) also cut an answer at ``\\nUser:``, where a model starts the next turn itself.

A leading system message is merged into the next turn (``system + "\\n\\n" + content``), as the
official script does. Message contents are encoded literally: a special-token string typed by a
user (``<|im_end|>``) stays text. ``render`` returns the ids with a per-token response flag (the
tokens an SFT step noises and learns); ``prompt`` returns the ids a model continues to answer;
:meth:`ChatTemplate.fit` does the same within a token budget, leaving out the oldest turns (and
saying so), and :class:`ChatPrompt` cuts the generated ids into the answer.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ConfigError, ConversationError
from .tokenizer import ColaTokenizer

ROLES = ("system", "user", "assistant")
CHAT_FORMATS = ("text", "chatml")          # formats a checkpoint can be chat-trained in
PLAIN = "plain"
TRANSCRIPT_STOP_STRINGS = ("\nUser:",)     # a transcript answer ends where the model writes the next user turn
OFFICIAL_STOP_TEXT = "\u25a0"              # "■": the official chat CLI's stop without sft_* fields (release id 47774)
REPLACEMENT = "\ufffd"                     # what a decoder prints for an incomplete UTF-8 sequence
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
        """The template recorded in a DiT config (``sft_*`` keys); without them :meth:`without_chat_training`."""
        chat_format = dit_extra.get("sft_chat_format")
        if chat_format is None:
            return cls.without_chat_training(tokenizer)
        stop = dit_extra.get("sft_stop_token_id")
        if stop is None:
            stop = tokenizer.im_end_id if chat_format == "chatml" else tokenizer.eos_id
        return cls(chat_format, stop, bool(dit_extra.get("sft_pad_with_stop", True)))

    @classmethod
    def without_chat_training(cls, tokenizer: ColaTokenizer) -> "ChatTemplate":
        """The official chat CLI's default, ``text`` stopping at ``■``, when ``■`` is one token of the tokenizer
        (the release's); else ``plain``."""
        stop = tokenizer.encode_literal(OFFICIAL_STOP_TEXT)
        return cls("text", stop[0], pad_with_stop=False) if len(stop) == 1 else cls()

    @classmethod
    def for_model(cls, model) -> "ChatTemplate":
        """The template of a loaded :class:`~cola_core.checkpoint.ColaModel`."""
        return cls.from_config(model.dit_config.extra, model.tokenizer)

    @property
    def chat_trained(self) -> bool:
        return self.format != PLAIN

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """Text a front-end cuts an answer at: the next ``User:`` turn of a transcript (chatml has none)."""
        return () if self.format == "chatml" else TRANSCRIPT_STOP_STRINGS

    def stop_ids(self, tokenizer: ColaTokenizer) -> frozenset[int]:
        """Tokens that end an answer: the template's stop token and the tokenizer's EOS / im_end."""
        return frozenset(tokenizer.stop_ids | ({self.stop_token_id} - {None}))

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

    def fit(self, tokenizer: ColaTokenizer, messages: Sequence[Message], budget: int) -> "ChatPrompt":
        """:meth:`prompt` within ``budget`` tokens: the oldest turns are left out (so that the kept part starts
        with a user turn; a leading system message is always kept) until the rest fits.

        Every turn is tokenised once, plus a binary search over where the kept part starts, so a long
        conversation costs linear time. Raises ConversationError when even the newest turn does not fit.
        """
        messages = check_messages(messages)
        system = messages[:1] if len(messages) > 1 and messages[0][0] == "system" else []
        turns = messages[len(system):]
        sizes = [len(self.render(tokenizer, [turn]).ids) for turn in turns]
        after = [0] * (len(turns) + 1)                     # after[s]: tokens of turns[s:] and the assistant header
        after[-1] = len(self._assistant_header(tokenizer))
        for s in range(len(turns) - 1, -1, -1):
            after[s] = after[s + 1] + sizes[s]

        def fits(start: int) -> bool:
            first = len(self.render(tokenizer, [*system, turns[start]]).ids) if system else sizes[start]
            return first + after[start + 1] <= budget

        starts = [s for s in range(len(turns)) if s == 0 or turns[s][0] != "assistant"]
        if not fits(starts[-1]):
            raise ConversationError(f"the last message is too long: with the template it needs "
                                    f"{len(self.prompt(tokenizer, [*system, *turns[starts[-1]:]]))} tokens, and "
                                    f"the context holds {budget} for the prompt")
        low, high = 0, len(starts) - 1                     # the first start that fits (fewer left out is larger)
        while low < high:
            mid = (low + high) // 2
            low, high = (low, mid) if fits(starts[mid]) else (mid + 1, high)
        start = starts[low]
        kept = [*system, *turns[start:]]
        return ChatPrompt(self.prompt(tokenizer, kept), self.stop_ids(tokenizer), self.stop_strings, dropped=start,
                          budget=budget)

    def _assistant_header(self, tokenizer: ColaTokenizer) -> list[int]:
        """``Assistant: `` as SFT trained it; ``Assistant:`` in plain text, where the answer's first word brings
        its own space (a base model ends at once after a lone space token, which plain text never has)."""
        if self.format == "chatml":
            return [self._im(tokenizer, "start"), *tokenizer.encode_literal("assistant\n")]
        return tokenizer.encode_literal("Assistant: " if self.chat_trained else "Assistant:")

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
            body = content if self.chat_trained else f" {content}"
            out.add([*encode(body), *stop, *encode("\n")], self.chat_trained)
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


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """(role, content) pairs with a known role and text content; ConversationError names the first bad message."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ConversationError("a conversation is a non-empty list of (role, content) messages")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Sequence) or isinstance(message, (str, bytes)) or len(message) != 2:
            raise ConversationError(f"message {i}: expected a (role, content) pair, got {type(message).__name__}")
        role, content = message
        if role not in ROLES:
            raise ConversationError(f"message {i}: role must be one of {', '.join(ROLES)}, got {str(role)[:40]!r}")
        if not isinstance(content, str):
            raise ConversationError(f"message {i}: content must be text, got {type(content).__name__}")
        out.append((role, content))
    return out


@dataclass(frozen=True)
class Answer:
    """Generated ids cut into an answer: its text, its ids, and why it ended (None: it may go on)."""

    text: str
    ids: list[int]
    finish_reason: str | None          # "stop" (stop token or stop string), "length" (max tokens) or None


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation rendered for its next answer: the ids a model continues, what ends the answer, and how
    many of the oldest messages were left out to fit the ``budget`` (prompt tokens)."""

    ids: list[int]
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    dropped: int = 0
    budget: int | None = None

    @property
    def notice(self) -> str | None:
        """What a front-end tells the user when turns were left out (None when the whole conversation fits)."""
        if not self.dropped:
            return None
        return (f"the conversation is longer than the context ({self.budget} prompt tokens): its {self.dropped} "
                f"oldest message(s) were left out of this answer's prompt")

    def answer(self, tokenizer: ColaTokenizer, ids: Sequence[int], max_tokens: int) -> Answer:
        """Generated ``ids`` (after the prompt) up to the first stop token, at most ``max_tokens`` of them, decoded
        without special tokens, cut at the first stop string, leading whitespace dropped (a plain transcript's
        answer starts with the space after ``Assistant:``)."""
        ids = list(ids)
        cut = next((i for i, token in enumerate(ids) if token in self.stop_ids), None)
        reason = None
        if cut is not None:
            ids, reason = ids[:cut], "stop"
        if len(ids) >= max_tokens:
            ids, reason = ids[:max_tokens], reason or "length"
        text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
        hits = [text.find(stop) for stop in self.stop_strings if stop in text]
        if hits:
            text, reason = text[:min(hits)], "stop"
        return Answer(text, ids, reason)

    def settled(self, text: str) -> int:
        """How much of a still-growing answer's ``text`` is final: a trailing U+FFFD (a character split across
        blocks) and a tail that could still become a stop string are held back."""
        end = len(text.rstrip(REPLACEMENT))
        held = max((n for stop in self.stop_strings for n in range(1, len(stop))
                    if text[:end].endswith(stop[:n])), default=0)
        return end - held
