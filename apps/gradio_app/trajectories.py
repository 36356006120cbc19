"""Trajectories tab: generate with the workbench sampler, streamed step by step, then scrub the flow.

:func:`generate` is a generator over ``SamplerSession`` steps: what the browser sees is the sampler
as it runs (the first step at once, then a few updates a second), never a replay. Each run's
trajectory lives in the run store; :func:`scrub` re-renders any recorded step from it. The off-manifold
monitor (each finished block's latent norm over the encoded data's) is drawn beside it, and blocks the
sample generated after its EOS are marked in every plot and in the scrubbed step's numbers.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import gradio as gr
import plotly.graph_objects as go
import torch

from cola_core.generate import Generation
from cola_core.sampler import SCHEDULES, SOLVERS
from workbench import SamplerSession, StepState, Trajectory, Workbench

from . import exports, inputs, monitor
from .context import METHODS, AppContext
from .display import display_text
from .errors import InputError
from .events import LOCAL_SESSION, Progress, TabComponents, Update, no_progress, on, run_state
from .forms import guidance_variants, position_slider, prompt_and_knobs
from .plots import Overlay, color, empty_figure, projection_figure
from .store import STOP_WAIT_S, session_key

TITLE, TAB_ID = "Trajectories", "trajectories"
TEXT_EVERY_S = 0.25     # streamed text/status/progress updates at most this often (after the first step's)
FIGURE_EVERY_S = 1.0    # streamed figure updates at most this often (a slow browser must keep up)
LIVE_BACKDROP = 600     # backdrop points in figures streamed while sampling (all of them afterwards)
NORMS_HEIGHT = 340
VIEWS = ("2-D", "3-D")
MAX_TEMPERATURE, MAX_TOP_K, MAX_REPETITION_PENALTY = 10.0, 1 << 20, 10.0
# what a run is made from: the form (the Bench tab fills it to re-run a sample), then how it is shown
FORM = ("prompt", "steps", "guidance", "max_new_tokens", "seed", "solver", "schedule", "sample_id", "temperature",
        "top_k", "top_p", "repetition_penalty", "stop_at_eos", "guidance_rescale", "interval_lo", "interval_hi")
GENERATE_INPUTS = ("prompt", "steps", "guidance", "max_new_tokens", "seed", "solver", "schedule", "preview",
                   "method", "dims", "sample_id", "temperature", "top_k", "top_p", "repetition_penalty",
                   "stop_at_eos", "guidance_rescale", "interval_lo", "interval_hi")
# ^ new knobs join at the end: a client sending the first ten (or sixteen) values gets the others' defaults
RUN_OUTPUTS = ("status", "text", "info", "step_preview", "norms", "projection", "block", "step", "files", "summary",
               "run", "monitor")
SCRUB_OUTPUTS = ("info", "step_preview", "norms", "projection", "monitor")


@dataclass
class TrajectoryRun:
    """One generation run: its knobs, the recorded trajectory and one summary row per solver step."""

    prompt: str
    knobs: dict
    trajectory: Trajectory
    planned_blocks: int
    data_norm: float                 # the encoded data's mean latent norm: the off-manifold monitor's yardstick
    sample_id: int = 0               # the noise seed's sample id (seed + 1000*sample_id + 10^7*block)
    rows: list[dict] = field(default_factory=list)
    generation: Generation | None = None     # what the sampler generated so far (raw ids; shown via display_text)
    status: str = "running"          # running | finished | stopped
    seconds: float = 0.0
    session: SamplerSession | None = None    # the live session while running (for a cut-off run's text)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def steps(self) -> int:
        return self.knobs["steps"]

    @property
    def blocks(self) -> int:
        """Blocks with at least one recorded step."""
        return self.rows[-1]["block"] + 1 if self.rows else 0

    @property
    def token_ids(self) -> list[int]:
        return list(self.generation.token_ids) if self.generation else []

    def take_result(self, session: SamplerSession) -> None:
        """Keep what ``session`` generated so far (the whole generation once it has finished)."""
        self.generation = session.sampler.result()[0]

    def monitor(self) -> list[dict]:
        """The off-manifold monitor of each finished block: norm, ratio to the data's norm, flag, after EOS."""
        return self.trajectory.norm_records(self.data_norm)

    def past_eos(self) -> list[int]:
        """Blocks generated after the sample's EOS (they ran on: stop at EOS off)."""
        return [b for b, ended in sorted(self.trajectory.after_eos.items()) if bool(ended[0])]


