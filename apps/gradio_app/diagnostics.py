"""Diagnostics tab: reconstruction vs compression vs prior fit for a text, a list or an uploaded file.

Numbers come from ``workbench.diagnostics.diagnose``; the per-token heatmap from the workbench's
encoder latents and decoder logits (``Workbench.encode`` / ``Workbench.decoder_logits``). Every
estimate is shown with its error where the workbench reports one (the ODE log-likelihood: its
divergence-estimate standard error and its discretisation error), and the collapse check that can fail
(informative units: channels whose means follow the text) beside the one that cannot (active units).
"""
from __future__ import annotations

import math

import gradio as gr
import plotly.graph_objects as go
import torch

from cola_core.constants import LN2
from workbench import Workbench
from workbench.bounds import token_nll
from workbench.diagnostics import Diagnosis

from . import exports, inputs
from .context import AppContext
from .display import display_tokens
from .events import Progress, TabComponents, Update, no_progress, on, run_state
from .plots import HEIGHT, color, empty_figure

TITLE, TAB_ID = "Diagnostics", "diagnostics"
INPUTS = ("texts", "upload", "samples", "draws", "t_points", "seed", "likelihood", "ode_steps")
OUTPUTS = ("summary", "scatter", "heatmap", "fm", "bits", "table", "files", "run", "units")
UNITS_HEIGHT = 320

HEATMAP_ROWS = 40       # texts shown in the per-token heatmap
HEATMAP_TOKENS = 64     # token positions shown per text
EXAMPLE = "a small domesticated animal kept as a pet\nthe season of the year between spring and autumn\n" \
          "to give money in exchange for goods"


def token_records(wb: Workbench, texts: list[str], batch_size: int = 32) -> list[dict]:
    """Per text: its tokens, the decoder's NLL (bits) of each from the posterior mean, and the greedy token."""
    out, tok = [], wb.tokenizer
    for start in range(0, len(texts), batch_size):
        latents = wb.encode(texts[start:start + batch_size])
        for ids, logits in zip(latents.token_ids, wb.decoder_logits(latents)):
            logits = logits[None, :len(ids)]                                    # (1, L, V)
            nll = (token_nll(logits, torch.tensor([ids]))[0] / LN2).tolist()
            greedy = logits[0].argmax(dim=-1).tolist()
            out.append({"tokens": display_tokens(ids, tok), "nll_bits": nll, "predicted": display_tokens(greedy, tok),
                        "correct": [int(a == b) for a, b in zip(ids, greedy)]})
    return out


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


# -- figures --------------------------------------------------------------------------------------------
def scatter_figure(diag: Diagnosis) -> go.Figure:
    """Compression (KL bits/token) vs reconstruction (bits/token), colour = prior fit (FM loss)."""
    rows = diag.per_text
    fig = go.Figure(go.Scatter(
        x=[r.kl_bits_per_token for r in rows], y=[r.recon_bits_per_token for r in rows], mode="markers",
        marker=dict(size=11, color=[r.fm_loss for r in rows], colorscale="Viridis", showscale=True,
                    colorbar=dict(title="FM loss")),
        text=[_short(r.text) for r in rows],
        customdata=[[r.index + 1, r.token_accuracy, r.fm_loss, r.elbo_bits_per_token] for r in rows],
        hovertemplate="#%{customdata[0]} %{text}<br>KL %{x:.3f} bits/token · recon %{y:.3f} bits/token"
                      "<br>token accuracy %{customdata[1]:.2f} · FM loss %{customdata[2]:.3f}"
                      " · ELBO %{customdata[3]:.3f}<extra></extra>"))
    fig.update_layout(height=HEIGHT, title="Per text: reconstruction vs compression, colour = prior fit",
                      xaxis_title="compression: KL to N(0, I) (bits/token)",
                      yaxis_title="reconstruction: decoder NLL (bits/token)", margin=dict(l=60, r=20, t=50, b=50))
    return fig


