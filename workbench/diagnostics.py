"""How well a Cola model fits a set of texts: reconstruction, compression, prior fit, and an ELBO in bits.

``diagnose(model, texts)`` returns tidy records (per text, per latent channel, per (t, block)) and
plotly figures. Units: bits per real token for reconstruction and ELBO; KL in nats and bits; prior
log-likelihood in bits per latent dimension. Everything runs under ``torch.no_grad`` (the ODE
likelihood takes its own gradients) and is reproducible from ``seed``.

ELBO conventions: the model encodes and decodes whole blocks, so the ELBO bounds
``-log p(x padded to whole blocks)``; it sums decoder NLL over every decoded token (padding
included) plus the rate term, and is divided by the number of real tokens. Both ELBOs (N(0, I) prior
and DiT prior) use the same estimator over the same ``samples`` posterior draws
(``workbench.bounds``): rate = mean_k [log q(z_k|x) - log p(z_k)]. The DiT was trained on posterior
samples, so its prior numbers score those draws; with K draws the DiT-prior bound is also given
importance-weighted (``iw_prior_bits_per_token``).

Every random draw (posterior samples, flow-matching noise, probes) is seeded per text by
``(seed, sample id)`` with sample ids defaulting to each text's CRC-32, and texts are batched only
with texts of their own length: a text's record never depends on the other texts.

Collapse: the encoder LayerNorms its means without affine, so every channel has variance ~1 over all
latents by construction and "active units" (that pooled variance > 0.01) cannot fail. The
``informative units`` measure asks instead how much of a channel's variance changes with the text at
a fixed position: ``text_variance_ratio`` = Var over texts at one position (averaged over positions)
/ the pooled variance; a channel is informative above ``INFORMATIVE_THRESHOLD``. An encoder whose
means ignore the input scores 0 on every channel.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from cola_core import ColaModel
from cola_core.constants import LN2
from cola_core.sampler import text_sample_id
from cola_core.text_codec import encode_tokens

from .bounds import decoder_nll, draw_terms, iw_bound_nats, posterior_draws, rate_nats, vae_space_log_prior
from .errors import WorkbenchError
from .likelihood import draw_log_likelihoods, summarize_draws
from .prior import flow_matching_loss
from .textbatch import block_counts, check_texts, length_groups, tokenize

DEFAULT_T_GRID = tuple(i / 10 for i in range(11))
ACTIVE_UNIT_THRESHOLD = 0.01
INFORMATIVE_THRESHOLD = 0.05


@dataclass
class TextDiagnostics:
    """One text's numbers. ``*_bits_per_token`` are over its real tokens."""

    index: int
    text: str
    sample_id: int                        # seeds this text's draws (default: CRC-32 of the text)
    tokens: int
    latents: int
    blocks: int
    token_accuracy: float                 # greedy decode of the posterior mean
    recon_bits_per_token: float           # decoder NLL given the posterior mean
    recon_bits_per_token_sampled: float   # same, averaged over posterior samples
    kl_nats: float                        # KL(q(z|x) || N(0, I)) over all latents and channels, closed form
    kl_bits_per_token: float
    posterior_std: float                  # mean posterior std over latents and channels
    latent_norm: float                    # mean L2 norm of DiT-space posterior means
    rate_bits_per_token: float            # the ELBO's KL term to N(0, I): mean_k [log q - log N] over the draws
    elbo_bits_per_token: float            # (NLL_sampled over all decoded tokens + rate) / ln2 / tokens
    fm_loss: float | None = None          # flow-matching loss averaged over the t grid and blocks
    fm_loss_by_block: list[float] | None = None
    fm_loss_by_t: list[float] | None = None      # one value per t of the grid
    prior_bits_per_dim: float | None = None        # -log2 p_DiT(z) / (n*C), mean over the posterior draws
    prior_stderr_nats: float | None = None         # its Hutchinson standard error (0 exact; NaN with one probe)
    prior_ode_error_nats: float | None = None      # its estimated ODE discretisation error
    rate_prior_bits_per_token: float | None = None  # the ELBO's KL term with the DiT prior, same draws
    elbo_prior_bits_per_token: float | None = None  # ELBO with the DiT prior instead of N(0, I)
    iw_prior_bits_per_token: float | None = None    # K-sample importance-weighted bound with the DiT prior


