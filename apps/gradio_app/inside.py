"""Inside tab: one cached generation run per prompt — its attention patterns and x0-lens — and a patching sweep.

**Run** generates once, caching only what the views read (every DiT layer's attention pattern at
the first solver evaluation of every step, both passes, and the names :func:`x0_lens` reads), then
computes the x0-lens of every finished block from that cache and keeps the patterns and the lens
in the run store: the block / step / layer / head selectors re-render from the stored run without
touching the model. **Patch** runs :func:`patching_sweep` from a clean prompt into a corrupted one,
one (layer, block[, step]) cell at a time. Stop ends the run after the solver step in progress and
the sweep after the cell in progress.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import gradio as gr
import plotly.graph_objects as go
import torch
from safetensors.torch import save_file

from cola_core.hook_points import DIT_LAYER_POINTS
from cola_core.text_codec import block_count, context_latents
from workbench import SamplerSession
from workbench.inside import DEFAULT_METRICS, PatchingSweep, X0Lens, patching_sweep, x0_lens, x0_lens_names

from . import exports, inputs
from .context import AppContext
from .display import display_text
from .errors import InputError
from .events import LOCAL_SESSION, Progress, TabComponents, Update, no_progress, on, run_state
from .forms import guidance_variants, position_slider, prompt_and_knobs
from .plots import HEIGHT, empty_figure
from .store import session_key, stop_update

TITLE, TAB_ID = "Inside", "inside"
GROUPS = ("cond", "uncond")
SCOPES = ("all blocks", "this block")
LENS_METRICS = ("p_final", "agreement", "x0_distance")
PATCH_POINTS = tuple(DIT_LAYER_POINTS)
PATCH_GROUPS = {"both": "*", "cond": "cond", "uncond": "uncond"}
PATCH_METRICS = tuple(DEFAULT_METRICS)
PATTERNS = "block.*.step.*.dit.*.layer.*.attn.pattern"   # stage 0 of every step: stages are ``step.{s}.stage.{k}``
MAX_RUN_BYTES = 256 << 20       # what one run may cache, counted from the run's names before it starts
MAX_PATCH_CELLS = 512           # patched generations in one sweep
MAX_TICKS = 48                  # axis labels drawn per attention axis (thinned beyond)
ATTENTION_HEIGHT = 520
VARIANTS = ("guidance_rescale", "interval_lo", "interval_hi")   # knobs added later: at the end of the inputs
RUN_INPUTS = ("prompt", "steps", "guidance", "max_new_tokens", "seed", "block", "step", "layer", "head", "group",
              "scope", "metric", *VARIANTS)
RUN_OUTPUTS = ("status", "text", "attention", "lens", "cell", "block", "step", "summary", "files", "run")
VIEW_INPUTS = ("run", "block", "step", "layer", "head", "group", "scope", "metric")
VIEW_OUTPUTS = ("attention", "lens", "cell")
PATCH_INPUTS = ("clean", "corrupted", "steps", "guidance", "max_new_tokens", "seed", "point", "patch_group", "layers",
                "patch_blocks", "per_step", "patch_metric", *VARIANTS)
PATCH_OUTPUTS = ("patch_status", "patching", "patch_records", "patch_files", "patch")


@dataclass
class InsideRun:
    """One prompt's run as the views read it: attention patterns by name, the x0-lens, and what each latent
    position holds (the prompt's context latents, then every finished block's rows)."""

    prompt: str
    knobs: dict
    text: str                           # the generated text as shown (markers, cut after the first EOS)
    token_ids: list[int]                # raw
    patterns: dict[str, torch.Tensor]   # name -> (1, H, bs, K) on the CPU
    lens: X0Lens
    times: list[list[float]]            # per finished block, per step: t of its generated rows
    prefix_tokens: list[str]            # per context latent of the prompt: its tokens
    block_tokens: list[list[str]]       # per finished block, per latent row: its tokens (chosen, or pinned prompt)
    pinned: list[bool]                  # rows of block 0 that hold the prompt's tail (pinned at t = 0)
    stopped: bool
    seconds: float

    @property
    def blocks(self) -> int:
        return len(self.block_tokens)

    @property
    def steps(self) -> int:
        return self.knobs["steps"]

    @property
    def prefix(self) -> int:
        return len(self.prefix_tokens)

    @property
    def block_size(self) -> int:
        return len(self.pinned)

    def pattern(self, block: int, step: int, group: str, layer: int) -> torch.Tensor:
        return self.patterns[f"block.{block}.step.{step}.dit.{group}.layer.{layer}.attn.pattern"]

    def positions(self, count: int) -> list[tuple[str, str]]:
        """(kind, tokens) of latent positions 0 .. count-1: the prompt's context, then each block's rows."""
        out = [("prompt", t) for t in self.prefix_tokens]
        for b, rows in enumerate(self.block_tokens):
            out += [("prompt, pinned" if b == 0 and self.pinned[r] else f"block {b}", t) for r, t in enumerate(rows)]
        return out[:count]

    def lens_cell(self, block: int, step: int, layer: int) -> dict:
        """The x0-lens record of one (block, step, layer): the lens covers every finished block."""
        return next(r for r in self.lens.records if (r["block"], r["step"], r["layer"]) == (block, step, layer))


@dataclass(frozen=True)
class View:
    """What the selectors pick: the block, step, layer, head and pass of the pattern, rows shown, lens colour."""

    block: int
    step: int
    layer: int
    head: int
    group: str
    scope: str
    metric: str

    @classmethod
    def of(cls, ctx: AppContext, block: int, step: int, layer, head, group, scope, metric) -> "View":
        """Check the selectors the model bounds (layer, head) and the choices; the caller checks block and step."""
        cfg = ctx.model.dit_config
        return cls(block, step, inputs.integer("layer", layer, 0, cfg.num_layers - 1),
                   inputs.integer("head", head, 0, cfg.heads - 1), inputs.choice("pass", group, GROUPS),
                   inputs.choice("rows", scope, SCOPES), inputs.choice("x0-lens colour", metric, LENS_METRICS))


def piece(ctx: AppContext, ids: list[int]) -> str:
    """The tokens of one latent position, as an axis label."""
    text = display_text(ids, ctx.workbench.tokenizer, stop_at_eos=False)
    return repr(text if len(text) <= 10 else text[:9] + "…")


# -- figures --------------------------------------------------------------------------------------------
def ticks(labels: list[str]) -> dict:
    """Tick values and texts for an axis of positions (every k-th label beyond MAX_TICKS)."""
    every = math.ceil(len(labels) / MAX_TICKS)
    return dict(tickmode="array", tickvals=list(range(0, len(labels), every)), ticktext=labels[::every])


def segments(run: InsideRun, last: int) -> list[tuple[int, int, str]]:
    """(start, end, name) of the key positions up to block ``last``: the prompt's context, then each block."""
    bs = run.block_size
    out = [(0, run.prefix, "prompt")] if run.prefix else []
    return out + [(run.prefix + b * bs, run.prefix + (b + 1) * bs, f"block {b}") for b in range(last + 1)]