@dataclass(frozen=True)
class View:
    """How the projection is drawn: method (auto, PCA, UMAP) and 2 or 3 dimensions."""

    method: str
    dims: int

    @classmethod
    def of(cls, method, dims) -> "View":
        """The view the projection and view radios ask for."""
        return cls(inputs.choice("projection", method, METHODS), 3 if inputs.choice("view", dims, VIEWS) == "3-D"
                   else 2)


def generated_rows(t: torch.Tensor) -> torch.Tensor:
    """(bs,) bool: the rows of sample 0 being generated (prompt rows pinned at t = 0 excluded; all if none)."""
    free = t > 0
    return free if bool(free.any()) else torch.ones_like(free)


def step_row(state: StepState) -> dict:
    """Numbers of one solver step for sample 0, over the rows being generated."""
    free = generated_rows(state.t[0])
    v_cond, v_uncond = state.v_cond[0].float()[free], state.v_uncond[0].float()[free]
    return {"block": state.block, "step": state.step, "t": float(state.t[0][free].max()),
            "t_next": float(state.t_next[0][free].max()), "guidance": float(state.guidance[0]),
            "v_cond_norm": float(v_cond.norm(dim=-1).mean()), "v_uncond_norm": float(v_uncond.norm(dim=-1).mean()),
            "v_diff_norm": float((v_cond - v_uncond).norm(dim=-1).mean()),
            "z_norm": float(state.z[0].float()[free].norm(dim=-1).mean()),
            "x0_norm": float(state.x0_pred[0].float()[free].norm(dim=-1).mean()),
            "after_eos": bool(state.after_eos[0]) if state.after_eos is not None else False,
            "preview": state.preview[0] if state.preview else None}


class Every:
    """Due at the first call, then once ``period_s`` seconds have passed since it was last due."""

    def __init__(self, period_s: float):
        self.period_s, self.last = period_s, None

    def __call__(self) -> bool:
        now = time.monotonic()
        if self.last is not None and now - self.last < self.period_s:
            return False
        self.last = now
        return True


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
    past = [r["block"] for r in rows if r["after_eos"]]
    if past:
        fig.add_vrect(x0=past[0] * steps - 0.5, x1=(past[-1] + 1) * steps - 0.5, fillcolor=monitor.PAST_EOS,
                      opacity=0.35, line_width=0, annotation_text="after EOS (not part of the text)",
                      annotation_position="top left")
    if highlight is not None and 0 <= highlight < len(rows):
        r = rows[highlight]
        fig.add_vline(x=r["block"] * steps + r["step"], line_color="#d62728")
    fig.update_layout(height=NORMS_HEIGHT, title="Velocity norms per solver step (mean L2 over generated latents)",
                      xaxis_title="block x steps + step", yaxis_title="L2 norm", legend=dict(orientation="h", y=-0.3),
                      margin=dict(l=50, r=20, t=50, b=40))
    return fig


def _block_paths(run: TrajectoryRun, block: int) -> torch.Tensor:
    """(rows, M, C): each generated latent row of ``block`` from its noise through every recorded step."""
    steps = run.trajectory.block(block)
    if not steps:
        return torch.zeros(0, 0, 0)
    z = torch.stack([s.z[0] for s in steps] + [steps[-1].z_next[0]]).float()    # (M, bs, C)
    return z[:, generated_rows(steps[0].t[0])].transpose(0, 1)


