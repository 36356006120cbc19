"""The API's only seam to the model: prompts in, per-block text deltas out.

Each :meth:`GenerationBackend.open` tokenises its prompts and builds a ``cola_core.generate.BlockwiseSampler``
(in a worker thread, after the request took its queue slot). While the backend batches
(:meth:`GenerationBackend.start_batching`, what the server does unless ``max_batch=1``) the sampler's rows are
handed to the shared ``workbench.serving.GenerationService``, which runs them in one batch with other requests'
rows, joining at a block boundary and leaving at their own end; otherwise the sampler runs alone, so its KV
caches, noise generators and outputs belong to one request. The model's modules are only read either way, and
a request's answer is the same in both modes.
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
from cola_core.chat_template import REPLACEMENT, ChatPrompt, ChatTemplate
from cola_core.config import MAX_POSITIONS
from cola_core.generate import BlockwiseSampler, GenerationConfig
from cola_core.text_codec import prompt_token_budget
from cola_core.tokenizer import ColaTokenizer

from workbench.serving import Blocks, GenerationService, Solo

from .stops import StopScanner, StopStrings

API_ROLES = {"developer": "system"}      # OpenAI roles the chat template knows by another name


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
    answer: bool = False             # a chat answer: special tokens and leading whitespace dropped, as
                                     # ``cola_core.chat_template.ChatPrompt.answer`` does
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
        text = self.tokenizer.decode(ids, skip_special_tokens=self.answer)
        text = text.lstrip() if self.answer else text
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
    """A started generation: iterate :meth:`updates` once (in a worker thread).

    Its blocks come from ``source``: the shared :class:`~workbench.serving.GenerationService` (the request's rows
    in the server's running batch) or, by default, its own sampler run alone (:class:`~workbench.serving.Solo`).
    """

    def __init__(self, sampler: BlockwiseSampler, stops: StopStrings, max_tokens: int, prompt_tokens: list[int],
                 notices: Sequence[str] = (), chat: bool = False, source: Blocks | None = None):
        self.sampler = sampler
        self.source = Solo(sampler) if source is None else source
        tokenizer = sampler.model.tokenizer
        stop_ids = frozenset(sampler.eos_ids.tolist())
        self.choices = [ChoiceText(tokenizer, trim, stop_ids, StopScanner(stops), max_tokens, answer=chat)
                        for trim in sampler.prepared.trim]
        self.prompt_tokens = prompt_tokens          # per prompt, not per choice
        self.notices = list(notices)                # e.g. oldest chat messages left out to fit the context
        self._ids: list[list[int]] = [[] for _ in self.choices]

    def updates(self, cancel: threading.Event | None = None) -> Iterator[list[ChoiceUpdate]]:
        """One list per decoded block, then one closing list; stops early once ``cancel`` is set. Once every
        choice is finished (EOS, ``max_tokens``, a stop string) the source is closed: its rows stop generating.

        No grad context is held here: the sampler runs every model call under ``no_grad`` itself, and
        grad mode is thread-local, so a context held across ``yield`` would leak between interleaved runs.
        """
        for block in self.source.blocks(cancel):
            if cancel is not None and cancel.is_set():
                return
            out = []
            for index, row in sorted(block.items()):
                self._ids[index].extend(row)
                eos_in_block = any(token in self.choices[index].stop_ids for token in row)
                out.extend(self._step(index, final=eos_in_block, reason="stop"))
            if all(choice.finish_reason for choice in self.choices):
                self.source.close()
            yield out
        if cancel is not None and cancel.is_set():
            return
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
    service: GenerationService | None = None   # while batching: requests join one running sampler batch

    def start_batching(self, max_rows: int) -> None:
        """Serve every later :meth:`open` from one :class:`GenerationService` batching up to ``max_rows`` rows."""
        if self.service is None:
            self.service = GenerationService(self.model, max_rows)

    def stop_batching(self) -> None:
        """Back to one sampler per request; requests still in the service end with an error."""
        service, self.service = self.service, None
        if service is not None:
            service.close()

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

    @cached_property
    def template(self) -> ChatTemplate:
        """The served checkpoint's chat template (``cola_core.chat_template``: sft_* fields win, else the official
        chat CLI's ``text``/``■`` when the tokenizer has ``■``, else ``plain``)."""
        return ChatTemplate.for_model(self.model)

    def chat_prompt(self, messages: Sequence[tuple[str, str]], max_new_tokens: int) -> ChatPrompt:
        """The ids that ask for the next answer, by the checkpoint's chat template (special-token strings typed
        into a message stay text), within the context left by ``max_new_tokens``: the oldest turns are left out
        when the chat is longer, with a notice."""
        messages = [(API_ROLES.get(role, role), content) for role, content in messages]
        budget = prompt_token_budget(max_new_tokens, self.model.block_size, self.model.patch_size)
        return self.template.fit(self.tokenizer, messages, budget)

    def prompt_ids(self, prompt: Prompt, max_new_tokens: int) -> ChatPrompt:
        """One prompt's ids and what ends its answer: a chat by its template; texts as the official code
        tokenises them (after the checkpoint's document start, if any) and token ids as given, both ending at
        EOS / im_end."""
        if isinstance(prompt, Chat):
            return self.chat_prompt(prompt.messages, max_new_tokens)
        ids = self.model.prompt_ids(prompt) if isinstance(prompt, str) else list(prompt)
        return ChatPrompt(ids, frozenset(self.tokenizer.stop_ids), ())

    def open(self, job: Job) -> Run:
        """Tokenise, then build this request's sampler (raises GenerationError for prompts the model cannot
        take), to run alone or, while batching, to hand to the service when the run is read. Row order: the
        ``n`` choices of a prompt are adjacent."""
        prompts = [self.prompt_ids(prompt, job.config.max_new_tokens) for prompt in job.prompts]
        rows = [p.ids for p in prompts for _ in range(job.n)]
        sample_ids = [sample_id(p.ids, choice) for p in prompts for choice in range(job.n)]
        with torch.no_grad():
            sampler = BlockwiseSampler(self.model, rows, job.config, sample_ids=sample_ids,
                                       eos_ids=sorted(frozenset().union(*(p.stop_ids for p in prompts))))
        stops = StopStrings(job.stops + tuple(s for p in prompts for s in p.stop_strings))
        source = None if self.service is None else self.service.ticket(sampler)
        return Run(sampler, stops, job.max_tokens, [len(p.ids) for p in prompts],
                   [p.notice for p in prompts if p.notice], chat=any(isinstance(p, Chat) for p in job.prompts),
                   source=source)