def attention_figure(run: InsideRun, v: View) -> go.Figure:
    """Query rows (the block's latents, or every block's) against key positions, unseen keys left blank.

    The cond pass sees the prompt's context, the finished blocks and its own block; the uncond pass its
    own block only (its keys are that block's rows, padded: placed here at the block's positions).
    """
    bs, prefix = run.block_size, run.prefix
    shown = [v.block] if v.scope == "this block" else list(range(run.blocks))
    keys = prefix + (shown[-1] + 1) * bs
    z = torch.full((len(shown) * bs, keys), float("nan"))
    for i, b in enumerate(shown):
        weights = run.pattern(b, v.step, v.group, v.layer)[0, v.head].float()          # (bs, K)
        start = 0 if v.group == "cond" else prefix + b * bs
        end = prefix + (b + 1) * bs
        z[i * bs:(i + 1) * bs, start:end] = weights[:, :end - start]
    where = run.positions(keys)
    key_text = [f"{k} {tokens}" for k, (_, tokens) in enumerate(where)]
    query_text = [key_text[prefix + b * bs + r] for b in shown for r in range(bs)]
    hover = [[f"query {q} ({where[prefix + shown[i // bs] * bs + i % bs][0]})<br>key {key_text[k]} ({where[k][0]})"
              for k in range(keys)] for i, q in enumerate(query_text)]
    fig = go.Figure(go.Heatmap(z=[[None if math.isnan(x) else x for x in row] for row in z.tolist()], text=hover,
                               hovertemplate="%{text}<br>weight %{z:.3f}<extra></extra>", colorscale="Viridis",
                               zmin=0, colorbar={"title": "weight"}))
    for start, end, name in segments(run, shown[-1]):
        if start:
            fig.add_vline(x=start - 0.5, line_color="#888", line_width=1)
        fig.add_annotation(x=(start + end - 1) / 2, y=1.0, yref="paper", yanchor="bottom", showarrow=False,
                           text=name + (" (current)" if name == f"block {v.block}" else ""), font=dict(size=11))
    if len(shown) > 1:
        for i in range(1, len(shown)):
            fig.add_hline(y=i * bs - 0.5, line_color="#888", line_width=1)
        fig.add_shape(type="rect", x0=-0.5, x1=keys - 0.5, y0=v.block * bs - 0.5, y1=(v.block + 1) * bs - 0.5,
                      line=dict(color="#d62728", width=2))
    t = run.times[v.block][v.step]
    rows = "every block (its own step)" if len(shown) > 1 else f"block {v.block}"
    fig.update_layout(
        height=min(900, max(360, 190 + 22 * len(query_text))), plot_bgcolor="#eeeeee",
        title=f"Attention: layer {v.layer}, head {v.head}, {v.group} pass, step {v.step} (t = {t:.0f}), {rows}",
        xaxis=dict(title="key position (prompt | finished blocks | the block itself)", tickangle=-60,
                   tickfont=dict(size=9), **ticks(key_text)),
        yaxis=dict(title="query row", autorange="reversed", tickfont=dict(size=9), **ticks(query_text)),
        margin=dict(l=110, r=20, t=80, b=110))
    return fig


