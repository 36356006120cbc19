"""Block-wise generation: the official ``generate_task_repaint_inference`` as one event loop.

:class:`BlockwiseSampler` is the single sampler loop of the project. Iterating ``events()`` yields
``(event_name, state)`` at every hook point; a consumer may read or replace fields of the state
(steer ``z``, change ``guidance``, replace ``v_guided`` or ``token_ids``) before resuming the loop.
With nobody touching the state, the loop is exactly the official algorithm (spec section 7).
The per-sample rules (:func:`block_noise`, :func:`guidance_per_sample`, :func:`blocks_needed`, :func:`emits`,
:func:`generation_result`) are functions, which :mod:`cola_core.engine` applies to rows of many requests
stepped together (no hooks there).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .attention import KVCache
from .checkpoint import ColaModel
from .constants import TIME_SCALE
from .errors import GenerationError
from .prior_context import PriorContext
from .sampler import (SCHEDULES, SOLVERS, check_guidance_interval, guided_velocity, interval_guidance,
                      predicted_clean, rounds_dit_inputs, sample_tokens, seeded_noise, solver_updates,
                      step_times, timestep_grid, token_seed)
from .static_prior import StaticPriorContext
from .text_codec import (block_count, check_positions, context_latents, decode_logits, encode_tokens, greedy_texts,
                         latent_count, pad_to_blocks)
from .tokenizer import ColaTokenizer
from .seeds import is_valid_seed, seed_error

EVENTS = ("block_start", "pre_model", "guidance", "guided", "post_update", "block_end", "decoded")


@dataclass
class GenerationConfig:
    """Sampler knobs; defaults are the official CLI's (16 steps, guidance 7, 32 tokens, greedy)."""

    steps: int = 16
    guidance: float = 7.0
    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 50
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None
    T: float = TIME_SCALE
    solver: str = "euler"
    schedule: str = "linear"
    schedule_shift: float = 3.0
    stop_at_eos: bool = True
    noise_device: str | None = None   # seeded noise is drawn here (None: the run device, as the reference)
    guidance_rescale: float = 0.0     # CFG-rescale phi in [0, 1] (0: the official combine)
    guidance_interval: tuple[float, float] | None = None   # guide only for t/T in [lo, hi] (None: always)

    def validate(self) -> None:
        """Raise GenerationError naming the first bad knob."""
        checks = [
            (isinstance(self.steps, int) and self.steps >= 1, f"steps must be an integer >= 1, got {self.steps!r}"),
            (math.isfinite(self.guidance) and self.guidance >= 0,
             f"guidance must be a finite number >= 0, got {self.guidance!r}"),
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}"),
            (math.isfinite(self.temperature) and self.temperature >= 0,
             f"temperature must be finite and >= 0, got {self.temperature!r}"),
            (isinstance(self.top_k, int) and self.top_k >= 0, f"top_k must be an integer >= 0, got {self.top_k!r}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
             f"repetition_penalty must be finite and > 0, got {self.repetition_penalty!r}"),
            (self.T == TIME_SCALE, f"T must be the DiT's training time scale {TIME_SCALE:g} (it was trained on "
                                   f"t in [0, {TIME_SCALE:g}]; another T would integrate only part of the path), "
                                   f"got {self.T!r}"),
            (self.solver in SOLVERS, f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (math.isfinite(self.schedule_shift) and self.schedule_shift > 0,
             f"schedule_shift must be finite and > 0, got {self.schedule_shift!r}"),
            (self.seed is None or is_valid_seed(self.seed), seed_error(self.seed)),
            (self.noise_device in (None, "cpu") or str(self.noise_device).startswith("cuda"),
             f"noise_device must be cpu, cuda or cuda:N, got {self.noise_device!r}"),
            (isinstance(self.guidance_rescale, (int, float)) and 0.0 <= self.guidance_rescale <= 1.0,
             f"guidance_rescale must be a number in [0, 1], got {self.guidance_rescale!r}"),
            (check_guidance_interval(self.guidance_interval) is None, check_guidance_interval(self.guidance_interval)),
        ]
        for ok, message in checks:
            if not ok:
                raise GenerationError(message)

    def with_knobs(self, **knobs) -> "GenerationConfig":
        """A validated copy with ``knobs`` changed; an unknown name or a bad value raises GenerationError naming it."""
        fields = list(self.__dataclass_fields__)
        unknown = sorted(set(knobs) - set(fields))
        if unknown:
            raise GenerationError(f"unknown generation option(s): {', '.join(unknown)}; valid: {', '.join(fields)}")
        config = dataclasses.replace(self, **knobs)
        config.validate()
        return config


