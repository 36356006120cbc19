"""The run folder's ``report.html``: plotly figures per experiment kind, a table of records, spec and environment."""
from __future__ import annotations

import html
import json
from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any, Iterable

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from cola_core.tensorfile import load_tensor_file

from ..io import write_text_atomic
from ..monitor import OFF_MANIFOLD_RATIO
from ..projection import fit_points
from .spec import Spec

HEIGHT = 420
TABLE_ROWS = 200
TABLE_SKIP = ("item", "velocity_gap", "block", "step", "t", "z_norm", "x0_norm", "preview", "fm_loss_by_block",
              "fm_loss_by_t", "logp_blocks", "completion_ids", "block_norms", "norm_ratio", "off_manifold",
              "seeds")


def _grouped_mean(records: Iterable[dict], group: tuple[str, ...], x: str, y: str) -> dict[tuple, tuple[list, list]]:
    """{group values: (xs, mean y per x)} over records where y is not None."""
    cells: dict[tuple, dict[Any, list]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get(y) is not None:
            cells[tuple(r[g] for g in group)][r[x]].append(r[y])
    return {g: (sorted(c), [mean(c[k]) for k in sorted(c)]) for g, c in cells.items()}


def _label(group: tuple[str, ...], values: tuple) -> str:
    return ", ".join(f"{g}={v}" for g, v in zip(group, values))


def _metric_grid(records: list[dict], x: str, group: tuple[str, ...], metrics: list[str], title: str) -> go.Figure:
    """One subplot per metric: mean metric vs ``x``, one line per group."""
    metrics = [m for m in metrics if any(r.get(m) is not None for r in records)]
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=metrics)
    for i, metric in enumerate(metrics):
        for j, (g, (xs, ys)) in enumerate(sorted(_grouped_mean(records, group, x, metric).items())):
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=_label(group, g), legendgroup=str(g),
                                     showlegend=i == 0, line=dict(color=_color(j))), i // cols + 1, i % cols + 1)
        fig.update_xaxes(title_text=x, row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(height=HEIGHT * rows, title=title)
    return fig


def _color(i: int) -> str:
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")
    return palette[i % len(palette)]


def guidance_figures(spec: Spec, records: list[dict], tensors: dict, summary: list[dict]) -> list[go.Figure]:
    figs = [_metric_grid(records, "guidance", ("steps",),
                         ["distinct_1", "distinct_2", "in_vocab_rate", "latent_norm", "norm_ratio",
                          "velocity_gap_mean", "semantic_similarity"],
                         "Metrics of the completions vs guidance (mean over prompts and seeds; norm_ratio = latent "
                         f"norm / encoded data norm, off-manifold above {OFF_MANIFOLD_RATIO:g})")]
    if summary:
        figs.append(_metric_grid(summary, "guidance", ("steps",),
                                 ["distinct_1_pooled", "distinct_2_pooled", "self_bleu", "pairwise_overlap"],
                                 "Population of each prompt's completions across seeds (mean over prompts)"))
    per_step: dict[tuple, list[list[float]]] = defaultdict(list)
    for r in records:
        per_step[(r["guidance"], r["steps"])] += r["velocity_gap"]
    fig = go.Figure()
    for j, ((g, s), rows) in enumerate(sorted(per_step.items())):
        ys = [mean(row[k] for row in rows) for k in range(s)]
        fig.add_trace(go.Scatter(x=list(range(s)), y=ys, mode="lines+markers", name=f"guidance={g}, steps={s}",
                                 line=dict(color=_color(j))))
    fig.update_layout(height=HEIGHT, title="|v_cond - v_uncond| per solver step (mean over latents, blocks, prompts)",
                      xaxis_title="step", yaxis_title="L2 distance")
    return figs + [fig]


def interpolation_figures(spec: Spec, records: list[dict], tensors: dict, summary: list[dict]) -> list[go.Figure]:
    return [_metric_grid(records, "alpha", ("pair", "method"),
                         ["distance_start", "distance_end", "latent_norm", "similarity_start", "similarity_end",
                          "in_vocab_rate"], "Interpolation paths")]


def recon_figures(spec: Spec, records: list[dict], tensors: dict, summary: list[dict]) -> list[go.Figure]:
    figs = []
    fig = make_subplots(rows=1, cols=2, subplot_titles=("reconstruction vs prior fit", "token accuracy"))
    fig.add_trace(go.Scatter(x=[r["recon_bits_per_token"] for r in records], y=[r["fm_loss"] for r in records],
                             mode="markers", text=[r["text"][:80] for r in records], name="texts"), 1, 1)
    fig.add_trace(go.Histogram(x=[r["token_accuracy"] for r in records], nbinsx=20, name="accuracy"), 1, 2)
    fig.update_xaxes(title_text="decoder NLL (bits/token, posterior mean)", row=1, col=1)
    fig.update_yaxes(title_text="flow-matching loss", row=1, col=1)
    fig.update_layout(height=HEIGHT, title="Reconstruction vs prior", showlegend=False)
    figs.append(fig)
    if records and records[0].get("fm_loss_by_t"):
        k = len(records[0]["fm_loss_by_t"])
        weights = [r["latents"] for r in records]
        by_t = [sum(r["fm_loss_by_t"][i] * w for r, w in zip(records, weights)) / sum(weights) for i in range(k)]
        blocks = max(len(r["fm_loss_by_block"]) for r in records)
        by_block = [mean(r["fm_loss_by_block"][b] for r in records if len(r["fm_loss_by_block"]) > b)
                    for b in range(blocks)]
        fig = make_subplots(rows=1, cols=2, subplot_titles=("loss vs t", "loss vs block"))
        fig.add_trace(go.Scatter(x=spec["t_grid"], y=by_t, mode="lines+markers"), 1, 1)
        fig.add_trace(go.Scatter(x=list(range(blocks)), y=by_block, mode="lines+markers"), 1, 2)
        fig.update_layout(height=HEIGHT, title="Flow-matching loss on encoder latents", showlegend=False)
        figs.append(fig)
    if records and records[0].get("prior_bits_per_dim") is not None:
        fig = go.Figure(go.Scatter(x=[r["recon_bits_per_token"] for r in records],
                                   y=[r["prior_bits_per_dim"] for r in records], mode="markers",
                                   text=[r["text"][:80] for r in records]))
        fig.update_layout(height=HEIGHT, title="Prior log-likelihood (ODE) vs reconstruction",
                          xaxis_title="decoder NLL (bits/token)", yaxis_title="prior bits per latent dim")
        figs.append(fig)
    return figs


def trajectory_figures(spec: Spec, records: list[dict], tensors: dict, summary: list[dict]) -> list[go.Figure]:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("|z_t| per latent", "|x0_pred| per latent",
                                                        "|v_cond - v_uncond|"))
    for j, r in enumerate(records):
        name = f"prompt {r['prompt_index']}, seed {r['seed']}"
        for c, key in enumerate(("z_norm", "x0_norm", "velocity_gap"), start=1):
            fig.add_trace(go.Scatter(y=r[key], mode="lines", name=name, legendgroup=name, showlegend=c == 1,
                                     line=dict(color=_color(j))), 1, c)
    fig.update_xaxes(title_text="solver step (all blocks in order)")
    fig.update_layout(height=HEIGHT, title="Trajectories")
    figs = [fig]
    paths = _trajectory_paths(tensors)
    if paths:
        cloud = torch.cat([p.reshape(-1, p.shape[-1]) for p in paths.values()])
        proj = fit_points(cloud, "pca", 2)
        fig = go.Figure()
        for j, (name, path) in enumerate(paths.items()):
            xy = proj.transform(path)                       # (steps, rows, 2)
            for row in range(xy.shape[1]):
                fig.add_trace(go.Scatter(x=xy[:, row, 0].tolist(), y=xy[:, row, 1].tolist(), mode="lines+markers",
                                         line=dict(color=_color(j)), name=name, legendgroup=name,
                                         showlegend=row == 0, marker=dict(size=4)))
        fig.update_layout(height=HEIGHT + 100, title="z_t paths (PCA of all captured z, one line per latent row)")
        figs.append(fig)
    return figs


