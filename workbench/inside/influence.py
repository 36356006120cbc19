"""Cross-block influence: how much each earlier block's latent moves each later block's final latent.

A generated sample is a chain: block k is the ODE solution from its own noise, conditioned on every
block before it. Its sensitivity to an earlier block j is the Jacobian dz_k/dz_j, measured here as the
RMS gain ``||J||_F / sqrt(dim z_j)`` (how far z_k moves, on average, when z_j moves by one unit),
either exactly (forward-mode autodiff, ``method="jacobian"``) or by central finite differences.

Two readings of "block k given block j":

* ``fixed``: block k is re-generated with the run's own prefix held fixed except block j — the
  direct influence of j on k, what one solve from the true prefix does;
* ``generated``: after moving block j the blocks between j and k are re-generated too, as the sampler
  would — the influence carried along the chain.

Where they differ the chain amplifies (or damps) what block j did. ``regeneration_error`` says how far
re-solving each block lands from the sampled one: with the prefix fixed that is the solver's own error
(the smooth fp32 flow here vs the sampler's bf16-rounded inputs); along the generated chain those
errors accumulate as drift. Everything runs on the smooth flow (fp32 inputs, no KV cache) with the
run's own noises, guidance, solver and schedule; prompt blocks count as sources, generated blocks as
sources and targets.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm

from cola_core.checkpoint import ColaModel
from cola_core.generate import GenerationConfig
from cola_core.prior_context import bf16_round
from cola_core.sampler import guided_velocity, solver_step, step_times, timestep_grid

from ..errors import WorkbenchError

if TYPE_CHECKING:
    from ..session import Workbench

METHODS = ("finite_difference", "jacobian")
PREFIXES = ("fixed", "generated")


def smooth_block(model: ColaModel, context: torch.Tensor, noise: torch.Tensor, free: torch.Tensor,
                 guidance: float, cfg: GenerationConfig) -> torch.Tensor:
    """Solve one block's ODE from ``noise`` (R, bs, C) given clean ``context`` (R, n, C) (no cache, fp32
    latents, differentiable); rows where ``free`` (bs,) is False stay pinned at their value, at t = 0."""
    rows, bs = noise.shape[:2]
    grid = timestep_grid(cfg.steps, cfg.T, cfg.schedule, cfg.schedule_shift)
    clean = noise

    def velocity(z: torch.Tensor, t: torch.Tensor, stage: int) -> torch.Tensor:
        t = bf16_round(t).float()   # the sampler's time grid exactly; latents stay fp32 (smooth in z)
        with model.autocast:
            lengths = torch.full((rows,), context.shape[1] + bs, dtype=torch.long, device=z.device)
            v_cond = model.dit(torch.cat([context, z], 1).to(model.dtype),
                               torch.cat([torch.zeros(context.shape[:2], device=z.device), t], 1), lengths)[:, -bs:]
            v_uncond = model.dit(z.to(model.dtype), t, torch.full((rows,), bs, dtype=torch.long, device=z.device))
        return guided_velocity(v_cond.float(), v_uncond.float(), guidance if context.shape[1] else 1.0)

    z = noise
    for i in range(cfg.steps):
        t, t_next, dt = step_times(grid, i, i + 1, cfg.T, (rows, bs), ~free, noise.device)
        z = solver_step(cfg.solver, velocity, z, t, t_next, dt)
        z = torch.where(free.to(z.device)[:, None], z, clean)
    return z


@dataclass
class Influence:
    """Block x block RMS gains (source row, target column; NaN where the source is not earlier) per prefix mode."""

    labels: list[str]                         # every block of the sequence: prompt blocks p*, generated blocks g*
    generated: list[int]                      # which sequence indices were generated
    gain: dict[str, torch.Tensor]             # mode -> (n, n)
    regeneration_error: dict[str, torch.Tensor]   # mode -> (n,) ||re-solved z_k - sampled z_k|| (NaN: prompt blocks)
    method: str

    def records(self) -> list[dict]:
        """Tidy rows: mode, source, target (labels and indices), gain."""
        return [{"mode": mode, "source": self.labels[j], "target": self.labels[k], "source_index": j,
                 "target_index": k, "gain": float(g[j, k])}
                for mode, g in self.gain.items() for j in range(len(self.labels)) for k in self.generated if j < k]

    def figure(self, height: int = 420, log: bool = True):
        """Side-by-side heatmaps (fixed | generated prefix) of the gain, log10 by default."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
        modes = list(self.gain)
        fig = make_subplots(rows=1, cols=len(modes), subplot_titles=[f"{m} prefix" for m in modes],
                            shared_yaxes=True)
        values = {m: (g.log10() if log else g) for m, g in self.gain.items()}
        low = min(float(v.nan_to_num(float("inf")).min()) for v in values.values())
        high = max(float(v.nan_to_num(float("-inf")).max()) for v in values.values())
        targets = [self.labels[k] for k in self.generated]
        for col, mode in enumerate(modes, start=1):
            z = values[mode][:, self.generated]
            heatmap = go.Heatmap(z=z.tolist(), x=targets, y=self.labels, zmin=low, zmax=high, coloraxis="coloraxis")
            fig.add_trace(heatmap, row=1, col=col)
            fig.update_xaxes(title_text="target block (moved)", row=1, col=col)
        fig.update_yaxes(title_text="source block (perturbed)", autorange="reversed", row=1, col=1)
        fig.update_layout(height=height, coloraxis={"colorscale": "Viridis",
                                                    "colorbar": {"title": "log10 gain" if log else "gain"}},
                          title=f"Cross-block influence ({self.method.replace('_', ' ')})")
        return fig


