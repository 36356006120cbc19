"""Latent lab: encode two texts once, then interpolate (decoded live), apply attribute directions,
re-generate part of the flow with a strength, and check the ODE inversion round trip.

The two texts' latents (posterior means) live in the run store; every slider move decodes one point
from them. Decoding stops at the encoded text's length, every decoded token is shown (special tokens as
markers) and the token accuracy counts exactly those. The inversion round trip inverts a posterior
sample (the DiT was trained on posterior samples, not means) and reports its error per block, free-running
and with the true prefix held.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
import plotly.graph_objects as go
import torch

from workbench import (Latents, apply_direction, attribute_direction, interpolate, invert, regenerate_from)
from workbench.flow import Inversion
from workbench.session import token_accuracy

from . import exports, inputs
from .context import AppContext
from .display import display_tokens
from .errors import InputError
from .events import Progress, TabComponents, Update, no_progress, on, run_state
from .forms import guidance_variants
from .plots import HEIGHT, Overlay, empty_figure, projection_figure

TITLE, TAB_ID = "Latent lab", "latent"
SOURCES = ("A", "B")
METHODS = ("lerp", "slerp")
SOLVERS = ("euler", "heun", "midpoint")
PATH_ALPHAS = [i / 10 for i in range(11)]
ENCODE_OUTPUTS = ("encoded", "interp_text", "interp_tokens", "interp_info", "path", "blocks", "dir_blocks", "keep",
                  "files", "pair")


@dataclass
class LatentPair:
    """Latents of texts A and B (padded to one length) and the attribute directions computed for them."""

    latents: Latents
    texts: list[str]
    directions: dict[tuple, torch.Tensor] = field(default_factory=dict)

    @property
    def n_blocks(self) -> int:
        return self.latents.n_blocks[0]

    def source(self, which) -> Latents:
        """Text A's or text B's latents."""
        return self.latents[SOURCES.index(inputs.choice("source", which, SOURCES))]

    def sampled(self, ctx: AppContext, which, seed: int) -> Latents:
        """A posterior sample of text A or B over its own blocks (no padding to the pair's length): the noise of
        its block k is the per-sample draw of (seed, sample id 0 for A or 1 for B, k). The prior was trained on
        such samples."""
        index = SOURCES.index(inputs.choice("source", which, SOURCES))
        return ctx.workbench.encode([self.texts[index]], sample=True, seed=seed, sample_ids=[index])

    def blocks(self, name: str, picked) -> list[int] | None:
        """Ticked block indices of these latents (None: none ticked, meaning all)."""
        return inputs.blocks(name, picked, self.n_blocks) or None


def decoded_view(ctx: AppContext, latents: Latents) -> tuple[str, list[tuple[str, float]]]:
    """Greedy text of one latent sequence (the workbench's: every slot of the encoded text's length, special tokens
    as markers) and each of its tokens with its probability: the tokens the token accuracy counts."""
    item = ctx.workbench.decode(latents)[0]
    tokens = display_tokens(item.token_ids, ctx.workbench.tokenizer)
    return item.text, [(t, round(float(p), 3)) for t, p in zip(tokens, item.probs)]


def path_figure(ctx: AppContext, pair: LatentPair, method: str, blocks: list[int] | None, alpha: float | None):
    """PCA of the interpolation path (each latent row from A to B) with the current point marked."""
    a, b = pair.latents[0], pair.latents[1]
    points = torch.stack([interpolate(a, b, x, method, blocks).z[0].flatten(0, 1) for x in PATH_ALPHAS])  # (A, n, C)
    overlays = [Overlay("A → B path", points.transpose(0, 1), "#1f77b4", mode="lines", size=2),
                Overlay("A", a.z[0].flatten(0, 1), "#2ca02c", mode="markers", size=9, symbol="circle"),
                Overlay("B", b.z[0].flatten(0, 1), "#d62728", mode="markers", size=9, symbol="square")]
    if alpha is not None:
        overlays.append(Overlay(f"alpha = {alpha:g}", interpolate(a, b, alpha, method, blocks).z[0].flatten(0, 1),
                                "#000000", mode="markers", size=10, symbol="diamond"))
    return projection_figure(ctx.projections.pca, overlays, 2, f"Interpolation path ({method}), PCA of latents",
                             height=440, max_backdrop=ctx.limits.backdrop_points)


def point(ctx: AppContext, pair: LatentPair, alpha: float, method: str, blocks: list[int] | None
          ) -> tuple[str, list[tuple[str, float]], dict]:
    """Decode one interpolation point: (text, tokens with probabilities, numbers)."""
    a, b = pair.latents[0], pair.latents[1]
    mixed = interpolate(a, b, alpha, method, blocks)
    text, tokens = decoded_view(ctx, mixed)
    z = mixed.z[0]
    info = {"alpha": alpha, "method": method, "blocks": blocks or "all", "text": text,
            "mean_token_probability": round(sum(p for _, p in tokens) / max(len(tokens), 1), 4),
            "distance_to_A": float((z - a.z[0]).norm(dim=-1).mean()),
            "distance_to_B": float((z - b.z[0]).norm(dim=-1).mean())}
    return text, tokens, info


def write_downloads(ctx: AppContext, run_id: str, pair: LatentPair, method: str) -> list[str]:
    """The encoded latents (safetensors + JSON) and an alpha sweep of the interpolation (JSON / CSV / HTML)."""
    folder = ctx.store.folder(run_id)
    rows = [point(ctx, pair, alpha, method, None)[2] for alpha in PATH_ALPHAS]
    files = [str(pair.latents.save(folder / "latents_ab")), str(folder / "latents_ab.json")]
    files += exports.bundle(folder, "interpolation", {"texts": pair.texts, "method": method, "rows": rows}, rows,
                            f"Cola interpolation ({method})", [path_figure(ctx, pair, method, None, None)],
                            {"A": pair.texts[0], "B": pair.texts[1], "method": method})
    return files


def point_update(text: str, tokens: list[tuple[str, float]], info: dict) -> Update:
    """One interpolation point as shown: decoded text, token confidences, numbers."""
    return {"interp_text": text, "interp_tokens": tokens, "interp_info": info}


def stored_pair(ctx: AppContext, run_id) -> LatentPair:
    return ctx.store.get(run_id, "latents").payload


# -- handlers ---------------------------------------------------------------------------------------------
def encode(ctx: AppContext, text_a, text_b, alpha, method, *, progress: Progress = no_progress) -> Update:
    """Encode texts A and B (padded to one length) once; show the round trip and the point at ``alpha``."""
    lim = ctx.limits
    texts = [inputs.text("text A", text_a, lim), inputs.text("text B", text_b, lim)]
    method = inputs.choice("method", method, METHODS)
    alpha = inputs.number("alpha", alpha, 0.0, 1.0)
    progress(0.2, desc="encoding")
    latents = ctx.workbench.encode(texts, pad_to="longest")
    decoded = ctx.workbench.decode(latents)
    accuracy = token_accuracy(latents, decoded)
    pair = LatentPair(latents, texts)
    run_id = ctx.store.put("latents", pair)
    report = {"run_id": run_id, "blocks": pair.n_blocks, "latent_shape": list(latents.z[0].shape),
              **{name: {"text": texts[i], "decoded": decoded.texts[i], "tokens": len(decoded[i].token_ids),
                        "token_accuracy": accuracy[i]}
                 for i, name in enumerate(SOURCES)}}
    pickers = gr.CheckboxGroup(choices=[str(i) for i in range(pair.n_blocks)], value=[])
    return {"encoded": report, **point_update(*point(ctx, pair, alpha, method, None)),
            "path": path_figure(ctx, pair, method, None, alpha), "blocks": pickers, "dir_blocks": pickers,
            "keep": pickers, "files": write_downloads(ctx, run_id, pair, method), "pair": run_id}


def interpolate_point(ctx: AppContext, run_id, alpha, method, blocks) -> Update:
    """Decode the point ``alpha`` of the way from A to B (in the ticked blocks, or all)."""
    pair = stored_pair(ctx, run_id)
    alpha, method = inputs.number("alpha", alpha, 0.0, 1.0), inputs.choice("method", method, METHODS)
    return point_update(*point(ctx, pair, alpha, method, pair.blocks("blocks", blocks)))


def interpolate_path(ctx: AppContext, run_id, alpha, method, blocks) -> Update:
    """The PCA picture of the path from A to B with the point ``alpha`` marked."""
    pair = stored_pair(ctx, run_id)
    return {"path": path_figure(ctx, pair, inputs.choice("method", method, METHODS), pair.blocks("blocks", blocks),
                                inputs.number("alpha", alpha, 0.0, 1.0))}


def direction(ctx: AppContext, run_id, positive, negative, source, strength, blocks) -> Update:
    """Apply the attribute direction (mean of positive texts minus negative ones) to A or B and decode."""
    lim, pair = ctx.limits, stored_pair(ctx, run_id)
    pos = inputs.lines("positive texts", positive, lim, lim.max_texts)
    neg = inputs.lines("negative texts", negative, lim, lim.max_texts)
    if not pos or not neg:
        raise InputError("an attribute direction needs at least one positive and one negative text")
    strength = inputs.number("strength", strength, -10.0, 10.0)
    latents, picked = pair.source(source), pair.blocks("blocks", blocks)
    key = (tuple(pos), tuple(neg))
    if key not in pair.directions:
        pair.directions[key] = attribute_direction(ctx.workbench, pos, neg)
    vector = pair.directions[key]
    text, _ = decoded_view(ctx, apply_direction(latents, vector, strength, picked))
    return {"dir_text": text,
            "dir_info": {"source": source, "strength": strength, "direction_norm": float(vector.norm()),
                         "positive": len(pos), "negative": len(neg), "text": text}}


def regenerate(ctx: AppContext, run_id, source, strength, keep, steps, guidance, seed,
               guidance_rescale=inputs.DEFAULTS.guidance_rescale, interval_lo=0.0, interval_hi=1.0, *,
               progress: Progress = no_progress) -> Update:
    """Noise A or B to t = strength·T and integrate back with the prior (guided as the sampler guides, guidance
    variants included), keeping the ticked blocks."""
    lim, pair = ctx.limits, stored_pair(ctx, run_id)
    latents = pair.source(source)
    options = dict(strength=inputs.number("strength", strength, 0.0, 1.0),
                   keep_blocks=inputs.blocks("kept blocks", keep, pair.n_blocks),
                   steps=inputs.integer("steps", steps, 1, lim.max_steps),
                   guidance=inputs.number("guidance", guidance, 0.0, lim.max_guidance), seed=inputs.seed("seed", seed),
                   **inputs.guidance_variants(guidance_rescale, interval_lo, interval_hi))
    progress(0.1, desc="re-generating")
    result = regenerate_from(ctx.workbench, latents, **options)
    before, after = ctx.workbench.decode(latents)[0].token_ids, ctx.workbench.decode(result.latents)[0]
    changed = sum(x != y for x, y in zip(before, after.token_ids)) / max(len(before), 1)
    text = after.text
    return {"regen_text": text,
            "regen_info": {"source": source, "t_start": result.t_start, "steps_run": result.steps_run,
                           "changed_token_fraction": round(changed, 4), "text": text,
                           "guidance_rescale": options["guidance_rescale"],
                           "guidance_interval": options["guidance_interval"]}}


def block_error_figure(result: Inversion) -> go.Figure:
    """Relative round-trip error per block: free-running (errors carry along the chain) and with the true prefix
    held (each block's own ODE error)."""
    free, held = result.block_error[0], result.block_error_held[0]
    blocks = list(range(len(free)))
    fig = go.Figure([go.Bar(x=blocks, y=free, name="free-running (regenerated prefix)", marker_color="#1f77b4"),
                     go.Bar(x=blocks, y=held, name="true prefix held (own error)", marker_color="#ff7f0e")])
    fig.update_layout(height=HEIGHT - 80, barmode="group", title="Round-trip error per block: ‖ẑ − z‖ / ‖z‖",
                      xaxis=dict(title="block", dtick=1), yaxis=dict(title="relative error", type="log"),
                      legend=dict(orientation="h", y=-0.25), margin=dict(l=60, r=20, t=50, b=40))
    return fig


def inversion(ctx: AppContext, run_id, source, steps, solver, seed=0, *, progress: Progress = no_progress) -> Update:
    """ODE round trip of a posterior sample of A or B: data → noise → data, with its errors (in all and per
    block, free-running and with the true prefix held) and token agreement."""
    pair = stored_pair(ctx, run_id)
    steps = inputs.integer("ODE steps", steps, 1, ctx.limits.max_steps)
    solver = inputs.choice("solver", solver, SOLVERS)
    seed = inputs.seed("posterior sample seed", seed)
    progress(0.1, desc="inverting (data → noise → data)")
    latents = pair.sampled(ctx, source, seed)
    result = invert(ctx.workbench, latents, steps=steps, solver=solver)
    text, _ = decoded_view(ctx, result.reconstruction)
    noise = result.noise.z[0]
    return {"inv_text": text,
            "inv_info": {"source": source, "latent": f"posterior sample (seed {seed})",
                         "sample_text": decoded_view(ctx, latents)[0], "text": text,
                         "max_abs_error": result.max_abs_error[0], "relative_error": result.relative_error[0],
                         "relative_error_held": result.relative_error_held[0],
                         "block_error": result.block_error[0], "block_error_held": result.block_error_held[0],
                         "token_agreement": result.token_agreement[0],
                         "noise_mean": float(noise.mean()), "noise_std": float(noise.std())},
            "inv_blocks": block_error_figure(result)}


# -- layout and events ------------------------------------------------------------------------------------
def build(ctx: AppContext) -> TabComponents:
    """The tab's layout (inside a ``gr.Tab``); knob defaults are GenerationConfig()'s."""
    lim, ui = ctx.limits, TabComponents()
    ui.pair = run_state(ctx)
    with gr.Row():
        ui.text_a = gr.Textbox(label="Text A", value="a small domesticated animal kept as a pet", lines=2)
        ui.text_b = gr.Textbox(label="Text B", value="a large body of salt water that covers most of the earth",
                               lines=2)
    ui.encode = gr.Button("Encode A and B", variant="primary")
    with gr.Row():
        ui.encoded = gr.JSON(label="Round trip (encode → decode)", scale=2)
        ui.files = gr.File(label="Downloads: latents + interpolation sweep", file_count="multiple",
                           interactive=False, scale=1)
    with gr.Tab("Interpolate"):
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                ui.alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="alpha (0 = A, 1 = B)")
                ui.method = gr.Radio(list(METHODS), value="slerp", label="Method")
                ui.blocks = gr.CheckboxGroup([], label="Blocks to interpolate (none ticked = all)")
                ui.interp_text = gr.Textbox(label="Decoded", lines=2, interactive=False)
                ui.interp_tokens = gr.HighlightedText(label="Token confidence (greedy probability)",
                                                      show_legend=False, combine_adjacent=False)
                ui.interp_info = gr.JSON(label="Point")
            with gr.Column(scale=1, min_width=400):
                ui.path = gr.Plot(label="Path")
    with gr.Tab("Attribute direction"):
        with gr.Row():
            ui.positive = gr.Textbox(label="Positive texts (one per line)", lines=3,
                                     value="very large in size or amount\nfull of great happiness")
            ui.negative = gr.Textbox(label="Negative texts (one per line)", lines=3,
                                     value="small and of little importance\nfull of sadness or regret")
        with gr.Row():
            ui.dir_source = gr.Radio(list(SOURCES), value="A", label="Apply to")
            ui.strength = gr.Slider(-4, 4, value=1.0, step=0.1, label="Strength")
            ui.dir_blocks = gr.CheckboxGroup([], label="Blocks (none ticked = all)")
        ui.apply_direction = gr.Button("Apply direction")
        ui.dir_text = gr.Textbox(label="Edited text", lines=2, interactive=False)
        ui.dir_info = gr.JSON(label="Direction")
    with gr.Tab("Partial re-generation"):
        with gr.Row():
            ui.regen_source = gr.Radio(list(SOURCES), value="A", label="Re-generate")
            ui.regen_strength = gr.Slider(0, 1, value=0.5, step=0.05, label="Strength (0 = keep, 1 = from noise)")
            ui.keep = gr.CheckboxGroup([], label="Blocks kept fixed")
        with gr.Row():
            ui.regen_steps = gr.Slider(1, lim.max_steps, value=inputs.DEFAULTS.steps, step=1, label="Steps")
            ui.regen_guidance = gr.Slider(0, lim.max_guidance, value=inputs.DEFAULTS.guidance, step=0.5,
                                          label="Guidance")
            ui.regen_seed = gr.Number(0, precision=0, minimum=0, maximum=inputs.MAX_SEED, label="Seed")
        ui.regen_rescale, ui.regen_interval_lo, ui.regen_interval_hi = guidance_variants()
        ui.regenerate = gr.Button("Re-generate")
        ui.regen_text = gr.Textbox(label="Re-generated text", lines=2, interactive=False)
        ui.regen_info = gr.JSON(label="Re-generation")
    with gr.Tab("Inversion round trip"):
        with gr.Row():
            ui.inv_source = gr.Radio(list(SOURCES), value="A", label="Invert")
            ui.inv_steps = gr.Slider(1, lim.max_steps, value=inputs.DEFAULTS.steps, step=1, label="ODE steps")
            ui.inv_solver = gr.Dropdown(list(SOLVERS), value="heun", label="Solver")
            ui.inv_seed = gr.Number(0, precision=0, minimum=0, maximum=inputs.MAX_SEED,
                                    label="Posterior sample seed",
                                    info="the round trip inverts a posterior sample: the DiT was trained on them")
        ui.invert = gr.Button("Invert and regenerate")
        ui.inv_text = gr.Textbox(label="Text decoded from the round trip", lines=2, interactive=False)
        with gr.Row():
            ui.inv_info = gr.JSON(label="Round-trip error", scale=1)
            ui.inv_blocks = gr.Plot(empty_figure("per-block round-trip errors appear here", HEIGHT - 80),
                                    label="Per block", scale=1)
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    on(ctx, ui, ui.encode.click, encode, ("text_a", "text_b", "alpha", "method"), ENCODE_OUTPUTS,
       api_name="latent_encode", heavy=True)
    slider = dict(trigger_mode="always_last", show_progress="hidden")
    on(ctx, ui, [ui.alpha.input, ui.method.input, ui.blocks.input], interpolate_point,
       ("pair", "alpha", "method", "blocks"), ("interp_text", "interp_tokens", "interp_info"),
       api_name="latent_interpolate", **slider)
    on(ctx, ui, [ui.alpha.release, ui.method.input, ui.blocks.input], interpolate_path,
       ("pair", "alpha", "method", "blocks"), ("path",), api_name="latent_path", **slider)
    on(ctx, ui, ui.apply_direction.click, direction,
       ("pair", "positive", "negative", "dir_source", "strength", "dir_blocks"), ("dir_text", "dir_info"),
       api_name="latent_direction", heavy=True)
    on(ctx, ui, ui.regenerate.click, regenerate,
       ("pair", "regen_source", "regen_strength", "keep", "regen_steps", "regen_guidance", "regen_seed",
        "regen_rescale", "regen_interval_lo", "regen_interval_hi"),
       ("regen_text", "regen_info"), api_name="latent_regenerate", heavy=True)
    on(ctx, ui, ui.invert.click, inversion, ("pair", "inv_source", "inv_steps", "inv_solver", "inv_seed"),
       ("inv_text", "inv_info", "inv_blocks"), api_name="latent_invert", heavy=True)