def lens_figure(run: InsideRun, v: View) -> go.Figure:
    """The x0-lens of the chosen block (depth × step, decoded text in each cell), the chosen cell outlined."""
    records = [r for r in run.lens.records if r["block"] == v.block]      # texts rendered by the workbench
    layers = len({r["layer"] for r in records})
    fig = X0Lens(records, run.lens.mode, {}).figure(block=v.block, metric=v.metric,
                                                    height=max(HEIGHT, 140 + 44 * layers))
    fig.add_shape(type="rect", x0=v.step - 0.5, x1=v.step + 0.5, y0=v.layer + 0.5, y1=v.layer + 1.5,
                  line=dict(color="#d62728", width=3))
    fig.update_traces(textfont=dict(size=9), hovertemplate="%{x}, %{y}<br>%{text}<br>" + v.metric +
                      " %{z:.3f}<extra></extra>")
    fig.update_layout(xaxis_title=f"block {v.block}: solver step (t from T to 0)", yaxis_title="DiT depth (residual)",
                      margin=dict(l=80, r=20, t=60, b=60))
    return fig


def cell_text(run: InsideRun, v: View) -> str:
    """The x0-lens cell at the chosen block, step and layer, in words."""
    r = run.lens_cell(v.block, v.step, v.layer)
    return (f"block {v.block}, step {v.step} (t = {r['t']:.0f}), residual after layer {v.layer}: "
            f"{r['text']!r}\np_final {r['p_final']:.3f} · agreement {r['agreement']:.2f} · "
            f"x0 distance {r['x0_distance']:.3f}")


def render(run: InsideRun, v: View) -> Update:
    return {"attention": attention_figure(run, v), "lens": lens_figure(run, v), "cell": cell_text(run, v)}


