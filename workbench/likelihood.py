"""Log-likelihood of clean latents under the DiT prior through the probability-flow ODE.

The flow ``dz/ds = v(z, s)`` carries data (s=0) to N(0, I) (s=1), so
``log p0(z0) = log N(z1; 0, I) + integral_0^1 div v(z(s), s) ds``. Blocks are conditionally
independent flows given their clean prefix, so one 2L call moves every block at once and the
Jacobian is block-diagonal: each block gets its own ``log p(z_k | z_<k)``. The divergence is a
Hutchinson estimate (Rademacher probes, fixed along the path; one vector-Jacobian product per
evaluation) or, for small blocks, exact (one probe per coordinate of a block).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cola_core import ColaModel
from cola_core.constants import LN2, LOG_2PI
from cola_core.text_codec import encode_tokens

from .errors import WorkbenchError
from .prior import ConditionalVelocity
from .textbatch import batches, tokenize
ODE_SOLVERS = ("euler", "heun", "rk4")
EVALS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}

# velocity(z (N, *S), s (N,) on [0, 1]) -> dz/ds (N, *S)
VelocityField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FlowLogDensity:
    """Result of :func:`ode_log_density`: log densities per group of coordinates, in nats."""

    logp: torch.Tensor     # (R, G) mean over probes
    stderr: torch.Tensor   # (R, G) standard error over probes (0 when exact or one probe)
    z1: torch.Tensor       # (R, *S) the end of the flow (noise)
    nfe: int               # velocity evaluations (each one batched over probes)


def _probes(k: int, rows: int, dims: int, group_size: int, exact: bool, generator: torch.Generator | None,
            device: torch.device) -> torch.Tensor:
    """(K, R, D) probe vectors: Rademacher, or for ``exact`` one-hot per in-group coordinate, tiled over groups."""
    if exact:
        eye = torch.eye(group_size, device=device).repeat(1, dims // group_size)     # (gs, D)
        return eye[:, None, :].expand(-1, rows, -1)
    signs = torch.randint(0, 2, (k, rows, dims), generator=generator, device=generator.device if generator else device)
    return (signs.to(device).float() * 2 - 1)


def ode_log_density(velocity: VelocityField, z0: torch.Tensor, *, steps: int = 16, solver: str = "heun",
                    group_size: int | None = None, mask: torch.Tensor | None = None, probes: int = 1,
                    exact: bool = False, generator: torch.Generator | None = None) -> FlowLogDensity:
    """Integrate the flow from s=0 to 1 and return ``log p0`` per group of ``group_size`` coordinates.

    ``z0`` (R, *S); coordinates are flattened and split into consecutive groups whose Jacobian
    blocks must be independent (default: one group). ``mask`` (R, *S) bool marks real coordinates
    (padding is frozen and excluded). ``exact`` uses ``group_size`` one-hot probes instead of
    ``probes`` Rademacher ones.
    """
    if solver not in ODE_SOLVERS:
        raise WorkbenchError(f"unknown ODE solver {solver!r}; choose one of {', '.join(ODE_SOLVERS)}")
    if not isinstance(steps, int) or steps < 1:
        raise WorkbenchError(f"steps must be an integer >= 1, got {steps!r}")
    if probes < 1:
        raise WorkbenchError(f"probes must be >= 1, got {probes}")
    rows, shape = z0.shape[0], z0.shape[1:]
    dims = math.prod(shape)
    group_size = group_size or dims
    if dims % group_size:
        raise WorkbenchError(f"group_size {group_size} does not divide the {dims} coordinates per row")
    groups = dims // group_size
    device = z0.device
    keep = (mask if mask is not None else torch.ones_like(z0, dtype=torch.bool)).reshape(rows, dims).float()
    eps = _probes(probes, rows, dims, group_size, exact, generator, device) * keep       # (K, R, D)
    k = eps.shape[0]
    eps_flat = eps.reshape(k * rows, dims)

    def field(z: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity (R, D) and per-probe divergence estimates (K, R, G) at (z, s)."""
        with torch.enable_grad():
            z_rep = z.detach().repeat(k, 1).requires_grad_(True)
            s_rep = torch.full((k * rows,), s, device=device)
            v = velocity(z_rep.view(k * rows, *shape), s_rep).reshape(k * rows, dims) * keep.repeat(k, 1)
            (vjp,) = torch.autograd.grad(v, z_rep, grad_outputs=eps_flat)
        div = (vjp * eps_flat).view(k, rows, groups, group_size).sum(-1)
        return v[:rows].detach(), div.detach()

    z = z0.detach().reshape(rows, dims).float()
    integral = torch.zeros(k, rows, groups, device=device)
    h = 1.0 / steps
    for i in range(steps):
        s = i * h
        if solver == "euler":
            v, d = field(z, s)
            z, integral = z + h * v, integral + h * d
        elif solver == "heun":
            v1, d1 = field(z, s)
            v2, d2 = field(z + h * v1, s + h)
            z, integral = z + 0.5 * h * (v1 + v2), integral + 0.5 * h * (d1 + d2)
        else:
            v1, d1 = field(z, s)
            v2, d2 = field(z + 0.5 * h * v1, s + 0.5 * h)
            v3, d3 = field(z + 0.5 * h * v2, s + 0.5 * h)
            v4, d4 = field(z + h * v3, s + h)
            z = z + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
            integral = integral + h / 6 * (d1 + 2 * d2 + 2 * d3 + d4)
    if exact:
        integral = integral.sum(0, keepdim=True)            # probes picked one diagonal entry each
    log_p1 = (-0.5 * (z.pow(2) + LOG_2PI) * keep).view(rows, groups, group_size).sum(-1)
    per_probe = log_p1[None] + integral                      # (K', R, G)
    stderr = (per_probe.std(0) / math.sqrt(per_probe.shape[0]) if per_probe.shape[0] > 1
              else torch.zeros_like(log_p1))
    return FlowLogDensity(logp=per_probe.mean(0), stderr=stderr, z1=z.view(rows, *shape),
                          nfe=steps * EVALS_PER_STEP[solver])


