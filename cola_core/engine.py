"""Continuous batching: samples of many requests in one sampler batch, joining at block boundaries and leaving
at their own end.

A :class:`Batch` holds rows that share the knobs a batch step must share (:func:`batch_key`: steps, solver,
schedule, CFG-rescale and interval, token sampling); each row keeps its own prompt latents, seed and sample id
(noise by the official per-sample rule), guidance scale, token generator, stop ids and block count. Rows sit at
different blocks of their own generations: positions and histories are per row (the KV caches hold per-row
lengths), so a batch step is the sampler loop's block (``BlockwiseSampler``) run over whatever rows are in.
Between steps rows that ended (EOS / their stop ids, or their last block) leave, and rows that arrived (a
request's prompts, already encoded and prefilled in the caller's thread by :func:`arrivals`) join; both caches
are regrouped by :func:`~cola_core.attention.stack_rows`, which keeps every row's history bit for bit.

An :class:`Engine` keeps one batch per knob set and steps them in turn, a block at a time, admitting arrivals
first come first served while the rows in flight stay within ``max_rows``.

Every rule is the sampler's (:mod:`cola_core.generate`): noise, first-block guidance, block counts, stop ids,
token sampling with per-sample generators, results. The batch runs the eager DiT passes (growable caches:
rows come and go), which on a CPU make the same calls bit for bit as the fast path; a row's tokens equal the
same request's alone as long as the kernels round a row independently of the batch's other rows (checked on
the pocket checkpoint by ``tests/test_engine.py``; fp32 on a CPU can move a last bit with the row count).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .attention import KVCache, stack_rows
from .checkpoint import ColaModel
from .errors import ColaError
from .generate import (BlockwiseSampler, Generation, GenerationConfig, block_noise, blocks_needed, emits,
                       generation_result, guidance_per_sample)
from .prior_context import PriorContext
from .sampler import (guided_velocity, interval_guidance, rounds_dit_inputs, sample_tokens, solver_step,
                      step_times, timestep_grid)
from .text_codec import decode_logits

SHARED_KNOBS = ("steps", "T", "solver", "schedule", "schedule_shift", "guidance_rescale", "guidance_interval",
                "temperature", "top_k", "top_p", "repetition_penalty")   # one value per batch step


def batch_key(config: GenerationConfig) -> tuple:
    """The knobs rows must share to be stepped together (seed, guidance, max_new_tokens, stop rule and noise
    device are per row)."""
    values = (getattr(config, name) for name in SHARED_KNOBS)
    return tuple(tuple(v) if isinstance(v, list) else v for v in values)


@dataclass(eq=False)
class Row:
    """One sample in the engine: its prompt's first-block window, its seed rule and stop rule, and its blocks."""

    prompt: str
    config: GenerationConfig      # its own knobs (seed, guidance, max_new_tokens; the shared ones as its batch's)
    sample_id: int
    num_blocks: int
    trim: int                     # prompt tokens re-decoded in its first block
    pinned: torch.Tensor          # (bs,) bool: first-block positions holding prompt latents
    clean: torch.Tensor           # (bs, C) those latents
    empty_prefix: bool            # no prompt block before the first generated one (CFG falls back to 1 there)
    eos_ids: torch.Tensor         # ids that end it (its request's stop ids; empty without stop_at_eos)
    end_ids: torch.Tensor         # EOS / im_end: where its text ends
    rng: torch.Generator          # token sampling (temperature > 0)
    blocks: list[torch.Tensor] = field(default_factory=list)   # decoded (bs*P,) ids per block
    finished: bool = False        # emitted one of eos_ids
    end_block: int | None = None  # block of its first EOS / im_end

    @property
    def block(self) -> int:
        """Its next block (blocks decoded so far)."""
        return len(self.blocks)

    @property
    def done(self) -> bool:
        """Stopped at one of its eos ids, or decoded its last block."""
        return self.finished or self.block >= self.num_blocks

    def result(self, tokenizer) -> Generation:
        """What ``generate`` returns for this sample alone."""
        return generation_result(tokenizer, self.prompt, self.blocks, self.trim, self.finished, self.end_block)


@dataclass(eq=False)
class Arrivals:
    """A request's rows, their prefixes already in their own caches, waiting to join a batch."""

    rows: list[Row]
    key: tuple
    dit_cache: KVCache            # 2n rows: [0, n) their prefixes, [n, 2n) empty (unconditional)
    vae_cache: KVCache            # n rows