@dataclass
class DimensionDiagnostics:
    """One latent channel over the dataset."""

    dim: int
    kl_nats: float              # mean KL per latent
    mean_variance: float        # Var of the posterior mean pooled over every latent (active if > threshold)
    active: bool
    text_variance: float        # Var over texts of the posterior mean at one position, averaged over positions
    text_variance_ratio: float  # text_variance / mean_variance: the share of the channel that follows the text
    informative: bool           # text_variance_ratio > INFORMATIVE_THRESHOLD
    posterior_std: float        # mean posterior std


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
    rate_bits_per_token: float
    elbo_bits_per_token: float
    active_units: int           # pooled variance > threshold: ~all channels by construction for LayerNormed means
    informative_units: int      # channels whose means follow the text (the collapse check that can fail)
    latent_dim: int
    active_unit_threshold: float
    informative_threshold: float
    posterior_std: float
    fm_loss: float | None = None
    prior_bits_per_dim: float | None = None
    prior_stderr_bits_per_dim: float | None = None     # its divergence-estimate standard error (texts independent)
    prior_ode_error_bits_per_dim: float | None = None  # its ODE discretisation error (the texts' errors added)
    rate_prior_bits_per_token: float | None = None
    elbo_prior_bits_per_token: float | None = None
    iw_prior_bits_per_token: float | None = None


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
def active_units(means: torch.Tensor, threshold: float = ACTIVE_UNIT_THRESHOLD) -> tuple[int, torch.Tensor]:
    """means (N, C) posterior means over the data -> (count of channels with Var > threshold, Var (C,))."""
    if means.shape[0] < 2:
        raise WorkbenchError("active units need at least two latents to estimate a variance")
    var = means.var(dim=0, unbiased=True)
    return int((var > threshold).sum()), var


def text_variance(means: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-text posterior means [(n_i, C)] -> (C,) variance across texts at a fixed position, averaged over
    positions (each weighted by its texts - 1). NaN when no position is shared by two texts."""
    longest = max(m.shape[0] for m in means)
    total, weight = torch.zeros(means[0].shape[-1]), 0
    for p in range(longest):
        rows = torch.stack([m[p] for m in means if m.shape[0] > p])
        if rows.shape[0] > 1:
            total += rows.var(dim=0, unbiased=True) * (rows.shape[0] - 1)
            weight += rows.shape[0] - 1
    return total / weight if weight else torch.full_like(total, float("nan"))


def informative_units(means: Sequence[torch.Tensor], threshold: float = INFORMATIVE_THRESHOLD
                      ) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count of channels whose text_variance_ratio > threshold, text variance (C,), ratio (C,)) from per-text
    posterior means [(n_i, C)]; see the module docstring."""
    across = text_variance(means)
    pooled = torch.cat(list(means)).var(dim=0, unbiased=True).clamp_min(1e-12)
    ratio = across / pooled
    return int((ratio > threshold).sum()), across, ratio


# -- the whole pass ------------------------------------------------------------------------------------
@dataclass
class _Totals:
    """Dataset sums carried across batches."""

    channels: int
    means: dict[int, torch.Tensor] = field(default_factory=dict)   # text -> posterior means of covered latents
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
             sample_ids: Sequence[int] | None = None, active_unit_threshold: float = ACTIVE_UNIT_THRESHOLD,
             informative_threshold: float = INFORMATIVE_THRESHOLD) -> Diagnosis:
    """Diagnose ``model`` on ``texts``.

    ``samples`` = K posterior draws give the sampled NLL and both ELBOs. With ``prior`` the DiT's
    flow-matching loss is measured at each t in ``t_grid`` (on [0, 1]) on the first posterior
    draw, ``fm_draws`` noise draws each. ``likelihood`` adds the probability-flow ODE log-likelihood of
    every draw (``likelihood_options``: solver, steps, rtol, atol, probes, exact_divergence; see
    ``workbench.likelihood``), the ELBO under the DiT prior and its K-sample importance-weighted bound.
    ``sample_ids`` (one per text) seed each text's draws; by default each text's CRC-32.
    """
    texts = check_texts(texts)
    if not isinstance(samples, int) or samples < 1:
        raise WorkbenchError(f"samples must be an integer >= 1, got {samples!r}")
    grid = torch.tensor([float(t) for t in t_grid])
    if prior and (grid.numel() == 0 or bool(((grid < 0) | (grid > 1)).any())):
        raise WorkbenchError(f"t_grid must hold times in [0, 1], got {list(t_grid)}")
    sample_ids = [text_sample_id(t) for t in texts] if sample_ids is None else list(sample_ids)
    if len(sample_ids) != len(texts):
        raise WorkbenchError(f"{len(sample_ids)} sample ids for {len(texts)} texts")
    totals = _Totals(model.vae_config.latent_dim)
    per_text: list[TextDiagnostics | None] = [None] * len(texts)
    options = dict(samples=samples, grid=grid if prior else None, fm_draws=fm_draws, seed=seed,
                   likelihood_options=dict(likelihood_options or {}) if likelihood else None)
    for rows in length_groups(block_counts(model, texts), batch_size):
        records = _diagnose_batch(model, [texts[i] for i in rows], rows, [sample_ids[i] for i in rows], totals,
                                  **options)
        for i, rec in zip(rows, records):
            per_text[i] = rec
    means = [totals.means[i] for i in range(len(texts))]
    au, var = active_units(torch.cat(means), active_unit_threshold)
    iu, across, ratio = informative_units(means, informative_threshold)
    per_dim = [DimensionDiagnostics(dim=c, kl_nats=float(totals.kl_dim[c]) / totals.latents,
                                    mean_variance=float(var[c]), active=bool(var[c] > active_unit_threshold),
                                    text_variance=float(across[c]), text_variance_ratio=float(ratio[c]),
                                    informative=bool(ratio[c] > informative_threshold),
                                    posterior_std=float(totals.std_dim[c]) / totals.latents) for c in range(len(var))]
    dataset = _dataset_summary(per_text, au, iu, len(var), active_unit_threshold, informative_threshold, likelihood)
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


