"""The 8 benchmark tasks: task files, their items (validated, templated) and each item's noise id.

A task file is ``<task>.jsonl``, one JSON object per line, in either form:

* the official input form: ``question`` (squad also ``context``), ``choices``, ``ground_truth``;
  the prompt is built with the task's official template (:mod:`.templates`);
* a ready prompt: ``prompt`` and optionally ``few_shot_prefix`` (prepended), as in the release's
  output files, which are therefore valid inputs themselves.

Every problem is a :class:`BenchError` naming the file and line.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import WorkbenchError
from .scorer import CHOICE_TASKS
from .templates import TEMPLATES

TASK_ORDER = tuple(TEMPLATES)    # lambada, mmlu, obqa, hellaswag, race, siqa, squad, story_cloze
TEMPLATED_WITH_CHOICES = ("mmlu", "obqa", "hellaswag", "race", "siqa", "story_cloze")


class BenchError(WorkbenchError):
    """Bad benchmark input: task files, task names, output folders (the CLI exits with code 2)."""


def known_tasks() -> str:
    return ", ".join(TASK_ORDER)


def check_task_name(task: str) -> str:
    if task not in TEMPLATES:
        raise BenchError(f"unknown task {task!r}; known tasks: {known_tasks()}")
    return task


def noise_id(item_id: int | str | None, index: int) -> int:
    """The official per-sample seed id: ``int(id)`` when that parses, else the unsigned CRC-32 of its text.

    Items without an id use their position in the file (the official code uses the position in its
    batch, which would make a sample's noise depend on batching).
    """
    if item_id is None:
        return index
    try:
        return int(item_id)
    except ValueError:
        return zlib.crc32(str(item_id).encode("utf-8")) & 0xFFFFFFFF


@dataclass(frozen=True)
class BenchItem:
    """One benchmark question, ready to generate: where it came from, its prompt and its answer."""

    task: str
    index: int                    # position among the file's items (0-based)
    where: str                    # "path:line" for messages
    id: int | str | None
    prompt: str                   # the full prompt the model sees
    ground_truth: str
    choices: list[str] | None

    @property
    def key(self) -> str:
        """Stable identity within a task (resume key)."""
        return json.dumps(self.id, ensure_ascii=False) if self.id is not None else f"#{self.index}"

    @property
    def noise_id(self) -> int:
        return noise_id(self.id, self.index)


def read_jsonl(path: Path, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for the non-blank lines (the first ``limit``); a bad line is an error."""
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if limit is not None and len(rows) >= limit:
                    break
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise BenchError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
                if not isinstance(value, dict):
                    raise BenchError(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
                rows.append((number, value))
    except UnicodeDecodeError as exc:
        raise BenchError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise BenchError(f"{path}: cannot read ({exc.strerror})") from None
    return rows


def _text(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if key not in row else f"a {type(value).__name__}"
        raise BenchError(f"{where}: '{key}' must be a string ({got})")
    return value


def check_choices(row: dict, where: str, required: bool) -> list[str] | None:
    """``choices`` as a list of strings (None when absent or empty, unless ``required``)."""
    choices = row.get("choices")
    if choices in (None, []) and not required:
        return None
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        got = "missing" if "choices" not in row else repr(choices)[:60]
        raise BenchError(f"{where}: 'choices' must be a non-empty list of strings ({got})")
    return choices


def check_ground_truth(row: dict, where: str) -> str:
    if "ground_truth" not in row:
        raise BenchError(f"{where}: missing 'ground_truth'")
    return _text(row, "ground_truth", where)


def _item_id(row: dict, where: str) -> int | str | None:
    item_id = row.get("id")
    if item_id is not None and (isinstance(item_id, bool) or not isinstance(item_id, (int, str))):
        raise BenchError(f"{where}: 'id' must be an integer or a string, got {item_id!r}")
    return item_id


def _prompt(task: str, row: dict, where: str) -> str:
    """A ready prompt (few_shot_prefix + prompt), or the official template applied to the input form."""
    if "prompt" in row:
        return _text(row, "few_shot_prefix", where, required=False) + _text(row, "prompt", where)
    if "question" not in row:
        raise BenchError(f"{where}: needs 'prompt' (a ready prompt) or 'question' (the official input form)")
    choices = check_choices(row, where, required=task in TEMPLATED_WITH_CHOICES) or []
    if task == "story_cloze" and len(choices) != 2:
        raise BenchError(f"{where}: story_cloze needs exactly 2 choices, got {len(choices)}")
    context = _text(row, "context", where, required=task == "squad")
    return TEMPLATES[task].prompt(_text(row, "question", where), context, choices)


def load_items(path: str | Path, task: str, max_samples: int | None = None) -> list[BenchItem]:
    """The first ``max_samples`` items of a task file, validated and templated."""
    path = Path(path)
    check_task_name(task)
    items: list[BenchItem] = []
    seen: dict[str, str] = {}
    for number, row in read_jsonl(path, max_samples):
        where = f"{path}:{number}"
        choices = check_choices(row, where, required=task in CHOICE_TASKS)
        item = BenchItem(task=task, index=len(items), where=where, id=_item_id(row, where),
                         prompt=_prompt(task, row, where), ground_truth=check_ground_truth(row, where),
                         choices=choices)
        if not item.prompt.strip():
            raise BenchError(f"{where}: empty prompt")
        if item.id is not None and item.key in seen:
            raise BenchError(f"{where}: id {item.id!r} already used at {seen[item.key]}")
        seen[item.key] = where
        items.append(item)
    if not items:
        raise BenchError(f"{path}: no items")
    return items


def find_task_files(folder: str | Path, tasks: list[str] | None = None) -> dict[str, Path]:
    """``{task: folder/<task>.jsonl}`` in the official task order: the named tasks, or every one present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchError(f"{folder}: not a folder")
    for task in tasks or []:
        check_task_name(task)
    wanted = [t for t in TASK_ORDER if t in tasks] if tasks else list(TASK_ORDER)
    files = {t: folder / f"{t}.jsonl" for t in wanted if (folder / f"{t}.jsonl").is_file()}
    missing = [t for t in wanted if t not in files]
    if tasks and missing:
        raise BenchError(f"{folder}: no task file {missing[0]}.jsonl")
    if not files:
        raise BenchError(f"{folder}: no task files (expected <task>.jsonl for a task of: {known_tasks()})")
    return files
