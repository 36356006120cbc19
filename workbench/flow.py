"""The prior's ODE over given latents: partial re-generation (like img2img) and ODE inversion.

Generation itself runs in cola_core's one sampler loop; these verbs start from *latents* instead
of prompts, so they drive the same DiT calls through :class:`BlockFlow`, which mirrors that loop's
numerics (cond + uncond in one batch, bf16-rounded inputs, finished blocks committed to the KV
cache at t=0) and cola_core's solvers. Blocks are transported in order, earlier ones cached.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from cola_core.generate import GenerationConfig
from cola_core.prior_context import PriorContext
from cola_core.sampler import (guided_velocity, interval_guidance, rounds_dit_inputs, solver_step, step_times,
                               timestep_grid)

from .errors import WorkbenchError
from .latents import Latents, noise_to

if TYPE_CHECKING:
    from .session import Decoded, Workbench


class BlockFlow(PriorContext):
    """Guided velocity of the current block given the blocks committed before it (block-causal).

    cola_core's :class:`PriorContext` makes the model calls (the sampler's own, with the sampler's input
    rounding for ``cfg.solver``); this adds the guidance combine with ``cfg``'s variants. With nothing
    committed the conditional and unconditional passes see the same context, so the guidance scale is 1
    (as generation does for an empty prefix).
    """

    def __init__(self, wb: "Workbench", batch: int, cfg: GenerationConfig):
        super().__init__(wb.model, batch, round_inputs=rounds_dit_inputs(cfg.solver))
        self.cfg = cfg
        self.committed = 0

    def velocity(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Classifier-free-guided velocity (B, bs, C)."""
        cfg = self.cfg
        v_cond, v_uncond = self.velocities(z, t)
        scale = torch.full((self.batch,), float(cfg.guidance) if self.committed else 1.0)
        scale = interval_guidance(scale, t, cfg.T, cfg.guidance_interval)
        return guided_velocity(v_cond, v_uncond, scale.to(v_cond.device, v_cond.dtype)[:, None, None],
                               cfg.guidance_rescale)

    def commit(self, z: torch.Tensor) -> None:
        """Append a finished (clean, t=0) block to the context of the blocks after it."""
        super().commit(z)
        self.committed += 1


def _integrate(flow: BlockFlow, z: torch.Tensor, grid: torch.Tensor, start: int, cfg: GenerationConfig,
               invert: bool) -> torch.Tensor:
    """Solve the block's ODE from grid[start] down to 0 (or, inverting, from 0 up to grid[start])."""
    pairs = [(k, k + 1) for k in range(start, cfg.steps)]
    if invert:
        pairs = [(j, i) for i, j in reversed(pairs)]
    batch, bs, device = z.shape[0], z.shape[1], z.device

    def velocity(z_eval: torch.Tensor, t_eval: torch.Tensor, stage: int) -> torch.Tensor:
        return flow.velocity(z_eval, t_eval)

    for i, j in pairs:
        t, t_next, dt = step_times(grid, i, j, cfg.T, (batch, bs), device=device)
        z = solver_step(cfg.solver, velocity, z, t, t_next, dt)
    return z


def _transport(wb: "Workbench", lat: Latents, cfg: GenerationConfig, start: int, keep: set[int],
               invert: bool, prefix: Latents | None = None) -> list[torch.Tensor]:
    """Run every text block by block; texts of equal length share one batch. Block b+1 is conditioned on
    block b of ``prefix`` when given (the data: inverting, or regenerating with the true prefix held),
    else on what was generated for block b."""
    device = wb.model.device
    grid = timestep_grid(cfg.steps, cfg.T, cfg.schedule, cfg.schedule_shift)   # host-side, as the sampler
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lat.n_blocks):
        groups.setdefault(n, []).append(i)
    out: list[torch.Tensor | None] = [None] * len(lat)
    for n, idx in groups.items():
        z = torch.stack([lat.z[i] for i in idx]).to(device)          # (B, n, bs, C)
        held = torch.stack([prefix.z[i] for i in idx]).to(device) if prefix is not None else None
        flow = BlockFlow(wb, len(idx), cfg)
        result = z.clone()
        for b in range(n):
            if b not in keep:
                result[:, b] = _integrate(flow, z[:, b], grid, start, cfg, invert)
            if b + 1 < n:
                flow.commit(held[:, b] if held is not None else result[:, b])
        for k, i in enumerate(idx):
            out[i] = result[k].cpu()
    return out


def _keep_set(keep_blocks: Iterable[int], lat: Latents) -> set[int]:
    keep = set(keep_blocks)
    bad = [b for b in keep if not 0 <= b < max(lat.n_blocks)]
    if bad:
        raise WorkbenchError(f"keep_blocks {sorted(bad)} out of range for latents with {max(lat.n_blocks)} blocks")
    return keep


@dataclass
class Regeneration:
    """Result of :func:`regenerate_from`."""

    latents: Latents     # the re-generated clean latents
    start: Latents       # the noised latents the ODE started from (kept blocks clean)
    t_start: float       # where integration started (strength snapped to the step grid)
    steps_run: int       # solver steps per re-generated block