# -- the run ----------------------------------------------------------------------------------------------
def cached_bytes(ctx: AppContext, prompt: str, knobs: dict) -> tuple[int, int]:
    """(bytes the run will cache at most, blocks it plans), from the run's names; a prompt too long for the
    model is an error here, before any model call."""
    names = ctx.workbench.run_names(prompt, **knobs)
    keep = names.select([PATTERNS, *x0_lens_names()])
    return 4 * sum(math.prod(names.shape(n)) for n in keep), sum(1 for _ in names.select("block.*.z_final"))


def collect(ctx: AppContext, prompt: str, knobs: dict, session: SamplerSession, stop_asked: bool, seconds: float
            ) -> InsideRun | None:
    """The stored run from a finished (or stopped) session: its finished blocks' patterns, lens and positions."""
    cache, prep, sampler = session.cache, session.sampler.prepared, session.sampler
    blocks = sum(1 for n in cache if n.endswith(".token_ids"))
    if not blocks:
        return None
    lens = x0_lens(ctx.workbench, prompt, blocks=list(range(blocks)), cache=cache, **knobs)
    P, bs = ctx.workbench.patch_size, ctx.workbench.block_size
    ids, prefix = prep.ids[0], int(prep.prefix_lengths[0])
    pinned = prep.pinned[0].tolist()
    rows = []
    for b in range(blocks):
        chosen = cache[f"block.{b}.token_ids"][0].tolist()
        rows.append([piece(ctx, ids[(prefix + r) * P:(prefix + r + 1) * P] if b == 0 and pinned[r]
                           else chosen[r * P:(r + 1) * P]) for r in range(bs)])
    patterns = {n: t for n, t in cache.items() if n.endswith(".attn.pattern") and int(n.split(".")[1]) < blocks}
    times = [[float(cache[f"block.{b}.step.{s}.t"].max()) for s in range(knobs["steps"])] for b in range(blocks)]
    ended = blocks == sampler.num_blocks or bool(sampler.finished.all())   # every block, or EOS
    generated = sampler.result()[0].token_ids
    return InsideRun(prompt=prompt, knobs=knobs, text=display_text(generated, ctx.workbench.tokenizer),
                     token_ids=generated,
                     patterns=patterns, lens=lens,
                     times=times, prefix_tokens=[piece(ctx, ids[i * P:(i + 1) * P]) for i in range(prefix)],
                     block_tokens=rows, pinned=pinned, stopped=stop_asked and not ended, seconds=seconds)


def summary(run_id: str, run: InsideRun) -> dict:
    return {"run_id": run_id, "status": "stopped" if run.stopped else "finished", "prompt": run.prompt,
            "text": run.text, "token_ids": run.token_ids, "knobs": run.knobs, "blocks": run.blocks, "steps": run.steps,
            "context_latents": run.prefix, "block_size": run.block_size,
            "patterns_mib": round(sum(t.numel() * t.element_size() for t in run.patterns.values()) / 2**20, 2),
            "lens_cells": len(run.lens.records), "seconds": round(run.seconds, 3)}


def write_downloads(ctx: AppContext, run_id: str, run: InsideRun, v: View) -> list[str]:
    """The x0-lens records (JSON / CSV), an HTML page of both figures, and the attention patterns (safetensors)."""
    folder = ctx.store.folder(run_id)
    info = summary(run_id, run)
    files = exports.bundle(folder, "inside_lens", {**info, "lens": run.lens.records}, run.lens.records,
                           f"Cola inside: {run.prompt!r}", [attention_figure(run, v), lens_figure(run, v)], info)
    save_file({n: t.contiguous() for n, t in run.patterns.items()}, str(folder / "attention_patterns.safetensors"),
              metadata={"prompt": run.prompt, "fingerprint": ctx.workbench.fingerprint})
    return files + [str(folder / "attention_patterns.safetensors")]


