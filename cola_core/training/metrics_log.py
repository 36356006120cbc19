"""``metrics.jsonl``: one JSON record per logged step, appended while training, trimmed on resume."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import ConfigError
from ..files import write_text_atomic


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics file; a torn last line (a crash mid-append) is dropped with a warning."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                print(f"warning: {path}: dropped a torn last line (line {number}, written when the run was "
                      "interrupted)", file=sys.stderr)
                break
            raise ConfigError(f"{path}, line {number}: not a JSON record; the metrics file is corrupt") from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ConfigError(f"{path}, line {number}: expected a record with an integer 'step'")
        records.append(record)
    return records


def append_metrics(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def keep_records(path: Path, count: int | None, step: int) -> None:
    """Keep what was logged before a state was saved: its first ``count`` records (states of the earlier
    layout do not record ``count``: then the records of steps <= ``step``); a resume logs the rest again."""
    if path.is_file():
        records = read_metrics(path)
        kept = records[:count] if count is not None else [r for r in records if r["step"] <= step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
