"""The experiment kinds: how each splits into items and what one item computes.

An item is the unit of resuming and of sharding across processes. Each kind yields items in a
fixed order; ``run_item`` returns tidy records (JSON-ready dicts) and named tensors. Items never
depend on which process runs them (seeds come from the spec and the item, not the rank).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import torch

from cola_core import ColaModel
from cola_core.generate import BlockwiseSampler
from cola_core.training.corpus import read_corpus

from ..diagnostics import diagnose
from .metrics import SemanticScorer, load_vocab, semantic_scorer, text_metrics
from .spec import Spec, bench_config, bench_items, generation_config

Records = list[dict[str, Any]]
Tensors = dict[str, torch.Tensor]


@dataclass
class Item:
    """One unit of work: its position in the run, a stable key, and its parameters."""

    index: int
    params: dict[str, Any]

    @property
    def key(self) -> str:
        return ",".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in self.params.items())


@dataclass
class Context:
    """What items share inside one process: the model and lazily built helpers."""

    model: ColaModel
    spec: Spec

    @cached_property
    def vocab(self) -> set[str]:
        return load_vocab(self.spec["vocab"], self.model)

    @cached_property
    def scorer(self) -> SemanticScorer | None:
        return semantic_scorer(self.spec["semantic"])

    @cached_property
    def workbench(self):
        from ..session import Workbench   # noqa: PLC0415 (the session layer sits above this module)
        return Workbench(self.model)


def corpus_texts(spec: Spec) -> list[str]:
    """The texts of a recon_vs_prior spec (inline or from its corpus file), cut to ``limit``."""
    texts = spec["texts"] if spec["texts"] is not None else read_corpus(Path(spec["corpus"]).expanduser())
    return texts[:spec["limit"]] if spec["limit"] else texts


# -- guidance sweep ------------------------------------------------------------------------------------
def guidance_items(spec: Spec) -> list[Item]:
    """guidance x steps x seed; each item generates every prompt in one batch."""
    combos = [(g, s, r) for g in spec["guidance"] for s in spec["steps"] for r in spec["seed"]]
    return [Item(i, {"guidance": g, "steps": s, "seed": r}) for i, (g, s, r) in enumerate(combos)]


@torch.no_grad()
def run_guidance(ctx: Context, item: Item) -> tuple[Records, Tensors]:
    """Generate the prompt set once; record text metrics, latent norm and |v_cond - v_uncond| per step."""
    prompts = ctx.spec["prompts"]
    config = generation_config(ctx.spec.params, **item.params)
    sampler = BlockwiseSampler(ctx.model, prompts, config, sample_ids=list(range(len(prompts))))
    gaps: list[list[torch.Tensor]] = []
    finals, frees = [], []
    for event, state in sampler.events():
        free = state.free                                                         # (B, bs) rows being generated
        if event == "block_start":
            gaps.append([])
        elif event == "guidance" and state.stage == 0:
            rows = (state.v_cond.float() - state.v_uncond.float()).norm(dim=-1)   # (B, bs)
            gaps[-1].append((rows * free).sum(1) / free.sum(1).clamp_min(1))
        elif event == "block_end":
            finals.append(state.z.float().clone())
            frees.append(free)
    gap = torch.stack([torch.stack(g, dim=1) for g in gaps], dim=1).cpu()       # (B, blocks, steps)
    z = torch.cat(finals, dim=1)                                                 # (B, blocks*bs, C)
    free = torch.cat(frees, dim=1)
    norms = ((z.norm(dim=-1) * free).sum(1) / free.sum(1).clamp_min(1)).cpu()
    generations = sampler.result()
    similarity = _similarity(ctx, prompts, [g.text for g in generations], skip_empty=True)
    records = []
    for b, gen in enumerate(generations):
        records.append({"prompt_index": b, "prompt": gen.prompt, **item.params, "text": gen.text,
                        "stopped_at_eos": gen.stopped_at_eos, **text_metrics(gen.text, ctx.vocab),
                        "latent_norm": float(norms[b]), "velocity_gap_mean": float(gap[b].mean()),
                        "velocity_gap": [[float(x) for x in row] for row in gap[b]],
                        "semantic_similarity": similarity[b]})
    return records, {"latents": z.cpu(), "velocity_gap": gap}


def _similarity(ctx: Context, a: list[str], b: list[str], skip_empty: bool = False) -> list[float | None]:
    """Semantic similarity per pair, or None where the scorer is off/missing (or a text is blank)."""
    if ctx.scorer is None:
        return [None] * len(a)
    keep = [i for i in range(len(a)) if not skip_empty or (a[i].strip() and b[i].strip())]
    scores = ctx.scorer.similarity([a[i] for i in keep], [b[i] for i in keep]) if keep else []
    out: list[float | None] = [None] * len(a)
    for i, s in zip(keep, scores):
        out[i] = s
    return out


# -- interpolation ------------------------------------------------------------------------------------
def interpolation_items(spec: Spec) -> list[Item]:
    """pair x method; each item decodes every alpha."""
    return [Item(i, {"pair": p, "method": m}) for i, (p, m) in
            enumerate((p, m) for p in range(len(spec["pairs"])) for m in spec["method"])]


@torch.no_grad()
def run_interpolation(ctx: Context, item: Item) -> tuple[Records, Tensors]:
    """Encode the pair (padded to a common length), mix at every alpha, decode greedily."""
    from ..latents import interpolate   # noqa: PLC0415

    wb = ctx.workbench
    start, end = ctx.spec["pairs"][item.params["pair"]]
    lat = wb.encode([start, end], pad_to="longest")
    mixed = [interpolate(lat[0], lat[1], alpha, item.params["method"], blocks=ctx.spec["blocks"])
             for alpha in ctx.spec["alphas"]]
    texts = [wb.decode(m).texts[0] for m in mixed]
    z = torch.stack([m.z[0] for m in mixed]).flatten(1, 2)                      # (A, n, C)
    za, zb = lat.z[0].flatten(0, 1), lat.z[1].flatten(0, 1)
    sim_start = _similarity(ctx, texts, [start] * len(texts))
    sim_end = _similarity(ctx, texts, [end] * len(texts))
    records = []
    for i, alpha in enumerate(ctx.spec["alphas"]):
        records.append({**item.params, "start": start, "end": end, "alpha": alpha, "text": texts[i],
                        **text_metrics(texts[i], ctx.vocab), "latent_norm": float(z[i].norm(dim=-1).mean()),
                        "distance_start": float((z[i] - za).norm(dim=-1).mean()),
                        "distance_end": float((z[i] - zb).norm(dim=-1).mean()),
                        "similarity_start": sim_start[i], "similarity_end": sim_end[i]})
    return records, {"latents": z}


# -- reconstruction vs prior --------------------------------------------------------------------------
def recon_items(spec: Spec) -> list[Item]:
    """Chunks of ``batch_size`` texts."""
    n = len(corpus_texts(spec))
    size = spec["batch_size"]
    return [Item(i, {"start": s, "stop": min(s + size, n)}) for i, s in enumerate(range(0, n, size))]


def run_recon(ctx: Context, item: Item) -> tuple[Records, Tensors]:
    """Per-text reconstruction, compression and prior-fit numbers (see ``workbench.diagnostics``)."""
    p = ctx.spec.params
    texts = corpus_texts(ctx.spec)[item.params["start"]:item.params["stop"]]
    diag = diagnose(ctx.model, texts, samples=p["samples"], prior=True, t_grid=p["t_grid"], fm_draws=p["fm_draws"],
                    likelihood=p["likelihood"], batch_size=p["batch_size"], seed=p["seed"] + item.index,
                    likelihood_options={"steps": p["likelihood_steps"], "solver": p["likelihood_solver"],
                                        "probes": p["probes"]})
    records = []
    for row in diag.per_text:
        rec = asdict(row)
        rec["index"] += item.params["start"]
        records.append(rec)
    return records, {}


# -- trajectory capture -------------------------------------------------------------------------------
def trajectory_items(spec: Spec) -> list[Item]:
    return [Item(i, {"seed": s}) for i, s in enumerate(spec["seed"])]


def run_trajectory(ctx: Context, item: Item) -> tuple[Records, Tensors]:
    """Generate with every step recorded; keep the chosen step fields as tensors."""
    p = ctx.spec.params
    knobs = asdict(generation_config(p, guidance=p["guidance"], steps=p["steps"], seed=item.params["seed"]))
    traj = ctx.workbench.trajectory(p["prompts"], preview=p["preview"], **knobs)
    wanted = set(p["fields"])
    tensors = {name: t for name, t in traj.named_tensors().items()
               if name.split(".")[-1] in wanted or ".step." not in name}
    records = []
    for b, gen in enumerate(traj.generations):
        steps = traj.steps
        records.append({"prompt_index": b, "prompt": gen.prompt, **item.params, "text": gen.text,
                        "block": [s.block for s in steps], "step": [s.step for s in steps],
                        "t": [float(s.t[b].max()) for s in steps],
                        "z_norm": [float(s.z[b].norm(dim=-1).mean()) for s in steps],
                        "x0_norm": [float(s.x0_pred[b].norm(dim=-1).mean()) for s in steps],
                        "velocity_gap": [float((s.v_cond[b].float() - s.v_uncond[b].float()).norm(dim=-1).mean())
                                         for s in steps],
                        "preview": [s.preview[b] for s in steps] if p["preview"] else None})
    return records, tensors


# -- benchmark sweep ----------------------------------------------------------------------------------
def bench_sweep_items(spec: Spec) -> list[Item]:
    """guidance x steps x solver; each item runs every chosen task (see ``workbench.bench``)."""
    combos = itertools.product(spec["guidance"], spec["steps"], spec["solver"])
    return [Item(i, {"guidance": g, "steps": s, "solver": v}) for i, (g, s, v) in enumerate(combos)]


def run_bench_sweep(ctx: Context, item: Item) -> tuple[Records, Tensors]:
    """One record per task: accuracy, correct/total, 95 % interval, mean score (official scorer)."""
    from ..bench import evaluate_task   # noqa: PLC0415 (workbench.bench builds on this package)

    config = bench_config(ctx.spec.params, **item.params)
    records = []
    for task, items in bench_items(ctx.spec).items():
        result = evaluate_task(ctx.model, items, config, ctx.spec["batch_size"])
        records.append({**item.params, "task": task, **result.to_json()})
    return records, {}


@dataclass(frozen=True)
class KindRunner:
    items: Callable[[Spec], list[Item]]
    run_item: Callable[[Context, Item], tuple[Records, Tensors]]


RUNNERS = {
    "guidance_sweep": KindRunner(guidance_items, run_guidance),
    "interpolation": KindRunner(interpolation_items, run_interpolation),
    "recon_vs_prior": KindRunner(recon_items, run_recon),
    "trajectory": KindRunner(trajectory_items, run_trajectory),
    "bench": KindRunner(bench_sweep_items, run_bench_sweep),
}