def trajectory_figure(ctx: AppContext, run: TrajectoryRun, view: View, pick: int | None,
                      backdrop: int | None = None) -> go.Figure:
    """Each block's path from noise to data over the corpus backdrop; the picked step's z_t and x0_pred marked."""
    proj, note = ctx.projections.get(view.method, view.dims)
    overlays, past = [], set(run.past_eos())
    for b in range(run.blocks):
        paths = _block_paths(run, b)
        if paths.numel():
            overlays.append(Overlay(f"block {b} (after EOS)" if b in past else f"block {b}", paths, color(b),
                                    mode="lines+markers", size=3, group=f"b{b}", dash="dot" if b in past else None))
            overlays.append(Overlay(f"block {b} end", paths[:, -1], color(b), mode="markers", size=9,
                                    symbol="x", group=f"b{b}", legend=False))
    if pick is not None and 0 <= pick < len(run.rows):
        row = run.rows[pick]
        state = run.trajectory.block(row["block"])[row["step"]]
        free = generated_rows(state.t[0])
        label = f"block {row['block']} step {row['step']} (t={row['t']:.0f})"
        overlays.append(Overlay(f"z_t {label}", state.z[0][free].float(), "#000000", mode="markers", size=11,
                                symbol="circle-open"))
        overlays.append(Overlay("x0_pred", state.x0_pred[0][free].float(), "#d62728", mode="markers", size=11,
                                symbol="diamond"))
    title = f"{proj.method.upper()} projection: block paths from noise (t=T) to data (x)"
    if note:
        title += f" — {note}"
    return projection_figure(proj, overlays, view.dims, title, max_backdrop=backdrop or ctx.limits.backdrop_points)


# -- rendering a run --------------------------------------------------------------------------------------
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


def notes(run: TrajectoryRun) -> str:
    """The off-manifold flag and where the text ended, under the status line ("" when there is nothing to say)."""
    lines = [monitor.completion_flag(run.monitor())]
    past = run.past_eos()
    if past:
        lines.append(f"The text ended at its EOS in block {past[0] - 1}; block{'s' if len(past) > 1 else ''} "
                     f"{past[0]}–{past[-1]} ran on past it (grey in the plots, not part of the text).")
    return "  \n".join(line for line in lines if line)


def shown_text(ctx: AppContext, run: TrajectoryRun) -> str:
    """The prompt and the generated text as shown: special tokens as markers, nothing after the first EOS."""
    return run.prompt + display_text(run.token_ids, ctx.workbench.tokenizer)


def step_view(run: TrajectoryRun, pick: int) -> Update:
    """The numbers and the predicted-text preview of recorded step ``pick`` (the workbench renders previews
    with markers already)."""
    row = run.rows[pick]
    return {"info": dict(row), "step_preview": row["preview"] or ""}


def monitor_view(run: TrajectoryRun, block: int | None = None) -> go.Figure:
    """The off-manifold monitor of the finished blocks, ``block`` outlined."""
    records = run.monitor()
    if not records:
        return empty_figure("the off-manifold monitor appears as blocks finish", monitor.HEIGHT)
    return monitor.blocks_figure(records, run.data_norm, block)


def summary(ctx: AppContext, run_id: str, run: TrajectoryRun, view: View) -> dict:
    """The run in numbers: the text as shown, its raw ids (and where it ended), knobs, the monitor per block."""
    gen = run.generation
    return {"run_id": run_id, "status": run.status, "prompt": run.prompt,
            "text": display_text(run.token_ids, ctx.workbench.tokenizer), "token_ids": run.token_ids,
            "completion_ids": gen.completion_ids if gen else [], "end_block": gen.end_block if gen else None,
            "blocks_after_eos": run.past_eos(), "knobs": run.knobs, "sample_id": run.sample_id,
            "blocks": run.blocks, "planned_blocks": run.planned_blocks, "steps_recorded": len(run.rows),
            "seconds": round(run.seconds, 3), "projection": view.method,
            "final_v_diff_norm": run.rows[-1]["v_diff_norm"] if run.rows else None,
            "data_norm": run.data_norm,
            "monitor": [{k: v for k, v in r.items() if k != "sample"} for r in run.monitor()]}