def heatmap_figure(records: list[dict], texts: list[str]) -> go.Figure:
    """Rows = texts, columns = token positions, colour = decoder NLL of the true token (bits)."""
    shown = records[:HEATMAP_ROWS]
    width = min(HEATMAP_TOKENS, max(len(r["tokens"]) for r in shown))
    z, hover, labels = [], [], []
    for i, rec in enumerate(shown):
        n = min(width, len(rec["tokens"]))
        z.append(rec["nll_bits"][:n] + [None] * (width - n))
        labels_k = [f"{rec['tokens'][k]!r} → predicted {rec['predicted'][k]!r}" for k in range(n)]
        hover.append(labels_k + [""] * (width - n))
        labels.append(f"#{i + 1} {_short(texts[i], 28)}")
    fig = go.Figure(go.Heatmap(z=z, y=labels, x=list(range(width)), text=hover, colorscale="YlOrRd",
                               colorbar=dict(title="bits"), hoverongaps=False,
                               hovertemplate="%{y}<br>token %{x}: %{text}<br>-log2 p = %{z:.2f} bits<extra></extra>"))
    title = "Per-token reconstruction: -log2 p(token | posterior mean)"
    if len(records) > len(shown):
        title += f" (first {len(shown)} of {len(records)} texts)"
    fig.update_layout(height=max(280, 26 * len(shown) + 140), title=title, xaxis_title="token position",
                      yaxis=dict(autorange="reversed"), margin=dict(l=220, r=20, t=50, b=50))
    return fig


def fm_figure(diag: Diagnosis) -> go.Figure:
    """Flow-matching loss vs t: dataset mean, the predict-zero reference and each text (thin lines)."""
    pts = diag.flow_matching
    ts = sorted({p.t for p in pts})

    def weighted(t: float, key: str) -> float:
        sel = [p for p in pts if p.t == t]
        return sum(getattr(p, key) * p.count for p in sel) / sum(p.count for p in sel)

    fig = go.Figure()
    for i, r in enumerate(diag.per_text[:20]):
        fig.add_trace(go.Scatter(x=ts, y=r.fm_loss_by_t, mode="lines", name=f"#{r.index + 1}",
                                 line=dict(width=1, color=color(i)), opacity=0.45, text=_short(r.text),
                                 hovertemplate="%{text}<br>t=%{x:.2f} loss %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=ts, y=[weighted(t, "loss") for t in ts], mode="lines+markers", name="mean",
                             line=dict(width=3, color="#000")))
    fig.add_trace(go.Scatter(x=ts, y=[weighted(t, "zero_velocity_loss") for t in ts], mode="lines",
                             name="predict 0 (reference)", line=dict(dash="dot", color="#888")))
    fig.update_layout(height=HEIGHT, title="Prior fit: flow-matching loss vs t on encoder latents",
                      xaxis_title="t / T", yaxis_title="loss", margin=dict(l=60, r=20, t=50, b=50))
    return fig


def bits_figure(diag: Diagnosis) -> go.Figure:
    """Per text: ELBO bits/token split into reconstruction (sampled z) and KL; DiT-prior ELBO if measured."""
    rows = diag.per_text
    x = [f"#{r.index + 1}" for r in rows]
    hover = [_short(r.text) for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=[r.recon_bits_per_token_sampled for r in rows], name="reconstruction (sampled z)",
                         text=hover, hovertemplate="%{text}<br>%{y:.3f} bits/token<extra>reconstruction</extra>"))
    fig.add_trace(go.Bar(x=x, y=[r.kl_bits_per_token for r in rows], name="KL to N(0, I)", text=hover,
                         hovertemplate="%{text}<br>%{y:.3f} bits/token<extra>KL</extra>", textposition="none"))
    if rows and rows[0].elbo_prior_bits_per_token is not None:
        fig.add_trace(go.Scatter(x=x, y=[r.elbo_prior_bits_per_token for r in rows], mode="markers",
                                 name="ELBO with the DiT prior", marker=dict(size=10, symbol="diamond", color="#000")))
    d = diag.dataset
    fig.update_layout(barmode="stack", height=HEIGHT, yaxis_title="bits per token",
                      title=f"Bits/token breakdown (dataset ELBO {d.elbo_bits_per_token:.3f} bits/token)",
                      margin=dict(l=60, r=20, t=50, b=50))
    for trace in fig.data[:2]:
        trace.textposition = "none"
    return fig


