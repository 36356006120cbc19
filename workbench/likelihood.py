"""Log-likelihood of clean latents under the DiT prior through the probability-flow ODE, with its errors.

The flow ``dz/ds = v(z, s)`` carries data (s=0) to N(0, I) (s=1), so
``log p0(z0) = log N(z1; 0, I) + integral_0^1 div v(z(s), s) ds``. Blocks are conditionally
independent flows given their clean prefix, so one 2L call moves every block at once and the
Jacobian is block-diagonal: each block gets its own ``log p(z_k | z_<k)``.

Every value comes with its two errors:

* **divergence**: exact (one probe per coordinate of a block) by default whenever that costs no more
  than ``EXACT_DIVERGENCE_MAX_DIMS`` probes, else a Hutchinson estimate (Rademacher probes fixed along
  the path) whose standard error over probes is reported (NaN below 2 probes: one probe has no spread);
* **ODE discretisation**: the integral is solved twice, at the requested accuracy and at a coarser
  one (half the steps for the fixed-step solvers; 10x looser tolerances for the adaptive ``dopri5``),
  and ``|difference|`` is reported as ``ode_error_nats``. The DiT's field is rough in time (its
  sinusoidal timestep features oscillate faster than a coarse grid resolves), so fixed-step solvers
  converge erratically; ``dopri5`` (torchdiffeq's adaptive Dormand-Prince) is the default.

Random probes are drawn per text, and texts are integrated in groups of one length (the adaptive
solver one text at a time, as its step sizes would otherwise follow the batch), so a text's numbers
never depend on the other texts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from cola_core import ColaModel
from cola_core.constants import LN2
from cola_core.sampler import text_sample_id
from cola_core.text_codec import encode_tokens

from .bounds import (draw_terms, iw_bound_nats, posterior_draws, standard_normal_log_density,
                     vae_space_log_prior)
from .errors import WorkbenchError
from .latents import text_noise
from .prior import ConditionalVelocity
from .textbatch import block_counts, check_texts, length_groups, tokenize

FIXED_STEP_SOLVERS = {"euler": 1, "heun": 2, "rk4": 4}   # velocity evaluations per step
ODE_SOLVERS = (*FIXED_STEP_SOLVERS, "dopri5")
EXACT_DIVERGENCE_MAX_DIMS = 16   # exact divergence by default while block_size * C probes cost no more than 16
DEFAULT_PROBES = 16
LOOSER = 10.0                    # the adaptive solver's error check runs at 10x looser tolerances

# velocity(z (N, *S), s (N,) on [0, 1]) -> dz/ds (N, *S)
VelocityField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class FlowLogDensity:
    """Result of :func:`ode_log_density`: log densities per group of coordinates, in nats."""

    logp: torch.Tensor     # (R, G) mean over probes
    stderr: torch.Tensor   # (R, G) standard error over probes (0 when exact, NaN with one probe)
    z1: torch.Tensor       # (R, *S) the end of the flow (noise)
    nfe: int               # velocity evaluations of this solve (each one batched over probes)
    ode_error: torch.Tensor | None = None   # (R,) |sum_G logp - the coarser solve's| (None: not estimated)


def check_solver(solver: str, steps: int, rtol: float, atol: float) -> None:
    """Raise WorkbenchError naming a bad ODE option."""
    if solver not in ODE_SOLVERS:
        raise WorkbenchError(f"unknown ODE solver {solver!r}; choose one of {', '.join(ODE_SOLVERS)}")
    if not isinstance(steps, int) or steps < 1:
        raise WorkbenchError(f"steps must be an integer >= 1, got {steps!r}")
    if not (rtol > 0 and atol > 0):
        raise WorkbenchError(f"rtol and atol must be > 0, got rtol={rtol!r}, atol={atol!r}")


def ode_log_density(velocity: VelocityField, z0: torch.Tensor, *, steps: int = 16, solver: str = "rk4",
                    group_size: int | None = None, mask: torch.Tensor | None = None, probes: int = 1,
                    exact: bool = False, generator: torch.Generator | None = None,
                    probe_vectors: torch.Tensor | None = None, rtol: float = 1e-4, atol: float = 1e-4,
                    ode_error: bool = False) -> FlowLogDensity:
    """Integrate the flow from s=0 to 1 and return ``log p0`` per group of ``group_size`` coordinates.

    ``z0`` (R, *S); coordinates are flattened and split into consecutive groups whose Jacobian
    blocks must be independent (default: one group). ``mask`` (R, *S) bool marks real coordinates
    (padding is frozen and excluded). ``exact`` uses ``group_size`` one-hot probes; otherwise
    ``probe_vectors`` (K, R, D) or ``probes`` Rademacher vectors from ``generator``. ``solver`` is a
    fixed-step one (``steps`` steps) or ``dopri5`` (adaptive, tolerances ``rtol``/``atol``).
    ``ode_error`` solves again at the coarser accuracy (half the steps; 10x looser tolerances) with the
    same probes and reports ``|difference|`` per row (not estimated for one fixed step).
    """
    check_solver(solver, steps, rtol, atol)
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
    if exact:
        eps = torch.eye(group_size, device=device).repeat(1, groups)[:, None, :].expand(-1, rows, -1)
    elif probe_vectors is not None:
        eps = probe_vectors.to(device)
    else:
        signs = torch.randint(0, 2, (probes, rows, dims), generator=generator,
                              device=generator.device if generator else device)
        eps = signs.to(device).float() * 2 - 1
    if ode_error:
        coarse = ode_log_density(velocity, z0, steps=max(steps // 2, 1), solver=solver, group_size=group_size,
                                 mask=mask, exact=exact, probe_vectors=None if exact else eps,
                                 probes=eps.shape[0], rtol=rtol * LOOSER, atol=atol * LOOSER)
    eps = eps * keep                                                                      # (K, R, D)
    k = eps.shape[0]
    eps_flat = eps.reshape(k * rows, dims)
    nfe = 0

    def field(z: torch.Tensor, s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity (R, D) and per-probe divergence estimates (K, R, G) at (z, s)."""
        nonlocal nfe
        nfe += 1
        with torch.enable_grad():
            z_rep = z.detach().repeat(k, 1).requires_grad_(True)
            s_rep = torch.full((k * rows,), float(s), device=device)
            v = velocity(z_rep.view(k * rows, *shape), s_rep).reshape(k * rows, dims) * keep.repeat(k, 1)
            (vjp,) = torch.autograd.grad(v, z_rep, grad_outputs=eps_flat)
        div = (vjp * eps_flat).view(k, rows, groups, group_size).sum(-1)
        return v[:rows].detach(), div.detach()

    z = z0.detach().reshape(rows, dims).float()
    if solver == "dopri5":
        from torchdiffeq import odeint   # noqa: PLC0415 (imported on first use: keeps `import workbench` light)

        span = torch.tensor([0.0, 1.0], device=device)
        zs, integrals = odeint(lambda s, state: field(state[0], float(s)), (z, torch.zeros(k, rows, groups,
                                                                                           device=device)),
                               span, rtol=rtol, atol=atol, method="dopri5")
        z, integral = zs[-1], integrals[-1]
    else:
        z, integral = _fixed_steps(field, z, torch.zeros(k, rows, groups, device=device), steps, solver)
    if exact:
        integral = integral.sum(0, keepdim=True)            # probes picked one diagonal entry each
    log_p1 = (standard_normal_log_density(z) * keep).view(rows, groups, group_size).sum(-1)
    per_probe = log_p1[None] + integral                      # (K', R, G)
    if exact:
        stderr = torch.zeros_like(log_p1)
    elif per_probe.shape[0] > 1:
        stderr = per_probe.std(0) / math.sqrt(per_probe.shape[0])
    else:
        stderr = torch.full_like(log_p1, float("nan"))
    logp = per_probe.mean(0)
    error = None
    if ode_error:
        error = ((logp.sum(-1) - coarse.logp.sum(-1)).abs() if solver == "dopri5" or steps >= 2
                 else torch.full((rows,), float("nan"), device=device))
    return FlowLogDensity(logp=logp, stderr=stderr, z1=z.view(rows, *shape), nfe=nfe, ode_error=error)