def write_downloads(ctx: AppContext, run_id: str, run: TrajectoryRun, view: View) -> list[str]:
    """JSON (every step's numbers, the raw text), CSV, a self-contained HTML page and the trajectory tensors."""
    folder = ctx.store.folder(run_id)
    figures = [trajectory_figure(ctx, run, View(view.method, 2), None), norms_figure(run.rows, run.steps),
               monitor_view(run)]
    shown = summary(ctx, run_id, run, view)
    data = {**shown, "raw_text": run.generation.text if run.generation else "",
            "fingerprint": run.trajectory.fingerprint, "rows": run.rows}
    files = exports.bundle(folder, "trajectory", data, run.rows, f"Cola trajectory: {run.prompt!r}", figures,
                           {k: v for k, v in shown.items() if k not in ("token_ids", "completion_ids", "monitor")})
    files.append(str(run.trajectory.save(folder / "trajectory_tensors")))
    return files


def run_view(ctx: AppContext, run_id: str, run: TrajectoryRun, view: View) -> Update:
    """Everything a finished (or stopped) run shows, scrubbed to its last step."""
    pick = len(run.rows) - 1 if run.rows else None
    last_block = max(run.blocks - 1, 0)
    past = run.past_eos()
    update = {"status": "  \n".join(filter(None, [status_line(run), notes(run)])), "text": shown_text(ctx, run),
              "info": {}, "step_preview": "",
              "norms": norms_figure(run.rows, run.steps, pick), "projection": trajectory_figure(ctx, run, view, pick),
              "block": position_slider(last_block, last_block, label="Scrub: block" + (
                  f" (from block {past[0]} on: after EOS)" if past else "")),
              "step": position_slider(run.steps - 1, run.rows[pick]["step"] if pick is not None else 0),
              "files": write_downloads(ctx, run_id, run, view), "summary": summary(ctx, run_id, run, view),
              "run": run_id, "monitor": monitor_view(run, last_block)}
    return update | (step_view(run, pick) if pick is not None else {})


# -- handlers ---------------------------------------------------------------------------------------------
def generate(ctx: AppContext, prompt, steps, guidance, max_new_tokens, seed, solver, schedule, preview, method,
             dims, sample_id=0, temperature=inputs.DEFAULTS.temperature, top_k=inputs.DEFAULTS.top_k,
             top_p=inputs.DEFAULTS.top_p, repetition_penalty=inputs.DEFAULTS.repetition_penalty,
             stop_at_eos=inputs.DEFAULTS.stop_at_eos, guidance_rescale=inputs.DEFAULTS.guidance_rescale,
             interval_lo=0.0, interval_hi=1.0, *, session: str = LOCAL_SESSION,
             progress: Progress = no_progress, workbench: Workbench | None = None,
             prompt_ids: list[int] | None = None) -> Iterator[Update]:
    """Generate from one prompt with the workbench sampler, streaming its steps; end with the whole run.

    Another tab may run it on its own ``workbench`` (the Chat tab's checkpoint) from ``prompt_ids`` (a chat
    template's token ids, used as given; ``prompt`` is then their text, for display)."""
    lim = ctx.limits
    knobs = {**inputs.sampler_knobs(lim, steps, guidance, max_new_tokens, seed),
             "solver": inputs.choice("solver", solver, SOLVERS),
             "schedule": inputs.choice("schedule", schedule, SCHEDULES),
             "temperature": inputs.number("temperature", temperature, 0.0, MAX_TEMPERATURE),
             "top_k": inputs.integer("top k", top_k, 0, MAX_TOP_K),
             "top_p": inputs.positive("top p", top_p, 1.0),
             "repetition_penalty": inputs.positive("repetition penalty", repetition_penalty, MAX_REPETITION_PENALTY),
             "stop_at_eos": inputs.flag("stop at EOS", stop_at_eos),
             **inputs.guidance_variants(guidance_rescale, interval_lo, interval_hi)}
    sample_id = inputs.seed("sample id", sample_id)
    prompt = inputs.text("prompt", "" if prompt is None else prompt, lim, allow_empty=True,
                         max_chars=lim.max_prompt_chars)
    preview, view = inputs.flag("preview", preview), View.of(method, dims)
    stop = threading.Event()
    stop_hook = {"pre_model": lambda state: setattr(state, "interrupt", True) if stop.is_set() else None}
    wb = workbench or ctx.workbench
    sampler = wb.sampler([prompt if prompt_ids is None else prompt_ids], sample_ids=[sample_id], preview=preview,
                         record=True, hooks=stop_hook, **knobs)
    run = TrajectoryRun(prompt=prompt, knobs=knobs, trajectory=sampler.trajectory, planned_blocks=sampler.num_blocks,
                        data_norm=wb.data_norm(), sample_id=sample_id, session=sampler)
    run_id = ctx.store.put("trajectory", run)
    key = session_key(session, "trajectory")
    ctx.stops.register(key, run_id, stop)
    total = sampler.num_blocks * knobs["steps"]
    started = time.monotonic()
    text_due, figures_due = Every(TEXT_EVERY_S), Every(FIGURE_EVERY_S)
    try:
        yield {"status": status_line(run), "text": prompt, "run": run_id}
        for state in sampler:
            run.rows.append(step_row(state))
            run.seconds = time.monotonic() - started
            if not text_due():
                continue
            progress((len(run.rows), total), desc="sampling")
            pick = len(run.rows) - 1
            run.take_result(sampler)
            update = {"status": status_line(run), "text": shown_text(ctx, run), **step_view(run, pick)}
            if figures_due():
                update |= {"norms": norms_figure(run.rows, run.steps, pick),
                           "projection": trajectory_figure(ctx, run, view, pick, LIVE_BACKDROP),
                           "monitor": monitor_view(run, state.block)}
            yield update
        run.take_result(sampler)
        run.seconds = time.monotonic() - started
        run.status = "stopped" if stop.is_set() and len(run.rows) < total else "finished"
        yield run_view(ctx, run_id, run, view)
    finally:
        if run.status == "running":      # closed early: the UI cancelled the event
            run.take_result(sampler)
            run.status = "stopped"
        run.session = None
        run.done.set()
        ctx.stops.release(key, stop)


