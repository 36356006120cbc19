"""Form pieces several tabs share (layout only; their values are checked by :func:`inputs.sampler_knobs`)."""
from __future__ import annotations

import gradio as gr

from . import inputs
from .context import AppContext
from .events import TabComponents


def prompt_and_knobs(ctx: AppContext, ui: TabComponents) -> None:
    """``ui.prompt`` and the knobs every generating form has (``steps``, ``guidance``, ``max_new_tokens``,
    ``seed``), at GenerationConfig()'s defaults and within the app's limits."""
    ui.prompt = gr.Textbox(label="Prompt", lines=2, placeholder="leave empty for unconditional generation",
                           value="a small animal that")
    sampler_knobs(ctx, ui)


def sampler_knobs(ctx: AppContext, ui: TabComponents, max_new_tokens: int = inputs.DEFAULTS.max_new_tokens) -> None:
    """``ui.steps``, ``ui.guidance``, ``ui.max_new_tokens`` and ``ui.seed`` at GenerationConfig()'s defaults (or
    ``max_new_tokens``), within the app's limits."""
    lim = ctx.limits
    with gr.Row():
        ui.steps = gr.Slider(1, lim.max_steps, value=inputs.DEFAULTS.steps, step=1, label="Steps per block")
        ui.guidance = gr.Slider(0, lim.max_guidance, value=inputs.DEFAULTS.guidance, step=0.5, label="Guidance")
    with gr.Row():
        ui.max_new_tokens = gr.Slider(1, lim.max_new_tokens, value=max_new_tokens, step=1, label="Max new tokens")
        ui.seed = gr.Number(0, precision=0, label="Seed", minimum=0, maximum=inputs.MAX_SEED)


def position_slider(last: int, value: int = 0, **options) -> gr.Slider:
    """A 0..last slider of positions (Gradio needs minimum < maximum: a single position shows as a locked
    0..1 slider); as a component, or as an update of one."""
    return gr.Slider(minimum=0, maximum=max(last, 1), value=value, step=1, interactive=last > 0, **options)


def guidance_variants() -> tuple[gr.Slider, gr.Slider, gr.Slider]:
    """CFG-rescale φ and the guidance interval (from, to) in t/T, in a folded group; off by default (φ 0, the
    whole range [0, 1]), which is the official CFG combine bit for bit. Checked by :func:`inputs.guidance_variants`."""
    with gr.Accordion("Guidance variants: CFG-rescale, guidance interval", open=False):
        rescale = gr.Slider(0, 1, value=inputs.DEFAULTS.guidance_rescale, step=0.05, label="CFG-rescale φ",
                            info="scales the guided velocity toward the conditional one's spread (0 = off); keeps "
                                 "high guidance from inflating the latents")
        with gr.Row():
            low = gr.Slider(0, 1, value=0.0, step=0.05, label="Guide from t/T")
            high = gr.Slider(0, 1, value=1.0, step=0.05, label="Guide up to t/T",
                             info="outside [from, to] the conditional velocity alone (0 to 1 = always guide)")
    return rescale, low, high
