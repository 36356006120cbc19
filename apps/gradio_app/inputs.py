"""Checking what a person (or a script) sent, before any model work: clear messages, never tracebacks.

Every user-facing problem becomes a ``gr.Error``; ``user_errors`` turns the workbench's own
``ValueError``s (WorkbenchError, SpecError, GenerationError) into one as well.
"""
from __future__ import annotations

import functools
import inspect
import json
import math
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr

from workbench.experiments.values import parse_values

from .context import Limits


def user_errors(fn: Callable) -> Callable:
    """Wrap an event function (plain or generator) so ValueErrors reach the UI as gr.Error messages."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except gr.Error:
                raise
            except (ValueError, KeyError) as exc:
                raise gr.Error(_message(exc)) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, KeyError) as exc:
            raise gr.Error(_message(exc)) from None
    return wrapper


def _message(exc: Exception) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


# -- numbers -------------------------------------------------------------------------------------------
def integer(name: str, value: Any, low: int, high: int) -> int:
    """An int in [low, high] (whole floats from sliders accepted)."""
    if value is None or isinstance(value, bool):
        raise gr.Error(f"{name} is missing; give a whole number from {low} to {high}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number, got {value!r}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise gr.Error(f"{name} must be a whole number, got {value!r}")
    if not low <= number <= high:
        raise gr.Error(f"{name} must be from {low} to {high}, got {int(number)}")
    return int(number)


def number(name: str, value: Any, low: float, high: float) -> float:
    """A finite float in [low, high]."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(out) or not low <= out <= high:
        raise gr.Error(f"{name} must be from {low:g} to {high:g}, got {value!r}")
    return out


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise gr.Error(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value


def value_list(name: str, text: Any, kind: type, low: float, high: float) -> list:
    """Sweep values: "1-9 (+2)", "1, 3, 5" or one number -> list within [low, high]."""
    if not isinstance(text, str) or not text.strip():
        raise gr.Error(f"{name} is empty; write values like 1, 3, 5 or a range like 1-9 (+2)")
    text = text.strip()
    if re.fullmatch(r"[0-9.eE+,\s]+", text):     # "1, 3, 5" or "7"
        raw: Any = [_scalar(name, part, kind) for part in text.replace(",", " ").split()]
    else:                                          # a range such as "1-9 (+2)"
        raw = text
    values = parse_values(name, raw, kind)
    for v in values:
        if not low <= v <= high:
            raise gr.Error(f"{name}: {v} is outside {low:g} to {high:g}")
    return values


def _scalar(name: str, text: str, kind: type):
    try:
        value = float(text)
    except ValueError:
        raise gr.Error(f"{name}: cannot read {text!r} as a number") from None
    if kind is int:
        if not value.is_integer():
            raise gr.Error(f"{name}: {text!r} is not a whole number")
        return int(value)
    return value


def blocks(name: str, picked: Sequence[Any] | None) -> list[int]:
    """Block indices from a CheckboxGroup of "0", "1", ... labels."""
    out = []
    for item in picked or []:
        try:
            out.append(int(item))
        except (TypeError, ValueError):
            raise gr.Error(f"{name}: {item!r} is not a block index") from None
    return sorted(set(out))


# -- texts -------------------------------------------------------------------------------------------------
def text(name: str, value: Any, limits: Limits, allow_empty: bool = False) -> str:
    """One text field."""
    if not isinstance(value, str):
        raise gr.Error(f"{name} must be text")
    if not value.strip() and not allow_empty:
        raise gr.Error(f"{name} is empty; type some text")
    if len(value) > limits.max_text_chars:
        raise gr.Error(f"{name} has {len(value)} characters; at most {limits.max_text_chars}")
    return value if allow_empty else value.strip()


def lines(name: str, value: Any, limits: Limits, max_count: int) -> list[str]:
    """Non-blank lines of a text box."""
    if not isinstance(value, str):
        raise gr.Error(f"{name} must be text")
    out = [line.strip() for line in value.splitlines() if line.strip()]
    if len(out) > max_count:
        raise gr.Error(f"{name} has {len(out)} lines; at most {max_count}")
    for i, line in enumerate(out, 1):
        if len(line) > limits.max_text_chars:
            raise gr.Error(f"{name}, line {i}: {len(line)} characters; at most {limits.max_text_chars}")
    return out


def uploaded_texts(path: str | None, limits: Limits) -> list[str]:
    """Texts of an uploaded .txt (one per line) or .jsonl (a "text" field or a JSON string per line)."""
    if not path:
        return []
    file = Path(path)
    size = file.stat().st_size
    if size > limits.max_upload_bytes:
        raise gr.Error(f"the uploaded file is {size / 2**20:.1f} MiB; the limit is "
                       f"{limits.max_upload_bytes / 2**20:.1f} MiB (split it or upload a sample)")
    suffix = file.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise gr.Error(f"unsupported file type {suffix or '(none)'}; upload a .txt (one text per line) or .jsonl")
    try:
        content = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise gr.Error(f"the uploaded file is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if suffix == ".txt":
        return [line.strip() for line in content.splitlines() if line.strip()]
    out = []
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise gr.Error(f"the uploaded .jsonl is malformed: line {number} is not JSON ({exc.msg})") from None
        item = record.get("text") if isinstance(record, dict) else record
        if not isinstance(item, str):
            raise gr.Error(f"the uploaded .jsonl is malformed: line {number} needs a \"text\" string field")
        if item.strip():
            out.append(item.strip())
    return out


def corpus(box: Any, path: str | None, limits: Limits) -> list[str]:
    """Texts from a text box (one per line) plus an optional uploaded file, checked against the limits."""
    texts = lines("texts", box or "", limits, limits.max_texts) + uploaded_texts(path, limits)
    if not texts:
        raise gr.Error("no texts: type one text per line or upload a .txt/.jsonl file")
    if len(texts) > limits.max_texts:
        raise gr.Error(f"{len(texts)} texts; at most {limits.max_texts} per request")
    for i, t in enumerate(texts, 1):
        if len(t) > limits.max_text_chars:
            raise gr.Error(f"text {i} has {len(t)} characters; at most {limits.max_text_chars}")
    return texts