def _fixed_steps(field: Callable, z: torch.Tensor, integral: torch.Tensor, steps: int, solver: str
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` uniform steps of Euler, Heun or classic RK4 on the pair (z, divergence integral)."""
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
    return z, integral


@dataclass
class LikelihoodResult:
    """Prior log-likelihood of DiT-space latents, per text and per block (nats; NaN for padding blocks)."""

    logp_blocks: torch.Tensor     # (B, nb) log p(z_k | z_<k)
    stderr_blocks: torch.Tensor   # (B, nb) Hutchinson standard error (0 exact; NaN with one probe)
    ode_error: torch.Tensor       # (B,) |log p - log p at the coarser accuracy| (NaN when not estimated)
    dims: torch.Tensor            # (B,) latent coordinates n*C per text
    z1: torch.Tensor              # (B, n, C) where the flow ends
    nfe: int                      # velocity evaluations of the reported solve (the largest over texts)
    divergence: str = "exact"     # "exact" or "hutchinson (K probes)"
    solver: str = "rk4"           # e.g. "rk4, 16 steps" or "dopri5, rtol=1e-04 atol=1e-04"

    @property
    def logp(self) -> torch.Tensor:
        """(B,) total log p(z) in nats."""
        return self.logp_blocks.nan_to_num(0.0).sum(-1)

    @property
    def stderr(self) -> torch.Tensor:
        """(B,) standard error of the total (blocks use independent probes)."""
        return self.stderr_blocks.pow(2).nansum(-1).sqrt().where(~self.stderr_blocks.isnan().all(-1),
                                                                 torch.tensor(float("nan")))

    @property
    def bits_per_dim(self) -> torch.Tensor:
        """(B,) -log2 p(z) / (n*C): negative values are normal for a continuous density."""
        return -self.logp / (self.dims * LN2)

    def records(self, texts: Sequence[str] | None = None) -> list[dict]:
        """Tidy per-text records: the value, its divergence standard error and its ODE error side by side."""
        out = []
        for b in range(self.logp_blocks.shape[0]):
            blocks = self.logp_blocks[b]
            out.append({"index": b, **({"text": texts[b]} if texts is not None else {}),
                        "logp_nats": float(self.logp[b]), "bits_per_dim": float(self.bits_per_dim[b]),
                        "stderr_nats": float(self.stderr[b]), "ode_error_nats": float(self.ode_error[b]),
                        "divergence": self.divergence, "solver": self.solver, "dims": int(self.dims[b]),
                        "nfe": self.nfe, "logp_blocks": [float(x) for x in blocks[~blocks.isnan()]]})
        return out


def default_exact(model: ColaModel) -> bool:
    """Exact divergence costs block_size * C probes: the default while that is at most EXACT_DIVERGENCE_MAX_DIMS."""
    return model.block_size * model.vae_config.latent_dim <= EXACT_DIVERGENCE_MAX_DIMS


def prior_log_likelihood(model: ColaModel, z0: torch.Tensor, n_lengths: torch.Tensor, *, solver: str = "dopri5",
                         steps: int = 16, rtol: float = 1e-4, atol: float = 1e-4, probes: int = DEFAULT_PROBES,
                         exact_divergence: bool | None = None, guidance: float = 1.0, seed: int = 0,
                         sample_ids: Sequence[int] | None = None, ode_error: bool = True,
                         probe_stream: str = "probes") -> LikelihoodResult:
    """log p(z0) under the DiT prior for DiT-space latents ``z0`` (B, n, C) with ``n_lengths`` (B,).

    Each block's density is conditioned on its clean prefix (the conditional velocity; ``guidance``
    other than 1 integrates the CFG-guided field instead). ``exact_divergence`` None picks exact when
    it costs at most ``EXACT_DIVERGENCE_MAX_DIMS`` probes; Hutchinson probes of text b are seeded by
    ``(seed, sample_ids[b])`` (default: positions). ``ode_error`` adds the coarser solve that gives
    ``ode_error`` (see the module docstring).
    """
    check_solver(solver, steps, rtol, atol)
    bs, channels = model.block_size, model.vae_config.latent_dim
    batch, n, _ = z0.shape
    if n % bs or bool((n_lengths % bs).any()):
        raise WorkbenchError(f"latent lengths must be whole blocks of {bs}; got n={n}, lengths={n_lengths.tolist()}")
    exact = default_exact(model) if exact_divergence is None else bool(exact_divergence)
    sample_ids = list(range(batch)) if sample_ids is None else list(sample_ids)
    lengths = n_lengths.tolist()
    nb = n // bs
    nan = float("nan")
    logp, stderr = torch.full((batch, nb), nan), torch.full((batch, nb), nan)
    error, z1, nfe = torch.full((batch,), nan), z0.detach().float().cpu().clone(), 0   # padding stays put
    per_text = solver == "dopri5"   # adaptive step sizes would follow the whole batch
    for rows in length_groups([length // bs for length in lengths], 1 if per_text else batch):
        width = lengths[rows[0]]
        z = z0[rows, :width].float()
        velocity = ConditionalVelocity(model, z, n_lengths[rows], guidance=guidance)
        eps = None if exact else torch.stack([text_noise([width] * len(rows), width, channels, seed,
                                                         [sample_ids[i] for i in rows], probe_stream, k,
                                                         rademacher=True)
                                              for k in range(probes)]).flatten(2)
        flow = ode_log_density(velocity, z, steps=steps, solver=solver, rtol=rtol, atol=atol, group_size=bs * channels,
                               exact=exact, probe_vectors=eps, probes=probes, ode_error=ode_error)
        logp[rows, :width // bs], stderr[rows, :width // bs] = flow.logp.cpu(), flow.stderr.cpu()
        z1[rows, :width], nfe = flow.z1.cpu(), max(nfe, flow.nfe)
        if flow.ode_error is not None:
            error[rows] = flow.ode_error.cpu()
    divergence = "exact" if exact else f"hutchinson ({probes} probes)"
    how = f"dopri5, rtol={rtol:g} atol={atol:g}" if solver == "dopri5" else f"{solver}, {steps} steps"
    return LikelihoodResult(logp_blocks=logp, stderr_blocks=stderr, ode_error=error,
                            dims=(n_lengths * channels).cpu(), z1=z1, nfe=nfe, divergence=divergence, solver=how)


def text_log_likelihood(model: ColaModel, texts: Sequence[str], *, latent: str = "sample", samples: int = 1,
                        batch_size: int = 8, seed: int = 0, sample_ids: Sequence[int] | None = None,
                        **options) -> list[dict]:
    """Per-text prior log-likelihood records of the texts' encoder latents.

    ``latent="sample"`` (default; the DiT was trained on posterior samples) scores ``samples`` = K
    posterior draws per text: ``logp_nats``/``bits_per_dim`` average the K draws (``sample_stderr_nats``
    is their spread, NaN for K = 1), and ``iw_bound_bits_per_token`` is the K-sample importance-weighted
    bound on the text's ``-log2 p(x)`` with the DiT prior (the DiT-prior ELBO at K = 1).
    ``latent="mean"`` scores the posterior mean, labelled as such (no text bound). Draws and probes are
    seeded per text by ``(seed, sample id)``; sample ids default to each text's CRC-32
    (``cola_core.sampler.text_sample_id``), so a text's record depends on nothing else in the call.
    ``options`` go to :func:`prior_log_likelihood` (solver, steps, rtol, atol, probes, exact_divergence,
    guidance, ode_error).
    """
    texts = check_texts(texts)
    if latent not in ("mean", "sample"):
        raise WorkbenchError(f"latent must be 'mean' or 'sample', got {latent!r}")
    if not isinstance(samples, int) or samples < 1:
        raise WorkbenchError(f"samples must be an integer >= 1, got {samples!r}")
    sample_ids = [text_sample_id(t) for t in texts] if sample_ids is None else list(sample_ids)
    if len(sample_ids) != len(texts):
        raise WorkbenchError(f"{len(sample_ids)} sample ids for {len(texts)} texts")
    records: list[dict | None] = [None] * len(texts)
    for rows in length_groups(block_counts(model, texts), batch_size):
        chunk, ids = [texts[i] for i in rows], [sample_ids[i] for i in rows]
        for rec, i in zip(_chunk_log_likelihood(model, chunk, ids, latent, samples, seed, options), rows):
            records[i] = {**rec, "index": i, "text": texts[i], "sample_id": sample_ids[i]}
    return records


def _chunk_log_likelihood(model: ColaModel, chunk: list[str], sample_ids: list[int], latent: str, samples: int,
                          seed: int, options: dict) -> list[dict]:
    """Records of texts of one length (see :func:`text_log_likelihood`)."""
    batch = tokenize(model, chunk)
    post = encode_tokens(model, batch)
    lengths = batch.latent_lengths
    if latent == "mean":
        result = prior_log_likelihood(model, model.vae.to_dit_space(post.mean), lengths, seed=seed,
                                      sample_ids=sample_ids, **options)
        return [{**rec, "latent": "posterior mean"} for rec in result.records()]
    draws = posterior_draws(post, lengths, samples, seed, sample_ids)                      # (K, B, n, C)
    results = draw_log_likelihoods(model, draws, lengths, seed, sample_ids, options)
    log_p = torch.stack([r.logp for r in results]).double()                                  # (K, B) DiT space
    terms = draw_terms(model, batch, post, draws)
    bound = iw_bound_nats(terms.nll, terms.log_q, vae_space_log_prior(model, log_p, results[0].dims))
    tokens = batch.token_lengths.cpu()
    out = []
    for b, first in enumerate(results[0].records()):
        summary = summarize_draws(results, b)
        out.append({**first, **summary, "latent": f"posterior samples (K={samples})", "samples": samples,
                    "iw_bound_bits_per_token": float(bound[b]) / LN2 / int(tokens[b])})
    return out


def draw_log_likelihoods(model: ColaModel, draws: torch.Tensor, lengths: torch.Tensor, seed: int,
                         sample_ids: Sequence[int], options: dict) -> list[LikelihoodResult]:
    """One :func:`prior_log_likelihood` per VAE-space posterior draw (K, B, n, C); draw k's probes come from
    its own stream, so draws never share probes."""
    return [prior_log_likelihood(model, model.vae.to_dit_space(z), lengths, seed=seed, sample_ids=sample_ids,
                                 probe_stream=f"probes.{k}", **options) for k, z in enumerate(draws)]


def summarize_draws(results: list[LikelihoodResult], b: int) -> dict:
    """Text b's prior numbers averaged over K draws: log p (nats, bits/dim), the Hutchinson standard error
    and the ODE error of that mean, the spread over draws (NaN for K = 1) and each draw's log p."""
    k = len(results)
    log_p = torch.stack([r.logp[b] for r in results])
    blocks = torch.stack([r.logp_blocks[b] for r in results]).mean(0)
    return {"logp_nats": float(log_p.mean()), "bits_per_dim": float(-log_p.mean() / (results[0].dims[b] * LN2)),
            "stderr_nats": math.sqrt(sum(float(r.stderr[b]) ** 2 for r in results)) / k,
            "ode_error_nats": sum(float(r.ode_error[b]) for r in results) / k,
            "sample_stderr_nats": float(log_p.std() / math.sqrt(k)) if k > 1 else float("nan"),
            "logp_samples": [float(x) for x in log_p], "logp_blocks": [float(x) for x in blocks[~blocks.isnan()]]}


__all__ = ["ode_log_density", "prior_log_likelihood", "text_log_likelihood", "LikelihoodResult", "FlowLogDensity",
           "ODE_SOLVERS", "FIXED_STEP_SOLVERS", "EXACT_DIVERGENCE_MAX_DIMS", "default_exact"]
