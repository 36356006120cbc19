"""A bench output folder as the Bench tab reads it: only under the allowed roots, every file checked first.

The app reads what ``bench run`` / ``bench score`` wrote (``workbench.bench``'s formats): ``summary.json``
(required), ``bench.json`` (the run's knobs and checkpoint; absent when ``bench score`` scored outputs
made elsewhere), ``<task>_correct.jsonl`` / ``<task>_wrong.jsonl`` (the scorer's verdict, extracted
answers and score per sample), ``<task>.jsonl`` (item order) and ``generations/<task>.jsonl`` (the
tokens). A folder typed by a user is accepted only inside ``ctx.bench_roots`` after following links,
and so is every file read from it; each problem is one :class:`InputError` line.
"""
from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from workbench.bench import RUN_FORMAT, SUMMARY_FORMAT, TASK_ORDER, BenchConfig, noise_id
from workbench.bench import store as generations
from workbench.bench.tasks import read_jsonl

from .errors import InputError
from .inputs import shown, size_text

SUMMARY_FILE, RUN_FILE = "summary.json", "bench.json"
MAX_PATH_CHARS = 4096
MAX_FILE_BYTES = 64 << 20      # one file of a folder (1000 RACE items with their prompts: ~8 MB)
FIND_DEPTH, FIND_LIMIT = 3, 100


# -- where the app may read ------------------------------------------------------------------------------------
def roots_text(roots: Sequence[Path]) -> str:
    return ", ".join(str(r) for r in roots)


def allowed_folder(text: Any, roots: Sequence[Path]) -> Path:
    """The folder ``text`` names (relative to the working directory), links followed, if it lies under a root."""
    if not isinstance(text, str) or not text.strip():
        raise InputError("bench folder is empty; type the path of a bench output folder (e.g. runs/model-card)")
    if len(text) > MAX_PATH_CHARS or "\0" in text:
        raise InputError(f"bench folder {shown(text)} is not a usable path")
    try:
        folder = Path(text.strip()).resolve()
    except (OSError, RuntimeError):      # a link loop, a name too long
        raise InputError(f"bench folder {shown(text.strip())} is not a usable path") from None
    if not any(folder.is_relative_to(root) for root in roots):
        raise InputError(f"bench folder {shown(text.strip())} is outside the folders this app may read "
                         f"({roots_text(roots)}); start serve with --bench-root to add one")
    if not folder.is_dir():
        raise InputError(f"bench folder {shown(text.strip())} does not exist (or is not a folder)")
    return folder


def find_folders(roots: Sequence[Path]) -> list[str]:
    """Bench output folders (holding a summary.json) under the roots, a few levels deep, as paths to type."""
    found: list[str] = []
    for root in roots:
        for here, subdirs, files in os.walk(root):      # links are not followed
            depth = len(Path(here).relative_to(root).parts)
            if SUMMARY_FILE in files:
                path = Path(here)
                found.append(str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else here)
            subdirs[:] = sorted(subdirs) if depth < FIND_DEPTH else []
            if len(found) >= FIND_LIMIT:
                return sorted(found)
    return sorted(found)