def status_line(run: InsideRun, nbytes: int) -> str:
    if run.stopped:
        return f"**Stopped** by the user: showing the {run.blocks} finished block(s)."
    return (f"**Done** — {run.blocks} block(s) × {run.steps} steps cached in {run.seconds:.2f} s "
            f"({inputs.size_text(nbytes)} at most); the selectors re-render from this run.")


def cache_run(ctx: AppContext, prompt, steps, guidance, max_new_tokens, seed, block, step, layer, head, group, scope,
              metric, guidance_rescale=inputs.DEFAULTS.guidance_rescale, interval_lo=0.0, interval_hi=1.0, *,
              session: str = LOCAL_SESSION, progress: Progress = no_progress) -> Update:
    """Generate once with the attention patterns and the lens's residuals cached; show the chosen view."""
    lim = ctx.limits
    prompt = inputs.text("prompt", "" if prompt is None else prompt, lim, allow_empty=True)
    knobs = {**inputs.sampler_knobs(lim, steps, guidance, max_new_tokens, seed),
             **inputs.guidance_variants(guidance_rescale, interval_lo, interval_hi)}
    block = inputs.integer("block", block, 0, lim.max_new_tokens)
    step = inputs.integer("step", step, 0, lim.max_steps)
    v = View.of(ctx, block, step, layer, head, group, scope, metric)
    nbytes, planned = cached_bytes(ctx, prompt, knobs)
    if nbytes > MAX_RUN_BYTES:
        raise InputError(f"this run would cache {inputs.size_text(nbytes)} of attention patterns and residuals "
                         f"({planned} blocks × {knobs['steps']} steps); at most {inputs.size_text(MAX_RUN_BYTES)}: "
                         f"use fewer steps or new tokens, or a shorter prompt")
    key = session_key(session, "inside")
    flag = ctx.stops.register(key, "inside")
    total = planned * knobs["steps"]

    def step_done(state) -> None:
        progress((state.block * state.steps + state.step + 1, total), desc="generating, caching what the views read")
        if flag.is_set():
            state.interrupt = True

    started = time.monotonic()
    try:
        progress((0, total), desc="generating, caching what the views read")
        generation = ctx.workbench.sampler(prompt, names_filter=[PATTERNS, *x0_lens_names()], to="cpu",
                                           hooks={"post_update": step_done}, **knobs)
        generation.result()
        progress(0.95, desc="x0-lens: decoding every layer's prediction")
        stored = collect(ctx, prompt, knobs, generation, flag.is_set(), time.monotonic() - started)
    finally:
        ctx.stops.release(key, flag)
    if stored is None:
        return {"status": "**Stopped** before the first block finished; nothing to show."}
    run_id = ctx.store.put("model-internals", stored)
    v = dataclasses.replace(v, block=min(v.block, stored.blocks - 1), step=min(v.step, stored.steps - 1))
    return {"status": status_line(stored, nbytes), "text": prompt + stored.text, **render(stored, v),
            "block": position_slider(stored.blocks - 1, v.block), "step": position_slider(stored.steps - 1, v.step),
            "summary": summary(run_id, stored), "files": write_downloads(ctx, run_id, stored, v), "run": run_id}


def view(ctx: AppContext, run_id, block, step, layer, head, group, scope, metric) -> Update:
    """Re-render the attention pattern and the x0-lens of this session's run for the selectors (no model call)."""
    stored: InsideRun = ctx.store.get(run_id, "model-internals").payload
    block = inputs.integer("block", block, 0, stored.blocks - 1)
    step = inputs.integer("step", step, 0, stored.steps - 1)
    return render(stored, View.of(ctx, block, step, layer, head, group, scope, metric))


def stop(ctx: AppContext, *, session: str = LOCAL_SESSION) -> Update:
    """Ask this session's running run to end after the solver step in progress."""
    return stop_update(ctx.stops, session_key(session, "inside"), "status", "Stopping after the step in progress…")


