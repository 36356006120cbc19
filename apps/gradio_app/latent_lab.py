"""Latent lab: encode two texts once, then interpolate (decoded live), apply attribute directions,
re-generate part of the flow with a strength, and check the ODE inversion round trip.

The two texts' latents live in the run store; every slider move decodes one point from them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
import torch

from workbench import (Latents, apply_direction, attribute_direction, interpolate, invert, regenerate_from)
from workbench.session import token_accuracy

from . import exports, inputs
from .context import AppContext
from .plots import Overlay, projection_figure

SOURCES = ("A", "B")
METHODS = ("lerp", "slerp")
PATH_ALPHAS = [i / 10 for i in range(11)]


@dataclass
class LatentPair:
    """Latents of texts A and B (padded to one length) and the attribute directions computed for them."""

    latents: Latents
    texts: list[str]
    directions: dict[tuple, torch.Tensor] = field(default_factory=dict)

    def source(self, which: str) -> Latents:
        return self.latents[SOURCES.index(inputs.choice("source", which, SOURCES))]


def decoded_view(ctx: AppContext, latents: Latents) -> tuple[str, list[tuple[str, float]]]:
    """Greedy text of one latent sequence and its tokens with their probabilities (padding dropped)."""
    item = ctx.workbench.decode(latents)[0]
    tok, pad = ctx.workbench.tokenizer, ctx.workbench.tokenizer.pad_id
    tokens = [(tok.decode([i]), round(float(p), 3)) for i, p in zip(item.token_ids, item.probs) if i != pad]
    return item.text, tokens


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


def build(ctx: AppContext) -> dict:
    lim = ctx.limits
    state = gr.State(None, time_to_live=ctx.store.ttl_s, delete_callback=ctx.store.delete)
    with gr.Row():
        text_a = gr.Textbox(label="Text A", value="a small domesticated animal kept as a pet", lines=2)
        text_b = gr.Textbox(label="Text B", value="a large body of salt water that covers most of the earth", lines=2)
    encode_btn = gr.Button("Encode A and B", variant="primary")
    with gr.Row():
        encoded = gr.JSON(label="Round trip (encode → decode)", scale=2)
        files = gr.File(label="Downloads: latents + interpolation sweep", file_count="multiple", interactive=False,
                        scale=1)
    with gr.Tab("Interpolate"):
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="alpha (0 = A, 1 = B)")
                method = gr.Radio(list(METHODS), value="slerp", label="Method")
                blocks = gr.CheckboxGroup([], label="Blocks to interpolate (none ticked = all)")
                interp_text = gr.Textbox(label="Decoded", lines=2, interactive=False)
                interp_tokens = gr.HighlightedText(label="Token confidence (greedy probability)",
                                                   show_legend=False, combine_adjacent=False)
                interp_info = gr.JSON(label="Point")
            with gr.Column(scale=1, min_width=400):
                path_plot = gr.Plot(label="Path")
    with gr.Tab("Attribute direction"):
        with gr.Row():
            positive = gr.Textbox(label="Positive texts (one per line)", lines=3,
                                  value="very large in size or amount\nfull of great happiness")
            negative = gr.Textbox(label="Negative texts (one per line)", lines=3,
                                  value="small and of little importance\nfull of sadness or regret")
        with gr.Row():
            dir_source = gr.Radio(list(SOURCES), value="A", label="Apply to")
            strength = gr.Slider(-4, 4, value=1.0, step=0.1, label="Strength")
            dir_blocks = gr.CheckboxGroup([], label="Blocks (none ticked = all)")
        dir_btn = gr.Button("Apply direction")
        dir_text = gr.Textbox(label="Edited text", lines=2, interactive=False)
        dir_info = gr.JSON(label="Direction")
    with gr.Tab("Partial re-generation"):
        with gr.Row():
            regen_source = gr.Radio(list(SOURCES), value="A", label="Re-generate")
            regen_strength = gr.Slider(0, 1, value=0.5, step=0.05, label="Strength (0 = keep, 1 = from noise)")
            keep = gr.CheckboxGroup([], label="Blocks kept fixed")
        with gr.Row():
            regen_steps = gr.Slider(1, lim.max_steps, value=16, step=1, label="Steps")
            regen_guidance = gr.Slider(0, lim.max_guidance, value=7.0, step=0.5, label="Guidance")
            regen_seed = gr.Number(0, precision=0, minimum=0, label="Seed")
        regen_btn = gr.Button("Re-generate")
        regen_text = gr.Textbox(label="Re-generated text", lines=2, interactive=False)
        regen_info = gr.JSON(label="Re-generation")
    with gr.Tab("Inversion round trip"):
        with gr.Row():
            inv_source = gr.Radio(list(SOURCES), value="A", label="Invert")
            inv_steps = gr.Slider(1, lim.max_steps, value=16, step=1, label="ODE steps")
            inv_solver = gr.Dropdown(["euler", "heun", "midpoint"], value="heun", label="Solver")
        inv_btn = gr.Button("Invert and regenerate")
        inv_text = gr.Textbox(label="Text decoded from the round trip", lines=2, interactive=False)
        inv_info = gr.JSON(label="Round-trip error")

    def pair_of(run_id) -> LatentPair:
        return ctx.store.get(run_id, "latents").payload

    @inputs.user_errors
    def encode(a, b, alpha_v, method_v, progress=gr.Progress()):
        texts = [inputs.text("text A", a, lim), inputs.text("text B", b, lim)]
        progress(0.2, desc="encoding")
        latents = ctx.workbench.encode(texts, pad_to="longest")
        decoded = ctx.workbench.decode(latents)
        accuracy = token_accuracy(latents, decoded)
        pair = LatentPair(latents, texts)
        run_id = ctx.store.put("latents", pair)
        n = latents.n_blocks[0]
        choices = [str(i) for i in range(n)]
        report = {"run_id": run_id, "blocks": n, "latent_shape": list(latents.z[0].shape),
                  "A": {"text": texts[0], "decoded": decoded.texts[0], "token_accuracy": accuracy[0]},
                  "B": {"text": texts[1], "decoded": decoded.texts[1], "token_accuracy": accuracy[1]}}
        method_v = inputs.choice("method", method_v, METHODS)
        alpha_v = inputs.number("alpha", alpha_v, 0.0, 1.0)
        text_v, tokens, info_v = point(ctx, pair, alpha_v, method_v, None)
        return (report, text_v, tokens, info_v, path_figure(ctx, pair, method_v, None, alpha_v),
                gr.CheckboxGroup(choices=choices, value=[]), gr.CheckboxGroup(choices=choices, value=[]),
                gr.CheckboxGroup(choices=choices, value=[]), write_downloads(ctx, run_id, pair, method_v), run_id)

    @inputs.user_errors
    def interpolate_point(run_id, alpha_v, method_v, blocks_v):
        pair = pair_of(run_id)
        alpha_v = inputs.number("alpha", alpha_v, 0.0, 1.0)
        return point(ctx, pair, alpha_v, inputs.choice("method", method_v, METHODS),
                     inputs.blocks("blocks", blocks_v) or None)

    @inputs.user_errors
    def interpolate_path(run_id, alpha_v, method_v, blocks_v):
        pair = pair_of(run_id)
        return path_figure(ctx, pair, inputs.choice("method", method_v, METHODS), inputs.blocks("blocks", blocks_v)
                           or None, inputs.number("alpha", alpha_v, 0.0, 1.0))

    @inputs.user_errors
    def direction(run_id, pos_v, neg_v, source_v, strength_v, blocks_v):
        pair = pair_of(run_id)
        pos = inputs.lines("positive texts", pos_v, lim, lim.max_texts)
        neg = inputs.lines("negative texts", neg_v, lim, lim.max_texts)
        if not pos or not neg:
            raise gr.Error("an attribute direction needs at least one positive and one negative text")
        key = (tuple(pos), tuple(neg))
        if key not in pair.directions:
            pair.directions[key] = attribute_direction(ctx.workbench, pos, neg)
        vector = pair.directions[key]
        strength_v = inputs.number("strength", strength_v, -10.0, 10.0)
        edited = apply_direction(pair.source(source_v), vector, strength_v, inputs.blocks("blocks", blocks_v) or None)
        text_v, _ = decoded_view(ctx, edited)
        return text_v, {"source": source_v, "strength": strength_v, "direction_norm": float(vector.norm()),
                        "positive": len(pos), "negative": len(neg), "text": text_v}

    @inputs.user_errors
    def regenerate(run_id, source_v, strength_v, keep_v, steps_v, guidance_v, seed_v, progress=gr.Progress()):
        pair = pair_of(run_id)
        source = pair.source(source_v)
        progress(0.1, desc="re-generating")
        result = regenerate_from(ctx.workbench, source,
                                 strength=inputs.number("strength", strength_v, 0.0, 1.0),
                                 keep_blocks=inputs.blocks("kept blocks", keep_v),
                                 steps=inputs.integer("steps", steps_v, 1, lim.max_steps),
                                 guidance=inputs.number("guidance", guidance_v, 0.0, lim.max_guidance),
                                 seed=inputs.integer("seed", seed_v, 0, 2**31 - 1))
        before, after = ctx.workbench.decode(source)[0].token_ids, ctx.workbench.decode(result.latents)[0]
        text_v = after.text
        changed = sum(x != y for x, y in zip(before, after.token_ids)) / max(len(before), 1)
        return text_v, {"source": source_v, "t_start": result.t_start, "steps_run": result.steps_run,
                        "changed_token_fraction": round(changed, 4), "text": text_v}

    @inputs.user_errors
    def inversion(run_id, source_v, steps_v, solver_v, progress=gr.Progress()):
        pair = pair_of(run_id)
        progress(0.1, desc="inverting (data → noise → data)")
        result = invert(ctx.workbench, pair.source(source_v),
                        steps=inputs.integer("ODE steps", steps_v, 1, lim.max_steps),
                        solver=inputs.choice("solver", solver_v, ("euler", "heun", "midpoint")))
        text_v, _ = decoded_view(ctx, result.reconstruction)
        noise = result.noise.z[0]
        return text_v, {"source": source_v, "max_abs_error": result.max_abs_error[0],
                        "relative_error": result.relative_error[0], "token_agreement": result.token_agreement[0],
                        "noise_mean": float(noise.mean()), "noise_std": float(noise.std()), "text": text_v}

    encode_btn.click(encode, [text_a, text_b, alpha, method],
                     [encoded, interp_text, interp_tokens, interp_info, path_plot, blocks, dir_blocks, keep, files,
                      state],
                     api_name="latent_encode", concurrency_id="heavy", concurrency_limit=ctx.concurrency)
    light = dict(concurrency_id="light", concurrency_limit=8)
    gr.on([alpha.input, method.input, blocks.input], interpolate_point, [state, alpha, method, blocks],
          [interp_text, interp_tokens, interp_info], api_name="latent_interpolate", trigger_mode="always_last",
          show_progress="hidden", **light)
    gr.on([alpha.release, method.input, blocks.input], interpolate_path, [state, alpha, method, blocks], path_plot,
          api_name="latent_path", trigger_mode="always_last", show_progress="hidden", **light)
    dir_btn.click(direction, [state, positive, negative, dir_source, strength, dir_blocks], [dir_text, dir_info],
                  api_name="latent_direction", concurrency_id="heavy", concurrency_limit=ctx.concurrency)
    regen_btn.click(regenerate, [state, regen_source, regen_strength, keep, regen_steps, regen_guidance, regen_seed],
                    [regen_text, regen_info], api_name="latent_regenerate", concurrency_id="heavy",
                    concurrency_limit=ctx.concurrency)
    inv_btn.click(inversion, [state, inv_source, inv_steps, inv_solver], [inv_text, inv_info], api_name="latent_invert",
                  concurrency_id="heavy", concurrency_limit=ctx.concurrency)
    return {}