def cross_block_influence(wb: "Workbench", prompt: str, method: str = "finite_difference",
                          prefix: str | tuple[str, ...] = PREFIXES, eps: float = 1e-2, probes: int | None = None,
                          probe_seed: int = 0, progress: bool = True, **knobs) -> Influence:
    """Influence of every block on every later generated block, for the sample generated from ``prompt``.

    ``method``: ``jacobian`` (exact, forward-mode autodiff through the solver) or ``finite_difference``
    (central differences of step ``eps``). Directions: every coordinate of the source block, or
    ``probes`` random unit directions (seeded by ``probe_seed``) for large blocks. ``prefix``:
    ``fixed``, ``generated`` or both (see the module docstring). ``knobs``: generation knobs.
    """
    if method not in METHODS:
        raise WorkbenchError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    modes = (prefix,) if isinstance(prefix, str) else tuple(prefix)
    if not modes or any(m not in PREFIXES for m in modes):
        raise WorkbenchError(f"prefix must be 'fixed', 'generated' or both, got {prefix!r}")
    if not (isinstance(prompt, str)):
        raise WorkbenchError(f"cross-block influence takes one prompt (a string), got {type(prompt).__name__}")
    if not eps > 0:
        raise WorkbenchError(f"eps must be > 0, got {eps!r}")
    cfg = wb.config(**knobs)
    knobs = {**knobs, "stop_at_eos": False}
    session = wb.sampler(prompt, **knobs)
    prep, bs = session.sampler.prepared, wb.block_size
    _, cache = wb.run_with_cache(prompt, names_filter=["block.*.z_init", "block.*.z_final", "block.*.step.0.guidance"],
                                 **knobs)
    n_prompt = int(prep.prefix_lengths[0]) // bs
    n_gen = session.sampler.num_blocks
    if n_prompt + n_gen < 2:
        raise WorkbenchError("the sample has a single block: nothing earlier to influence it (raise max_new_tokens)")
    blocks = [prep.prefix[0, i * bs:(i + 1) * bs] for i in range(n_prompt)] + \
        [cache[f"block.{k}.z_final"][0].cpu() for k in range(n_gen)]
    sequence = torch.stack(blocks).to(wb.model.device)                        # (n, bs, C)
    noise = [cache[f"block.{k}.z_init"][0] for k in range(n_gen)]
    guidance = [float(cache[f"block.{k}.step.0.guidance"][0]) for k in range(n_gen)]
    free = [torch.ones(bs, dtype=torch.bool) if k else ~prep.pinned[0] for k in range(n_gen)]

    def solve(k: int, context: torch.Tensor) -> torch.Tensor:
        """Generated block k (sequence index n_prompt + k) from its noise given ``context`` (R, n, bs, C)."""
        rows = context.shape[0]
        return smooth_block(wb.model, context.flatten(1, 2), noise[k].expand(rows, -1, -1), free[k], guidance[k], cfg)

    n = len(blocks)
    generated = list(range(n_prompt, n))
    gain = {m: torch.full((n, n), float("nan")) for m in modes}
    error = {m: torch.full((n,), float("nan")) for m in modes}
    with torch.no_grad():
        for mode in modes:
            moved = propagate(sequence[None], -1, n_prompt, solve, mode)[0]
            for k in generated:
                error[mode][k] = float((moved[k] - sequence[k]).norm())
    dim = bs * sequence.shape[-1]
    directions = _directions(dim, probes, probe_seed).to(sequence)             # (R, bs*C)
    sources = [j for j in range(n - 1) if any(k > j for k in generated)]
    for j in tqdm(sources, desc="influence", disable=not progress):
        for mode in modes:
            delta = _derivatives(sequence, j, directions.view(-1, bs, sequence.shape[-1]), eps, method,
                                 lambda seq: propagate(seq, j, n_prompt, solve, mode))   # (R, n, bs, C)
            for k in generated:
                if k > j:
                    gain[mode][j, k] = float(delta[:, k].flatten(1).pow(2).sum(1).mean().sqrt())
    labels = [f"p{i}" for i in range(n_prompt)] + [f"g{k}" for k in range(n_gen)]
    return Influence(labels=labels, generated=generated, gain=gain, regeneration_error=error, method=method)