# -- the patching sweep -----------------------------------------------------------------------------------
def same_shape(ctx: AppContext, clean: str, corrupted: str) -> None:
    """patching_sweep copies each activation into the same position of the other run: both prompts must fill
    the same number of context latents (whole blocks of the prompt). Tokenizer only: no model call."""
    wb = ctx.workbench
    counts = [len(ids) for ids in wb.model.encode_prompts([clean, corrupted])]   # as the runs will see them
    latents = [context_latents(n, wb.block_size, wb.patch_size) for n in counts]
    if latents[0] != latents[1]:
        raise InputError(f"clean and corrupted prompts must fill the same number of context latents (patching copies "
                         f"each position into the same position of the other run): the clean prompt has {counts[0]} "
                         f"tokens ({latents[0]} latents), the corrupted one {counts[1]} ({latents[1]}); make them "
                         f"the same length in tokens")


def indices(name: str, text, count: int) -> list[int] | None:
    """Layer or block indices in [0, count) from "0-3" / "0, 2"; None (all of them) when empty."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    return sorted(set(inputs.value_list(name, text, int, 0, count - 1)))


def patch_figure(sweep: PatchingSweep, metric: str) -> go.Figure:
    """The sweep's layer × block heatmap of ``metric``, titled in clean / corrupted terms."""
    if not sweep.records:
        return empty_figure("the sweep was stopped before its first cell")
    fig = sweep.figure(metric, height=max(HEIGHT, 160 + 40 * len({r["layer"] for r in sweep.records})))
    base = sweep.baseline
    values = [r[metric] for r in sweep.records] + [base["target"][metric], base["source"][metric]]
    fig.update_traces(zmin=min(values), zmax=max(values))      # the colour scale spans corrupted .. clean
    passes = "both passes" if sweep.group == "*" else f"the {sweep.group} pass"
    return fig.update_layout(title=f"{metric} after patching the clean run's {sweep.point} ({passes}) into the "
                                   f"corrupted run<br><sub>unpatched: corrupted {base['target'][metric]:.3g}, "
                                   f"clean {base['source'][metric]:.3g}</sub>")


def patch(ctx: AppContext, clean, corrupted, steps, guidance, max_new_tokens, seed, point, group, layers, blocks,
          per_step, metric, guidance_rescale=inputs.DEFAULTS.guidance_rescale, interval_lo=0.0, interval_hi=1.0, *,
          session: str = LOCAL_SESSION, progress: Progress = no_progress) -> Update:
    """Patch DiT ``layer.{i}.{point}`` of one block (or step) at a time from the clean prompt's run into the
    corrupted prompt's run; the heatmap, the records and the downloads."""
    lim, cfg = ctx.limits, ctx.model.dit_config
    clean = inputs.text("clean prompt", clean, lim)
    corrupted = inputs.text("corrupted prompt", corrupted, lim)
    knobs = {**inputs.sampler_knobs(lim, steps, guidance, max_new_tokens, seed),
             **inputs.guidance_variants(guidance_rescale, interval_lo, interval_hi)}
    point = inputs.choice("patched point", point, PATCH_POINTS)
    group = PATCH_GROUPS[inputs.choice("patched pass", group, tuple(PATCH_GROUPS))]
    per_step, metric = inputs.flag("one cell per step", per_step), inputs.choice("heatmap", metric, PATCH_METRICS)
    same_shape(ctx, clean, corrupted)
    planned = block_count(knobs["max_new_tokens"], ctx.workbench.block_size, ctx.workbench.patch_size)
    layer_list, block_list = indices("layers", layers, cfg.num_layers), indices("blocks", blocks, planned)
    n_layers, n_blocks = len(layer_list or range(cfg.num_layers)), len(block_list or range(planned))
    cells = n_layers * n_blocks * (knobs["steps"] if per_step else 1)
    if cells > MAX_PATCH_CELLS:
        per = f" × {knobs['steps']} steps" if per_step else ""
        raise InputError(f"the sweep has {n_layers} layers × {n_blocks} blocks{per} = {cells} cells; "
                         f"at most {MAX_PATCH_CELLS}: pick fewer layers or blocks")
    key = session_key(session, "inside_patch")
    flag = ctx.stops.register(key, "inside_patch")
    done = [0]

    def should_stop() -> bool:        # asked before each cell
        progress((done[0], cells), desc="patched runs")
        done[0] += 1
        return flag.is_set()

    progress((0, cells), desc="clean and corrupted runs")
    try:
        sweep = patching_sweep(ctx.workbench, corrupted, clean, point=point, group=group, layers=layer_list,
                               blocks=block_list, per_step=per_step, progress=False, should_stop=should_stop, **knobs)
    finally:
        ctx.stops.release(key, flag)
    patch_id = ctx.store.put("patching", sweep)
    figure = patch_figure(sweep, metric)
    base = " · ".join(f"{m}: clean {sweep.baseline['source'][m]:.3g}, corrupted {sweep.baseline['target'][m]:.3g}"
                      for m in sweep.metrics)
    status = (f"**Stopped** after {len(sweep.records)} of {cells} cells." if len(sweep.records) < cells else
              f"**Done** — {cells} patched runs of the corrupted prompt, each with one of the clean run's {point}.")
    status += f"  \nBaselines: {base}"
    data = {"patch_id": patch_id, "clean": clean, "corrupted": corrupted, "knobs": knobs, "point": point,
            "group": group, "per_step": per_step, "baseline": sweep.baseline, "records": sweep.records}
    files = exports.bundle(ctx.store.folder(patch_id), "patching", data, sweep.records,
                           f"Cola patching: {clean!r} into {corrupted!r}", [figure],
                           {"clean": clean, "corrupted": corrupted, "point": point, "pass": group, **knobs})
    table = [[r["layer"], r["block"], r["step"], *(round(r[m], 4) for m in sweep.metrics)] for r in sweep.records]
    return {"patch_status": status, "patching": figure, "patch_records": table, "patch_files": files,
            "patch": patch_id}


