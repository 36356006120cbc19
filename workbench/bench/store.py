"""The resume store of a bench run: generations per task, appended as they finish, keyed by item.

``OUT/generations/<task>.rank{r}.jsonl`` receives each finished batch of process ``r`` as one
appended write (then ``fsync``); a process killed mid-write leaves at most a torn last line, which
is ignored and cut off before the next append. After a run, rank 0 folds the rank files into
``OUT/generations/<task>.jsonl`` (item order) and removes them. A rerun skips every stored key.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import write_text_atomic

FOLDER = "generations"


def _lines(path: Path) -> tuple[list[dict], int]:
    """The complete records of a store file and the byte length they span (a torn tail is left out)."""
    if not path.is_file():
        return [], 0
    data = path.read_bytes()
    records, good = [], 0
    for line in data.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            records.append(json.loads(line))
        except ValueError:
            break
        good += len(line)
    return records, good


def task_files(out: Path, task: str) -> list[Path]:
    """The merged file first, then the rank files (the first file holding a key wins)."""
    folder = out / FOLDER
    return [folder / f"{task}.jsonl"] + sorted(folder.glob(f"{task}.rank*.jsonl"))


def load(out: Path, task: str) -> dict[str, dict]:
    """``{key: generation record}`` of everything stored for a task."""
    stored: dict[str, dict] = {}
    for path in task_files(out, task):
        for record in _lines(path)[0]:
            stored.setdefault(record["key"], record)
    return stored


def append(out: Path, task: str, rank: int, records: list[dict]) -> None:
    """Add finished records to this rank's file in one write, after cutting off a torn tail."""
    path = out / FOLDER / f"{task}.rank{rank}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    _, good = _lines(path)
    with path.open("ab") as handle:
        handle.truncate(good)
        handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())


def merge(out: Path, task: str, order: list[str]) -> dict[str, dict]:
    """Fold the rank files into ``<task>.jsonl`` (keys of ``order`` first, then any others) and return all."""
    stored = load(out, task)
    wanted = set(order)
    keys = [k for k in order if k in stored] + [k for k in stored if k not in wanted]
    write_text_atomic(out / FOLDER / f"{task}.jsonl",
                      "".join(json.dumps(stored[k], ensure_ascii=False) + "\n" for k in keys))
    for path in task_files(out, task)[1:]:
        path.unlink()
    return stored