def _trajectory_paths(tensors: dict) -> dict:
    """{'item00000.block1.sample0': (steps, bs, C)} from captured ``z`` tensors."""
    steps: dict[tuple[str, str], dict[int, Any]] = defaultdict(dict)
    for name, value in tensors.items():
        parts = name.split(".")
        if len(parts) == 6 and parts[1] == "block" and parts[3] == "step" and parts[5] == "z":
            steps[(parts[0], parts[2])][int(parts[4])] = value
    paths = {}
    for (item, block), by_step in sorted(steps.items()):
        stacked = torch.stack([by_step[k] for k in sorted(by_step)])     # (steps, B, bs, C)
        for b in range(stacked.shape[1]):
            paths[f"{item}.block{block}.sample{b}"] = stacked[:, b]
    return paths


def bench_figures(spec: Spec, records: list[dict], tensors: dict, summary: list[dict]) -> list[go.Figure]:
    """Accuracy of each task (and their average) against the most-swept knob, one line per other setting."""
    knobs = ("guidance", "steps", "solver")
    x = max(knobs, key=lambda k: len(spec[k]))
    rows: dict[tuple, dict] = {}
    for r in records:
        rows.setdefault(tuple(r[k] for k in knobs), {k: r[k] for k in knobs})[r["task"]] = r["accuracy"]
    tasks = list(dict.fromkeys(r["task"] for r in records))
    for row in rows.values():
        row["tasks_average"] = mean(row[t] for t in tasks)
    group = tuple(k for k in knobs if k != x)
    return [_metric_grid(list(rows.values()), x, group, tasks + ["tasks_average"], f"Accuracy (%) per task vs {x}")]