def units_figure(diag: Diagnosis) -> go.Figure:
    """Per latent channel: the share of its variance that follows the text (informative above the threshold)
    and its mean KL, so a collapsed channel (KL ≈ 0, ratio ≈ 0) stands out."""
    dims, d = diag.per_dimension, diag.dataset
    fig = go.Figure(go.Bar(x=[r.dim for r in dims], y=[r.text_variance_ratio for r in dims],
                           marker_color=[color(0) if r.informative else "#c7c7c7" for r in dims],
                           customdata=[[r.kl_nats, r.mean_variance, "informative" if r.informative else
                                        "not informative"] for r in dims],
                           hovertemplate="channel %{x}: %{customdata[2]}<br>text-variance ratio %{y:.3f}"
                                         "<br>pooled variance %{customdata[1]:.3f} · KL %{customdata[0]:.3f} nats"
                                         "<extra></extra>"))
    fig.add_hline(y=d.informative_threshold, line_dash="dash", line_color="#d62728",
                  annotation_text=f"informative above {d.informative_threshold:g}", annotation_position="top right")
    fig.update_layout(height=UNITS_HEIGHT, xaxis=dict(title="latent channel", dtick=1),
                      yaxis=dict(title="Var over texts / pooled Var", rangemode="tozero"),
                      title=f"Informative units: {d.informative_units} / {d.latent_dim} channels follow the text "
                            f"(active units {d.active_units} / {d.latent_dim}: ≈ all by construction)",
                      margin=dict(l=60, r=20, t=50, b=50))
    return fig


def estimate(value: float) -> str:
    """An error estimate for people ("not estimated" where the workbench could not, e.g. one ODE step)."""
    return f"{value:.3f}" if math.isfinite(value) else "not estimated"


def likelihood_line(d) -> str:
    """The prior log-likelihood with its errors: ± the divergence estimate's standard error, and the ODE's."""
    return (f"| prior log-likelihood (posterior draws) | {d.prior_bits_per_dim:.3f} ± "
            f"{estimate(d.prior_stderr_bits_per_dim)} bits/dim (divergence estimate; 0 when exact), ODE error ≈ "
            f"{estimate(d.prior_ode_error_bits_per_dim)} |")


def summary_markdown(diag: Diagnosis) -> str:
    d = diag.dataset
    lines = [f"**{d.texts} texts, {d.tokens} tokens, {d.latents} latents.**",
             "| measure | value |", "|---|---|",
             f"| token accuracy (posterior mean) | {d.token_accuracy:.3f} |",
             f"| reconstruction, mean z | {d.recon_bits_per_token:.3f} bits/token |",
             f"| reconstruction, sampled z | {d.recon_bits_per_token_sampled:.3f} bits/token |",
             f"| KL to N(0, I) | {d.kl_bits_per_token:.3f} bits/token |",
             f"| ELBO | {d.elbo_bits_per_token:.3f} bits/token |",
             f"| informative units (means follow the text) | {d.informative_units} / {d.latent_dim} |",
             f"| active units (≈ all by construction) | {d.active_units} / {d.latent_dim} |",
             f"| flow-matching loss | {d.fm_loss:.4f} |" if d.fm_loss is not None else "",
             likelihood_line(d) if d.prior_bits_per_dim is not None else "",
             f"| ELBO with the DiT prior | {d.elbo_prior_bits_per_token:.3f} bits/token |"
             if d.elbo_prior_bits_per_token is not None else "",
             f"| importance-weighted bound, DiT prior ({diag.settings['samples']} draw"
             f"{'s' if diag.settings['samples'] > 1 else ''}) | "
             f"{d.iw_prior_bits_per_token:.3f} bits/token |" if d.iw_prior_bits_per_token is not None else ""]
    return "\n".join(line for line in lines if line)


TABLE_COLUMNS = ["#", "text", "tokens", "token_accuracy", "recon_bits_per_token", "kl_bits_per_token",
                 "elbo_bits_per_token", "fm_loss", "prior_bits_per_dim", "prior_stderr_nats", "prior_ode_error_nats",
                 "iw_prior_bits_per_token"]


def table_rows(diag: Diagnosis) -> list[list]:
    def fmt(v):
        return None if v is None else round(v, 4) if isinstance(v, float) else v
    return [[r.index + 1, r.text, r.tokens] + [fmt(getattr(r, c)) for c in TABLE_COLUMNS[3:]] for r in diag.per_text]


