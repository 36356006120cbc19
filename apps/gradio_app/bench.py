"""Bench tab: from a number to a trajectory. Load a bench output folder, read its table and plot,
filter each task's samples by verdict, and open any sample in the Trajectories tab, re-run exactly
as the bench ran it (prompt, id-derived noise seed, knobs) with its score and extracted answer beside it.

Folders are read only under ``ctx.bench_roots`` (``runs/``, ``artifacts/``, ``serve --bench-root``);
see :mod:`.bench_folder`. Opening a sample fills the Trajectories form and runs that tab's own
:func:`~.trajectories.generate`, streamed there; the bench's stored tokens are then compared with the
re-run's.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterator

import gradio as gr

from cola_core.seeds import MAX_SEED
from workbench.bench import BenchConfig, stored_token_ids
from workbench.bench.report import HEIGHT, accuracy_figure

from . import inputs, trajectories
from .bench_folder import BenchFolder, Sample, find_folders, find_sample, roots_text
from .context import AppContext
from .display import display_string
from .errors import InputError
from .events import LOCAL_SESSION, Progress, TabComponents, Update, no_progress, on, run_state
from .handoff import OUTPUTS, VIEW_INPUTS, attach, open_in_trajectories
from .handoff import rerun_form as trajectory_form
from .plots import empty_figure

TITLE, TAB_ID = "Bench", "bench"
VERDICTS = ("wrong", "correct", "all")
PAGE_SIZE = 50
TABLE_HEADERS = ["task", "accuracy %", "95 % CI", "correct / total", "mean score"]
SAMPLE_HEADERS = ["id", "verdict", "extracted answer", "ground truth", "score", "generated text"]
PAGE_OUTPUTS = ("page", "samples", "page_info", "sample")
LOAD_OUTPUTS = ("run", "status", "table", "figure", "task", "verdict", "folder") + PAGE_OUTPUTS


# -- what the tab shows -------------------------------------------------------------------------------------
def md(text: str) -> str:
    """Model or file text inside Markdown: special characters escaped, line breaks shown as ⏎."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~])", r"\\\1", text).replace("\n", " ⏎ ")


def knobs_line(config: BenchConfig) -> str:
    sampling = ("greedy" if config.temperature == 0 else
                f"temperature {config.temperature:g}, top-k {config.top_k}, top-p {config.top_p:g}")
    return (f"{config.steps} steps · guidance {config.guidance:g} · {config.max_new_tokens} new tokens · "
            f"seed {config.seed} · {config.solver} · {sampling} · "
            f"repetition penalty {config.repetition_penalty:g} · protocol {config.protocol}")


def warnings(ctx: AppContext, bench: BenchFolder) -> list[str]:
    """Why opening a sample here may not give the bench's tokens (empty: it should, exactly)."""
    if bench.meta is None:
        return ["no bench.json: these outputs were made elsewhere (the bench's tokens are unknown); opening a sample "
                "re-runs it with the official knobs on this app's checkpoint"]
    model, checkpoint, out = ctx.model, bench.checkpoint, []
    if checkpoint.get("fingerprint") != model.fingerprint:
        out.append(f"made by checkpoint {md(str(checkpoint.get('source')))} (fingerprint "
                   f"`{str(checkpoint.get('fingerprint'))[:12]}`), but this app runs {md(str(model.source))} "
                   f"(`{model.fingerprint[:12]}`): opening a sample re-runs it on a different model, so its tokens "
                   f"will differ")
    here = (model.device.type, str(model.dtype).replace("torch.", ""))
    there = (bench.meta.get("device"), bench.meta.get("dtype"))
    if there != here:
        out.append(f"made on {there[0]} / {there[1]}, this app runs on {here[0]} / {here[1]}: noise and rounding "
                   f"differ, so tokens may differ")
    if bench.config.temperature > 0:
        out.append("sampled with temperature > 0 from one generator per batch: a re-run alone matches only a "
                   "bench run with --batch-size 1")
    return out


def overview(ctx: AppContext, bench: BenchFolder) -> str:
    """What the folder holds, how it was made, and any reason a re-run may differ."""
    s = bench.summary
    total = sum(int(r["total"]) for r in s["tasks"].values())
    average = f" · average **{s['tasks_average']:.2f} %**" if s.get("tasks_average") is not None else ""
    lines = [f"**{md(str(bench.path))}** — {md(str(s.get('name')))}, protocol **{s.get('protocol') or 'unknown'}**, "
             f"{len(s['tasks'])} task(s), {total} samples{average}"]
    if bench.meta is not None:
        checkpoint, meta = bench.checkpoint, bench.meta
        lines.append(f"Knobs: {knobs_line(bench.config)}")
        lines.append(f"Checkpoint {md(str(checkpoint.get('source')))} · fingerprint "
                     f"`{str(checkpoint.get('fingerprint'))[:12]}` · {meta.get('device')} / {meta.get('dtype')} · "
                     f"max samples {meta.get('max_samples')} · tasks from {md(str(meta.get('tasks_dir')))}")
    lines += [f"⚠ {w}" for w in warnings(ctx, bench)]
    return "  \n".join(lines)