def _diagnose_batch(model: ColaModel, chunk: list[str], indices: list[int], sample_ids: list[int], totals: _Totals,
                    *, samples: int, grid: torch.Tensor | None, fm_draws: int, seed: int,
                    likelihood_options: dict | None) -> list[TextDiagnostics]:
    """Per-text records of one batch of texts of one length; dataset sums go into ``totals``."""
    bs = model.block_size
    batch = tokenize(model, chunk)
    post = encode_tokens(model, batch)
    real, valid, lengths = batch.real, post.valid, batch.latent_lengths     # tokens (B, L); latents (B, n)
    z_mean = model.vae.to_dit_space(post.mean)
    nll_mean, greedy = decoder_nll(model, z_mean, batch)
    draws = posterior_draws(post, lengths, samples, seed, sample_ids)     # (K, B, n, C) VAE space
    terms = draw_terms(model, batch, post, draws)
    rate = rate_nats(terms.log_q, terms.log_normal)                        # (B,)
    kl = post.kl_to_standard_normal() * valid[..., None]                   # (B, n, C)
    for b, i in enumerate(indices):
        totals.means[i] = post.mean[b][batch.real_latents[b]].cpu()
    totals.kl_dim += kl.sum((0, 1)).cpu()
    totals.std_dim += (post.std * valid[..., None]).sum((0, 1)).cpu()
    totals.latents += int(valid.sum())
    if grid is not None:
        fm = flow_matching_loss(model, model.vae.to_dit_space(draws[0]), lengths, grid, draws=fm_draws, seed=seed,
                                sample_ids=sample_ids)
        per_cell = lambda x: x.unflatten(2, (-1, bs)).sum(-1).sum(1)    # noqa: E731  (K, B, n) -> (K, nb)
        totals.add_fm((per_cell(fm.loss.nan_to_num(0.0)), per_cell(fm.zero.nan_to_num(0.0)),
                       per_cell((~fm.loss.isnan()).long())))
    if likelihood_options is not None:
        results = draw_log_likelihoods(model, draws, lengths, seed, sample_ids, likelihood_options)
        log_p = vae_space_log_prior(model, torch.stack([r.logp for r in results]).double(), results[0].dims)
        rate_prior = rate_nats(terms.log_q, log_p)
        iw_prior = iw_bound_nats(terms.nll, terms.log_q, log_p)
    records = []
    for b, text in enumerate(chunk):
        tokens, n = int(batch.token_lengths[b]), int(valid[b].sum())
        kl_b, per_token = float(kl[b].sum()), lambda nats: float(nats) / LN2 / tokens   # noqa: E731
        nll_sampled = float(terms.nll[:, b].mean())
        rec = TextDiagnostics(
            index=indices[b], text=text, sample_id=sample_ids[b], tokens=tokens, latents=n, blocks=n // bs,
            token_accuracy=float((greedy[b] == batch.ids[b])[real[b]].float().mean()),
            recon_bits_per_token=float(nll_mean[b][real[b]].mean()) / LN2,
            recon_bits_per_token_sampled=float(terms.nll_tokens[:, b][:, real[b].cpu()].mean()) / LN2,
            kl_nats=kl_b, kl_bits_per_token=per_token(kl_b), posterior_std=float(post.std[b, :n].mean()),
            latent_norm=float(z_mean[b, :n].norm(dim=-1).mean()), rate_bits_per_token=per_token(rate[b]),
            elbo_bits_per_token=per_token(nll_sampled + float(rate[b])))
        if grid is not None:
            per_block = fm.loss[:, b, :n].mean(0).unflatten(0, (-1, bs)).mean(-1)
            rec.fm_loss, rec.fm_loss_by_block = float(per_block.mean()), [float(x) for x in per_block]
            rec.fm_loss_by_t = [float(x) for x in fm.loss[:, b, :n].mean(-1)]
        if likelihood_options is not None:
            summary = summarize_draws(results, b)
            rec.prior_bits_per_dim, rec.prior_stderr_nats = summary["bits_per_dim"], summary["stderr_nats"]
            rec.prior_ode_error_nats = summary["ode_error_nats"]
            rec.rate_prior_bits_per_token = per_token(rate_prior[b])
            rec.elbo_prior_bits_per_token = per_token(nll_sampled + float(rate_prior[b]))
            rec.iw_prior_bits_per_token = per_token(iw_prior[b])
        records.append(rec)
    return records


