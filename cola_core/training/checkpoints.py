"""Crash-safe trainer state on disk: every save is a new folder, switched in by one atomic rename.

Layout: ``run_dir/checkpoint-{step:08d}/{state.safetensors, state.json}``. A save writes
``run_dir/.checkpoint.tmp/`` (tensors first, ``state.json`` last, both flushed to disk), renames it
to its step's name, then deletes the older states. Resuming takes the highest-step folder holding a
complete, readable state, so a SIGKILL at any point leaves the old or the new state to resume from.
States of the earlier layout (``run_dir/checkpoint/``, or one stranded in ``.checkpoint.tmp/`` by a
crash mid-swap) are candidates too.

Fault injection (tests only): with ``COLA_TRAIN_KILL_AT=STEP:POINT`` in the environment, a save at
``STEP`` SIGKILLs its own process on reaching ``POINT`` (one of :data:`SAVE_POINTS`).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ColaError, ConfigError
from ..files import fsync_path, read_json_object, write_text_atomic
from ..tensorfile import load_tensor_file, save_tensor_file

TENSORS, META = "state.safetensors", "state.json"
TMP = ".checkpoint.tmp"
PREFIX = "checkpoint-"
LEGACY = "checkpoint"
METRICS, PLOT, SUMMARY = "metrics.jsonl", "loss_curves.html", "summary.json"
SAVE_POINTS = ("tmp_cleared", "tensors_written", "meta_written", "switched", "old_invalidated", "done")
KILL_ENV = "COLA_TRAIN_KILL_AT"


@dataclass
class TrainerState:
    """A state read back from disk."""

    folder: Path
    meta: dict
    tensors: dict[str, torch.Tensor]


def state_folder(run_dir: Path, step: int) -> Path:
    return run_dir / f"{PREFIX}{step:08d}"


def _reached(point: str, step: int) -> None:
    """Fault-injection seam: SIGKILL this process if the environment asks for a crash here."""
    if os.environ.get(KILL_ENV) == f"{step}:{point}":
        os.kill(os.getpid(), signal.SIGKILL)


def save_state(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a new state beside the old ones, switch it in with one rename, then drop the old ones."""
    tmp, target = run_dir / TMP, state_folder(run_dir, step)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _reached("tmp_cleared", step)
    save_tensor_file(tmp / TENSORS, tensors, metadata={"format": "pt"})
    fsync_path(tmp / TENSORS)
    _reached("tensors_written", step)
    write_text_atomic(tmp / META, json.dumps(meta, indent=1) + "\n")
    fsync_path(tmp / META)
    fsync_path(tmp)
    _reached("meta_written", step)
    shutil.rmtree(target, ignore_errors=True)   # a leftover of this step from an abandoned run
    os.replace(tmp, target)
    fsync_path(run_dir)
    _reached("switched", step)
    _drop_others(run_dir, target, step)
    _reached("done", step)
    return target


def _drop_others(run_dir: Path, keep: Path, step: int) -> None:
    """Delete every state folder but ``keep``, each made invalid first (its state.json goes before the rest)."""
    for old in state_folders(run_dir):
        if old != keep:
            (old / META).unlink(missing_ok=True)
            _reached("old_invalidated", step)
            shutil.rmtree(old, ignore_errors=True)


def adopt(run_dir: Path, state: "TrainerState") -> None:
    """Make a resumed state the only one, in its step's folder (it may come from an old layout or the
    temporary folder, with stale states beside it)."""
    step = state.meta["step"]
    target = state_folder(run_dir, step)
    if state.folder != target:
        shutil.rmtree(target, ignore_errors=True)
        os.replace(state.folder, target)
        fsync_path(run_dir)
        state.folder = target
    _drop_others(run_dir, target, step)


def state_folders(run_dir: Path) -> list[Path]:
    """Every folder that may hold a state: this layout's, the earlier layout's and the temporary one."""
    if not run_dir.is_dir():
        return []
    named = sorted(p for p in run_dir.glob(f"{PREFIX}*") if p.is_dir())
    return named + [p for p in (run_dir / LEGACY, run_dir / TMP) if p.is_dir()]


def _step_of(folder: Path) -> int:
    """The step a folder's state.json records (-1 if it has none)."""
    try:
        step = json.loads((folder / META).read_text(encoding="utf-8")).get("step")
    except (OSError, ValueError, AttributeError):
        return -1
    return step if isinstance(step, int) else -1


def has_state(run_dir: Path) -> bool:
    """Whether some folder in ``run_dir`` records a state (readability is checked on loading)."""
    return any(_step_of(folder) >= 0 for folder in state_folders(run_dir))


def latest_state(run_dir: Path, device: torch.device | str = "cpu") -> TrainerState:
    """The complete state of the highest step; a newer but unreadable one is skipped with a warning."""
    ranked = sorted(((_step_of(f), f) for f in state_folders(run_dir)), key=lambda pair: pair[0], reverse=True)
    for step, folder in ranked:
        if step < 0:
            continue
        try:
            meta = read_json_object(folder / META, ConfigError, "trainer state")
            return TrainerState(folder, meta, load_tensor_file(folder / TENSORS, device))
        except ColaError as exc:
            print(f"warning: skipping an unreadable trainer state: {exc}", file=sys.stderr)
    raise FileNotFoundError(f"{run_dir}: no complete trainer checkpoint to resume from")


def previous_outputs(run_dir: Path) -> list[str]:
    """Names of a previous run's outputs in ``run_dir`` (metrics, states, plots)."""
    names = [p.name for p in state_folders(run_dir)]
    return names + [n for n in (METRICS, PLOT, SUMMARY) if (run_dir / n).exists()]


def clear_previous_outputs(run_dir: Path) -> None:
    """Delete a previous run's outputs, so a later resume can never pick up its states."""
    for name in previous_outputs(run_dir):
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