def patch_view(ctx: AppContext, patch_id, metric) -> Update:
    """The heatmap of this session's sweep for another metric."""
    sweep: PatchingSweep = ctx.store.get(patch_id, "patching").payload
    return {"patching": patch_figure(sweep, inputs.choice("heatmap", metric, PATCH_METRICS))}


def patch_stop(ctx: AppContext, *, session: str = LOCAL_SESSION) -> Update:
    """Ask this session's running sweep to end after the cell in progress."""
    return stop_update(ctx.stops, session_key(session, "inside_patch"), "patch_status",
                       "Stopping after the cell in progress…")


# -- layout and events ------------------------------------------------------------------------------------
def build(ctx: AppContext) -> TabComponents:
    """The tab's layout (inside a ``gr.Tab``); knob defaults are GenerationConfig()'s."""
    ui, cfg = TabComponents(), ctx.model.dit_config
    ui.run, ui.patch = run_state(ctx), run_state(ctx)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            prompt_and_knobs(ctx, ui)
            ui.guidance_rescale, ui.interval_lo, ui.interval_hi = guidance_variants()
            with gr.Row():
                ui.go = gr.Button("Run and cache", variant="primary")
                ui.stop = gr.Button("Stop", variant="stop")
            ui.status = gr.Markdown("Press **Run and cache**: one generation caches every layer's attention pattern "
                                    "and what the x0-lens reads; the selectors then re-render from it.")
            ui.text = gr.Textbox(label="Prompt + generated text", lines=2, interactive=False)
            with gr.Row():
                ui.block = position_slider(0, label="Block")           # ranges set by each run
                ui.step = position_slider(0, label="Step")
            with gr.Row():
                ui.layer = position_slider(cfg.num_layers - 1, label="Layer")
                ui.head = position_slider(cfg.heads - 1, label="Head")
            ui.group = gr.Radio(list(GROUPS), value="cond", label="Pass",
                                info="cond: with the cached prompt and finished blocks; uncond: the block alone",
                                elem_id="inside-pass")
            ui.scope = gr.Radio(list(SCOPES), value="all blocks", label="Query rows")
        with gr.Column(scale=2, min_width=480):
            ui.attention = gr.Plot(empty_figure("the attention pattern appears here", ATTENTION_HEIGHT),
                                   label="Attention pattern", elem_id="inside-attention")
    with gr.Row():
        with gr.Column(scale=2, min_width=480):
            ui.lens = gr.Plot(empty_figure("the x0-lens appears here"), label="x0-lens", elem_id="inside-lens")
        with gr.Column(scale=1, min_width=320):
            ui.metric = gr.Radio(list(LENS_METRICS), value="p_final", label="x0-lens colour",
                                 info="p_final: probability of the run's final tokens; agreement: share of them "
                                      "picked; x0_distance: L2 to the final latent")
            ui.cell = gr.Textbox(label="x0-lens at the chosen block, step and layer", lines=3, interactive=False)
            ui.summary = gr.JSON(label="Run")
    with gr.Accordion("Activation patching: clean prompt → corrupted prompt (uses the knobs above)", open=True):
        with gr.Row():
            ui.clean = gr.Textbox(label="Clean prompt (activations taken from)", value="the cat sat on")
            ui.corrupted = gr.Textbox(label="Corrupted prompt (activations patched into)", value="the dog sat on")
        with gr.Row():
            ui.point = gr.Dropdown(list(PATCH_POINTS), value="resid_post", label="Patched point")
            ui.patch_group = gr.Radio(list(PATCH_GROUPS), value="both", label="Patched pass")
            ui.layers = gr.Textbox(label="Layers (empty = all)", placeholder=f"0-{cfg.num_layers - 1}")
            ui.patch_blocks = gr.Textbox(label="Blocks (empty = all)", placeholder="0, 2 or 0-3",
                                         info="each cell is one whole generation: pick a few for a quick look")
            ui.per_step = gr.Checkbox(False, label="One cell per step")
        with gr.Row():
            ui.patch_go = gr.Button("Run patching sweep", variant="primary")
            ui.patch_stop = gr.Button("Stop sweep", variant="stop")
        ui.patch_status = gr.Markdown("One patched run per cell: each layer × block (× step) of the corrupted run "
                                      "gets the clean run's activation there.")
        ui.patch_metric = gr.Radio(list(PATCH_METRICS), value=PATCH_METRICS[0], label="Heatmap",
                                   info="target_logprob: log p of the clean run's tokens (nats/token, higher = "
                                        "recovered); final_latent_distance: L2 to the clean run's last latent")
        ui.patching = gr.Plot(empty_figure("the patching heatmap appears here"), label="Patching heatmap",
                              elem_id="inside-patching")
        ui.patch_records = gr.Dataframe(headers=["layer", "block", "step", *PATCH_METRICS], label="Cells",
                                        interactive=False)
    with gr.Accordion("Downloads", open=False):
        ui.files = gr.File(label="Run: x0-lens JSON / CSV / HTML, attention patterns (safetensors)",
                           file_count="multiple", interactive=False)
        ui.patch_files = gr.File(label="Sweep: JSON / CSV / HTML", file_count="multiple", interactive=False)
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    on(ctx, ui, ui.go.click, cache_run, RUN_INPUTS, RUN_OUTPUTS, api_name="inside_run", heavy=True)
    on(ctx, ui, ui.stop.click, stop, (), ("status",), api_name="inside_stop")
    on(ctx, ui, [ui.block.release, ui.step.release, ui.layer.release, ui.head.release, ui.group.input,
                 ui.scope.input, ui.metric.input], view, VIEW_INPUTS, VIEW_OUTPUTS, api_name="inside_view",
       show_progress="hidden", trigger_mode="always_last")
    on(ctx, ui, ui.patch_go.click, patch, PATCH_INPUTS, PATCH_OUTPUTS, api_name="inside_patch", heavy=True)
    on(ctx, ui, ui.patch_stop.click, patch_stop, (), ("patch_status",), api_name="inside_patch_stop")
    on(ctx, ui, ui.patch_metric.input, patch_view, ("patch", "patch_metric"), ("patching",),
       api_name="inside_patch_view", show_progress="hidden")
