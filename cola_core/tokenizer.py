"""Thin wrapper over ``tokenizers.Tokenizer`` that knows the special ids Cola generation needs, and the
one rule for showing token ids to people (:func:`display_text`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from .errors import CheckpointError

# Release defaults (OLMo 2 tokenizer, Cola DLM model card).
RELEASE_PAD_ID, RELEASE_EOS_ID, RELEASE_IM_END_ID, RELEASE_IM_START_ID = 100277, 100257, 100265, 100264

PAD_NAMES = ("<|pad|>", "<pad>")
EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>")
IM_START_NAMES = ("<|im_start|>",)
IM_END_NAMES = ("<|im_end|>",)
_NAMED = re.compile(r"^<\|?(?P<name>[^<>|]+)\|?>$")


class ColaTokenizer:
    """Encode/decode text and expose ``pad_id``, ``eos_id``, ``im_start_id``, ``im_end_id``."""

    def __init__(self, tokenizer: Tokenizer, pad_id: int | None = None, eos_id: int | None = None,
                 im_start_id: int | None = None, im_end_id: int | None = None):
        self.backend = tokenizer
        self._literal: Tokenizer | None = None     # a copy that encodes special-token strings as text
        self.pad_id = pad_id if pad_id is not None else self._lookup(PAD_NAMES, RELEASE_PAD_ID)
        self.eos_id = eos_id if eos_id is not None else self._lookup(EOS_NAMES, RELEASE_EOS_ID)
        self.im_start_id = im_start_id if im_start_id is not None else self._lookup(IM_START_NAMES, RELEASE_IM_START_ID)
        self.im_end_id = im_end_id if im_end_id is not None else self._lookup(IM_END_NAMES, RELEASE_IM_END_ID)
        if self.pad_id is None:
            raise CheckpointError("tokenizer has no pad token (<|pad|>); pass pad_id explicitly")
        for name in ("pad_id", "eos_id", "im_start_id", "im_end_id"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool)
                                          and 0 <= value < self.vocab_size):
                raise CheckpointError(f"{name} must be a token id from 0 to {self.vocab_size - 1} "
                                      f"(the tokenizer's vocabulary), got {value!r}")

    @classmethod
    def from_file(cls, path: str | Path, **special_ids: int | None) -> "ColaTokenizer":
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer.json not found")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise CheckpointError(f"{path}: not a valid tokenizers JSON file ({exc})") from None
        return cls(backend, **special_ids)

    def _lookup(self, names: tuple[str, ...], release_id: int) -> int | None:
        for name in names:
            token_id = self.backend.token_to_id(name)
            if token_id is not None:
                return token_id
        return release_id if self.vocab_size > release_id else None

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def has_chat_tokens(self) -> bool:
        return self.im_start_id is not None and self.im_end_id is not None

    @property
    def stop_ids(self) -> set[int]:
        return {i for i in (self.eos_id, self.im_end_id) if i is not None}

    def encode(self, text: str) -> list[int]:
        """Token ids exactly as the official code gets them (``tokenizer.encode(text).ids``)."""
        return self.backend.encode(text).ids

    def encode_literal(self, text: str) -> list[int]:
        """Ids of ``text`` with special-token strings such as ``<|im_start|>`` kept as plain text, so
        user content cannot inject control tokens into a chat template."""
        if self._literal is None:
            self._literal = Tokenizer.from_str(self.backend.to_str())
            self._literal.encode_special_tokens = True
        return self._literal.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [enc.ids for enc in self.backend.encode_batch(texts)]

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: list[list[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.backend.decode_batch([list(ids) for ids in batch], skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def save(self, path: str | Path) -> None:
        self.backend.save(str(path))


# -- text for people ------------------------------------------------------------------------------
def special_markers(tokenizer: ColaTokenizer) -> dict[int, str]:
    """id -> visible marker of every special token: ``⟨eos⟩``, ``⟨im_end⟩``, ``⟨im_start⟩``, ``⟨pad⟩``, or
    ``⟨name⟩`` for another ``<|name|>``."""
    own = {tokenizer.eos_id: "⟨eos⟩", tokenizer.im_end_id: "⟨im_end⟩", tokenizer.im_start_id: "⟨im_start⟩",
           tokenizer.pad_id: "⟨pad⟩"}
    markers = {}
    for token_id, added in tokenizer.backend.get_added_tokens_decoder().items():
        if added.special:
            match = _NAMED.match(added.content)
            markers[token_id] = f"⟨{match['name'] if match else added.content}⟩"
    markers.update({i: m for i, m in own.items() if i is not None and i < tokenizer.vocab_size})
    return markers


def display_tokens(ids: Sequence[int], tokenizer: ColaTokenizer) -> list[str]:
    """Each token's own text, special tokens as markers (for per-token views such as confidence colouring)."""
    markers = special_markers(tokenizer)
    return [markers[i] if i in markers else tokenizer.decode([i]) for i in ids]


def display_text(ids: Sequence[int], tokenizer: ColaTokenizer, stop_at_eos: bool = True) -> str:
    """Text of ``ids`` for people: special tokens never raw (``<|endoftext|>`` shows as ``⟨eos⟩``); with
    ``stop_at_eos`` nothing after the first EOS / im_end, whose marker ends the text (so the reader sees
    why it ended). Every front-end shows text through this; raw ids stay in JSON downloads."""
    markers = special_markers(tokenizer)
    stops = tokenizer.stop_ids if stop_at_eos else set()
    parts: list[str] = []
    run: list[int] = []
    for token in ids:
        if token not in markers:
            run.append(token)
            continue
        parts += [tokenizer.decode(run), markers[token]]
        run = []
        if token in stops:
            return "".join(parts)
    return "".join(parts) + tokenizer.decode(run)