def accuracy_rows(summary: dict[str, Any]) -> list[list[str]]:
    """One row per task (accuracy, 95 % Wilson interval, correct/total, mean score), then the average."""
    rows = [[task, f"{r['accuracy']:.2f}", f"{r['ci95'][0]:.1f}–{r['ci95'][1]:.1f}", f"{r['correct']}/{r['total']}",
             f"{r['mean_score']:.4f}"] for task, r in summary["tasks"].items()]
    if summary.get("tasks_average") is not None:
        correct = sum(r["correct"] for r in summary["tasks"].values())
        total = sum(r["total"] for r in summary["tasks"].values())
        rows.append(["average", f"{summary['tasks_average']:.2f}", "", f"{correct}/{total}", ""])
    return rows


def sample_row(ctx: AppContext, sample: Sample) -> list[str]:
    answer, gold = sample.answers()
    tok = ctx.workbench.tokenizer
    return [sample.label, "✓ correct" if sample.correct else "✗ wrong", display_string(answer, tok), gold,
            f"{sample.score:.4f}", display_string(sample.generated, tok)]


def page_view(ctx: AppContext, bench: BenchFolder, task: Any, verdict: Any, page: Any) -> Update:
    """Page ``page`` (from 1) of ``task``'s samples with this verdict, and its ids to open."""
    task = inputs.choice("task", task, bench.tasks)
    verdict = inputs.choice("samples", verdict, VERDICTS)
    every = bench.samples(task)
    chosen = [s for s in every if verdict == "all" or s.correct == (verdict == "correct")]
    pages = max(1, math.ceil(len(chosen) / PAGE_SIZE))
    page = inputs.integer("page", page, 1, pages)
    rows = chosen[(page - 1) * PAGE_SIZE:page * PAGE_SIZE]
    info = (f"**{len(chosen)}** {verdict} of {len(every)} {task} samples · page {page}/{pages}"
            if chosen else f"No {verdict} samples in {task}.")
    return {"page": gr.Slider(minimum=1, maximum=max(pages, 2), value=page, step=1, interactive=pages > 1),
            "samples": [sample_row(ctx, s) for s in rows], "page_info": info,
            "sample": gr.Dropdown(choices=[s.label for s in rows], value=rows[0].label if rows else None)}


# -- opening a sample ------------------------------------------------------------------------------------
def rerun_form(config: BenchConfig, sample: Sample) -> dict[str, Any]:
    """The Trajectories form that re-runs ``sample`` as the bench ran it: its full prompt, the run's knobs
    (the protocol decides whether generation stops at EOS) and the noise sample id its item id gives."""
    sample_id = sample.noise_id
    if not 0 <= sample_id <= MAX_SEED:
        raise InputError(f"{sample.task} sample {inputs.shown(sample.label)} has noise sample id {sample_id}, "
                         f"outside the Trajectories tab's 0 to {MAX_SEED}")
    return trajectory_form(sample.prompt, config.generation(), sample_id)


def comparison(bench: BenchFolder, generation: dict | None, run: trajectories.TrajectoryRun, shown: str) -> str:
    """Whether the re-run gave the bench's tokens (kept as the bench keeps them: ``stored_token_ids``); ``shown``
    is the re-run's text as the Trajectories tab shows it."""
    if generation is None:
        return "The bench's tokens are not in this folder (no generations/), so the re-run cannot be compared."
    if run.status != "finished" or run.generation is None:
        return "The re-run was stopped before its end; nothing to compare."
    expected = generation["token_ids"]
    got = stored_token_ids(run.generation, bench.config.protocol)
    if got == expected:
        return f"✓ **The re-run reproduces the bench's {len(expected)} tokens exactly.**"
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return (f"✗ **The re-run differs from the bench's tokens from token {first} on** ({len(expected)} bench tokens, "
            f"{len(got)} re-run tokens); re-run's text: {md(shown)}")


def origin_note(ctx: AppContext, bench: BenchFolder, sample: Sample, form: dict[str, Any], reasons: list[str]) -> str:
    """The opened sample beside its re-run: verdict, score, extracted answer, ground truth, the bench's text."""
    answer, gold = sample.answers()
    verdict, tok = "✓ correct" if sample.correct else "✗ wrong", ctx.workbench.tokenizer
    lines = [f"**Bench sample** {sample.task} · id {md(sample.label)} · **{verdict}** · score {sample.score:.4f} · "
             f"from {md(str(bench.path))}",
             f"Extracted answer **{md(display_string(answer, tok)) or '(none)'}** · ground truth "
             f"**{md(gold) or '(none)'}**",
             f"Bench's generated text: {md(display_string(sample.generated, tok))}",
             f"Noise: seed {form['seed']} + 1000 × sample id {form['sample_id']} "
             f"({'from the id' if sample.id is not None else 'the item has no id: its position'}) + 10^7 × block · "
             f"knobs: {knobs_line(bench.config)}"]
    return "  \n".join(lines + [f"⚠ {r}" for r in reasons])