@dataclass
class Generation:
    """One finished sample: text and ids after trimming the re-decoded prompt tail.

    ``text``/``token_ids`` are what the official code returns (no truncation at EOS): in a batch a
    sample keeps generating until every sample stopped, so they depend on the batch. ``completion``
    (the text up to the first EOS / im_end, without special tokens) and ``completion_ids`` do not;
    every metric and front-end uses them. ``end_block`` is the block holding that first EOS / im_end
    (None if there is none): blocks after it were generated past the sample's end.
    """

    prompt: str
    text: str
    token_ids: list[int]
    untrimmed_ids: list[int]
    stopped_at_eos: bool
    completion: str = ""
    completion_ids: list[int] = dataclasses.field(default_factory=list)
    end_block: int | None = None


@dataclass
class PreparedPrompts:
    """Prompts aligned to blocks (spec 7 steps 1-4): prefixes, pinned first-block rows, trims."""

    texts: list[str]
    ids: list[list[int]]
    prefix: torch.Tensor          # (B, Lp, C) DiT-space prefix latents, zero-padded
    prefix_lengths: torch.Tensor  # (B,) latents per prefix (multiples of block_size)
    pinned: torch.Tensor          # (B, bs) bool: first-block rows holding real prompt latents
    clean_window: torch.Tensor    # (B, bs, C) DiT-space latents of the first block's window
    trim: list[int]               # prompt tokens re-decoded in block 0, dropped from the output


@dataclass
class SamplerState:
    """What the loop holds at a hook point, and what a hook needs. Shapes: B samples, bs latents per block,
    C channels. Hooks replace fields (tensors are replaced, never edited in place)."""

    block: int
    steps: int                              # solver steps per block
    step: int = 0
    stage: int = 0                          # solver evaluation within a step (Heun/midpoint: 0, 1)
    t: torch.Tensor | None = None           # (B, bs) time of z (pinned rows 0 in block 0)
    t_next: torch.Tensor | None = None      # (B, bs) time after this step
    dt: float = 0.0                         # (t - t_next) / T for unpinned rows
    z: torch.Tensor | None = None           # (B, bs, C) fp32 current latent (z_t)
    free: torch.Tensor | None = None        # (B, bs) bool: rows being generated (False: prompt rows pinned in block 0)
    guidance: torch.Tensor | None = None    # (B,) guidance scale per sample for this block
    v_cond: torch.Tensor | None = None      # (B, bs, C)
    v_uncond: torch.Tensor | None = None
    v_guided: torch.Tensor | None = None    # set after the "guidance" event, from the three fields above
    logits: torch.Tensor | None = None      # (B, bs*P, V) decoder logits of the finished block
    token_ids: torch.Tensor | None = None   # (B, bs*P) tokens chosen for the finished block
    ended: torch.Tensor | None = None       # (B,) bool: the sample emitted EOS / im_end in an earlier block,
                                            # so this block is generated past its end
    decode_preview: Callable[[torch.Tensor], list[str]] | None = None   # (B, n, C) -> greedy texts, no context
    T: float = TIME_SCALE
    interrupt: bool = False

    @property
    def x0_pred(self) -> torch.Tensor | None:
        """Predicted clean latent z_t - (t/T) v_guided, when a velocity is known."""
        if self.z is None or self.v_guided is None or self.t is None:
            return None
        return predicted_clean(self.z, self.v_guided.float(), self.t, self.T)