def propagate(sequence: torch.Tensor, source: int, n_prompt: int, solve: Callable[[int, torch.Tensor], torch.Tensor],
              mode: str) -> torch.Tensor:
    """Re-solve every generated block after ``source`` in ``sequence`` (R, n, bs, C): each from the given
    blocks (``fixed``) or from the blocks re-solved before it (``generated``). Returns (R, n, bs, C)."""
    out = list(sequence.unbind(1))
    for k in range(max(source + 1, n_prompt), sequence.shape[1]):
        context = torch.stack(out[:k] if mode == "generated" else list(sequence.unbind(1))[:k], dim=1)
        out[k] = solve(k - n_prompt, context)
    return torch.stack(out, dim=1)


def _directions(dim: int, probes: int | None, seed: int) -> torch.Tensor:
    """Every coordinate (``probes`` None) or ``probes`` seeded random unit directions, (R, dim)."""
    if probes is None:
        return torch.eye(dim)
    if probes < 1:
        raise WorkbenchError(f"probes must be >= 1, got {probes!r}")
    u = torch.randn(probes, dim, generator=torch.Generator().manual_seed(seed))
    return u / u.norm(dim=1, keepdim=True)


def _derivatives(sequence: torch.Tensor, j: int, directions: torch.Tensor, eps: float, method: str,
                 fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """d fn(sequence) / d sequence[j] along each direction (R, bs, C) -> (R, n, bs, C)."""
    rows = directions.shape[0]
    base = sequence[None].expand(rows, -1, -1, -1)
    shift = torch.zeros_like(base)
    shift[:, j] = directions
    if method == "jacobian":   # forward mode: SDPA's fused CPU kernels have no forward derivative, its math form does
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), fwAD.dual_level(), warnings.catch_warnings():
            # torch's own jvp set-up scripts functions on first use
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
            return fwAD.unpack_dual(fn(fwAD.make_dual(base.contiguous(), shift))).tangent
    with torch.no_grad():
        both = fn(torch.cat([base + eps * shift, base - eps * shift]))
    return (both[:rows] - both[rows:]) / (2 * eps)