def regenerate_from(wb: "Workbench", latents: Latents, strength: float = 0.5, keep_blocks: Iterable[int] = (),
                    sample_ids: Sequence[int] | None = None, **knobs) -> Regeneration:
    """Noise latents to t = strength*T, then integrate back to t=0 with the prior (img2img).

    ``strength`` 0 returns the input, 1 starts from pure noise (then with the same ``seed`` and
    sample ids the result is what unconditional generation produces). It is snapped to the step
    grid: the last ``round(strength*steps)`` steps of the schedule run. ``keep_blocks`` stay
    exactly as given and condition the later blocks. ``knobs``: steps, guidance, seed, solver,
    schedule, schedule_shift, T (see ``GenerationConfig``).
    """
    wb.check_latents(latents)
    if not 0.0 <= strength <= 1.0:
        raise WorkbenchError(f"strength must be in [0, 1], got {strength!r}")
    cfg = wb.config(**knobs)
    keep = _keep_set(keep_blocks, latents)
    steps_run = round(strength * cfg.steps)
    start = cfg.steps - steps_run
    t_start = float(timestep_grid(cfg.steps, cfg.T, cfg.schedule, cfg.schedule_shift)[start])
    noised = noise_to(latents, t_start, cfg.seed, cfg.T, sample_ids)
    begin = [torch.stack([z0[b] if b in keep else zt[b] for b in range(len(z0))])
             for z0, zt in zip(latents.z, noised.z)]
    started = latents.derive(begin, f"noise_to(t={t_start:g}, seed={cfg.seed}, keep={sorted(keep)})")
    out = _transport(wb, started, cfg, start, keep, invert=False)
    return Regeneration(latents=started.derive(out, f"regenerate(t_start={t_start:g}, steps={steps_run})"),
                        start=started, t_start=t_start, steps_run=steps_run)


@dataclass
class Inversion:
    """Result of :func:`invert`: the noise, and (with ``check``) how well it regenerates the input.

    Regenerating block by block from the noise, each block is conditioned on the blocks regenerated
    before it (``reconstruction``, free-running: errors of earlier blocks carry into later ones through
    the conditioning) and, separately, on the input's own earlier blocks (``reconstruction_held``: the
    ODE error of each block alone). Per-block relative errors of both tell the two apart.
    """

    noise: Latents                          # latents at t=T
    reconstruction: Latents | None = None   # the noise integrated back to t=0, free-running
    max_abs_error: list[float] | None = None        # per text max |reconstruction - input|
    relative_error: list[float] | None = None       # per text ||reconstruction - input|| / ||input||
    token_agreement: list[float] | None = None      # per text fraction of greedy tokens that match
    reconstruction_held: Latents | None = None      # each block regenerated with the input's true prefix held
    relative_error_held: list[float] | None = None  # per text, the same with the true prefix held
    block_error: list[list[float]] | None = None        # per text and block ||recon_b - z_b|| / ||z_b||, free-running
    block_error_held: list[list[float]] | None = None   # the same with the true prefix held


def invert(wb: "Workbench", latents: Latents, check: bool = True, **knobs) -> Inversion:
    """ODE inversion data -> noise: integrate the probability-flow ODE from t=0 up to t=T.

    Uses the conditional velocity (``guidance`` defaults to 1: no guidance), each block conditioned
    on the input's earlier blocks. With ``check`` the noise is regenerated from t=T with the same
    solver, free-running and with the true prefix held, and the round-trip errors are reported (see
    :class:`Inversion`). ``knobs``: steps, guidance, solver, schedule, ... The DiT was trained on posterior
    samples: invert ``wb.encode(texts, sample=True, seed=...)`` to stay where the prior is fitted.
    """
    wb.check_latents(latents)
    cfg = wb.config(**{"guidance": 1.0, **knobs})
    noise = latents.derive(_transport(wb, latents, cfg, 0, set(), invert=True, prefix=latents),
                           f"invert(steps={cfg.steps}, solver={cfg.solver})")
    if not check:
        return Inversion(noise)
    recon = noise.derive(_transport(wb, noise, cfg, 0, set(), invert=False), "regenerate(t_start=T)")
    held = noise.derive(_transport(wb, noise, cfg, 0, set(), invert=False, prefix=latents),
                        "regenerate(t_start=T, true prefix held)")
    diff = [(r - z) for r, z in zip(recon.z, latents.z)]
    return Inversion(noise, recon, max_abs_error=[float(d.abs().max()) for d in diff],
                     relative_error=[_relative(r, z) for r, z in zip(recon.z, latents.z)],
                     token_agreement=token_agreement(wb.decode(latents), wb.decode(recon)),
                     reconstruction_held=held,
                     relative_error_held=[_relative(r, z) for r, z in zip(held.z, latents.z)],
                     block_error=[[_relative(r[b], z[b]) for b in range(len(z))] for r, z in zip(recon.z, latents.z)],
                     block_error_held=[[_relative(r[b], z[b]) for b in range(len(z))]
                                       for r, z in zip(held.z, latents.z)])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def token_agreement(a: "Decoded", b: "Decoded") -> list[float]:
    """Per text: fraction of the shown slots (the encoded text's own tokens) where two decodes chose the same token."""
    return [float((torch.tensor(x.token_ids) == torch.tensor(y.token_ids)).float().mean()) for x, y in zip(a, b)]
