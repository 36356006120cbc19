"""``bench run``: generate answers for task files with the official knobs, then score them.

Output folder::

    bench.json                 what made these results (checkpoint fingerprint, knobs, protocol,
                               device type, dtype; a run with other values is refused) and the
                               last run's task folder and max_samples
    generations/<task>.jsonl   one record per item: key, id, index, prompt, text (untrimmed: all
                               max_new_tokens, or through the first EOS under ``completion``),
                               completion (cut at EOS), token_ids (of text), eos_index — the resume store
    <task>.jsonl               the release's format: id, prompt, generate, ground_truth, choices,
                               others, few_shot_prefix (as the official scorer leaves it)
    + what ``bench score`` writes (accuracy_summary.csv, <task>_correct/_wrong.jsonl,
      summary.json with samples/s, report.html)

Each sample's noise comes from its item id (the official rule), and under the ``official``
protocol every row runs all ``max_new_tokens``, so a sample's output depends neither on its batch
nor on the process that ran it: batches, resumes and torchrun ranks all give the same files.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from cola_core import ColaModel, load_pretrained
from cola_core.errors import GenerationError
from cola_core.generate import Generation, GenerationConfig, generate
from cola_core.sampler import noise_seed

from ..distributed import barrier, local_device, on_rank0, process_group
from ..io import write_text_atomic
from . import store
from .scorer import split_generate
from .summary import META_FILE, RUN_FORMAT, Summary, TaskResult, read_run_meta, score_task, write_results
from .tasks import TASK_ORDER, BenchError, BenchItem, find_task_files, load_items

PROTOCOLS = ("official", "completion")
OFFICIAL = GenerationConfig()       # the sampler's defaults are the official script's
OFFICIAL_SEED = 66                  # COLA_INFER_PER_SAMPLE_NOISE_SEED in run_benchmark.sh
OFFICIAL_MAX_SAMPLES = 1000
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)      # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class BenchConfig:
    """The knobs that decide a bench result (the official script's, plus the solver) and the protocol."""

    steps: int = OFFICIAL.steps
    guidance: float = OFFICIAL.guidance
    max_new_tokens: int = OFFICIAL.max_new_tokens
    temperature: float = OFFICIAL.temperature
    top_k: int = OFFICIAL.top_k
    top_p: float = OFFICIAL.top_p
    repetition_penalty: float = OFFICIAL.repetition_penalty
    seed: int = OFFICIAL_SEED
    solver: str = OFFICIAL.solver
    protocol: str = "official"     # official: untrimmed text; completion: text cut at the first EOS

    def generation(self) -> GenerationConfig:
        """The sampler config; under ``official`` every row runs all blocks (see the module docstring)."""
        knobs = {k: v for k, v in dataclasses.asdict(self).items() if k != "protocol"}
        return GenerationConfig(**knobs, stop_at_eos=self.protocol == "completion")

    def validate(self) -> None:
        """Raise naming the first bad knob (the sampler checks its own)."""
        if self.protocol not in PROTOCOLS:
            raise BenchError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        self.generation().validate()


@dataclass
class BenchResult:
    """Where a run went and its summary (rank 0 only; None on other ranks)."""

    path: Path
    summary: Summary | None
    rank: int = 0


# -- one batch ------------------------------------------------------------------------------------------
def generate_records(model: ColaModel, items: list[BenchItem], config: BenchConfig) -> list[dict[str, Any]]:
    """Generate a batch; one store record per item (noise seeded from each item's id)."""
    try:
        gens = generate(model, [it.prompt for it in items], config.generation(),
                        sample_ids=[it.noise_id for it in items])
    except GenerationError as exc:
        raise BenchError(f"{items[0].task}, items {items[0].where} to {items[-1].where}: {exc}") from None
    records = []
    for it, g in zip(items, gens):
        ids = stored_token_ids(g, config.protocol)
        records.append({"key": it.key, "id": it.id, "index": it.index, "prompt": it.prompt,
                        "text": model.tokenizer.decode(ids), "completion": g.completion, "token_ids": ids,
                        "eos_index": eos_index(g)})
    return records


def eos_index(gen: Generation) -> int | None:
    """Position of the first EOS / im_end in ``gen.token_ids`` (None: it has none): where its completion ends."""
    end = len(gen.completion_ids)
    return end if end < len(gen.token_ids) else None


def stored_token_ids(gen: Generation, protocol: str) -> list[int]:
    """The tokens a bench record keeps: all of them (``official``), or the completion through its first EOS
    (``completion``: a row that stopped keeps running while its batch does; only that much is batch-independent).
    A re-run of the sample (the app's Bench tab) compares its tokens with these."""
    eos = eos_index(gen)
    return gen.token_ids[:eos + 1] if protocol == "completion" and eos is not None else gen.token_ids


def evaluate_task(model: ColaModel, items: list[BenchItem], config: BenchConfig, batch_size: int = 20) -> TaskResult:
    """Generate and score one task in memory (no files; the sweep kind's unit)."""
    generations = {}
    for start in range(0, len(items), batch_size):
        generations.update((r["key"], r) for r in generate_records(model, items[start:start + batch_size], config))
    return score_task(items[0].task, output_records(items, generations, config.protocol))


def output_records(items: list[BenchItem], generations: dict[str, dict], protocol: str) -> list[dict[str, Any]]:
    """The task's outputs as the official scorer leaves them (``generate`` split, common prefix in ``few_shot_prefix``)."""
    text = "text" if protocol == "official" else "completion"
    records = []
    for it in items:
        record = {"id": it.id, "prompt": it.prompt, "generate": generations[it.key][text],
                  "ground_truth": it.ground_truth}
        if it.choices:
            record["choices"] = it.choices
        records.append(split_generate(record))
    prefix = os.path.commonprefix([r["prompt"] for r in records])
    if prefix:
        records = [{**r, "prompt": r["prompt"][len(prefix):], "few_shot_prefix": prefix} for r in records]
    return records


def check_seeds(items: list[BenchItem], config: BenchConfig) -> None:
    """Every block's noise seed of every item must fit torch's generator."""
    for it in items:
        low, high = (noise_seed(config.seed, it.noise_id, block) for block in (0, config.max_new_tokens))
        if min(low, high) < SEED_RANGE[0] or max(low, high) > SEED_RANGE[1]:
            raise BenchError(f"{it.where}: id {it.id!r} gives noise seeds outside torch's range")


# -- the output folder ----------------------------------------------------------------------------------
def _identity(config: BenchConfig, model: ColaModel | None = None) -> dict[str, Any]:
    """What must match to add to a folder's results (without ``model``: the knobs only)."""
    meta: dict[str, Any] = {"format": RUN_FORMAT, "config": dataclasses.asdict(config)}
    if model is not None:
        meta["checkpoint"] = {"fingerprint": model.fingerprint, "source": model.source}
        meta["device"] = model.device.type
        meta["dtype"] = str(model.dtype).replace("torch.", "")
    return meta


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diffs = [f"{k} ({old['config'].get(k)!r} there, {v!r} here)" for k, v in new["config"].items()
             if old.get("config", {}).get(k) != v]
    if "checkpoint" in new and old.get("checkpoint", {}).get("fingerprint") != new["checkpoint"]["fingerprint"]:
        diffs.append(f"checkpoint ({old.get('checkpoint', {}).get('source')} there, {new['checkpoint']['source']} here)")
    diffs += [f"{k} ({old.get(k)} there, {new[k]} here)" for k in ("device", "dtype") if k in new and old.get(k) != new[k]]
    return diffs


def check_out(out: Path, tasks_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse a folder holding the inputs, foreign outputs, or results of other knobs or another checkpoint."""
    fresh = f"start fresh with another --out folder (or delete {out})"
    if out.resolve() == tasks_dir.resolve():
        raise BenchError(f"--out {out} is the task folder; its <task>.jsonl files would be replaced. Choose another")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder")
    old = read_run_meta(out) if out.is_dir() else None
    if old is not None:
        diffs = _differences(old, meta)
        if diffs:
            raise BenchError(f"{out} holds results of another run (differs in: {'; '.join(diffs)}); {fresh}")
    elif (out / store.FOLDER).exists() or any((out / f"{t}.jsonl").exists() for t in TASK_ORDER):
        raise BenchError(f"{out} holds task outputs that bench run did not write (no {META_FILE}); {fresh}")


def _claim(out: Path, tasks_dir: Path, meta: dict[str, Any]) -> None:
    check_out(out, tasks_dir, meta)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / META_FILE, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


# -- the run --------------------------------------------------------------------------------------------
def run_bench(tasks_dir: str | Path, out: str | Path, config: BenchConfig | None = None, *,
              tasks: list[str] | None = None, max_samples: int | None = OFFICIAL_MAX_SAMPLES, batch_size: int = 20,
              model: ColaModel | None = None, checkpoint: str | Path | None = None, device: str = "cpu",
              dtype: str | None = None, name: str = "default", progress: bool = True) -> BenchResult:
    """Generate (resuming what ``out`` holds) and score the tasks of ``tasks_dir``; under torchrun, shard.

    ``max_samples``: the first N items of each file (None: all). ``model`` skips loading
    ``checkpoint`` (default: the pocket checkpoint; a Hub id works too).
    """
    config = config or BenchConfig()
    config.validate()
    if batch_size < 1:
        raise BenchError(f"batch size must be >= 1, got {batch_size}")
    tasks_dir, out = Path(tasks_dir), Path(out)
    items = {t: load_items(path, t, max_samples) for t, path in find_task_files(tasks_dir, tasks).items()}
    for task_items in items.values():
        check_seeds(task_items, config)
    rank, world, created = process_group()
    try:
        on_rank0(rank, world, lambda: check_out(out, tasks_dir, _identity(config)))   # before loading weights
        model = model or load_pretrained(checkpoint, device=local_device(device), dtype=dtype)
        meta = {**_identity(config, model), "tasks_dir": str(tasks_dir), "max_samples": max_samples}
        on_rank0(rank, world, lambda: _claim(out, tasks_dir, meta))
        timings = {t: _generate_task(model, out, t, task_items, config, batch_size, rank, world, progress)
                   for t, task_items in items.items()}
        barrier(world)
        timings = _gather(timings, world)
        summary = None
        if rank == 0:
            summary = _finish(out, items, config, name, meta, _runtime(timings, batch_size, world))
        barrier(world)
        return BenchResult(out, summary, rank)
    finally:
        if created:
            dist.destroy_process_group()


def _generate_task(model: ColaModel, out: Path, task: str, items: list[BenchItem], config: BenchConfig,
                   batch_size: int, rank: int, world: int, progress: bool) -> tuple[int, float]:
    """Generate this process's missing items of a task in batches; (samples generated, seconds)."""
    stored = store.load(out, task)
    for it in items:
        if it.key in stored and stored[it.key]["prompt"] != it.prompt:
            raise BenchError(f"{it.where}: the stored generation of this item ({out / store.FOLDER}) has another "
                             f"prompt; the task file changed. Start fresh with another --out folder")
    mine = [it for it in items if it.index % world == rank]
    todo = [it for it in mine if it.key not in stored]
    label = f"{task} [rank {rank}]" if world > 1 else task
    started = time.perf_counter()
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=label, unit="sample", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            store.append(out, task, rank, generate_records(model, batch, config))
            bar.update(len(batch))
    return len(todo), time.perf_counter() - started


def _gather(timings: dict[str, tuple[int, float]], world: int) -> list[dict[str, tuple[int, float]]]:
    if world == 1:
        return [timings]
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, timings)
    return everyone


def _rate(generated: int, seconds: float) -> float | None:
    return generated / seconds if generated and seconds > 0 else None


def _runtime(per_rank: list[dict[str, tuple[int, float]]], batch_size: int, world: int) -> dict[str, Any]:
    """Samples generated, seconds (slowest rank) and samples/s per task and in all (this command only)."""
    tasks = {}
    for task in per_rank[0]:
        generated = sum(r[task][0] for r in per_rank)
        seconds = max(r[task][1] for r in per_rank)
        tasks[task] = {"generated": generated, "seconds": seconds, "samples_per_s": _rate(generated, seconds)}
    generated = sum(t["generated"] for t in tasks.values())
    seconds = sum(t["seconds"] for t in tasks.values())
    return {"batch_size": batch_size, "world_size": world, "torch_threads": torch.get_num_threads(), "tasks": tasks,
            "generated": generated, "seconds": seconds, "samples_per_s": _rate(generated, seconds)}


def _finish(out: Path, items: dict[str, list[BenchItem]], config: BenchConfig, name: str, run: dict[str, Any],
            runtime: dict[str, Any]) -> Summary:
    """Merge the stores, write each ``<task>.jsonl`` in the release's format, score, write the results."""
    results = {}
    for task, task_items in items.items():
        generations = store.merge(out, task, [it.key for it in task_items])
        records = output_records(task_items, generations, config.protocol)
        write_text_atomic(out / f"{task}.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        results[task] = score_task(task, records)
    summary = Summary(name, results, protocol=config.protocol, run=run, runtime=runtime)
    write_results(out, summary)
    return summary