def stop(ctx: AppContext, method, dims, *, session: str = LOCAL_SESSION) -> Update:
    """Stop this session's running generation at its next model call; show what it recorded."""
    view = View.of(method, dims)
    stopped = ctx.stops.stop(session_key(session, "trajectory"))
    if not stopped:
        return {"status": "Nothing is running."}
    run_id = stopped[-1]
    run: TrajectoryRun = ctx.store.get(run_id, "trajectory").payload
    run.done.wait(timeout=STOP_WAIT_S)       # the sampler stops at its next model call
    live = run.session
    if run.status == "running" and live is not None:   # the UI cancelled the event: the generator will not resume
        run.status = "stopped"
        run.take_result(live)
    return run_view(ctx, run_id, run, view)


def scrub(ctx: AppContext, run_id, block, step, method, dims) -> Update:
    """The numbers, preview and marked figures of one recorded step (block, step) of this session's run."""
    run: TrajectoryRun = ctx.store.get(run_id, "trajectory").payload
    if not run.rows:
        raise InputError("this run recorded no steps yet")
    block = inputs.integer("block", block, 0, run.blocks - 1)
    step = inputs.integer("step", step, 0, run.steps - 1)
    view = View.of(method, dims)
    recorded = [i for i, r in enumerate(run.rows) if r["block"] == block]
    pick = recorded[min(step, len(recorded) - 1)]      # a stopped run's last block may be shorter
    return {**step_view(run, pick), "norms": norms_figure(run.rows, run.steps, pick),
            "projection": trajectory_figure(ctx, run, view, pick), "monitor": monitor_view(run, block)}


