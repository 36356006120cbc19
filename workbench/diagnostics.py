"""How well a Cola model fits a set of texts: reconstruction, compression, prior fit, and an ELBO in bits.

``diagnose(model, texts)`` returns tidy records (per text, per latent channel, per (t, block)) and
plotly figures. Units: bits per real token for reconstruction and ELBO; KL in nats and bits; prior
log-likelihood in bits per latent dimension. Everything runs under ``torch.no_grad`` (the ODE
likelihood takes its own gradients) and is reproducible from ``seed``.

ELBO conventions: the model encodes and decodes whole blocks, so the ELBO bounds
``-log p(x padded to whole blocks)``; it sums decoder NLL over every decoded token (padding
included) plus the rate term, and is divided by the number of real tokens.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from cola_core import ColaModel
from cola_core.constants import LN2, LOG_2PI
from cola_core.text_codec import TokenBatch, decode_logits, encode_tokens
from cola_core.vae import Posterior

from .errors import WorkbenchError
from .likelihood import prior_log_likelihood
from .prior import flow_matching_loss
from .textbatch import batches, check_texts, tokenize
DEFAULT_T_GRID = tuple(i / 10 for i in range(11))
ACTIVE_UNIT_THRESHOLD = 0.01


@dataclass
class TextDiagnostics:
    """One text's numbers. ``*_bits_per_token`` are over its real tokens."""

    index: int
    text: str
    tokens: int
    latents: int
    blocks: int
    token_accuracy: float                 # greedy decode of the posterior mean
    recon_bits_per_token: float           # decoder NLL given the posterior mean
    recon_bits_per_token_sampled: float   # same, averaged over posterior samples
    kl_nats: float                        # KL(q(z|x) || N(0, I)) over all latents and channels
    kl_bits_per_token: float
    posterior_std: float                  # mean posterior std over latents and channels
    latent_norm: float                    # mean L2 norm of DiT-space posterior means
    elbo_bits_per_token: float            # (NLL_sampled over all decoded tokens + KL) / ln2 / tokens
    fm_loss: float | None = None          # flow-matching loss averaged over the t grid and blocks
    fm_loss_by_block: list[float] | None = None
    fm_loss_by_t: list[float] | None = None      # one value per t of the grid
    prior_bits_per_dim: float | None = None        # -log2 p(z) / (n*C) by the probability-flow ODE
    elbo_prior_bits_per_token: float | None = None  # ELBO with the DiT prior instead of N(0, I)


@dataclass
class DimensionDiagnostics:
    """One latent channel over the dataset."""

    dim: int
    kl_nats: float          # mean KL per latent
    mean_variance: float    # Var over data of the posterior mean (active if > threshold)
    active: bool
    posterior_std: float    # mean posterior std


@dataclass
class FlowMatchingPoint:
    """Dataset-mean flow-matching loss at one (t, block) cell; ``zero_velocity_loss`` is the scale of predicting 0."""

    t: float
    block: int
    loss: float
    zero_velocity_loss: float
    count: int


@dataclass
class DatasetDiagnostics:
    """Token-weighted dataset summary."""

    texts: int
    tokens: int
    latents: int
    token_accuracy: float
    recon_bits_per_token: float
    recon_bits_per_token_sampled: float
    kl_bits_per_token: float
    elbo_bits_per_token: float
    active_units: int
    latent_dim: int
    active_unit_threshold: float
    posterior_std: float
    fm_loss: float | None = None
    prior_bits_per_dim: float | None = None
    elbo_prior_bits_per_token: float | None = None


@dataclass
class Diagnosis:
    """Everything :func:`diagnose` measured, as records and figures."""

    per_text: list[TextDiagnostics]
    dataset: DatasetDiagnostics
    per_dimension: list[DimensionDiagnostics]
    flow_matching: list[FlowMatchingPoint] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def records(self) -> dict[str, list[dict]]:
        """Tidy tables: ``per_text``, ``dataset`` (one row), ``per_dimension``, ``flow_matching``."""
        return {"per_text": [asdict(r) for r in self.per_text], "dataset": [asdict(self.dataset)],
                "per_dimension": [asdict(r) for r in self.per_dimension],
                "flow_matching": [asdict(r) for r in self.flow_matching]}

    def figures(self, height: int = 380) -> dict:
        """Plotly figures keyed by name (see :func:`diagnosis_figures`)."""
        return diagnosis_figures(self, height=height)