@dataclass
class LikelihoodResult:
    """Prior log-likelihood of DiT-space latents, per text and per block (nats; NaN for padding blocks)."""

    logp_blocks: torch.Tensor     # (B, nb) log p(z_k | z_<k)
    stderr_blocks: torch.Tensor   # (B, nb) Hutchinson standard error
    dims: torch.Tensor            # (B,) latent coordinates n*C per text
    z1: torch.Tensor              # (B, n, C) where the flow ends
    nfe: int

    @property
    def logp(self) -> torch.Tensor:
        """(B,) total log p(z) in nats."""
        return self.logp_blocks.nan_to_num(0.0).sum(-1)

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """(B,) -log2 p(z) / (n*C): negative values are normal for a continuous density."""
        return -self.logp / (self.dims * LN2)

    def records(self, texts: Sequence[str] | None = None) -> list[dict]:
        """Tidy per-text records."""
        out = []
        for b in range(self.logp_blocks.shape[0]):
            blocks = self.logp_blocks[b]
            out.append({"index": b, **({"text": texts[b]} if texts is not None else {}),
                        "logp_nats": float(self.logp[b]), "bits_per_dim": float(self.bits_per_dim[b]),
                        "stderr_nats": float(self.stderr_blocks[b].nan_to_num(0.0).pow(2).sum().sqrt()),
                        "dims": int(self.dims[b]), "nfe": self.nfe,
                        "logp_blocks": [float(x) for x in blocks[~blocks.isnan()]]})
        return out


def prior_log_likelihood(model: ColaModel, z0: torch.Tensor, n_lengths: torch.Tensor, *, steps: int = 8,
                         solver: str = "rk4", probes: int = 1, exact_divergence: bool = False,
                         guidance: float = 1.0, seed: int = 0) -> LikelihoodResult:
    """log p(z0) under the DiT prior for DiT-space latents ``z0`` (B, n, C) with ``n_lengths`` (B,).

    Each block's density is conditioned on its clean prefix (the conditional velocity; ``guidance``
    other than 1 integrates the CFG-guided field instead). ``exact_divergence`` costs
    ``block_size * C`` probes per evaluation: use it to validate the estimator on small models.
    """
    bs = model.block_size
    batch, n, channels = z0.shape
    if n % bs or bool((n_lengths % bs).any()):
        raise WorkbenchError(f"latent lengths must be whole blocks of {bs}; got n={n}, lengths={n_lengths.tolist()}")
    velocity = ConditionalVelocity(model, z0.float(), n_lengths, guidance=guidance)
    valid = (torch.arange(n, device=z0.device)[None] < n_lengths[:, None])          # (B, n)
    generator = torch.Generator(device=z0.device).manual_seed(seed)
    flow = ode_log_density(velocity, z0.float(), steps=steps, solver=solver, group_size=bs * channels,
                           mask=valid[..., None].expand_as(z0), probes=probes, exact=exact_divergence,
                           generator=generator)
    block_valid = valid[:, ::bs]
    nan = torch.tensor(float("nan"), device=z0.device)
    return LikelihoodResult(logp_blocks=torch.where(block_valid, flow.logp, nan).cpu(),
                            stderr_blocks=torch.where(block_valid, flow.stderr, nan).cpu(),
                            dims=(n_lengths * channels).cpu(), z1=flow.z1.cpu(), nfe=flow.nfe)


def text_log_likelihood(model: ColaModel, texts: Sequence[str], *, latent: str = "mean", batch_size: int = 8,
                        seed: int = 0, **options) -> list[dict]:
    """Per-text prior log-likelihood records of the texts' encoder latents (``latent`` mean|sample).

    ``options`` go to :func:`prior_log_likelihood` (steps, solver, probes, exact_divergence, guidance).
    """
    if latent not in ("mean", "sample"):
        raise WorkbenchError(f"latent must be 'mean' or 'sample', got {latent!r}")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    records: list[dict] = []
    for start, chunk in batches(texts, batch_size):
        batch = tokenize(model, chunk)
        post = encode_tokens(model, batch)
        z = post.mean if latent == "mean" else post.sample(generator)
        result = prior_log_likelihood(model, model.vae.to_dit_space(z), batch.latent_lengths, seed=seed + start,
                                      **options)
        for rec in result.records(chunk):
            rec["index"] += start
            records.append(rec)
    return records