@torch.no_grad()
def arrivals(sampler: BlockwiseSampler) -> Arrivals:
    """The rows of a built sampler (prompts checked, tokenised and encoded), with their prompt prefixes written
    into fresh caches by the sampler's own prefill, in the calling thread."""
    model, cfg, prep = sampler.model, sampler.config, sampler.prepared
    n = len(sampler.sample_ids)
    prior = PriorContext(model, n, round_inputs=rounds_dit_inputs(cfg.solver))
    vae_cache = model.vae.new_cache(n)
    if int(prep.prefix_lengths.max()) > 0:
        sampler.prefill(prior, vae_cache)
    bs, patch = model.block_size, model.patch_size
    rngs = sampler.token_rngs
    if rngs is None:   # an unseeded request: random streams of its own
        rngs = [torch.Generator() for _ in range(n)]
        for rng in rngs:
            rng.seed()
    rows = [Row(prompt=prep.texts[b], config=cfg, sample_id=sid,
                num_blocks=blocks_needed(len(prep.ids[b]), cfg.max_new_tokens, bs, patch), trim=prep.trim[b],
                pinned=prep.pinned[b], clean=prep.clean_window[b], empty_prefix=bool(prep.prefix_lengths[b] == 0),
                eos_ids=sampler.eos_ids, end_ids=sampler.end_ids, rng=rngs[b])
            for b, sid in enumerate(sampler.sample_ids)]
    return Arrivals(rows, batch_key(cfg), prior.cache, vae_cache)


