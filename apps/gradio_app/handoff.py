"""Opening a run in the Trajectories tab from another tab (Bench's samples, Chat's answers).

The opening tab's ``link`` calls :func:`attach`, which gives it the Trajectories tab's form, view choices and
outputs as ``traj_*`` components and the tab selector as ``tabs``; its Open handler then delegates to
:func:`open_in_trajectories`, which fills that form, switches tabs and runs the Trajectories tab's own
:func:`~.trajectories.generate` there, streamed, with a note on where the run came from.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import gradio as gr

from cola_core.generate import GenerationConfig

from . import trajectories
from .context import AppContext
from .events import Progress, TabComponents, Update, no_progress

VIEW = ("preview", "method", "dims")     # how the opened run is shown: the Trajectories tab's own choices
VIEW_INPUTS = tuple(f"traj_{name}" for name in VIEW)
OUTPUTS = ("status", "tabs", *(f"traj_{name}" for name in (*trajectories.FORM, "origin", *trajectories.RUN_OUTPUTS)))


def rerun_form(prompt: str, config: GenerationConfig, sample_id: int) -> dict[str, Any]:
    """The Trajectories form that runs ``prompt`` with ``config``'s knobs (its seed too) and noise ``sample_id``."""
    low, high = config.guidance_interval or (0.0, 1.0)
    return {"prompt": prompt, "steps": config.steps, "guidance": config.guidance,
            "max_new_tokens": config.max_new_tokens, "seed": config.seed, "solver": config.solver,
            "schedule": config.schedule, "sample_id": sample_id, "temperature": config.temperature,
            "top_k": config.top_k, "top_p": config.top_p, "repetition_penalty": config.repetition_penalty,
            "stop_at_eos": config.stop_at_eos, "guidance_rescale": config.guidance_rescale, "interval_lo": low,
            "interval_hi": high}


def traj(update: Update) -> Update:
    """A Trajectories tab update, keyed by the names its components have in the opening tab (``traj_*``)."""
    return {f"traj_{k}": v for k, v in update.items()}


def attach(ui: TabComponents, tabs: dict[str, TabComponents], selector: gr.Tabs) -> TabComponents:
    """Give the opening tab's ``ui`` the Trajectories tab's components as ``traj_*`` and the selector as ``tabs``;
    returns the Trajectories tab's components."""
    target = tabs[trajectories.TAB_ID]
    ui.tabs = selector
    for name in (*trajectories.FORM, *VIEW, "origin", *trajectories.RUN_OUTPUTS):
        setattr(ui, f"traj_{name}", getattr(target, name))
    return target


def open_in_trajectories(ctx: AppContext, form: dict[str, Any], view: tuple, status: str, note: str,
                         conclude: Callable[[Update], str], *, session: str, progress: Progress = no_progress,
                         **run: Any) -> Iterator[Update]:
    """Fill the Trajectories form with ``form``, switch to that tab and run it there, streamed (``run``: the
    extra arguments of :func:`~.trajectories.generate`, e.g. another tab's workbench and token ids). The tab's
    origin note is ``note``, and once the run has ended ``note`` plus ``conclude(the run's final update)``
    (its ``run`` id and ``summary``); ``status`` is the opening tab's own line."""
    preview, method, dims = view
    runs = trajectories.generate(ctx, **form, preview=preview, method=method, dims=dims, session=session,
                                 progress=progress, **run)
    try:
        update = next(runs)           # the Trajectories tab's own checks pass before anything changes
        opened = {"status": status, "tabs": gr.Tabs(selected=trajectories.TAB_ID), **traj(form)}
        yield {**opened, "traj_origin": gr.Markdown(note, visible=True), **traj(update)}
        for update in runs:
            if "summary" not in update:       # streamed steps; the run's final view comes once, below
                yield traj(update)
    finally:
        runs.close()                  # cancelled by the UI: the run is marked stopped at once
    concluded = f"{note}  \n{conclude(update)}"
    yield {**opened, **traj(update), "traj_origin": gr.Markdown(concluded, visible=True)}   # the whole picture
