"""Scoring a folder of outputs: per-task results, the official CSV, ``summary.json``, detail files.

``score_folder(DIR)`` scores every ``<task>.jsonl`` there; ``write_results(OUT, summary)`` writes

* ``accuracy_summary.csv`` — the official table (``task,NAME`` rows in the official order, 2 decimals,
  ``tasks_average`` the mean of the unrounded accuracies of the tasks present; CRLF line ends, as
  Python's csv module writes them);
* ``<task>_correct.jsonl`` / ``<task>_wrong.jsonl`` — each record as the official scorer writes it
  (``generate`` split, extracted answers, ``similarity_score``);
* ``summary.json`` — :data:`SUMMARY_FORMAT`, see :meth:`Summary.to_json`;
* ``report.html`` — per-task bars with 95 % Wilson intervals (and a second summary side by side).

Inputs are only read.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cola_core.training.intervals import wilson_interval

from ..io import write_text_atomic
from .scorer import Scored, score_record
from .tasks import TASK_ORDER, BenchError, check_choices, find_task_files, read_jsonl

SUMMARY_FORMAT = "cola-workbench/bench-summary@1"
RUN_FORMAT = "cola-workbench/bench-run@1"
META_FILE = "bench.json"      # written by bench run: what made the outputs of its folder
@dataclass
class TaskResult:
    """One task's scored records."""

    task: str
    scored: list[Scored]

    @property
    def total(self) -> int:
        return len(self.scored)

    @property
    def correct(self) -> int:
        return sum(s.correct for s in self.scored)

    @property
    def accuracy(self) -> float:
        return 100 * self.correct / self.total

    def to_json(self) -> dict[str, Any]:
        low, high = (100 * bound for bound in wilson_interval(self.correct, self.total))
        return {"total": self.total, "correct": self.correct, "accuracy": self.accuracy, "ci95": [low, high],
                "mean_score": sum(s.score for s in self.scored) / self.total}


def score_task(task: str, records: list[dict[str, Any]]) -> TaskResult:
    return TaskResult(task, [score_record(task, r) for r in records])


@dataclass
class Summary:
    """Results of one folder: tasks in the official order, and (for a bench run) its setup and speed."""

    name: str
    tasks: dict[str, TaskResult]
    protocol: str | None = None          # official | completion | None (outputs made elsewhere)
    run: dict[str, Any] | None = None    # checkpoint, knobs, max_samples, ... (bench run only)
    runtime: dict[str, Any] | None = field(default=None, compare=False)   # seconds and samples/s

    @property
    def average(self) -> float | None:
        accuracies = [r.accuracy for r in self.tasks.values()]
        return sum(accuracies) / len(accuracies) if accuracies else None

    def to_json(self) -> dict[str, Any]:
        """``tasks: {task: {total, correct, accuracy (percent), ci95, mean_score}}`` plus the average."""
        return {"format": SUMMARY_FORMAT, "name": self.name, "protocol": self.protocol,
                "tasks": {t: r.to_json() for t, r in self.tasks.items()}, "tasks_average": self.average,
                "run": self.run, "runtime": self.runtime}

    def csv_text(self) -> str:
        """The official ``accuracy_summary.csv``."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["task", self.name])
        for task in TASK_ORDER:
            writer.writerow([task, f"{self.tasks[task].accuracy:.2f}" if task in self.tasks else ""])
        writer.writerow(["tasks_average", "" if self.average is None else f"{self.average:.2f}"])
        return buffer.getvalue()


def load_outputs(path: Path) -> list[dict[str, Any]]:
    """Generated records of one task file, checked for what the scorer reads."""
    records = []
    for number, row in read_jsonl(path):
        where = f"{path}:{number}"
        if not isinstance(row.get("generate"), str):
            raise BenchError(f"{where}: 'generate' must be a string (the model's output)")
        if not isinstance(row.get("ground_truth", row.get("answer")), str):
            raise BenchError(f"{where}: missing 'ground_truth' (a string)")
        check_choices(row, where, required=False)
        records.append(row)
    if not records:
        raise BenchError(f"{path}: no records")
    return records


def score_folder(folder: str | Path, name: str = "default") -> Summary:
    """Score every ``<task>.jsonl`` of a folder (read only); a bench run folder keeps its protocol and setup."""
    files = find_task_files(folder)
    tasks = {task: score_task(task, load_outputs(path)) for task, path in files.items()}
    run = read_run_meta(Path(folder))
    return Summary(name, tasks, protocol=run["config"]["protocol"] if run else None, run=run)


def read_run_meta(folder: Path) -> dict[str, Any] | None:
    """The folder's ``bench.json`` (None when there is none)."""
    path = folder / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise BenchError(f"{path}: not a bench run record (expected format {RUN_FORMAT}); start fresh with another "
                         f"--out folder (or delete {folder})")
    return meta


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_results(out: str | Path, summary: Summary, compare: dict[str, Any] | None = None) -> Path:
    """Write the CSV, the detail files, ``summary.json`` and ``report.html`` into ``out``; returns the report."""
    from .report import write_report   # noqa: PLC0415 (plotly is imported only when writing)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for task, result in summary.tasks.items():
        write_text_atomic(out / f"{task}_correct.jsonl", _jsonl([s.record for s in result.scored if s.correct]))
        write_text_atomic(out / f"{task}_wrong.jsonl", _jsonl([s.record for s in result.scored if not s.correct]))
    write_text_atomic(out / "accuracy_summary.csv", summary.csv_text())
    write_text_atomic(out / "summary.json", json.dumps(summary.to_json(), indent=1, ensure_ascii=False) + "\n")
    return write_report(out / "report.html", summary.to_json(), compare)


def load_summary(path: str | Path) -> dict[str, Any]:
    """A summary to compare with: a ``summary.json``, a folder holding one, or a folder of outputs (scored here)."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if file.is_file():
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BenchError(f"{file}: not a summary.json ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != SUMMARY_FORMAT:
            raise BenchError(f"{file}: not a bench summary (expected format {SUMMARY_FORMAT})")
        return data
    if path.is_dir():
        return score_folder(path, name=path.name).to_json()
    raise BenchError(f"{path}: no such summary.json or folder")
