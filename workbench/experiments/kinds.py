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
from cola_core.generate import BlockwiseSampler, Generation
from cola_core.sampler import text_sample_id
from cola_core.training.corpus import read_corpus

from ..diagnostics import diagnose
from ..monitor import data_norm, norm_records
from .metrics import SemanticScorer, load_vocab, population_metrics, semantic_scorer, text_metrics
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
    def data_norm(self) -> float:
        """Mean norm of the encoded reference corpus (the off-manifold monitor's yardstick)."""
        return data_norm(self.model)

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


def prompt_sample_ids(spec: Spec) -> list[int]:
    """Each prompt's sample id: the spec's ``sample_ids``, else the prompt's CRC-32 (the official rule for
    string ids), so a prompt's noise depends on neither its position nor the other prompts."""
    return spec["sample_ids"] or [text_sample_id(p) for p in spec["prompts"]]


def completion_blocks(gen: Generation, blocks: int) -> int:
    """Blocks that belong to a sample's completion: up to its first EOS / im_end (the rest ran past its end)."""
    return blocks if gen.end_block is None else gen.end_block + 1


@torch.no_grad()
def run_guidance(ctx: Context, item: Item) -> tuple[Records, Tensors]:
    """Generate the prompt set once; per prompt, text metrics of the completion and, over the blocks of the
    completion only, latent norms (and their ratio to the encoded data's norm) and |v_cond - v_uncond| per
    step. Every number is a function of (prompt, knobs, seed, sample id): no batch neighbour changes it."""
    prompts = ctx.spec["prompts"]
    config = generation_config(ctx.spec.params, **item.params)
    sampler = BlockwiseSampler(ctx.model, prompts, config, sample_ids=prompt_sample_ids(ctx.spec))
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
            finals.append(state.z.float().cpu())
            frees.append(free.cpu())
    gap = torch.stack([torch.stack(g, dim=1) for g in gaps], dim=1).cpu()       # (B, blocks, steps)
    generations = sampler.result()
    completions = [g.completion for g in generations]
    similarity = _similarity(ctx, prompts, completions, skip_empty=True)
    records, tensors = [], {}
    for b, gen in enumerate(generations):
        n = completion_blocks(gen, len(finals))
        monitor = norm_records([z[b:b + 1] for z in finals[:n]], ctx.data_norm)
        z, free = torch.cat([z[b] for z in finals[:n]]), torch.cat([f[b] for f in frees[:n]])   # (n*bs, C), (n*bs,)
        norm = float(z.norm(dim=-1)[free].mean())
        records.append({"prompt_index": b, "prompt": gen.prompt, "sample_id": sampler.sample_ids[b], **item.params,
                        "text": gen.completion, "completion_ids": gen.completion_ids,
                        "stopped_at_eos": gen.stopped_at_eos, "blocks": n, **text_metrics(gen.completion, ctx.vocab),
                        "latent_norm": norm, "norm_ratio": norm / ctx.data_norm,
                        "block_norms": [m["norm"] for m in monitor],
                        "off_manifold": any(m["off_manifold"] for m in monitor),
                        "velocity_gap_mean": float(gap[b, :n].mean()),
                        "velocity_gap": [[float(x) for x in row] for row in gap[b, :n]],
                        "semantic_similarity": similarity[b]})
        tensors[f"prompt{b}.latents"], tensors[f"prompt{b}.velocity_gap"] = z, gap[b, :n]
    return records, tensors


def guidance_population(spec: Spec, records: Records) -> Records:
    """Per prompt, guidance and steps: population metrics of the completions across the sweep's seeds
    (pooled distinct-n, self-BLEU, pairwise overlap; ``metrics.population_metrics``)."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["prompt_index"], r["guidance"], r["steps"]), []).append(r)
    return [{"prompt_index": i, "prompt": rs[0]["prompt"], "guidance": g, "steps": s,
             "seeds": [r["seed"] for r in rs], **population_metrics([r["text"] for r in rs])}
            for (i, g, s), rs in sorted(groups.items())]


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
    decoded = [wb.decode(m)[0] for m in mixed]
    texts = [d.text for d in decoded]                                            # special tokens as markers
    clean = [wb.tokenizer.decode(d.token_ids, skip_special_tokens=True) for d in decoded]
    z = torch.stack([m.z[0] for m in mixed]).flatten(1, 2)                      # (A, n, C)
    za, zb = lat.z[0].flatten(0, 1), lat.z[1].flatten(0, 1)
    sim_start = _similarity(ctx, clean, [start] * len(texts))
    sim_end = _similarity(ctx, clean, [end] * len(texts))
    records = []
    for i, alpha in enumerate(ctx.spec["alphas"]):
        records.append({**item.params, "start": start, "end": end, "alpha": alpha, "text": texts[i],
                        **text_metrics(clean[i], ctx.vocab), "latent_norm": float(z[i].norm(dim=-1).mean()),
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
                    likelihood=p["likelihood"], batch_size=p["batch_size"], seed=p["seed"],
                    likelihood_options={"steps": p["likelihood_steps"], "solver": p["likelihood_solver"],
                                        "rtol": p["likelihood_tolerance"], "atol": p["likelihood_tolerance"],
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
    """Generate with every step recorded; keep the chosen step fields as tensors (blocks past a sample's EOS
    are marked ``block.{b}.after_eos``). A prompt's record covers the blocks of its completion only."""
    p = ctx.spec.params
    knobs = asdict(generation_config(p, guidance=p["guidance"], steps=p["steps"], seed=item.params["seed"]))
    traj = ctx.workbench.trajectory(p["prompts"], sample_ids=prompt_sample_ids(ctx.spec), preview=p["preview"],
                                    **knobs)
    wanted = set(p["fields"])
    tensors = {name: t for name, t in traj.named_tensors().items()
               if name.split(".")[-1] in wanted or ".step." not in name}
    monitor = traj.norm_records(ctx.data_norm)
    records = []
    for b, gen in enumerate(traj.generations):
        n = completion_blocks(gen, traj.num_blocks)
        steps = [s for s in traj.steps if s.block < n]
        blocks = [m for m in monitor if m["sample"] == b and m["block"] < n]
        records.append({"prompt_index": b, "prompt": gen.prompt, "sample_id": traj.sample_ids[b], **item.params,
                        "text": gen.completion, "blocks": n,
                        "block": [s.block for s in steps], "step": [s.step for s in steps],
                        "t": [float(s.t[b].max()) for s in steps],
                        "z_norm": [float(s.z[b].norm(dim=-1).mean()) for s in steps],
                        "x0_norm": [float(s.x0_pred[b].norm(dim=-1).mean()) for s in steps],
                        "velocity_gap": [float((s.v_cond[b].float() - s.v_uncond[b].float()).norm(dim=-1).mean())
                                         for s in steps],
                        "block_norms": [m["norm"] for m in blocks], "norm_ratio": [m["ratio"] for m in blocks],
                        "off_manifold": [m["off_manifold"] for m in blocks],
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
    """How a kind splits into items, runs one, and (optionally) summarises all records of a run."""

    items: Callable[[Spec], list[Item]]
    run_item: Callable[[Context, Item], tuple[Records, Tensors]]
    summarize: Callable[[Spec, Records], Records] | None = None


RUNNERS = {
    "guidance_sweep": KindRunner(guidance_items, run_guidance, guidance_population),
    "interpolation": KindRunner(interpolation_items, run_interpolation),
    "recon_vs_prior": KindRunner(recon_items, run_recon),
    "trajectory": KindRunner(trajectory_items, run_trajectory),
    "bench": KindRunner(bench_sweep_items, run_bench_sweep),
}