class BlockwiseSampler:
    """One generation call: owns its KV caches, noise and outputs. Iterate :meth:`events`."""

    def __init__(self, model: ColaModel, prompts: Sequence[str | Sequence[int]], config: GenerationConfig | None = None,
                 sample_ids: Sequence[int] | None = None, eos_ids: Sequence[int] | None = None, fast: bool = True):
        """``prompts``: texts (after the checkpoint's document start, if any), or token-id lists used as given
        (e.g. a chat template built from ids).

        ``fast`` runs the DiT through :class:`~cola_core.static_prior.StaticPriorContext` (static shapes, CUDA
        graphs); False runs the eager :class:`PriorContext`. Both give the same tokens; a model-internal
        listener makes the fast one run its passes eagerly anyway.
        """
        self.model = model
        self.fast = fast
        self.prior_options: dict = {}   # more StaticPriorContext options (static_keys, table, fuse, graphs)
        self.config = config or GenerationConfig()
        self.config.validate()
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise GenerationError("no prompts given")
        vocab = model.tokenizer.vocab_size
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                continue
            if not isinstance(p, Sequence) or not all(isinstance(t, int) and 0 <= t < vocab for t in p):
                raise GenerationError(f"prompt {i} is neither a string nor a list of token ids in [0, {vocab}): {p!r}")
        self.sample_ids = list(sample_ids) if sample_ids is not None else list(range(len(prompts)))
        if len(self.sample_ids) != len(prompts):
            raise GenerationError(f"{len(self.sample_ids)} sample ids for {len(prompts)} prompts")
        if eos_ids is None:
            eos_ids = sorted(model.tokenizer.stop_ids) if self.config.stop_at_eos else []
        self.eos_ids = torch.tensor(list(eos_ids), dtype=torch.long)           # stop the loop (stop_at_eos)
        self.end_ids = torch.tensor(sorted(model.tokenizer.stop_ids), dtype=torch.long)   # where a text ends
        bs, patch, max_new = model.block_size, model.patch_size, self.config.max_new_tokens
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(model.encode_prompts(texts))
        prompt_ids = [next(encoded) if isinstance(p, str) else list(p) for p in prompts]
        prompts = [p if isinstance(p, str) else model.tokenizer.decode(list(p)) for p in prompts]
        self.num_blocks = max(blocks_needed(len(ids), max_new, bs, patch) for ids in prompt_ids)
        for i, ids in enumerate(prompt_ids):   # checked before any model work
            check_positions(context_latents(len(ids), bs, patch) + self.num_blocks * bs, f"prompt {i}",
                            f"{len(ids)} tokens plus max_new_tokens={max_new}")
        self.prepared = prepare_prompts(model, list(prompts), prompt_ids)
        self.context: list[torch.Tensor] = []   # per block (B, bs*P) token ids
        self.finished = torch.zeros(len(prompts), dtype=torch.bool)   # emitted one of eos_ids (the loop's stop)
        self.ended = torch.zeros(len(prompts), dtype=torch.bool)      # emitted EOS / im_end, stop_at_eos or not
        self.end_block: list[int | None] = [None] * len(prompts)      # block of each sample's first EOS / im_end
        # token sampling (temperature > 0): one CPU generator per sample, so sampled tokens are batch-independent
        self.token_rngs = None if self.config.seed is None else [
            torch.Generator().manual_seed(token_seed(self.config.seed, sid)) for sid in self.sample_ids]

    @property
    def blocks_done(self) -> int:
        """Blocks decoded so far."""
        return len(self.context)

    def _noise(self, block: int) -> torch.Tensor:
        """(B, bs, C) fp32 initial noise of a block (:func:`block_noise`)."""
        return block_noise(self.model, self.config, self.sample_ids, block)

    # -- the loop ----------------------------------------------------------------------------------
    def events(self) -> Iterator[tuple[str, SamplerState]]:
        """Run generation, yielding ``(event, state)`` at each hook point (see ``EVENTS``).

        ``guidance`` comes after the cond/uncond passes and before the loop combines them, so edits of
        ``v_cond``, ``v_uncond`` or ``guidance`` there shape ``v_guided``; ``guided`` comes after the
        combine, for edits of ``v_guided`` itself.
        """
        batch, rounding = len(self.sample_ids), rounds_dit_inputs(self.config.solver)
        if self.fast:
            capacity = int(self.prepared.prefix_lengths.max()) + self.num_blocks * self.model.block_size
            prior = StaticPriorContext(self.model, batch, capacity, round_inputs=rounding, **self.prior_options)
        else:
            prior = PriorContext(self.model, batch, round_inputs=rounding)
        try:
            yield from self._events(prior)
        finally:
            prior.release()

    def _events(self, prior: PriorContext) -> Iterator[tuple[str, SamplerState]]:
        model, cfg, prep = self.model, self.config, self.prepared
        batch, bs, device = len(self.sample_ids), model.block_size, model.device
        vae_cache = model.vae.new_cache(batch)
        if int(prep.prefix_lengths.max()) > 0:
            self.prefill(prior, vae_cache)
        grid = timestep_grid(cfg.steps, cfg.T, cfg.schedule, cfg.schedule_shift)   # host-side: no device syncs
        prior.expect(grid)
        empty_prefix = prep.prefix_lengths == 0
        pinned, clean = prep.pinned.to(device), prep.clean_window.to(device)
        preview = functools.partial(greedy_texts, model)
        for block in range(self.num_blocks):
            first = block == 0
            guidance = guidance_per_sample(torch.full((batch,), float(cfg.guidance)), torch.full((batch,), first),
                                           empty_prefix)
            state = SamplerState(block=block, steps=cfg.steps, z=self._noise(block), guidance=guidance.to(device),
                                 free=~pinned if first else torch.ones_like(pinned), decode_preview=preview, T=cfg.T,
                                 ended=self.ended.clone())
            if first:
                state.z = torch.where(pinned[..., None], clean, state.z)
            yield "block_start", state
            if state.interrupt:
                return
            block_guidance = state.guidance
            for step in range(cfg.steps):
                t, t_next, dt = step_times(grid, step, step + 1, cfg.T, (batch, bs), prep.pinned if first else None,
                                           device)
                state.step, state.t, state.t_next = step, t, t_next
                state.dt = float(dt)
                updates = solver_updates(cfg.solver, state.z, t, t_next, dt)
                request = next(updates)
                while True:
                    state.z, state.t, state.stage = request
                    if cfg.guidance_interval is not None:
                        state.guidance = interval_guidance(block_guidance, state.t, cfg.T, cfg.guidance_interval)
                    yield "pre_model", state
                    if state.interrupt:
                        return
                    state.v_cond, state.v_uncond = prior.velocities(state.z, state.t)
                    state.v_guided = None
                    yield "guidance", state
                    if state.interrupt:
                        return
                    scale = state.guidance.to(state.v_cond.dtype)[:, None, None]
                    state.v_guided = guided_velocity(state.v_cond, state.v_uncond, scale, cfg.guidance_rescale)
                    yield "guided", state
                    if state.interrupt:
                        return
                    try:
                        request = updates.send((state.z, state.v_guided))
                    except StopIteration as done:
                        state.z = done.value
                        break
                state.t = t_next
                if first:
                    state.z = torch.where(pinned[..., None], clean, state.z)
                yield "post_update", state
                if state.interrupt:
                    return
            yield "block_end", state
            if state.interrupt:
                return
            lengths = torch.full((batch,), bs, dtype=torch.long)
            state.logits = decode_logits(model, state.z.float(), lengths, cache=vae_cache.view(), update_cache=True)
            history = [torch.cat([c[b] for c in self.context]) if self.context else torch.empty(0, dtype=torch.long)
                       for b in range(batch)]
            state.token_ids = sample_tokens(state.logits, [h.to(state.logits.device) for h in history],
                                            cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty,
                                            generator=self.token_rngs).cpu()
            yield "decoded", state
            self.context.append(state.token_ids.cpu())   # a hook may have replaced them
            ending = emits(state.token_ids, self.end_ids)
            for b in (ending & ~self.ended).nonzero().flatten().tolist():
                self.end_block[b] = block
            self.ended |= ending
            if self.eos_ids.numel():
                self.finished |= emits(state.token_ids, self.eos_ids)
            if state.interrupt or bool(self.finished.all()):
                return
            if block + 1 < self.num_blocks:   # commit the finished block into the DiT cache (t = 0)
                prior.commit(state.z)

    def prefill(self, prior: PriorContext, vae_cache: KVCache) -> None:
        """Write the prompt prefixes into both caches (outputs discarded)."""
        prep, device = self.prepared, self.model.device
        prefix, lengths = prep.prefix.to(device), prep.prefix_lengths.to(device)
        prior.prefill(prefix, lengths)
        decode_logits(self.model, prefix, lengths, cache=vae_cache.view(), update_cache=True)

    def result(self) -> list[Generation]:
        """Trimmed ids and texts of everything generated so far."""
        return [generation_result(self.model.tokenizer, text, [c[b] for c in self.context], self.prepared.trim[b],
                                  bool(self.finished[b]), self.end_block[b])
                for b, text in enumerate(self.prepared.texts)]