# -- handlers ---------------------------------------------------------------------------------------------
def load(ctx: AppContext, folder) -> Update:
    """Read a bench output folder: its table, plot, setup, and the first page of its first task's wrong samples."""
    bench = BenchFolder.read(folder, ctx.bench_roots)
    run_id = ctx.store.put("bench", bench)
    task = bench.tasks[0]
    return {"run": run_id, "status": overview(ctx, bench), "table": accuracy_rows(bench.summary),
            "figure": accuracy_figure(bench.summary), "task": gr.Dropdown(choices=bench.tasks, value=task),
            "verdict": "wrong", "folder": gr.Dropdown(choices=find_folders(ctx.bench_roots)),
            **page_view(ctx, bench, task, "wrong", 1)}


def first_page(ctx: AppContext, run_id, task, verdict) -> Update:
    """The first page of a task's samples with this verdict (wrong, correct or all)."""
    return page_view(ctx, ctx.store.get(run_id, "bench").payload, task, verdict, 1)


def page(ctx: AppContext, run_id, task, verdict, number) -> Update:
    """Page ``number`` (from 1) of a task's samples with this verdict."""
    return page_view(ctx, ctx.store.get(run_id, "bench").payload, task, verdict, number)


def open_sample(ctx: AppContext, run_id, task, sample, preview, method, dims, *, session: str = LOCAL_SESSION,
                progress: Progress = no_progress) -> Iterator[Update]:
    """Fill the Trajectories form with the sample's prompt, noise sample id and knobs, switch to that tab and
    re-run it there (streamed); then say whether the re-run gave the bench's tokens."""
    bench: BenchFolder = ctx.store.get(run_id, "bench").payload
    task = inputs.choice("task", task, bench.tasks)
    picked = find_sample(bench.samples(task), sample)
    generation, form = bench.generation(picked), rerun_form(bench.config, picked)
    yield from open_in_trajectories(
        ctx, form, (preview, method, dims), f"Opened {task} sample {md(picked.label)} in the **Trajectories** tab.",
        origin_note(ctx, bench, picked, form, warnings(ctx, bench)),
        lambda update: comparison(bench, generation, ctx.store.get(update["run"], "trajectory").payload,
                                  update["summary"]["text"]), session=session, progress=progress)


# -- layout and events ------------------------------------------------------------------------------------
def build(ctx: AppContext) -> TabComponents:
    """The tab's layout (inside a ``gr.Tab``)."""
    ui = TabComponents()
    ui.run = run_state(ctx)
    with gr.Row():
        ui.folder = gr.Dropdown(find_folders(ctx.bench_roots), value=None, allow_custom_value=True, scale=4,
                                label="Bench output folder",
                                info=f"written by cola-workbench bench run / bench score, under "
                                     f"{roots_text(ctx.bench_roots)} (serve --bench-root adds folders)")
        ui.load = gr.Button("Load folder", variant="primary", scale=1)
    ui.status = gr.Markdown("Load a bench output folder to see its table, plot and samples.")
    with gr.Row():
        with gr.Column(scale=1, min_width=420):
            ui.table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, label="Accuracy per task")
        with gr.Column(scale=1, min_width=480):
            ui.figure = gr.Plot(empty_figure("accuracy per task appears here", HEIGHT), label="Accuracy")
    with gr.Row():
        ui.task = gr.Dropdown([], label="Task")
        ui.verdict = gr.Radio(list(VERDICTS), value="wrong", label="Samples")
        ui.page = gr.Slider(1, 2, value=1, step=1, label="Page", interactive=False)
    ui.page_info = gr.Markdown()
    ui.samples = gr.Dataframe(headers=SAMPLE_HEADERS, interactive=False, wrap=True, label="Samples")
    with gr.Row():
        ui.sample = gr.Dropdown([], allow_custom_value=True, label="Sample id", scale=3,
                                info="a sample of this page, or type any id of the task")
        ui.open = gr.Button("Open in Trajectories (re-run)", variant="primary", scale=1)
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    on(ctx, ui, ui.load.click, load, ("folder",), LOAD_OUTPUTS, api_name="bench_load")
    on(ctx, ui, [ui.task.input, ui.verdict.input], first_page, ("run", "task", "verdict"), PAGE_OUTPUTS,
       api_name="bench_filter")
    on(ctx, ui, ui.page.release, page, ("run", "task", "verdict", "page"), PAGE_OUTPUTS, api_name="bench_page",
       trigger_mode="always_last")


def link(ctx: AppContext, tabs: dict[str, TabComponents], selector: gr.Tabs) -> None:
    """Open: the Trajectories tab's form, view choices and outputs join this tab's components as ``traj_*``."""
    ui = tabs[TAB_ID]
    target = attach(ui, tabs, selector)
    on(ctx, ui, ui.open.click, open_sample, ("run", "task", "sample", *VIEW_INPUTS), OUTPUTS, api_name="bench_open",
       heavy=True, show_progress="full", show_progress_on=[target.block, target.step])
