"""Lenses: read what each layer would output if it were the last.

* :func:`x0_lens` — for the DiT: the output modulation and projection applied to each layer's residual
  give the velocity that layer would predict; combined with guidance as the sampler does, turned into
  ``x0_pred = z - (t/T) v`` and decoded in the run's own context (its prompt and finished blocks),
  per layer and per step — where in depth, and when in the flow, the block's text is decided.
* :func:`logit_lens` — for the VAE decoder: the final norm and vocabulary projection applied to each
  decoder layer's residual.

Depth ``-1`` is the input of layer 0 (before any layer), depth ``i`` the residual after layer ``i``;
the last depth reproduces the model's own output exactly (tested).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch

from cola_core.constants import LN2
from cola_core.generate import GenerationConfig
from cola_core.sampler import guided_velocity, predicted_clean
from cola_core.text_codec import decode_logits, decode_text

from ..errors import WorkbenchError
from ..latents import Latents
from .cache import ActivationCache

if TYPE_CHECKING:
    from ..session import Workbench

MODES = ("guided", "cond", "uncond")


def _residuals(cache: dict, prefix: str, layers: int) -> list[torch.Tensor]:
    """The residual stream at each depth: layer 0's input, then every layer's output."""
    return [cache[f"{prefix}.layer.0.resid_pre"]] + [cache[f"{prefix}.layer.{i}.resid_post"] for i in range(layers)]


def _token_stats(logits: torch.Tensor, final: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per row of logits (..., V): the greedy token, its probability, the probability and rank of ``final``,
    the entropy, and ``logp`` itself."""
    logp = logits.float().log_softmax(dim=-1)
    top = logp.argmax(dim=-1)
    at_final = logp.gather(-1, final[..., None])[..., 0]
    return {"logp": logp, "top": top, "p_top": logp.gather(-1, top[..., None])[..., 0].exp(),
            "p_final": at_final.exp(), "rank_final": (logp > at_final[..., None]).sum(dim=-1),
            "entropy_bits": -(logp.exp() * logp).sum(dim=-1) / LN2}


def _heatmap(records: list[dict], column: Callable[[dict], tuple], label: Callable[[dict], str], metric: str,
             title: str, height: int):
    """Depth (rows) x columns (ordered by ``column(record)``, named by ``label``) heatmap of ``metric``, each cell
    annotated with its decoded text."""
    import plotly.graph_objects as go
    if metric not in records[0]:
        raise WorkbenchError(f"unknown metric {metric!r}; records hold {', '.join(records[0])}")
    first = {column(r): r for r in reversed(records)}
    columns = sorted(first)
    depths = sorted({r["layer"] for r in records})
    cell = {(r["layer"], column(r)): r for r in records}
    z = [[cell[(d, c)][metric] if (d, c) in cell else None for c in columns] for d in depths]
    text = [[cell[(d, c)]["text"] if (d, c) in cell else "" for c in columns] for d in depths]
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}", x=[label(first[c]) for c in columns],
                               y=["input" if d < 0 else f"layer {d}" for d in depths], colorscale="Viridis",
                               colorbar={"title": metric}))
    fig.update_layout(height=height, title=title)
    return fig


# -- the x0-lens --------------------------------------------------------------------------------------
@dataclass
class X0Lens:
    """Per (sample, block, step, depth): the lens's decoded block, and how close it is to what the run chose."""

    records: list[dict]
    mode: str
    x0: dict[int, torch.Tensor]   # block -> (steps, depths, B, bs, C) each depth's x0_pred (depth 0 = the input)

    def figure(self, sample: int = 0, block: int | None = None, metric: str = "p_final", height: int = 420):
        """Depth x (block, step) heatmap of ``metric`` for one sample, cells annotated with the decoded text."""
        rows = [r for r in self.records if r["sample"] == sample and (block is None or r["block"] == block)]
        if not rows:
            where = f"sample {sample}" + (f", block {block}" if block is not None else "")
            raise WorkbenchError(f"no lens records for {where}")
        return _heatmap(rows, lambda r: (r["block"], r["step"]), lambda r: f"b{r['block']} s{r['step']} t={r['t']:.0f}",
                        metric, f"x0-lens ({self.mode}): {metric} of the run's final tokens, by depth and step", height)


def x0_lens_names(blocks: Sequence[int] | None = None, steps: Sequence[int] | None = None) -> list[str]:
    """The names :func:`x0_lens` reads from a run (``None``: every block / step), so another run that caches
    more can include them in its ``names_filter`` and hand its cache to ``x0_lens(..., cache=)``."""
    blocks_, steps_ = ["*"] if blocks is None else blocks, ["*"] if steps is None else steps
    points = [f"block.{b}.step.{s}.dit.*.{p}" for b in blocks_ for s in steps_
              for p in ("layer.*.resid_post", "layer.0.resid_pre", "final.*")]
    return points + [f"block.*.step.*.{f}" for f in ("z", "t", "guidance")] + ["block.*.z_final", "block.*.token_ids"]