def block_noise(model: ColaModel, config: GenerationConfig, sample_ids: Sequence[int], block: int) -> torch.Tensor:
    """(B, bs, C) fp32 initial noise of a block for samples ``sample_ids``: the official per-sample seeding
    (:func:`~cola_core.sampler.seeded_noise`) when ``config.seed`` is set, so a sample's noise is its own.

    CPU and CUDA generators differ for one seed; ``noise_device="cpu"`` makes a seed portable.
    """
    bs, channels, device = model.block_size, model.dit_config.txt_in_channels, model.device
    if config.seed is None:
        return torch.randn(len(sample_ids) * bs, channels, device=device).view(-1, bs, channels)
    noise_device = torch.device(config.noise_device) if config.noise_device else device
    return torch.stack([seeded_noise(config.seed, sid, block, (bs, channels), noise_device)
                        for sid in sample_ids]).to(device)


def guidance_per_sample(scale: torch.Tensor, first: torch.Tensor, empty_prefix: torch.Tensor) -> torch.Tensor:
    """(B,) fp32 guidance of each sample's block: ``scale``, except in a sample's first block, where an empty
    prefix falls back to 1 (no context to guide by) and the reference holds the value as a bf16 tensor."""
    fallback = scale.masked_fill(empty_prefix, 1.0).to(torch.bfloat16).float()
    return torch.where(first, fallback, scale)