def _dataset_summary(rows: list[TextDiagnostics], au: int, iu: int, dim: int, threshold: float,
                     informative_threshold: float, likelihood: bool) -> DatasetDiagnostics:
    """Token-weighted means of per-text numbers (latent-weighted for bits per dimension)."""
    tokens = sum(r.tokens for r in rows)

    def weighted(name: str) -> float:
        return sum(getattr(r, name) * r.tokens for r in rows) / tokens

    summary = DatasetDiagnostics(
        texts=len(rows), tokens=tokens, latents=sum(r.latents for r in rows),
        token_accuracy=weighted("token_accuracy"), recon_bits_per_token=weighted("recon_bits_per_token"),
        recon_bits_per_token_sampled=weighted("recon_bits_per_token_sampled"),
        kl_bits_per_token=weighted("kl_bits_per_token"), rate_bits_per_token=weighted("rate_bits_per_token"),
        elbo_bits_per_token=weighted("elbo_bits_per_token"), active_units=au, informative_units=iu, latent_dim=dim,
        active_unit_threshold=threshold, informative_threshold=informative_threshold, posterior_std=0.0)
    if likelihood:
        dims_ln2 = sum(r.latents for r in rows) * dim * LN2      # the dataset's bits/dim = sum of -log p / this
        summary.prior_bits_per_dim = sum(r.prior_bits_per_dim * r.latents for r in rows) / sum(r.latents for r in rows)
        summary.prior_stderr_bits_per_dim = math.sqrt(sum(r.prior_stderr_nats ** 2 for r in rows)) / dims_ln2
        summary.prior_ode_error_bits_per_dim = sum(r.prior_ode_error_nats for r in rows) / dims_ln2
        for name in ("rate_prior_bits_per_token", "elbo_prior_bits_per_token", "iw_prior_bits_per_token"):
            setattr(summary, name, weighted(name))
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

    dims, d = diag.per_dimension, diag.dataset
    fig = make_subplots(rows=1, cols=3, subplot_titles=("KL per channel (nats per latent)",
                                                        "Var of the posterior mean, pooled (active units)",
                                                        "share of it that follows the text (informative)"))
    fig.add_trace(go.Bar(x=[c.dim for c in dims], y=[c.kl_nats for c in dims], name="KL"), 1, 1)
    fig.add_trace(go.Bar(x=[c.dim for c in dims], y=[c.mean_variance for c in dims], name="variance",
                         marker_color=["#2a9d8f" if c.active else "#bbbbbb" for c in dims]), 1, 2)
    fig.add_trace(go.Bar(x=[c.dim for c in dims], y=[c.text_variance_ratio for c in dims], name="text share",
                         marker_color=["#2a9d8f" if c.informative else "#e76f51" for c in dims]), 1, 3)
    fig.add_hline(y=d.active_unit_threshold, line_dash="dot", row=1, col=2)
    fig.add_hline(y=d.informative_threshold, line_dash="dot", row=1, col=3)
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(height=height, showlegend=False,
                      title=f"Compression: {d.informative_units}/{d.latent_dim} informative units "
                            f"({d.active_units}/{d.latent_dim} active, pooled over positions)")
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

    parts = {"reconstruction (sampled z)": d.recon_bits_per_token_sampled, "rate: KL to N(0, I)": d.rate_bits_per_token}
    if d.rate_prior_bits_per_token is not None:
        parts["rate: KL to the DiT prior"] = d.rate_prior_bits_per_token
    fig = go.Figure(go.Bar(x=list(parts), y=list(parts.values())))
    title = f"ELBO {d.elbo_bits_per_token:.3f} bits/token (N(0, I) prior)"
    if d.elbo_prior_bits_per_token is not None:
        title += (f"; {d.elbo_prior_bits_per_token:.3f} with the DiT prior (importance-weighted "
                  f"{d.iw_prior_bits_per_token:.3f}; {d.prior_bits_per_dim:.3f} bits/dim)")
    fig.update_layout(height=height, title=title, yaxis_title="bits per token")
    figs["elbo"] = fig
    return figs