@torch.no_grad()
def x0_lens(wb: "Workbench", prompts: str | Sequence[str], blocks: Sequence[int] | None = None,
            at_steps: Sequence[int] | None = None, mode: str = "guided", sample_ids: Sequence[int] | None = None,
            cache: ActivationCache | None = None, **knobs) -> X0Lens:
    """Decode every DiT layer's prediction of the clean block at every step (first solver stage) of
    ``blocks`` and ``at_steps`` (default: all); ``knobs`` are generation knobs (steps, guidance, seed, ...).

    ``mode``: ``guided`` combines each layer's cond and uncond velocities with the run's guidance (the
    sampler's own x0_pred at the last layer), ``cond`` or ``uncond`` reads one pass. Each record holds
    ``sample, block, step, t, layer`` (-1 = input), the decoded ``text`` and ``token_ids`` of the block,
    ``p_final`` (mean probability of the run's final tokens), ``agreement`` (share of them the lens
    picks) and ``x0_distance`` (L2 to the block's final latent, generated rows).

    ``cache``: the cache of a run of these prompts and knobs that already holds :func:`x0_lens_names`
    (e.g. one that also cached attention patterns); then no generation runs here.
    """
    if mode not in MODES:
        raise WorkbenchError(f"x0-lens mode must be one of {', '.join(MODES)}, got {mode!r}")
    run = wb.run_names(prompts, sample_ids, **knobs)
    n_blocks = sum(1 for _ in run.select("block.*.z_final"))
    n_steps = wb.config(**knobs).steps
    blocks = list(range(n_blocks)) if blocks is None else list(blocks)
    steps = list(range(n_steps)) if at_steps is None else list(at_steps)
    for what, chosen, count in (("block", blocks, n_blocks), ("step", steps, n_steps)):
        if not chosen or any(not 0 <= i < count for i in chosen):
            raise WorkbenchError(f"x0-lens {what}s {chosen} out of range 0-{count - 1}")
    session = wb.sampler(prompts, sample_ids, **knobs)
    if cache is None:
        _, cache = wb.run_with_cache(prompts, names_filter=x0_lens_names(blocks, steps), sample_ids=sample_ids,
                                     **knobs)
    else:
        _check_source(cache, session.sampler, wb.fingerprint)
    prep, config = session.sampler.prepared, wb.config(**knobs)
    layers = wb.model.dit_config.num_layers
    records, x0_by_block = [], {}
    for b in blocks:
        if f"block.{b}.z_final" not in cache:
            break   # generation ended early (EOS, or the run was interrupted)
        try:
            final_ids, z_final = cache[f"block.{b}.token_ids"], cache[f"block.{b}.z_final"]
            x0 = torch.stack([x for s in steps                           # (S*depths, B, bs, C)
                              for x in _x0_by_depth(wb, cache, f"block.{b}.step.{s}", mode, config)])
        except KeyError as missing:   # a cache handed in without what the lens reads
            raise WorkbenchError(f"the cache lacks {missing.args[0]}; cache the run with "
                                 f"names_filter=x0_lens_names()") from None
        x0_by_block[b] = x0.view(len(steps), layers + 1, *x0.shape[1:])
        context = [torch.cat([prep.prefix[i, :int(prep.prefix_lengths[i])]]
                             + [cache[f"block.{k}.z_final"][i] for k in range(b)]) for i in range(x0.shape[1])]
        for i, ctx in enumerate(context):
            rows = torch.cat([ctx.expand(x0.shape[0], -1, -1), x0[:, i]], dim=1)
            lengths = torch.full((rows.shape[0],), rows.shape[1], dtype=torch.long)
            tokens = x0.shape[2] * wb.patch_size
            stats = _token_stats(decode_logits(wb.model, rows, lengths)[:, -tokens:].cpu(),
                                 final_ids[i].expand(rows.shape[0], -1))
            free = torch.ones(x0.shape[2], dtype=torch.bool) if b else ~prep.pinned[i]
            for k, (s, depth) in enumerate((s, d) for s in steps for d in range(-1, layers)):
                ids = stats["top"][k].tolist()
                records.append({
                    "sample": i, "block": b, "step": s, "t": float(cache[f"block.{b}.step.{s}.t"][i].max()),
                    "layer": depth, "text": decode_text(wb.model, ids), "token_ids": ids,
                    "p_final": float(stats["p_final"][k].mean()),
                    "agreement": float((stats["top"][k] == final_ids[i]).float().mean()),
                    "x0_distance": float((x0[k, i][free] - z_final[i][free]).norm())})
    return X0Lens(records=records, mode=mode, x0=x0_by_block)