# -- building blocks on tensors ----------------------------------------------------------------------
def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits (B, L, V), ids (B, L) -> per-token negative log-likelihood (B, L) in nats."""
    return F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")


def active_units(means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, torch.Tensor]:
    """means (N, C) posterior means over the data -> (count of channels with Var > threshold, Var (C,))."""
    if means.shape[0] < 2:
        raise WorkbenchError("active units need at least two latents to estimate a variance")
    var = means.var(dim=0, unbiased=True)
    return int((var > threshold).sum()), var


def gaussian_log_density(z: torch.Tensor, post: Posterior) -> torch.Tensor:
    """log q(z|x) per latent and channel (B, n, C) for a diagonal Gaussian posterior."""
    return -0.5 * ((z - post.mean).pow(2) / post.logvar.exp() + post.logvar + LOG_2PI)


def _decode_nll(model: ColaModel, z: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """DiT-space z (B, n, C) -> (NLL (B, L) nats, greedy ids (B, L))."""
    logits = decode_logits(model, z, batch.latent_lengths)
    return token_nll(logits, batch.ids), logits.argmax(-1)


# -- the whole pass ------------------------------------------------------------------------------------
@dataclass
class _Totals:
    """Dataset sums carried across batches."""

    channels: int
    means: list[torch.Tensor] = field(default_factory=list)   # posterior means of covered latents
    latents: int = 0
    kl_dim: torch.Tensor | None = None                         # (C,) KL summed over latents
    std_dim: torch.Tensor | None = None
    fm: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None   # (K, nb) loss, zero, count sums

    def __post_init__(self) -> None:
        self.kl_dim, self.std_dim = torch.zeros(self.channels), torch.zeros(self.channels)

    def add_fm(self, parts: tuple[torch.Tensor, ...]) -> None:
        """Add (K, nb) tables whose block axis may grow from batch to batch."""
        if self.fm is None:
            self.fm = parts
            return
        grown = []
        for total, part in zip(self.fm, parts):
            table = total.new_zeros(total.shape[0], max(total.shape[1], part.shape[1]))
            table[:, :total.shape[1]] += total
            table[:, :part.shape[1]] += part
            grown.append(table)
        self.fm = tuple(grown)


@torch.no_grad()
def diagnose(model: ColaModel, texts: Sequence[str], *, samples: int = 1, prior: bool = True,
             t_grid: Sequence[float] = DEFAULT_T_GRID, fm_draws: int = 1, likelihood: bool = False,
             likelihood_options: dict | None = None, batch_size: int = 8, seed: int = 0,
             active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD) -> Diagnosis:
    """Diagnose ``model`` on ``texts``.

    ``samples`` posterior draws give the sampled NLL and the ELBO. With ``prior`` the DiT's
    flow-matching loss is measured at each t in ``t_grid`` (on [0, 1]) on the first posterior
    sample, ``fm_draws`` noise draws each. ``likelihood`` adds the probability-flow ODE
    log-likelihood of that sample (``likelihood_options``: steps, solver, probes, exact_divergence)
    and the ELBO under the DiT prior.
    """
    texts = check_texts(texts)
    if samples < 1:
        raise WorkbenchError(f"samples must be >= 1, got {samples}")
    grid = torch.tensor([float(t) for t in t_grid])
    if prior and (grid.numel() == 0 or bool(((grid < 0) | (grid > 1)).any())):
        raise WorkbenchError(f"t_grid must hold times in [0, 1], got {list(t_grid)}")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    totals = _Totals(model.vae_config.latent_dim)
    per_text: list[TextDiagnostics] = []
    for start, chunk in batches(texts, batch_size):
        per_text += _diagnose_batch(model, chunk, start, totals, generator, samples=samples,
                                    grid=grid if prior else None, fm_draws=fm_draws,
                                    likelihood_options=dict(likelihood_options or {}, seed=seed + start)
                                    if likelihood else None)
    au, var = active_units(torch.cat(totals.means), active_unit_threshold)
    per_dim = [DimensionDiagnostics(dim=c, kl_nats=float(totals.kl_dim[c]) / totals.latents,
                                    mean_variance=float(var[c]), active=bool(var[c] > active_unit_threshold),
                                    posterior_std=float(totals.std_dim[c]) / totals.latents) for c in range(len(var))]
    dataset = _dataset_summary(per_text, au, len(var), active_unit_threshold, likelihood)
    dataset.posterior_std = float(totals.std_dim.sum()) / (totals.latents * len(var))
    fm_points = []
    if prior:
        loss, zero, count = totals.fm
        dataset.fm_loss = float(loss.sum() / count.sum())
        fm_points = [FlowMatchingPoint(t=t, block=blk, loss=float(loss[k, blk] / count[k, blk]),
                                       zero_velocity_loss=float(zero[k, blk] / count[k, blk]),
                                       count=int(count[k, blk]))
                     for k, t in enumerate(grid.tolist()) for blk in range(count.shape[1]) if count[k, blk]]
    settings = {"samples": samples, "prior": prior, "t_grid": grid.tolist(), "fm_draws": fm_draws,
                "likelihood": likelihood, "likelihood_options": dict(likelihood_options or {}),
                "batch_size": batch_size, "seed": seed, "checkpoint": model.fingerprint}
    return Diagnosis(per_text=per_text, dataset=dataset, per_dimension=per_dim, flow_matching=fm_points,
                     settings=settings)


def _diagnose_batch(model: ColaModel, chunk: list[str], start: int, totals: _Totals, generator: torch.Generator, *,
                    samples: int, grid: torch.Tensor | None, fm_draws: int, likelihood_options: dict | None
                    ) -> list[TextDiagnostics]:
    """Per-text records of one batch; dataset sums go into ``totals``."""
    bs = model.block_size
    batch = tokenize(model, chunk)
    post = encode_tokens(model, batch)
    real, valid = batch.real, post.valid                           # tokens (B, L); latents (B, n)
    z_mean = model.vae.to_dit_space(post.mean)
    nll_mean, greedy = _decode_nll(model, z_mean, batch)
    draws = [post.sample(generator) for _ in range(samples)]
    nll_draws = torch.stack([_decode_nll(model, model.vae.to_dit_space(z), batch)[0] for z in draws])
    kl = post.kl_to_standard_normal() * valid[..., None]                 # (B, n, C)
    totals.means.append(post.mean[batch.real_latents].cpu())
    totals.kl_dim += kl.sum((0, 1)).cpu()
    totals.std_dim += (post.std * valid[..., None]).sum((0, 1)).cpu()
    totals.latents += int(valid.sum())
    z_prior = model.vae.to_dit_space(draws[0])
    if grid is not None:
        fm = flow_matching_loss(model, z_prior, batch.latent_lengths, grid, draws=fm_draws, generator=generator)
        per_cell = lambda x: x.unflatten(2, (-1, bs)).sum(-1).sum(1)    # noqa: E731  (K, B, n) -> (K, nb)
        totals.add_fm((per_cell(fm.loss.nan_to_num(0.0)), per_cell(fm.zero.nan_to_num(0.0)),
                       per_cell((~fm.loss.isnan()).long())))
    if likelihood_options is not None:
        result = prior_log_likelihood(model, z_prior, batch.latent_lengths, **likelihood_options)
        dims = (valid.sum(1) * model.vae_config.latent_dim).cpu()
        log_q = (gaussian_log_density(draws[0], post) * valid[..., None]).sum((1, 2)).cpu()
        # E_q[log q - log p]: log p in VAE space = log p_dit(to_dit_space(z)) + dims * log|scale|
        rate = log_q - (result.logp + dims * math.log(abs(model.vae_config.scaling_factor)))
    records = []
    for b, text in enumerate(chunk):
        tokens, n, decoded = int(batch.token_lengths[b]), int(valid[b].sum()), int(batch.lengths[b])
        kl_b = float(kl[b].sum())
        rec = TextDiagnostics(
            index=start + b, text=text, tokens=tokens, latents=n, blocks=n // bs,
            token_accuracy=float((greedy[b] == batch.ids[b])[real[b]].float().mean()),
            recon_bits_per_token=float(nll_mean[b][real[b]].mean()) / LN2,
            recon_bits_per_token_sampled=float(nll_draws[:, b][:, real[b]].mean()) / LN2,
            kl_nats=kl_b, kl_bits_per_token=kl_b / LN2 / tokens, posterior_std=float(post.std[b, :n].mean()),
            latent_norm=float(z_mean[b, :n].norm(dim=-1).mean()),
            elbo_bits_per_token=(float(nll_draws[:, b, :decoded].sum(-1).mean()) + kl_b) / LN2 / tokens)
        if grid is not None:
            per_block = fm.loss[:, b, :n].mean(0).unflatten(0, (-1, bs)).mean(-1)
            rec.fm_loss, rec.fm_loss_by_block = float(per_block.mean()), [float(x) for x in per_block]
            rec.fm_loss_by_t = [float(x) for x in fm.loss[:, b, :n].mean(-1)]
        if likelihood_options is not None:
            rec.prior_bits_per_dim = float(result.bits_per_dim[b])
            rec.elbo_prior_bits_per_token = (float(nll_draws[0, b, :decoded].sum()) + float(rate[b])) / LN2 / tokens
        records.append(rec)
    return records


def _dataset_summary(rows: list[TextDiagnostics], au: int, dim: int, threshold: float,
                     likelihood: bool) -> DatasetDiagnostics:
    """Token-weighted means of per-text numbers (latent-weighted for bits per dimension)."""
    tokens = sum(r.tokens for r in rows)

    def weighted(name: str) -> float:
        return sum(getattr(r, name) * r.tokens for r in rows) / tokens

    summary = DatasetDiagnostics(
        texts=len(rows), tokens=tokens, latents=sum(r.latents for r in rows),
        token_accuracy=weighted("token_accuracy"), recon_bits_per_token=weighted("recon_bits_per_token"),
        recon_bits_per_token_sampled=weighted("recon_bits_per_token_sampled"),
        kl_bits_per_token=weighted("kl_bits_per_token"), elbo_bits_per_token=weighted("elbo_bits_per_token"),
        active_units=au, latent_dim=dim, active_unit_threshold=threshold, posterior_std=0.0)
    if likelihood:
        summary.prior_bits_per_dim = sum(r.prior_bits_per_dim * r.latents for r in rows) / sum(r.latents for r in rows)
        summary.elbo_prior_bits_per_token = weighted("elbo_prior_bits_per_token")
    return summary


# -- figures ---------------------------------------------------------------------------------------------
def diagnosis_figures(diag: Diagnosis, height: int = 380) -> dict:
    """Plotly figures: reconstruction histogram, per-channel KL / variance, FM loss vs t and block, ELBO parts."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    figs = {}
    rows = diag.per_text
    fig = make_subplots(rows=1, cols=2, subplot_titles=("token accuracy (posterior mean)", "decoder NLL (bits/token)"))
    fig.add_trace(go.Histogram(x=[r.token_accuracy for r in rows], name="accuracy", nbinsx=20), 1, 1)
    fig.add_trace(go.Histogram(x=[r.recon_bits_per_token for r in rows], name="mean z", nbinsx=20), 1, 2)
    fig.add_trace(go.Histogram(x=[r.recon_bits_per_token_sampled for r in rows], name="sampled z", nbinsx=20), 1, 2)
    fig.update_layout(height=height, title="Reconstruction", barmode="overlay")
    figs["reconstruction"] = fig

    dims = diag.per_dimension
    fig = make_subplots(rows=1, cols=2, subplot_titles=("KL per channel (nats per latent)",
                                                        "Var over data of the posterior mean"))
    fig.add_trace(go.Bar(x=[d.dim for d in dims], y=[d.kl_nats for d in dims], name="KL"), 1, 1)
    fig.add_trace(go.Bar(x=[d.dim for d in dims], y=[d.mean_variance for d in dims], name="variance",
                         marker_color=["#2a9d8f" if d.active else "#bbbbbb" for d in dims]), 1, 2)
    fig.add_hline(y=diag.dataset.active_unit_threshold, line_dash="dot", row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(height=height, showlegend=False,
                      title=f"Compression: {diag.dataset.active_units}/{diag.dataset.latent_dim} active units")
    figs["compression"] = fig

    if diag.flow_matching:
        pts = diag.flow_matching
        ts = sorted({p.t for p in pts})
        blocks = sorted({p.block for p in pts})

        def mean_over(key, value):
            sel = [p for p in pts if getattr(p, key) == value]
            n = sum(p.count for p in sel)
            return (sum(p.loss * p.count for p in sel) / n, sum(p.zero_velocity_loss * p.count for p in sel) / n)

        by_t = [mean_over("t", t) for t in ts]
        by_block = [mean_over("block", b) for b in blocks]
        fig = make_subplots(rows=1, cols=3, subplot_titles=("loss vs t", "loss vs block", "loss (t x block)"))
        fig.add_trace(go.Scatter(x=ts, y=[a for a, _ in by_t], mode="lines+markers", name="DiT"), 1, 1)
        fig.add_trace(go.Scatter(x=ts, y=[z for _, z in by_t], mode="lines", name="predict 0",
                                 line_dash="dot"), 1, 1)
        fig.add_trace(go.Scatter(x=blocks, y=[a for a, _ in by_block], mode="lines+markers", name="DiT by block"),
                      1, 2)
        grid = {(p.t, p.block): p.loss for p in pts}
        fig.add_trace(go.Heatmap(x=blocks, y=ts, z=[[grid.get((t, b)) for b in blocks] for t in ts],
                                 colorscale="Viridis", showscale=True), 1, 3)
        fig.update_xaxes(title_text="t", row=1, col=1)
        fig.update_xaxes(title_text="block", row=1, col=2)
        fig.update_layout(height=height, title="Prior fit: flow-matching loss on encoder latents")
        figs["prior_fit"] = fig

    d = diag.dataset
    parts = {"reconstruction (sampled z)": d.recon_bits_per_token_sampled, "KL to N(0, I)": d.kl_bits_per_token}
    fig = go.Figure(go.Bar(x=list(parts), y=list(parts.values())))
    title = f"ELBO {d.elbo_bits_per_token:.3f} bits/token (N(0, I) prior)"
    if d.elbo_prior_bits_per_token is not None:
        title += f"; {d.elbo_prior_bits_per_token:.3f} with the DiT prior ({d.prior_bits_per_dim:.3f} bits/dim)"
    fig.update_layout(height=height, title=title, yaxis_title="bits per token")
    figs["elbo"] = fig
    return figs
