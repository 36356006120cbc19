"""Flow-matching math: timestep grids, classifier-free guidance, ODE solvers, token sampling.

Pure functions of tensors; nothing here knows about text or checkpoints. Time runs from t=T
(noise) to t=0 (data); the model predicts the velocity v = z1 - z0, so dz/dt = v / T.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Generator, Sequence

import torch

from .constants import TIME_SCALE

SOLVERS = ("euler", "heun", "midpoint")
SCHEDULES = ("linear", "shifted")

# velocity(z (B, bs, C) fp32, t (B, bs) fp32 on [0, T], stage) -> guided velocity (B, bs, C)
VelocityFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def timestep_grid(steps: int, T: float = TIME_SCALE, schedule: str = "linear", shift: float = 1.0) -> torch.Tensor:
    """(steps+1,) fp32 times from T to 0. ``linear`` is the official ``linspace(T, 0, steps+1)``;
    ``shifted`` warps s in [0, 1] to shift*s / (1 + (shift-1)*s), spending more steps near noise
    when shift > 1 (as in SD3-style samplers)."""
    grid = torch.linspace(T, 0, steps + 1, dtype=torch.float32)
    if schedule == "linear":
        return grid
    if schedule == "shifted":
        s = grid / T
        return (shift * s / (1 + (shift - 1) * s)) * T
    raise ValueError(f"unknown timestep schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")


def step_times(grid: torch.Tensor, i: int, j: int, T: float, shape: tuple[int, int],
               pinned: torch.Tensor | None = None, device: torch.device | str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One solver step from ``grid[i]`` to ``grid[j]`` for a (B, bs) block: the times ``t``, ``t_next`` (B, bs),
    ``pinned`` positions (clean prompt latents; any mask broadcasting to ``shape``) held at t = 0, on ``device``;
    and ``dt``, the 0-d fp32 step ``(grid[i] - grid[j]) / T`` as the reference computes it."""
    t, t_next = grid[i].expand(shape).clone(), grid[j].expand(shape).clone()   # own memory: hooks may edit them
    if pinned is not None:
        t.masked_fill_(pinned, 0.0)
        t_next.masked_fill_(pinned, 0.0)
    return t.to(device), t_next.to(device), (grid[i] - grid[j]) / T


def noise_seed(seed: int, sample_id: int, block: int) -> int:
    """The official per-sample seed (``COLA_INFER_PER_SAMPLE_NOISE_SEED``): seed + 1000*sample_id + 10^7*block,
    so a sample's noise does not depend on the rest of its batch."""
    return seed + 1000 * sample_id + 10_000_000 * block


def token_seed(seed: int, sample_id: int) -> int:
    """Seed of a sample's token-sampling generator (temperature > 0): seed + 1000*sample_id + 500, never a
    noise seed (those are seed + 1000*sample_id + 10^7*block), so sampled tokens too depend on the sample alone."""
    return seed + 1000 * sample_id + 500


def text_sample_id(text: str) -> int:
    """The official evaluation's sample id for an item identified by a string: the unsigned CRC-32 of its
    UTF-8 form, so the item's noise depends on neither its position nor its neighbours."""
    return zlib.crc32(text.encode("utf-8"))


def seeded_noise(seed: int, sample_id: int, block: int, shape: tuple[int, ...],
                 device: str | torch.device = "cpu") -> torch.Tensor:
    """One fp32 N(0, I) draw of ``shape`` from a generator on ``device`` seeded by :func:`noise_seed`.

    CPU and CUDA generators give different numbers for one seed (spec pitfall 16).
    """
    gen = torch.Generator(device).manual_seed(noise_seed(seed, sample_id, block))
    return torch.randn(shape, generator=gen, device=device)


def guided_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: torch.Tensor | float,
                    rescale: float = 0.0) -> torch.Tensor:
    """Classifier-free guidance, written as the reference does: s * (cond - uncond) + uncond.

    ``rescale`` = phi > 0 is CFG-rescale (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample
    Steps are Flawed"): each sample's guided velocity is scaled toward the conditional one's standard
    deviation, ``v <- (phi * std(cond) / std(v) + 1 - phi) * v`` (std over all but the batch axis), which
    keeps high guidance from inflating the latents. 0 (the default) is the official combine, untouched.
    """
    guided = scale * (v_cond - v_uncond) + v_uncond
    if rescale:
        dims = tuple(range(1, guided.dim()))
        spread = guided.float().std(dim=dims, keepdim=True).clamp_min(1e-12)
        ratio = v_cond.float().std(dim=dims, keepdim=True) / spread
        guided = (rescale * ratio + (1.0 - rescale)).to(guided.dtype) * guided
    return guided


