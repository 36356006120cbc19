"""Value lists for sweeps: ``"1-9 (+2)"`` -> [1, 3, 5, 7, 9], plain TOML lists, or one scalar.

Ranges are inclusive; the step defaults to 1. Every problem raises :class:`SpecError` naming the key.
"""
from __future__ import annotations

import math
import re
from typing import Any

from ..errors import WorkbenchError

MAX_VALUES = 10_000
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE = re.compile(rf"^\s*(?P<start>{_NUM})\s*-\s*(?P<end>{_NUM})\s*(?:\(\s*\+\s*(?P<step>{_NUM})\s*\))?\s*$")


class SpecError(WorkbenchError):
    """A bad experiment spec: unknown key, wrong type, bad range (raised before any model work)."""


def parse_range(key: str, text: str, kind: type) -> list:
    """``"START-END (+STEP)"`` -> the inclusive list; ``kind`` int or float."""
    match = _RANGE.match(text)
    if not match:
        raise SpecError(f"{key}: cannot read {text!r} as a value range; write e.g. \"1-9 (+2)\" or a list [1, 3, 5]")
    start, end = float(match["start"]), float(match["end"])
    step = float(match["step"]) if match["step"] is not None else 1.0
    if kind is int and not all(float(x).is_integer() for x in (start, end, step)):
        raise SpecError(f"{key}: range {text!r} must use whole numbers")
    if not step > 0:
        raise SpecError(f"{key}: range {text!r} needs a positive step, got {match['step']}")
    if end < start:
        raise SpecError(f"{key}: range {text!r} ends ({match['end']}) before it starts ({match['start']})")
    count = math.floor((end - start) / step + 1e-9) + 1
    if count > MAX_VALUES:
        raise SpecError(f"{key}: range {text!r} has {count} values; at most {MAX_VALUES}")
    values = [start + i * step for i in range(count)]
    return [int(round(v)) for v in values] if kind is int else [round(v, 10) for v in values]


def scalar(key: str, value: Any, kind: type) -> Any:
    """Check one value against ``kind`` (int, float, str, bool); ints are accepted as floats."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is bool or isinstance(value, bool):
        if not isinstance(value, bool) or kind is not bool:
            raise SpecError(f"{key}: expected {kind.__name__}, got {value!r}")
        return value
    if not isinstance(value, kind):
        raise SpecError(f"{key}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    if kind is float and not math.isfinite(value):
        raise SpecError(f"{key}: expected a finite number, got {value!r}")
    return value


def parse_values(key: str, raw: Any, kind: type) -> list:
    """A sweep value: range string (numbers only), list, or scalar -> non-empty list without duplicates."""
    if isinstance(raw, str) and kind in (int, float):
        values = parse_range(key, raw, kind)
    elif isinstance(raw, list):
        values = [scalar(f"{key}[{i}]", v, kind) for i, v in enumerate(raw)]
    else:
        values = [scalar(key, raw, kind)]
    if not values:
        raise SpecError(f"{key}: empty list; give at least one value")
    seen = set()
    for v in values:
        if v in seen:
            raise SpecError(f"{key}: value {v!r} appears twice")
        seen.add(v)
    return values