def blocks_needed(prompt_tokens: int, max_new_tokens: int, block_size: int, patch_size: int) -> int:
    """Blocks one prompt needs for ``max_new_tokens``: the official count, or 1 when the prompt's own last block
    has room for them all (``force_complete_prefix_only``); a batch runs the largest of its prompts'."""
    n = latent_count(prompt_tokens, patch_size)
    if n % block_size and max_new_tokens < block_size - n % block_size:
        return 1
    return block_count(max_new_tokens, block_size, patch_size)


def emits(token_ids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, n) token ids -> (B,) bool: which rows hold any of ``ids`` (an EOS, im_end, a template's stop)."""
    return torch.isin(token_ids, ids).any(dim=1)


def generation_result(tokenizer: ColaTokenizer, prompt: str, blocks: Sequence[torch.Tensor], trim: int,
                      stopped_at_eos: bool, end_block: int | None) -> Generation:
    """One sample's :class:`Generation` from its decoded blocks (each (bs*P,) ids): the prompt's re-decoded tail
    trimmed, the completion cut at the first EOS / im_end (the one end-of-sequence rule)."""
    untrimmed = torch.cat(list(blocks)).tolist() if blocks else []
    ids = untrimmed[trim:]
    stops = set(tokenizer.stop_ids)
    cut = next((i for i, token in enumerate(ids) if token in stops), len(ids))
    return Generation(prompt=prompt, text=tokenizer.decode(ids), token_ids=ids, untrimmed_ids=untrimmed,
                      stopped_at_eos=stopped_at_eos, completion=tokenizer.decode(ids[:cut], skip_special_tokens=True),
                      completion_ids=ids[:cut], end_block=end_block)


def prepare_prompts(model: ColaModel, prompts: list[str], ids: list[list[int]] | None = None) -> PreparedPrompts:
    """Tokenise after the document start (unless ``ids`` are given), pad to whole blocks, encode, and split each
    prompt into prefix / pinned window (spec section 7 steps 1-4)."""
    tok, bs, patch = model.tokenizer, model.block_size, model.patch_size
    ids = model.encode_prompts(prompts) if ids is None else ids
    tokens = pad_to_blocks(ids, tok.pad_id, bs, patch)
    batch, channels = len(prompts), model.vae_config.latent_dim
    if tokens.ids.shape[1] > 0:
        latents = model.vae.to_dit_space(encode_tokens(model, tokens).mean).cpu()      # (B, n_max, C)
    else:
        latents = torch.zeros(batch, 0, channels)
    prefix_len = [context_latents(len(row), bs, patch) for row in ids]
    prefix = torch.zeros(batch, max(prefix_len), channels)
    pinned = torch.zeros(batch, bs, dtype=torch.bool)
    window = torch.zeros(batch, bs, channels)
    trim = []
    for b, row in enumerate(ids):
        s, n = prefix_len[b], latent_count(len(row), patch)
        prefix[b, :s] = latents[b, :s]
        if n > s:   # the prompt ends inside a block: its real latents are pinned in the first generated block
            pinned[b, : n - s] = True
            window[b] = latents[b, s:s + bs]
            trim.append(len(row) - s * patch)
        else:
            trim.append(0)
    return PreparedPrompts(texts=prompts, ids=ids, prefix=prefix, prefix_lengths=torch.tensor(prefix_len),
                           pinned=pinned, clean_window=window, trim=trim)


def generate(model: ColaModel, prompts: Sequence[str | Sequence[int]] | str, config: GenerationConfig | None = None,
             sample_ids: Sequence[int] | None = None, fast: bool = True, **knobs) -> list[Generation]:
    """Generate continuations for prompts, texts or token-id lists (official algorithm unless knobs say otherwise).

    ``knobs`` override fields of ``config`` (e.g. ``steps=8, guidance=3.0, seed=0``); ``fast`` as in
    :class:`BlockwiseSampler`.
    """
    config = (config or GenerationConfig()).with_knobs(**knobs)
    sampler = BlockwiseSampler(model, [prompts] if isinstance(prompts, str) else list(prompts), config, sample_ids,
                               fast=fast)
    for _ in sampler.events():
        pass
    return sampler.result()