class Batch:
    """Rows sharing one :func:`batch_key`, stepped a block at a time; rows join and leave between steps."""

    def __init__(self, model: ColaModel, config: GenerationConfig):
        """``config``: any of its rows' knobs (only the shared ones are read)."""
        self.model = model
        self.config = config
        self.grid = timestep_grid(config.steps, config.T, config.schedule, config.schedule_shift)   # (steps+1,)
        self.round_inputs = rounds_dit_inputs(config.solver)
        self.rows: list[Row] = []
        self.dit_cache: KVCache | None = None   # 2B rows: [0, B) each row's context, [B, 2B) empty
        self.vae_cache: KVCache | None = None   # B rows

    def join(self, news: Sequence[Arrivals]) -> None:
        """Add arrived rows after the current ones (caches regrouped once, histories kept)."""
        parts = [(self.dit_cache, range(len(self.rows)))] if self.rows else []
        vae_parts = [(self.vae_cache, range(len(self.rows)))] if self.rows else []
        for new in news:
            parts.append((new.dit_cache, range(len(new.rows))))
            vae_parts.append((new.vae_cache, range(len(new.rows))))
            self.rows += new.rows
        if parts:
            self.dit_cache = stack_rows(parts, empty=len(self.rows))
            self.vae_cache = stack_rows(vae_parts)

    def leave(self, rows: Sequence[Row]) -> None:
        """Drop ``rows`` (ended or cancelled); the others keep their caches."""
        gone = {id(row) for row in rows}
        keep = [i for i, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.dit_cache = self.vae_cache = None
            return
        self.dit_cache = stack_rows([(self.dit_cache, keep)], empty=len(keep))
        self.vae_cache = stack_rows([(self.vae_cache, keep)])

    @torch.no_grad()
    def step(self) -> list[Row]:
        """Generate and decode one block of every row (each at its own block); the rows that ended leave, the
        others' blocks are committed to the DiT cache. Returns the rows stepped (each with one block more)."""
        model, cfg, rows = self.model, self.config, list(self.rows)
        batch, bs, device = len(rows), model.block_size, model.device
        if not batch:
            return []
        prior = PriorContext(model, batch, self.round_inputs, cache=self.dit_cache)
        first = torch.tensor([row.block == 0 for row in rows])                         # (B,) in their first block
        pinned = torch.stack([row.pinned if row.block == 0 else torch.zeros_like(row.pinned) for row in rows])
        # (B, bs): prompt latents pinned in a first block
        clean = torch.stack([row.clean for row in rows]).to(device)                    # (B, bs, C)
        guidance = guidance_per_sample(torch.tensor([float(row.config.guidance) for row in rows]), first,
                                       torch.tensor([row.empty_prefix for row in rows])).to(device)
        noise = torch.cat([block_noise(model, row.config, [row.sample_id], row.block) for row in rows])
        pinned_on = pinned.to(device)
        z = torch.where(pinned_on[..., None], clean, noise)

        def velocity(z_eval: torch.Tensor, t_eval: torch.Tensor, stage: int) -> torch.Tensor:
            scale = guidance if cfg.guidance_interval is None else \
                interval_guidance(guidance, t_eval, cfg.T, cfg.guidance_interval)
            v_cond, v_uncond = prior.velocities(z_eval, t_eval)
            return guided_velocity(v_cond, v_uncond, scale.to(v_cond.dtype)[:, None, None], cfg.guidance_rescale)

        for step in range(cfg.steps):
            t, t_next, dt = step_times(self.grid, step, step + 1, cfg.T, (batch, bs), pinned, device)
            z = solver_step(cfg.solver, velocity, z, t, t_next, dt)
            z = torch.where(pinned_on[..., None], clean, z)
        logits = decode_logits(model, z.float(), torch.full((batch,), bs, dtype=torch.long),
                               cache=self.vae_cache.view(), update_cache=True)
        none = torch.empty(0, dtype=torch.long)
        history = [(torch.cat(row.blocks) if row.blocks else none).to(logits.device) for row in rows]   # ids so far
        tokens = sample_tokens(logits, history, cfg.temperature, cfg.top_k, cfg.top_p, cfg.repetition_penalty,
                               generator=[row.rng for row in rows]).cpu()              # (B, bs*P)
        for row, ids in zip(rows, tokens):
            if row.end_block is None and bool(emits(ids[None], row.end_ids)):
                row.end_block = row.block
            row.finished = bool(row.eos_ids.numel()) and bool(emits(ids[None], row.eos_ids))   # it leaves now
            row.blocks.append(ids)
        going = [i for i, row in enumerate(rows) if not row.done]
        self.leave([row for row in rows if row.done])
        if going:   # commit the finished block into the DiT cache (t = 0)
            PriorContext(model, len(going), self.round_inputs, cache=self.dit_cache).commit(z[going])
        return rows


class BatchFailure(ColaError):
    """A batch step raised: its rows are out of the engine; the cause is chained."""

    def __init__(self, rows: list[Row]):
        super().__init__(f"a batch of {len(rows)} rows failed")
        self.rows = rows


class Engine:
    """Batches keyed by :func:`batch_key`, each stepped a block at a time in turn; arrivals join at the next
    block boundary of their batch, first come first served, while at most ``max_rows`` rows are in flight (a
    request larger than that runs when the engine is empty)."""

    def __init__(self, model: ColaModel, max_rows: int = 16):
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ColaError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        self.model = model
        self.max_rows = max_rows
        self.batches: dict[tuple, Batch] = {}
        self.waiting: list[Arrivals] = []
        self._turn = 0   # round robin over the batches
        self.steps = 0          # batch steps taken (each one block of every row in the batch)
        self.rows_stepped = 0   # rows those steps advanced: rows_stepped / steps is the mean batch
        self.peak_rows = 0      # the largest batch stepped

    @property
    def rows_in_flight(self) -> int:
        return sum(len(batch.rows) for batch in self.batches.values())

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing waiting."""
        return not self.waiting and not self.rows_in_flight

    def add(self, new: Arrivals) -> None:
        """Queue arrived rows; they join their batch at its next block boundary (room permitting)."""
        self.waiting.append(new)

    def remove(self, rows: Sequence[Row]) -> None:
        """Rows that leave early (e.g. their client hung up): out of their batch now, or never joined."""
        gone = {id(row) for row in rows}
        self.waiting = [new for new in self.waiting if not any(id(row) in gone for row in new.rows)]
        for batch in self.batches.values():
            batch.leave([row for row in batch.rows if id(row) in gone])
        self._tidy()

    def clear(self) -> None:
        """Forget every row, in flight or waiting (after a failure that leaves their caches unsound)."""
        self.batches, self.waiting = {}, []

    def _admit(self) -> None:
        """Move waiting arrivals into their batches, in order, while they fit."""
        joining: dict[tuple, list[Arrivals]] = {}
        in_flight = self.rows_in_flight
        while self.waiting:
            new = self.waiting[0]
            if in_flight and in_flight + len(new.rows) > self.max_rows:
                break
            in_flight += len(self.waiting.pop(0).rows)
            joining.setdefault(new.key, []).append(new)
        for key, news in joining.items():
            if key not in self.batches:
                self.batches[key] = Batch(self.model, news[0].rows[0].config)
            self.batches[key].join(news)

    def _tidy(self) -> None:
        """Forget empty batches."""
        for key in [key for key, batch in self.batches.items() if not batch.rows]:
            del self.batches[key]

    def step(self) -> list[Row]:
        """Admit what fits, then one block of the next batch in turn: the rows it stepped ([] when idle).
        Raises :class:`BatchFailure` (its rows dropped) when the step fails."""
        self._admit()
        if not self.batches:
            return []
        keys = list(self.batches)
        batch = self.batches[keys[self._turn % len(keys)]]
        self._turn += 1
        try:
            stepped = batch.step()
        except Exception as exc:
            failed, batch.rows = list(batch.rows), []
            self._tidy()
            raise BatchFailure(failed) from exc
        self._tidy()
        self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + len(stepped)
        self.peak_rows = max(self.peak_rows, len(stepped))
        return stepped

