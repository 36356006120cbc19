"""Trajectories tab: generate with the workbench sampler, streamed step by step, then scrub the flow.

The event function is a generator over ``SamplerSession`` steps: what the browser sees is the
sampler as it runs (throttled to a few updates a second), never a replay. Each run's trajectory
lives in the run store; the sliders and projection controls re-render from it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import gradio as gr
import plotly.graph_objects as go
import torch

from cola_core.sampler import SCHEDULES, SOLVERS
from workbench import StepState, Trajectory

from . import exports, inputs
from .context import AppContext
from .store import session_key
from .plots import Overlay, color, empty_figure, projection_figure

TEXT_EVERY_S = 0.25     # streamed text/status/progress updates at most this often
FIGURE_EVERY_S = 1.0    # streamed figure updates at most this often (a slow browser must keep up)
LIVE_BACKDROP = 600     # backdrop points in figures streamed while sampling (all of them afterwards)
NORMS_HEIGHT = 340


@dataclass
class TrajectoryRun:
    """One generation run: its knobs, the recorded trajectory and one summary row per solver step."""

    prompt: str
    knobs: dict
    trajectory: Trajectory
    planned_blocks: int
    rows: list[dict] = field(default_factory=list)
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    status: str = "running"          # running | finished | stopped
    seconds: float = 0.0
    session: object | None = None    # the live SamplerSession while running (for a cut-off run's text)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def steps(self) -> int:
        return self.knobs["steps"]

    @property
    def blocks(self) -> int:
        """Blocks with at least one recorded step."""
        return self.rows[-1]["block"] + 1 if self.rows else 0


def step_row(state: StepState) -> dict:
    """Numbers of one solver step for sample 0, over the rows being generated (prompt rows excluded)."""
    free = state.t[0] > 0
    if not bool(free.any()):
        free = torch.ones_like(free)
    v_cond, v_uncond = state.v_cond[0].float()[free], state.v_uncond[0].float()[free]
    return {"block": state.block, "step": state.step, "t": float(state.t[0][free].max()),
            "t_next": float(state.t_next[0][free].max()), "guidance": float(state.guidance[0]),
            "v_cond_norm": float(v_cond.norm(dim=-1).mean()), "v_uncond_norm": float(v_uncond.norm(dim=-1).mean()),
            "v_diff_norm": float((v_cond - v_uncond).norm(dim=-1).mean()),
            "z_norm": float(state.z[0].float()[free].norm(dim=-1).mean()),
            "x0_norm": float(state.x0_pred[0].float()[free].norm(dim=-1).mean()),
            "preview": state.preview[0] if state.preview else None}


# -- figures --------------------------------------------------------------------------------------------
def norms_figure(rows: list[dict], steps: int, highlight: int | None = None) -> go.Figure:
    """|v_cond|, |v_uncond| and |v_cond - v_uncond| per solver step, blocks separated by dotted lines."""
    if not rows:
        return empty_figure("velocity norms appear here as the sampler runs", NORMS_HEIGHT)
    x = [r["block"] * steps + r["step"] for r in rows]
    fig = go.Figure()
    for key, name, dash in (("v_cond_norm", "|v_cond|", None), ("v_uncond_norm", "|v_uncond|", "dot"),
                            ("v_diff_norm", "|v_cond - v_uncond|", None)):
        fig.add_trace(go.Scatter(x=x, y=[r[key] for r in rows], mode="lines", name=name,
                                 line=dict(dash=dash) if dash else None,
                                 customdata=[[r["block"], r["step"], r["t"]] for r in rows],
                                 hovertemplate="block %{customdata[0]} step %{customdata[1]} t=%{customdata[2]:.1f}"
                                               "<br>%{y:.3f}"))
    for b in range(1, rows[-1]["block"] + 1):
        fig.add_vline(x=b * steps - 0.5, line_dash="dot", line_color="#bbb")
    if highlight is not None and 0 <= highlight < len(rows):
        r = rows[highlight]
        fig.add_vline(x=r["block"] * steps + r["step"], line_color="#d62728")
    fig.update_layout(height=NORMS_HEIGHT, title="Velocity norms per solver step (mean L2 over generated latents)",
                      xaxis_title="block x steps + step", yaxis_title="L2 norm", legend=dict(orientation="h", y=-0.3),
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def _block_paths(run: TrajectoryRun, block: int, upto: int | None = None) -> torch.Tensor:
    """(rows, M, C): each generated latent row of ``block`` from its noise through every recorded step."""
    steps = run.trajectory.block(block)[:upto]
    if not steps:
        return torch.zeros(0, 0, 0)
    z = torch.stack([s.z[0] for s in steps] + [steps[-1].z_next[0]]).float()    # (M, bs, C)
    free = steps[0].t[0] > 0
    if not bool(free.any()):
        free = torch.ones_like(free)
    return z[:, free].transpose(0, 1)


def trajectory_figure(ctx: AppContext, run: TrajectoryRun, method: str, dims: int, pick: int | None,
                      backdrop: int | None = None) -> go.Figure:
    """Each block's path from noise to data over the corpus backdrop; the picked step's z_t and x0_pred marked."""
    proj, note = ctx.projections.get(method, dims)
    overlays = []
    for b in range(run.blocks):
        paths = _block_paths(run, b)
        if paths.numel():
            overlays.append(Overlay(f"block {b}", paths, color(b), mode="lines+markers", size=3, group=f"b{b}"))
            overlays.append(Overlay(f"block {b} end", paths[:, -1], color(b), mode="markers", size=9,
                                    symbol="x", group=f"b{b}", legend=False))
    if pick is not None and 0 <= pick < len(run.rows):
        row = run.rows[pick]
        state = run.trajectory.block(row["block"])[row["step"]]
        free = state.t[0] > 0
        if not bool(free.any()):
            free = torch.ones_like(free)
        label = f"block {row['block']} step {row['step']} (t={row['t']:.0f})"
        overlays.append(Overlay(f"z_t {label}", state.z[0][free].float(), "#000000", mode="markers", size=11,
                                symbol="circle-open"))
        overlays.append(Overlay("x0_pred", state.x0_pred[0][free].float(), "#d62728", mode="markers", size=11,
                                symbol="diamond"))
    title = f"{proj.method.upper()} projection: block paths from noise (t=T) to data (x)"
    if note:
        title += f" — {note}"
    return projection_figure(proj, overlays, dims, title, max_backdrop=backdrop or ctx.limits.backdrop_points)


# -- rendering a run --------------------------------------------------------------------------------------
def _row_index(run: TrajectoryRun, block: int, step: int) -> int | None:
    """Index of the recorded row closest to (block, step)."""
    if not run.rows:
        return None
    block = max(0, min(int(block), run.blocks - 1))
    recorded = [i for i, r in enumerate(run.rows) if r["block"] == block]
    step = max(0, min(int(step), len(recorded) - 1))
    return recorded[step]


def step_info(run: TrajectoryRun, pick: int | None) -> dict:
    return {} if pick is None else dict(run.rows[pick])


def status_line(run: TrajectoryRun) -> str:
    last = run.rows[-1] if run.rows else None
    if last is None:
        return "**Sampling** — starting" if run.status == "running" else f"**{run.status.title()}** before any step"
    where = f"block {last['block'] + 1}/{run.planned_blocks}, step {last['step'] + 1}/{run.steps}"
    if run.status == "running":
        return f"**Sampling** — {where}, t = {last['t']:.1f} · {run.seconds:.1f} s"
    if run.status == "stopped":
        return f"**Stopped** by the user at {where} after {run.seconds:.1f} s; scrub what was recorded."
    return (f"**Finished** — {run.blocks} block(s) × {run.steps} steps in {run.seconds:.1f} s "
            f"({len(run.token_ids)} new tokens). Scrub with the sliders.")


def summary(run_id: str, run: TrajectoryRun, method: str) -> dict:
    return {"run_id": run_id, "status": run.status, "prompt": run.prompt, "text": run.text,
            "token_ids": run.token_ids, "knobs": run.knobs, "blocks": run.blocks, "planned_blocks": run.planned_blocks,
            "steps_recorded": len(run.rows), "seconds": round(run.seconds, 3), "projection": method,
            "final_v_diff_norm": run.rows[-1]["v_diff_norm"] if run.rows else None}


def write_downloads(ctx: AppContext, run_id: str, run: TrajectoryRun, method: str) -> list[str]:
    folder = ctx.store.folder(run_id)
    figures = [trajectory_figure(ctx, run, method, 2, None), norms_figure(run.rows, run.steps)]
    data = {**summary(run_id, run, method), "fingerprint": run.trajectory.fingerprint, "rows": run.rows}
    files = exports.bundle(folder, "trajectory", data, run.rows, f"Cola trajectory: {run.prompt!r}", figures,
                           {k: v for k, v in summary(run_id, run, method).items() if k != "token_ids"})
    files.append(str(run.trajectory.save(folder / "trajectory_tensors")))
    return files


def final_outputs(ctx: AppContext, run_id: str, run: TrajectoryRun, method: str, dims: int) -> tuple:
    """Everything a finished (or stopped) run shows, scrubbed to its last step."""
    pick = len(run.rows) - 1 if run.rows else None
    last_block = max(run.blocks - 1, 0)
    return (status_line(run), run.prompt + run.text, step_info(run, pick),
            run.rows[pick]["preview"] if pick is not None and run.rows[pick]["preview"] is not None else "",
            norms_figure(run.rows, run.steps, pick), trajectory_figure(ctx, run, method, dims, pick),
            scrub_slider(last_block, last_block),
            scrub_slider(run.steps - 1, run.rows[pick]["step"] if pick is not None else 0),
            write_downloads(ctx, run_id, run, method), summary(run_id, run, method), run_id)


def scrub_slider(last: int, value: int) -> gr.Slider:
    """A 0..last slider (Gradio needs minimum < maximum: a single position shows as a locked 0..1 slider)."""
    return gr.Slider(minimum=0, maximum=max(last, 1), value=value, step=1, interactive=last > 0)


def _dims(value) -> int:
    return 3 if str(value).startswith("3") else 2


def build(ctx: AppContext) -> dict:
    """The tab's components and events (inside a ``gr.Tab``)."""
    lim = ctx.limits
    run_state = gr.State(None, time_to_live=ctx.store.ttl_s, delete_callback=ctx.store.delete)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            prompt = gr.Textbox(label="Prompt", lines=2, placeholder="leave empty for unconditional generation",
                                value="a small animal that")
            with gr.Row():
                steps = gr.Slider(1, lim.max_steps, value=16, step=1, label="Steps per block")
                guidance = gr.Slider(0, lim.max_guidance, value=7.0, step=0.5, label="Guidance")
            with gr.Row():
                max_new = gr.Slider(1, lim.max_new_tokens, value=32, step=1, label="Max new tokens")
                seed = gr.Number(0, precision=0, label="Seed", minimum=0)
            with gr.Row():
                solver = gr.Dropdown(list(SOLVERS), value="euler", label="Solver")
                schedule = gr.Dropdown(list(SCHEDULES), value="linear", label="Schedule")
            preview = gr.Checkbox(True, label="Decode x0_pred preview at every step")
            with gr.Row():
                run_btn = gr.Button("Generate", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
            status = gr.Markdown("Set the knobs and press **Generate**.")
            text = gr.Textbox(label="Prompt + generated text", lines=3, interactive=False)
        with gr.Column(scale=2, min_width=480):
            with gr.Row():
                method = gr.Radio(ctx.projections.choices, value="auto", label="Projection",
                                  info=ctx.projections.describe())
                dims = gr.Radio(["2-D", "3-D"], value="2-D", label="View")
            projection = gr.Plot(empty_figure("block paths appear here", 560), label="Latent paths")
    with gr.Row():
        block = gr.Slider(0, 1, value=0, step=1, label="Scrub: block", interactive=False)
        step = gr.Slider(0, 1, value=0, step=1, label="Scrub: step", interactive=False)
    with gr.Row():
        with gr.Column(scale=1):
            preview_box = gr.Textbox(label="Predicted text at this step (greedy decode of x0_pred, this block only)",
                                     lines=2, interactive=False)
            info = gr.JSON(label="Step numbers")
        with gr.Column(scale=2):
            norms = gr.Plot(empty_figure("velocity norms appear here", NORMS_HEIGHT), label="Velocity norms")
    with gr.Accordion("Downloads and run summary", open=False):
        files = gr.File(label="JSON / CSV / HTML / tensors", file_count="multiple", interactive=False)
        run_summary = gr.JSON(label="Run summary")

    @inputs.user_errors
    def generate(prompt_text, steps_v, guidance_v, max_new_v, seed_v, solver_v, schedule_v, preview_v, method_v,
                 dims_v, request: gr.Request, progress=gr.Progress()):
        knobs = {"steps": inputs.integer("steps", steps_v, 1, lim.max_steps),
                 "guidance": inputs.number("guidance", guidance_v, 0.0, lim.max_guidance),
                 "max_new_tokens": inputs.integer("max new tokens", max_new_v, 1, lim.max_new_tokens),
                 "seed": inputs.integer("seed", seed_v, 0, 2**31 - 1),
                 "solver": inputs.choice("solver", solver_v, SOLVERS),
                 "schedule": inputs.choice("schedule", schedule_v, SCHEDULES)}
        prompt_text = inputs.text("prompt", prompt_text or "", lim, allow_empty=True)
        method_v = inputs.choice("projection", method_v, ("auto", "PCA", "UMAP"))
        key = session_key(request, "trajectory")
        flag = threading.Event()
        stop_hook = {"pre_model": lambda state: setattr(state, "interrupt", True) if flag.is_set() else None}
        session = ctx.workbench.sampler([prompt_text], preview=bool(preview_v), record=True, hooks=stop_hook, **knobs)
        run = TrajectoryRun(prompt=prompt_text, knobs=knobs, trajectory=session.trajectory,
                            planned_blocks=session.num_blocks)
        run.session = session
        run_id = ctx.store.put("trajectory", run)
        ctx.stops.register(key, run_id, flag)
        total = session.num_blocks * knobs["steps"]
        started = last_text = time.perf_counter()
        last_fig = started - FIGURE_EVERY_S      # the first streamed update carries figures
        try:
            yield (status_line(run), prompt_text, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(),
                   gr.skip(), gr.skip(), run_id)
            for state in session:
                run.rows.append(step_row(state))
                now = time.perf_counter()
                run.seconds = now - started
                if now - last_text < TEXT_EVERY_S:
                    continue
                last_text = now
                progress((len(run.rows), total), desc="sampling")
                pick = len(run.rows) - 1
                figs = (gr.skip(), gr.skip())
                if now - last_fig >= FIGURE_EVERY_S:
                    last_fig = now
                    figs = (norms_figure(run.rows, run.steps, pick),
                            trajectory_figure(ctx, run, method_v, _dims(dims_v), pick, LIVE_BACKDROP))
                generated = session.sampler.result()[0].text
                yield (status_line(run), prompt_text + generated, step_info(run, pick),
                       run.rows[pick]["preview"] or "", *figs, gr.skip(), gr.skip(), gr.skip(), gr.skip(), run_id)
            generation = session.result()[0]
            run.text, run.token_ids = generation.text, list(generation.token_ids)
            run.seconds = time.perf_counter() - started
            run.status = "stopped" if flag.is_set() and len(run.rows) < total else "finished"
            yield final_outputs(ctx, run_id, run, method_v, _dims(dims_v))
        finally:
            if run.status == "running":      # closed early: the UI cancelled the event
                generation = session.sampler.result()[0]
                run.text, run.token_ids = generation.text, list(generation.token_ids)
                run.status = "stopped"
            run.session = None
            run.done.set()
            ctx.stops.release(key, flag)

    @inputs.user_errors
    def stop(run_id, method_v, dims_v, request: gr.Request):
        stopped = ctx.stops.stop(session_key(request, "trajectory"))
        if not stopped:
            return ("Nothing is running.",) + (gr.skip(),) * 10
        run_id = stopped[-1]
        run: TrajectoryRun = ctx.store.get(run_id, "trajectory").payload
        run.done.wait(timeout=5.0)       # the sampler stops at its next model call
        if run.status == "running":      # the UI cancelled the event: the generator will not resume
            run.status = "stopped"
            live = run.session
            if live is not None:
                generation = live.sampler.result()[0]
                run.text, run.token_ids = generation.text, list(generation.token_ids)
        return final_outputs(ctx, run_id, run, method_v, _dims(dims_v))

    @inputs.user_errors
    def scrub(run_id, block_v, step_v, method_v, dims_v):
        run: TrajectoryRun = ctx.store.get(run_id, "trajectory").payload
        if not run.rows:
            raise gr.Error("this run recorded no steps yet")
        block_v = inputs.integer("block", block_v, 0, 10**6)
        step_v = inputs.integer("step", step_v, 0, 10**6)
        pick = _row_index(run, block_v, step_v)
        method_v = inputs.choice("projection", method_v, ("auto", "PCA", "UMAP"))
        return (step_info(run, pick), run.rows[pick]["preview"] or "", norms_figure(run.rows, run.steps, pick),
                trajectory_figure(ctx, run, method_v, _dims(dims_v), pick))

    knob_inputs = [prompt, steps, guidance, max_new, seed, solver, schedule, preview, method, dims]
    outputs = [status, text, info, preview_box, norms, projection, block, step, files, run_summary, run_state]
    gen_event = run_btn.click(generate, knob_inputs, outputs, api_name="trajectory_generate",
                              concurrency_id="heavy", concurrency_limit=ctx.concurrency, show_progress="full",
                              show_progress_on=[block, step])   # the scrub bars fill; streamed outputs stay visible
    stop_btn.click(stop, [run_state, method, dims], outputs, api_name="trajectory_stop", cancels=[gen_event],
                   concurrency_id="light", concurrency_limit=8)
    scrub_outputs = [info, preview_box, norms, projection]
    gr.on([block.release, step.release, method.input, dims.input], scrub, [run_state, block, step, method, dims],
          scrub_outputs, api_name="trajectory_scrub", concurrency_id="light", concurrency_limit=8,
          show_progress="hidden", trigger_mode="always_last")
    return {"method": method}