def check_guidance_interval(interval: Sequence[float] | None) -> str | None:
    """None when ``interval`` is None or a pair 0 <= lo <= hi <= 1 of finite numbers, else what is wrong."""
    if interval is None:
        return None
    if (not isinstance(interval, (tuple, list)) or len(interval) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in interval)):
        return f"guidance_interval must be two numbers (lo, hi) in [0, 1], got {interval!r}"
    lo, hi = interval
    if not 0.0 <= lo <= hi <= 1.0:
        return f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got {list(interval)!r}"
    return None


def interval_guidance(guidance: torch.Tensor, t: torch.Tensor, T: float,
                      interval: Sequence[float] | None) -> torch.Tensor:
    """Guidance interval (Kynkäänniemi et al. 2024): ``guidance`` (B,) where the block's time t/T lies in
    [lo, hi], else 1 (the conditional velocity). ``t`` (B, bs); pinned prompt rows sit at 0, so a block's
    time is its largest row time. ``interval`` None applies guidance everywhere."""
    if interval is None:
        return guidance
    s = t.max(dim=1).values.to(guidance.device) / T
    inside = (s >= interval[0]) & (s <= interval[1])
    return torch.where(inside, guidance, torch.ones_like(guidance))


def rounds_dit_inputs(solver: str) -> bool:
    """Whether latents and times are rounded to bf16 before each DiT call.

    The reference's Euler loop rounds them (spec pitfall 3), so Euler keeps that official numerics.
    Heun and midpoint get fp32 inputs: rounding makes the field piecewise constant and caps their
    order (their ODE inversion round trip stalls near 2.5e-4 on the tiny fixture instead of converging).
    """
    return solver == "euler"


def predicted_clean(z_t: torch.Tensor, v: torch.Tensor, t: torch.Tensor | float, T: float = TIME_SCALE) -> torch.Tensor:
    """x0 estimate from a velocity: z_t - (t/T) v (exact for straight flow-matching paths)."""
    if isinstance(t, torch.Tensor) and t.dim() == z_t.dim() - 1:
        t = t[..., None]
    return z_t - (t / T) * v


def solver_updates(solver: str, z: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, dt: torch.Tensor
                   ) -> Generator[tuple[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One ODE step from t to t_next as a coroutine, so callers can hook each model evaluation.

    Yields ``(z_eval, t_eval, stage)`` requests; expects ``(z_used, v)`` back (a hook may have
    steered z); returns z at t_next. ``dt = (t - t_next)/T`` is a 0-d fp32 tensor, so ``v*dt``
    stays in the model's output dtype exactly as in the reference (``euler`` is the official update).
    """
    if solver == "euler":
        z, v = yield z, t, 0
        return z - v * dt
    if solver == "heun":
        z, v1 = yield z, t, 0
        _, v2 = yield z - v1 * dt, t_next, 1
        return z - 0.5 * (v1 + v2) * dt
    if solver == "midpoint":
        z, v1 = yield z, t, 0
        _, v2 = yield z - v1 * (dt / 2), 0.5 * (t + t_next), 1
        return z - v2 * dt
    raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")


def solver_step(solver: str, velocity: VelocityFn, z: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                dt: torch.Tensor) -> torch.Tensor:
    """Run :func:`solver_updates` with a plain velocity function (no hooks)."""
    steps = solver_updates(solver, z, t, t_next, dt)
    request = next(steps)
    while True:
        z_eval, t_eval, stage = request
        try:
            request = steps.send((z_eval, velocity(z_eval, t_eval, stage)))
        except StopIteration as done:
            return done.value


def apply_repetition_penalty(logits: torch.Tensor, history: list[torch.Tensor], penalty: float) -> torch.Tensor:
    """logits (B, R, V): for every id in sample b's history, negative logits * p, others / p."""
    if penalty == 1.0:
        return logits
    logits = logits.clone()
    for b, ids in enumerate(history):
        if ids.numel() == 0:
            continue
        cols = torch.unique(ids)
        picked = logits[b][:, cols]
        logits[b][:, cols] = torch.where(picked < 0, picked * penalty, picked / penalty)
    return logits


def sample_tokens(logits: torch.Tensor, history: list[torch.Tensor], temperature: float = 0.0, top_k: int = 50,
                  top_p: float = 0.9, repetition_penalty: float = 1.1,
                  generator: torch.Generator | Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """logits (B, R, V) -> token ids (B, R): the reference's ``sample_with_strategies``.

    ``generator`` is one generator for the batch (as the reference), or one per sample (row b draws from
    ``generator[b]`` on its device), so a sample's draws do not depend on the other rows."""
    logits = torch.nan_to_num(logits.float(), nan=0.0, posinf=1e4, neginf=-1e4)
    logits = apply_repetition_penalty(logits, history, repetition_penalty)
    if temperature < 1e-5:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative > top_p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)                                      # (B, R, V)
    if isinstance(generator, Sequence):
        return torch.stack([torch.multinomial(row.to(gen.device), 1, generator=gen)[:, 0].to(probs.device)
                            for row, gen in zip(probs, generator)])
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(logits.shape[:-1])
