"""The API's only seam to the model: prompts in, per-block text deltas out.

Built on ``cola_core.generate.BlockwiseSampler`` today; moving the server onto the workbench session
later touches this module only. Each :meth:`GenerationBackend.open` tokenises its prompts and builds a
fresh sampler (in a worker thread, after the request took its queue slot), so KV caches, noise
generators and outputs belong to one request; the model's modules are only read.
"""
from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator, Sequence, Union

import torch

from cola_core import ColaModel
from cola_core.config import MAX_POSITIONS
from cola_core.generate import BlockwiseSampler, GenerationConfig
from cola_core.tokenizer import ColaTokenizer

from .stops import StopScanner, StopStrings

REPLACEMENT = "\ufffd"   # what a decoder prints for an incomplete UTF-8 sequence
PLAIN_ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class Chat:
    """A chat prompt: (role, content) turns, rendered by :meth:`GenerationBackend.chat_prompt`."""

    messages: tuple[tuple[str, str], ...]


Prompt = Union[str, list[int], Chat]


@dataclass(frozen=True)
class Job:
    """One generation request: ``n`` choices of each prompt (a text, token ids, or a chat)."""

    prompts: list[Prompt]
    config: GenerationConfig
    max_tokens: int
    stops: tuple[str, ...] = ()
    n: int = 1


def sample_id(prompt_ids: Sequence[int], choice: int) -> int:
    """The noise id of one choice of one prompt: CRC-32 of the prompt's token ids, continued over the choice
    index (so the n choices of a prompt always differ). A choice's noise -- the official per-sample rule
    seed + 1000*sample_id + 10^7*block -- therefore depends on the seed, the prompt and the choice, never on
    the prompt's position in a multi-prompt request. Ids are < 2**32, so with seeds under cola_core's
    seed rule (<= 2**53 - 1) and at most MAX_POSITIONS blocks every generator seed stays below 2**63."""
    crc = zlib.crc32(struct.pack(f"<{len(prompt_ids)}I", *prompt_ids))
    return zlib.crc32(struct.pack("<I", choice), crc)


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
    character split across blocks) and any tail that could still become a stop string. Stop strings
    are matched by a :class:`StopScanner` that reads each character once.
    """

    tokenizer: ColaTokenizer
    trim: int                        # re-decoded prompt tokens at the start of the sampler's output
    stop_ids: frozenset[int]
    scanner: StopScanner
    max_tokens: int
    sent: str = ""
    scanned: str = ""                # the text the scanner has read
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
        ending = final or self.finish_reason is not None
        stable = len(text) if ending else len(text.rstrip(REPLACEMENT))
        hit = self._scan(text, stable)
        if hit is not None:
            text, self.finish_reason = text[:hit], "stop"
        if final and self.finish_reason is None:
            self.finish_reason = reason
        self.tokens = len(ids)
        end = len(text) if self.finish_reason else stable - self.scanner.held
        if end <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):end], text[:end]
        return delta

    def _scan(self, text: str, stable: int) -> int | None:
        """Feed the scanner ``text[:stable]`` beyond what it read (all of it again if the decoder revised
        earlier text); the start of the first stop string, or None."""
        if not text.startswith(self.scanned):
            self.scanner, self.scanned = StopScanner(self.scanner.stops), ""
        hit = self.scanner.feed(text[len(self.scanned):stable])
        self.scanned = text[:stable]
        return hit


class Run:
    """A started generation: iterate :meth:`updates` once (in a worker thread)."""

    def __init__(self, sampler: BlockwiseSampler, stops: StopStrings, max_tokens: int, prompt_tokens: list[int]):
        self.sampler = sampler
        tokenizer = sampler.model.tokenizer
        stop_ids = frozenset(sampler.eos_ids.tolist())
        self.choices = [ChoiceText(tokenizer, trim, stop_ids, StopScanner(stops), max_tokens)
                        for trim in sampler.prepared.trim]
        self.prompt_tokens = prompt_tokens          # per prompt, not per choice
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
    """What the server needs from a loaded model: identity, tokenizer, chat template, and :meth:`open`."""

    model: ColaModel
    model_id: str = "cola-dlm"
    defaults: GenerationConfig = field(default_factory=GenerationConfig)

    @property
    def tokenizer(self) -> ColaTokenizer:
        return self.model.tokenizer

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    @property
    def max_prompt_tokens(self) -> int:
        """Tokens the model can hold at all (its latent positions times the patch size)."""
        return MAX_POSITIONS * self.model.patch_size

    @cached_property
    def max_prompt_chars(self) -> int | None:
        """Characters beyond which a text surely has more than :attr:`max_prompt_tokens` tokens: no token
        stands for more UTF-8 bytes than its vocabulary entry has. None when a normaliser may shrink text."""
        backend = self.tokenizer.backend
        if backend.normalizer is not None:
            return None
        longest = max(len(token.encode("utf-8")) for token in backend.get_vocab(with_added_tokens=True))
        return self.max_prompt_tokens * longest

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

    def prompt_ids(self, prompt: Prompt) -> tuple[list[int], tuple[str, ...]]:
        """(token ids, default stop strings) of one prompt: texts as the official code tokenises them."""
        if isinstance(prompt, Chat):
            rendered, stops = self.chat_prompt(prompt.messages)
            return (self.tokenizer.encode(rendered) if isinstance(rendered, str) else rendered), stops
        return (self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)), ()

    def open(self, job: Job) -> Run:
        """Tokenise, then build this request's own sampler (raises GenerationError for prompts the model
        cannot take). Row order: the ``n`` choices of a prompt are adjacent."""
        prompts, extra_stops = zip(*(self.prompt_ids(prompt) for prompt in job.prompts))
        rows = [ids for ids in prompts for _ in range(job.n)]
        sample_ids = [sample_id(ids, choice) for ids in prompts for choice in range(job.n)]
        with torch.no_grad():
            sampler = BlockwiseSampler(self.model, rows, job.config, sample_ids=sample_ids)
        stops = StopStrings(job.stops + tuple(s for stops in extra_stops for s in stops))
        return Run(sampler, stops, job.max_tokens, [len(ids) for ids in prompts])