def _x0_by_depth(wb: "Workbench", cache: Mapping[str, torch.Tensor], step: str, mode: str, config: GenerationConfig
                 ) -> list[torch.Tensor]:
    """x0_pred (B, bs, C) at every depth of one solver step (``block.{b}.step.{s}``) of a cached run; guided as the
    run combined cond and uncond (its cached guidance, interval guidance included, and its CFG-rescale)."""
    dit, layers = wb.model.dit, wb.model.dit_config.num_layers
    velocity = {g: [dit.head(h, cache[f"{step}.dit.{g}.final.shift"], cache[f"{step}.dit.{g}.final.scale"])
                    for h in _residuals(cache, f"{step}.dit.{g}", layers)] for g in ("cond", "uncond")}
    scale = cache[f"{step}.guidance"].to(velocity["cond"][0].dtype)[:, None, None]
    chosen = ([guided_velocity(vc, vu, scale, config.guidance_rescale) for vc, vu in zip(velocity["cond"],
                                                                                         velocity["uncond"])]
              if mode == "guided" else velocity[mode])
    return [predicted_clean(cache[f"{step}.z"], v.float(), cache[f"{step}.t"], config.T) for v in chosen]


def _check_source(cache: ActivationCache, sampler, fingerprint: str) -> None:
    """A cache handed to :func:`x0_lens` must come from this checkpoint and from these prompts and knobs."""
    from ..session import run_facts   # the session module imports this package
    if not isinstance(cache, ActivationCache):
        raise WorkbenchError(f"cache must be a run's ActivationCache (from run_with_cache or a session), got "
                             f"{type(cache).__name__}")
    if cache.fingerprint != fingerprint:
        raise WorkbenchError(f"the cache was recorded on another checkpoint (fingerprint {cache.fingerprint[:12]})")
    if cache.run != run_facts(sampler):
        raise WorkbenchError("the cache comes from another run (prompts, sample ids or knobs differ); pass the "
                             "prompts and knobs it was made with")


# -- the logit lens -----------------------------------------------------------------------------------
@dataclass
class LogitLens:
    """Per (text, depth, token position): what the decoder would emit if it stopped after that layer."""

    records: list[dict]

    def figure(self, text: int = 0, metric: str = "p_final", height: int = 360):
        """Depth x token position heatmap of ``metric`` for one text, cells annotated with the top token."""
        rows = [r for r in self.records if r["text_index"] == text]
        if not rows:
            raise WorkbenchError(f"no logit-lens records for text {text}")
        return _heatmap(rows, lambda r: (r["position"],), lambda r: str(r["position"]), metric,
                        f"logit lens of the VAE decoder: {metric} of the final output's tokens", height)


@torch.no_grad()
def logit_lens(wb: "Workbench", inputs: str | Sequence[str] | Latents) -> LogitLens:
    """Apply the decoder's final norm and vocabulary projection to every decoder layer's residual.

    ``inputs``: texts (encoded first; records then also hold ``p_target``, the probability of the
    text's own token) or :class:`Latents`. Records: ``text_index, position, layer`` (-1 = input),
    ``text`` (top token), ``p_top``, ``p_final`` and ``rank_final`` (of the decoder's greedy output),
    ``entropy_bits``.
    """
    latents = inputs if isinstance(inputs, Latents) else wb.encode(inputs, pad_to="longest")
    layers = wb.model.vae_config.decoder_num_blocks
    names = [f"decode.layer.{i}.resid_post" for i in range(layers)] + ["decode.layer.0.resid_pre", "decode.logits"]
    _, cache = wb.decode_with_cache(latents, names_filter=names)
    final = cache["decode.logits"].argmax(dim=-1)                   # (N, T)
    head = wb.model.vae.decoder_head
    records = []
    for depth, resid in zip(range(-1, layers), _residuals(cache, "decode", layers)):
        stats = _token_stats(head(resid), final)
        for i, alignment in enumerate(latents.alignment):
            target = latents.token_ids[i] if latents.texts else []
            for pos in range(alignment.numel()):
                top = int(stats["top"][i, pos])
                record = {"text_index": i, "position": pos, "layer": depth, "token_id": top,
                          "text": wb.tokenizer.decode([top]),
                          **{k: float(stats[k][i, pos]) for k in ("p_top", "p_final", "rank_final", "entropy_bits")}}
                if pos < len(target):
                    record["p_target"] = float(stats["logp"][i, pos, target[pos]].exp())
                records.append(record)
    return LogitLens(records=records)