# -- layout and events ------------------------------------------------------------------------------------
def build(ctx: AppContext) -> TabComponents:
    """The tab's layout (inside a ``gr.Tab``); knob defaults are GenerationConfig()'s."""
    ui = TabComponents()
    ui.run = run_state(ctx)
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            prompt_and_knobs(ctx, ui)
            with gr.Row():
                ui.solver = gr.Dropdown(list(SOLVERS), value=inputs.DEFAULTS.solver, label="Solver")
                ui.schedule = gr.Dropdown(list(SCHEDULES), value=inputs.DEFAULTS.schedule, label="Schedule")
            ui.preview = gr.Checkbox(True, label="Decode x0_pred preview at every step")
            with gr.Accordion("Noise sample id, token sampling, EOS", open=False):
                ui.sample_id = gr.Number(0, precision=0, minimum=0, maximum=inputs.MAX_SEED, label="Sample id",
                                         info="block b's noise seed is seed + 1000·sample id + 10^7·b")
                with gr.Row():
                    ui.temperature = gr.Slider(0, MAX_TEMPERATURE, value=inputs.DEFAULTS.temperature, step=0.05,
                                               label="Temperature (0 = greedy)")
                    ui.top_k = gr.Number(inputs.DEFAULTS.top_k, precision=0, minimum=0, maximum=MAX_TOP_K,
                                         label="Top-k (0 = off)")
                with gr.Row():
                    ui.top_p = gr.Slider(0.01, 1, value=inputs.DEFAULTS.top_p, step=0.01, label="Top-p")
                    ui.repetition_penalty = gr.Slider(0.05, MAX_REPETITION_PENALTY,
                                                      value=inputs.DEFAULTS.repetition_penalty, step=0.05,
                                                      label="Repetition penalty")
                ui.stop_at_eos = gr.Checkbox(inputs.DEFAULTS.stop_at_eos, label="Stop at EOS",
                                             info="off: every block runs (the bench's official protocol); blocks "
                                                  "after the EOS are marked")
            ui.guidance_rescale, ui.interval_lo, ui.interval_hi = guidance_variants()
            with gr.Row():
                ui.generate = gr.Button("Generate", variant="primary")
                ui.stop = gr.Button("Stop", variant="stop")
            ui.status = gr.Markdown("Set the knobs and press **Generate**.")
            ui.text = gr.Textbox(label="Prompt + generated text", lines=3, interactive=False)
            ui.origin = gr.Markdown(visible=False)     # where an opened run came from (the Bench tab writes it)
        with gr.Column(scale=2, min_width=480):
            with gr.Row():
                ui.method = gr.Radio(ctx.projections.choices, value="auto", label="Projection",
                                     info=ctx.projections.describe())
                ui.dims = gr.Radio(list(VIEWS), value="2-D", label="View")
            ui.projection = gr.Plot(empty_figure("block paths appear here", 560), label="Latent paths")
    with gr.Row():
        ui.block = gr.Slider(0, 1, value=0, step=1, label="Scrub: block", interactive=False)
        ui.step = gr.Slider(0, 1, value=0, step=1, label="Scrub: step", interactive=False)
    with gr.Row():
        with gr.Column(scale=1):
            ui.step_preview = gr.Textbox(
                label="Predicted text at this step (greedy decode of x0_pred, this block only)", lines=2,
                interactive=False)
            ui.info = gr.JSON(label="Step numbers")
        with gr.Column(scale=2):
            ui.norms = gr.Plot(empty_figure("velocity norms appear here", NORMS_HEIGHT), label="Velocity norms")
            ui.monitor = gr.Plot(empty_figure("the off-manifold monitor appears here", monitor.HEIGHT),
                                 label="Off-manifold monitor", elem_id="trajectory-monitor")
    with gr.Accordion("Downloads and run summary", open=False):
        ui.files = gr.File(label="JSON / CSV / HTML / tensors", file_count="multiple", interactive=False)
        ui.summary = gr.JSON(label="Run summary")
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    running = on(ctx, ui, ui.generate.click, generate, GENERATE_INPUTS, RUN_OUTPUTS, api_name="trajectory_generate",
                 heavy=True, show_progress="full",
                 show_progress_on=[ui.block, ui.step])   # the scrub bars fill; streamed outputs stay visible
    on(ctx, ui, ui.stop.click, stop, ("method", "dims"), RUN_OUTPUTS, api_name="trajectory_stop", cancels=[running])
    on(ctx, ui, [ui.block.release, ui.step.release, ui.method.input, ui.dims.input], scrub,
       ("run", "block", "step", "method", "dims"), SCRUB_OUTPUTS, api_name="trajectory_scrub",
       show_progress="hidden", trigger_mode="always_last")
