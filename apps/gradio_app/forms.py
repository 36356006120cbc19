"""Form pieces several tabs share (layout only; their values are checked by :func:`inputs.sampler_knobs`)."""
from __future__ import annotations

import gradio as gr

from . import inputs
from .context import AppContext
from .events import TabComponents


def prompt_and_knobs(ctx: AppContext, ui: TabComponents) -> None:
    """``ui.prompt`` and the knobs every generating form has (``steps``, ``guidance``, ``max_new_tokens``,
    ``seed``), at GenerationConfig()'s defaults and within the app's limits."""
    lim = ctx.limits
    ui.prompt = gr.Textbox(label="Prompt", lines=2, placeholder="leave empty for unconditional generation",
                           value="a small animal that")
    with gr.Row():
        ui.steps = gr.Slider(1, lim.max_steps, value=inputs.DEFAULTS.steps, step=1, label="Steps per block")
        ui.guidance = gr.Slider(0, lim.max_guidance, value=inputs.DEFAULTS.guidance, step=0.5, label="Guidance")
    with gr.Row():
        ui.max_new_tokens = gr.Slider(1, lim.max_new_tokens, value=inputs.DEFAULTS.max_new_tokens, step=1,
                                      label="Max new tokens")
        ui.seed = gr.Number(0, precision=0, label="Seed", minimum=0, maximum=inputs.MAX_SEED)


def position_slider(last: int, value: int = 0, **options) -> gr.Slider:
    """A 0..last slider of positions (Gradio needs minimum < maximum: a single position shows as a locked
    0..1 slider); as a component, or as an update of one."""
    return gr.Slider(minimum=0, maximum=max(last, 1), value=value, step=1, interactive=last > 0, **options)