def diagnose(ctx: AppContext, texts, upload, samples, draws, t_points, seed, likelihood, ode_steps, *,
             progress: Progress = no_progress) -> Update:
    """Diagnose the typed and uploaded texts with ``Workbench.diagnose``: summary, figures, table, downloads."""
    lim = ctx.limits
    corpus = inputs.corpus(texts, upload, lim, private=ctx.store.root)
    n_t = inputs.integer("points on the t grid", t_points, 2, 21)
    options = dict(samples=inputs.integer("posterior samples", samples, 1, 8),
                   fm_draws=inputs.integer("FM noise draws", draws, 1, 4),
                   t_grid=[i / (n_t - 1) for i in range(n_t)], seed=inputs.seed("seed", seed),
                   likelihood=inputs.flag("ODE log-likelihood", likelihood),
                   likelihood_options={"steps": inputs.integer("ODE steps", ode_steps, 1, 32), "solver": "rk4"})
    progress(0.1, desc=f"diagnosing {len(corpus)} texts")
    diag = ctx.workbench.diagnose(corpus, **options)
    progress(0.7, desc="per-token reconstruction")
    tokens = token_records(ctx.workbench, corpus)
    figures = {"scatter": scatter_figure(diag), "heatmap": heatmap_figure(tokens, corpus), "fm": fm_figure(diag),
               "bits": bits_figure(diag), "units": units_figure(diag)}
    run_id = ctx.store.put("diagnostics", {"diagnosis": diag, "tokens": tokens})
    records = diag.records()
    data = {"run_id": run_id, **records, "tokens": [{"text": t, **r} for t, r in zip(corpus, tokens)],
            "settings": diag.settings}
    files = exports.bundle(ctx.store.folder(run_id), "diagnostics", data, records["per_text"],
                           f"Cola diagnostics ({len(corpus)} texts)", list(figures.values()), records["dataset"][0])
    return {"summary": summary_markdown(diag), **figures, "table": table_rows(diag), "files": files, "run": run_id}


def build(ctx: AppContext) -> TabComponents:
    """The tab's layout (inside a ``gr.Tab``)."""
    lim, ui = ctx.limits, TabComponents()
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            ui.texts = gr.Textbox(label="Texts (one per line)", lines=6, value=EXAMPLE)
            ui.upload = gr.File(label=f"…or upload .txt / .jsonl (at most {lim.max_upload_bytes // 1024} KiB, "
                                      f"{lim.max_texts} texts)", file_types=[".txt", ".jsonl"], type="filepath")
            with gr.Row():
                ui.samples = gr.Slider(1, 8, value=1, step=1, label="Posterior samples")
                ui.draws = gr.Slider(1, 4, value=1, step=1, label="FM noise draws per t")
            with gr.Row():
                ui.t_points = gr.Slider(2, 21, value=11, step=1, label="Points on the t grid")
                ui.seed = gr.Number(0, precision=0, label="Seed", minimum=0, maximum=inputs.MAX_SEED)
            with gr.Row():
                ui.likelihood = gr.Checkbox(False, label="ODE log-likelihood (slow)")
                ui.ode_steps = gr.Slider(1, 32, value=8, step=1, label="ODE steps")
            ui.diagnose = gr.Button("Diagnose", variant="primary")
            ui.summary = gr.Markdown("Numbers appear here.")
        with gr.Column(scale=2, min_width=480):
            ui.scatter = gr.Plot(empty_figure("reconstruction vs compression vs prior fit"), label="Per text")
            ui.heatmap = gr.Plot(empty_figure("per-token reconstruction heatmap"), label="Per token")
    with gr.Row():
        ui.fm = gr.Plot(empty_figure("flow-matching loss vs t"), label="Prior fit")
        ui.bits = gr.Plot(empty_figure("bits/token breakdown"), label="Bits per token")
    ui.units = gr.Plot(empty_figure("informative units per latent channel", UNITS_HEIGHT), label="Latent channels")
    ui.table = gr.Dataframe(headers=TABLE_COLUMNS, label="Per-text numbers", interactive=False, wrap=True)
    ui.files = gr.File(label="Downloads: JSON / CSV / HTML", file_count="multiple", interactive=False)
    ui.run = run_state(ctx)
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    on(ctx, ui, ui.diagnose.click, diagnose, INPUTS, OUTPUTS, api_name="diagnose", heavy=True)