FIGURES = {"guidance_sweep": guidance_figures, "interpolation": interpolation_figures,
           "recon_vs_prior": recon_figures, "trajectory": trajectory_figures, "bench": bench_figures}


def _table(records: list[dict]) -> str:
    if not records:
        return "<p>No records.</p>"
    cols = [c for c in records[0] if c not in TABLE_SKIP]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in records[:TABLE_ROWS]:
        cells = "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols)
        body.append(f"<tr>{cells}</tr>")
    more = f"<p>{len(records) - TABLE_ROWS} more rows in results.jsonl</p>" if len(records) > TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{more}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_report(out: Path, spec: Spec, records: list[dict], notes: list[str], summary: list[dict] | None = None,
                 plotlyjs: str = "inline") -> Path:
    """Write ``report.html`` (plotly.js inlined by default, so it opens offline)."""
    tensor_path = out / "tensors.safetensors"
    tensors = load_tensor_file(tensor_path) if tensor_path.is_file() and spec.kind == "trajectory" else {}
    figures = FIGURES[spec.kind](spec, records, tensors, summary or []) if records else []
    parts = []
    for i, fig in enumerate(figures):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(True if plotlyjs == "inline" else "cdn")
                                 if i == 0 else False))
    env_path = out / "environment.json"
    env = env_path.read_text(encoding="utf-8") if env_path.is_file() else "{}"
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(spec.name)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:left}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>{html.escape(spec.name)} <small>({spec.kind})</small></h1>
<p>{html.escape(spec.params.get("description") or "")}</p>
<p>{len(records)} records. Checkpoint {html.escape(json.loads(env).get("checkpoint", {}).get("fingerprint", "?"))}.</p>
{f"<ul>{note_html}</ul>" if notes else ""}
{"".join(parts)}
{f"<h2>Summary</h2>{_table(summary)}" if summary else ""}
<h2>Records</h2>{_table(records)}
<details><summary>spec.toml</summary><pre>{html.escape(spec.to_toml())}</pre></details>
<details><summary>environment.json</summary><pre>{html.escape(env)}</pre></details>
</body></html>
"""
    path = out / "report.html"
    write_text_atomic(path, page)
    return path