def folder_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` when it exists: a regular file inside ``folder`` (links followed) of bounded size."""
    path = folder / name
    if not path.exists():
        return None
    try:
        real = path.resolve()
        if not real.is_relative_to(folder) or not real.is_file():
            raise InputError(f"{name} of this folder is not a regular file inside it")
        size = real.stat().st_size
    except (OSError, RuntimeError):
        raise InputError(f"{name} of this folder cannot be read") from None
    if size > MAX_FILE_BYTES:
        raise InputError(f"{name} is {size_text(size)}; the app reads files up to {size_text(MAX_FILE_BYTES)}")
    return real


def _json(folder: Path, name: str) -> Any:
    path = folder_file(folder, name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{name} is not JSON ({exc.__class__.__name__}: {shown(str(exc), 80)})") from None
    except OSError as exc:
        raise InputError(f"{name} cannot be read ({exc.strerror})") from None


def _records(folder: Path, name: str) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file of the folder (none when it is absent)."""
    path = folder_file(folder, name)
    return [row for _, row in read_jsonl(path)] if path else []


# -- summary.json and bench.json -------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_format(data: Any, name: str, expected: str, what: str) -> dict[str, Any]:
    """A JSON object whose ``format`` is ``expected``; another version of it is named in the message."""
    family = expected.split("@")[0] + "@"
    found = data.get("format") if isinstance(data, dict) else None
    if not isinstance(found, str) or not found.startswith(family):
        raise InputError(f"{name} is not {what} (expected format {expected}, written by cola-workbench bench)")
    if found != expected:
        raise InputError(f"{name} has format {shown(found)}; this app reads {expected} "
                         f"(score the folder again with this version: cola-workbench bench score DIR)")
    return data


def check_summary(data: Any) -> dict[str, Any]:
    """``summary.json`` of format :data:`SUMMARY_FORMAT` with every field the tab reads."""
    check_format(data, SUMMARY_FILE, SUMMARY_FORMAT, "a bench summary")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise InputError("summary.json lists no tasks")
    for task, result in tasks.items():
        if task not in TASK_ORDER:
            raise InputError(f"summary.json: unknown task {shown(task)}; known tasks: {', '.join(TASK_ORDER)}")
        ci = result.get("ci95") if isinstance(result, dict) else None
        if not (all(_number(result.get(k)) for k in ("total", "correct", "accuracy", "mean_score"))
                and isinstance(ci, list) and len(ci) == 2 and all(map(_number, ci))):
            raise InputError(f"summary.json: task {task} needs numbers total, correct, accuracy, mean_score and ci95")
    if data.get("tasks_average") is not None and not _number(data["tasks_average"]):
        raise InputError("summary.json: tasks_average must be a number")
    return data


def run_config(meta: dict[str, Any]) -> BenchConfig:
    """The knobs of ``bench.json``, checked as ``bench run`` checks its own."""
    try:
        config = BenchConfig(**meta["config"])
        config.validate()
    except (KeyError, TypeError):
        raise InputError(f"bench.json has no usable config (expected the knobs of {RUN_FORMAT})") from None
    except ValueError as exc:
        raise InputError(f"bench.json: {exc}") from None
    return config


# -- samples -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sample:
    """One scored item of a task: the scorer's record, its verdict and its position among the task's items."""

    task: str
    correct: bool
    record: dict[str, Any]      # as <task>_correct/_wrong.jsonl hold it
    index: int | None           # None: the folder has no <task>.jsonl to give the item order

    @property
    def id(self) -> Any:
        return self.record.get("id")

    @property
    def label(self) -> str:
        """The id as shown and typed (``#index`` for an item without one)."""
        return f"#{self.index}" if self.id is None else str(self.id)

    @property
    def score(self) -> float:
        score = self.record.get("similarity_score")
        return float(score) if _number(score) else 0.0

    @property
    def generated(self) -> str:
        """The whole generated text (the scorer cut it at its first line break: ``generate`` + ``others``)."""
        rest = self.record.get("others")
        return str(self.record.get("generate", "")) + (f"\n{rest}" if isinstance(rest, str) else "")

    def answers(self) -> tuple[str, str]:
        """(extracted answer, ground truth) as the scorer compared them: a word, a choice, or the whole text."""
        r = self.record
        if "extracted_gen_word" in r:
            return str(r["extracted_gen_word"]), str(r.get("extracted_gt_word", ""))
        if "extracted_gen_choice" in r:
            return self._choice(r["extracted_gen_choice"]), self._choice(r.get("extracted_gt_choice"))
        return str(r.get("generate", "")).strip(), str(r.get("ground_truth", ""))

    def _choice(self, letter: Any) -> str:
        choices = self.record.get("choices") or []
        if not isinstance(letter, str) or len(letter) != 1:
            return "(none)"
        k = ord(letter.upper()) - 65
        return f"{letter}: {choices[k]}" if 0 <= k < len(choices) and isinstance(choices[k], str) else letter

    @property
    def prompt(self) -> str:
        """The full prompt the bench generated from (``few_shot_prefix + prompt``)."""
        prefix, prompt = self.record.get("few_shot_prefix", ""), self.record.get("prompt")
        if not isinstance(prefix, str) or not isinstance(prompt, str):
            raise InputError(f"{self.task} sample {shown(self.label)}: its record has no prompt text")
        return prefix + prompt

    @property
    def noise_id(self) -> int:
        """The official per-sample seed id of the item (``workbench.bench.noise_id``)."""
        if self.id is not None and (isinstance(self.id, bool) or not isinstance(self.id, (int, str))):
            raise InputError(f"{self.task} sample {shown(self.label)}: its id is neither an integer nor a string")
        if self.id is None and self.index is None:
            raise InputError(f"{self.task} sample {shown(self.label)} has no id and the folder has no "
                             f"{self.task}.jsonl to give its position, so its noise seed is unknown")
        return noise_id(self.id, self.index)


def _same_item(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("id") == b.get("id") and a.get("prompt") == b.get("prompt")


def order_samples(task: str, items: list[dict], correct: list[dict], wrong: list[dict]) -> list[Sample]:
    """Interleave the verdict files (each in item order) by the task's item order; a mismatch is an error."""
    queues = {True: deque(correct), False: deque(wrong)}
    samples = []
    for index, item in enumerate(items):
        verdict = next((v for v, q in queues.items() if q and _same_item(q[0], item)), None)
        if verdict is None:
            raise InputError(f"{task}_correct.jsonl / {task}_wrong.jsonl do not match {task}.jsonl at item {index}; "
                             f"score the folder again (cola-workbench bench score)")
        samples.append(Sample(task, verdict, queues[verdict].popleft(), index))
    if queues[True] or queues[False]:
        raise InputError(f"{task}_correct.jsonl / {task}_wrong.jsonl hold samples {task}.jsonl does not; "
                         f"score the folder again (cola-workbench bench score)")
    return samples


@dataclass
class BenchFolder:
    """A checked bench output folder: its summary, its run record (None: outputs made elsewhere) and knobs."""

    path: Path
    summary: dict[str, Any]
    meta: dict[str, Any] | None

    @classmethod
    def read(cls, text: Any, roots: Sequence[Path]) -> "BenchFolder":
        """Check the folder ``text`` names and read its summary.json and bench.json."""
        folder = allowed_folder(text, roots)
        has_run = folder_file(folder, RUN_FILE) is not None
        if folder_file(folder, SUMMARY_FILE) is None:
            what = ("a bench run that has not been scored yet (cola-workbench bench score DIR)" if has_run else
                    "not a bench output folder (bench run and bench score write one)")
            raise InputError(f"{shown(text.strip())} holds no summary.json: {what}")
        summary = check_summary(_json(folder, SUMMARY_FILE))
        meta = check_format(_json(folder, RUN_FILE), RUN_FILE, RUN_FORMAT, "a bench run record") if has_run else None
        bench = cls(folder, summary, meta)
        bench.config     # checked now: opening a sample later must not be the first to find it broken
        return bench

    @property
    def tasks(self) -> list[str]:
        return list(self.summary["tasks"])

    @cached_property
    def config(self) -> BenchConfig:
        """The knobs the outputs were generated with (the official ones when the folder has no bench.json)."""
        return run_config(self.meta) if self.meta is not None else BenchConfig()

    @property
    def checkpoint(self) -> dict[str, Any]:
        checkpoint = (self.meta or {}).get("checkpoint")
        return checkpoint if isinstance(checkpoint, dict) else {}

    def samples(self, task: str) -> list[Sample]:
        """Every scored sample of ``task``, in item order (correct ones first when the order is unknown)."""
        correct, wrong = _records(self.path, f"{task}_correct.jsonl"), _records(self.path, f"{task}_wrong.jsonl")
        if not correct and not wrong:
            raise InputError(f"this folder has no {task}_correct.jsonl / {task}_wrong.jsonl (bench score writes them)")
        items = _records(self.path, f"{task}.jsonl")
        if items:
            return order_samples(task, items, correct, wrong)
        return [Sample(task, True, r, None) for r in correct] + [Sample(task, False, r, None) for r in wrong]

    def generation(self, sample: Sample) -> dict[str, Any] | None:
        """The record ``bench run`` stored for the sample (prompt, text, token_ids), or None (not a bench run)."""
        for path in generations.task_files(self.path, sample.task):
            folder_file(self.path, str(path.relative_to(self.path)))
        try:
            stored = generations.load(self.path, sample.task)
        except (KeyError, TypeError):
            raise InputError(f"generations/{sample.task}.jsonl holds records without a key") from None
        key = json.dumps(sample.id, ensure_ascii=False) if sample.id is not None else f"#{sample.index}"
        record = stored.get(key)
        if record is not None and not (isinstance(record.get("token_ids"), list)
                                       and all(isinstance(t, int) for t in record["token_ids"])):
            raise InputError(f"generations/{sample.task}.jsonl: sample {shown(sample.label)} has no token_ids list")
        return record


def find_sample(samples: list[Sample], label: Any) -> Sample:
    """The sample whose id (or ``#index``) is ``label``."""
    if isinstance(label, (int, float)) and not isinstance(label, bool) and float(label).is_integer():
        label = str(int(label))
    if not isinstance(label, str) or not label.strip():
        raise InputError("sample id is empty; pick a sample of the table")
    matches = [s for s in samples if s.label == label.strip()]
    if not matches:
        task = samples[0].task if samples else "this task"
        raise InputError(f"no sample with id {shown(label.strip())} in {task}")
    if len(matches) > 1:
        raise InputError(f"id {shown(label.strip())} names {len(matches)} samples of {matches[0].task}")
    return matches[0]
