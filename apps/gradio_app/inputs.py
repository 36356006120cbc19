"""Checking what a person (or a script) sent, before any model work: clear messages, never tracebacks.

Events run with Gradio's own preprocessing off, so the raw values arrive here; every problem raises
:class:`~apps.gradio_app.errors.InputError` naming the field, and the event wiring turns it (like
the workbench's own ``ValueError``s) into one message for the user and one log line.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from cola_core.generate import GenerationConfig
from cola_core.seeds import MAX_SEED
from workbench.experiments.values import parse_values

from .context import Limits
from .errors import InputError

DEFAULTS = GenerationConfig()   # every form's sampler knobs start at the official defaults
MAX_VALUES_CHARS = 1000         # a sweep's value list ("1, 3, 5" or "1-9 (+2)")


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message never echoes a huge input back."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def size_text(nbytes: int) -> str:
    """Bytes for people: KiB below a MiB, MiB above."""
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 1024:.1f} KiB"


# -- numbers -------------------------------------------------------------------------------------------
def integer(name: str, value: Any, low: int, high: int) -> int:
    """An int in [low, high] (whole floats from sliders accepted)."""
    if value is None:
        raise InputError(f"{name} is missing; give a whole number from {low} to {high}")
    if isinstance(value, bool):
        raise InputError(f"{name} must be a whole number, got {shown(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number, got {shown(value)}") from None
    if not math.isfinite(number) or not number.is_integer():
        raise InputError(f"{name} must be a whole number, got {shown(value)}")
    if not low <= number <= high:
        raise InputError(f"{name} must be from {low} to {high}, got {shown(value)}")
    return int(number)


def number(name: str, value: Any, low: float, high: float) -> float:
    """A finite float in [low, high]."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a number, got {shown(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {shown(value)}") from None
    if not math.isfinite(out) or not low <= out <= high:
        raise InputError(f"{name} must be from {low:g} to {high:g}, got {shown(value)}")
    return out


def positive(name: str, value: Any, high: float) -> float:
    """A finite float in (0, high]."""
    out = number(name, value, 0.0, high)
    if out == 0:
        raise InputError(f"{name} must be above 0 and at most {high:g}, got {shown(value)}")
    return out


def seed(name: str, value: Any) -> int:
    """A sampler seed: a whole number in [0, MAX_SEED]."""
    return integer(name, value, 0, MAX_SEED)


def sampler_knobs(limits: Limits, steps: Any, guidance: Any, max_new_tokens: Any, sampler_seed: Any) -> dict:
    """The knobs every generating form has, checked in this order (the others stay at their defaults)."""
    return {"steps": integer("steps", steps, 1, limits.max_steps),
            "guidance": number("guidance", guidance, 0.0, limits.max_guidance),
            "max_new_tokens": integer("max new tokens", max_new_tokens, 1, limits.max_new_tokens),
            "seed": seed("seed", sampler_seed)}


def guidance_variants(rescale: Any, low: Any, high: Any) -> dict:
    """The guidance-variant knobs: ``guidance_rescale`` (CFG-rescale φ in [0, 1]) and ``guidance_interval``
    ((low, high) in t/T; the whole range [0, 1] guides everywhere, so it is None, the default)."""
    phi = number("CFG-rescale", rescale, 0.0, 1.0)
    low, high = number("guide from t/T", low, 0.0, 1.0), number("guide up to t/T", high, 0.0, 1.0)
    if low > high:
        raise InputError(f"the guidance interval is empty: from t/T = {low:g} is above up to t/T = {high:g}")
    return {"guidance_rescale": phi, "guidance_interval": None if (low, high) == (0.0, 1.0) else (low, high)}


def flag(name: str, value: Any) -> bool:
    """A checkbox: True or False, nothing else."""
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {shown(value)}")
    return value


def choice(name: str, value: Any, options: Sequence[str]) -> str:
    """One of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise InputError(f"{name} must be one of {', '.join(options)}, got {shown(value)}")
    return value


def value_list(name: str, text: Any, kind: type, low: float, high: float) -> list:
    """Sweep values: "1-9 (+2)", "1, 3, 5" or one number -> list within [low, high]."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{name} is empty; write values like 1, 3, 5 or a range like 1-9 (+2)")
    if len(text) > MAX_VALUES_CHARS:
        raise InputError(f"{name} has {len(text)} characters; at most {MAX_VALUES_CHARS}")
    text = text.strip()
    if re.fullmatch(r"[0-9.eE+,\s]+", text):     # "1, 3, 5" or "7"
        raw: Any = [_scalar(name, part, kind) for part in text.replace(",", " ").split()]
    else:                                          # a range such as "1-9 (+2)"
        raw = text
    values = parse_values(name, raw, kind)
    for v in values:
        if not low <= v <= high:
            raise InputError(f"{name}: {v} is outside {low:g} to {high:g}")
    return values


def _scalar(name: str, text: str, kind: type):
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{name}: cannot read {shown(text)} as a number") from None
    if kind is int:
        if not value.is_integer():
            raise InputError(f"{name}: {shown(text)} is not a whole number")
        return int(value)
    return value


def blocks(name: str, picked: Any, count: int) -> list[int]:
    """Block indices in [0, count) from a CheckboxGroup of "0", "1", ... labels (none ticked: [])."""
    if picked is None:
        return []
    if not isinstance(picked, (list, tuple)):
        raise InputError(f"{name} must be a list of block indices, got {shown(picked)}")
    out = set()
    for item in picked:
        if isinstance(item, bool) or not (isinstance(item, int) or re.fullmatch(r"[0-9]{1,6}", str(item))):
            raise InputError(f"{name}: {shown(item)} is not a block index")
        if not 0 <= int(item) < count:
            raise InputError(f"{name}: block {int(item)} does not exist (blocks 0 to {count - 1})")
        out.add(int(item))
    return sorted(out)


# -- texts -------------------------------------------------------------------------------------------------
def text(name: str, value: Any, limits: Limits, allow_empty: bool = False, max_chars: int | None = None) -> str:
    """One text field of at most ``max_chars`` characters (default: ``limits.max_text_chars``)."""
    max_chars = max_chars or limits.max_text_chars
    if not isinstance(value, str):
        raise InputError(f"{name} must be text")
    if not value.strip() and not allow_empty:
        raise InputError(f"{name} is empty; type some text")
    if len(value) > max_chars:
        raise InputError(f"{name} has {len(value)} characters; at most {max_chars}")
    return value if allow_empty else value.strip()


def lines(name: str, value: Any, limits: Limits, max_count: int) -> list[str]:
    """Non-blank lines of a text box."""
    if not isinstance(value, str):
        raise InputError(f"{name} must be text")
    if len(value) > max_count * (limits.max_text_chars + 1):
        raise InputError(f"{name} has {len(value)} characters; at most {max_count} lines of "
                         f"{limits.max_text_chars}")
    out = [line.strip() for line in value.splitlines() if line.strip()]
    if len(out) > max_count:
        raise InputError(f"{name} has {len(out)} lines; at most {max_count}")
    for i, line in enumerate(out, 1):
        if len(line) > limits.max_text_chars:
            raise InputError(f"{name}, line {i}: {len(line)} characters; at most {limits.max_text_chars}")
    return out


def uploaded_texts(path: Any, limits: Limits, private: Path) -> list[str]:
    """Texts of an uploaded .txt (one per line) or .jsonl (a "text" field or a JSON string per line).

    ``path`` is where Gradio stored the upload (it refuses references to files outside its cache);
    only a regular file is read, so a device or a folder never blocks or leaks, and never one under
    ``private`` (the app's run store, which lives in the same cache).
    """
    if path is None or path == "":
        return []
    if not isinstance(path, str):
        raise InputError(f"the upload must be a file, got {type(path).__name__}")
    file = Path(path)
    if not file.exists():
        raise InputError("the uploaded file is gone (uploads expire); upload it again")
    if not file.is_file():
        raise InputError("the upload is not a regular file")
    if file.resolve().is_relative_to(private.resolve()):
        raise InputError("the upload is not an uploaded file")
    size = file.stat().st_size
    if size > limits.max_upload_bytes:
        raise InputError(f"the uploaded file is {size_text(size)}; the limit is {size_text(limits.max_upload_bytes)} "
                         f"(split it or upload a sample)")
    suffix = file.suffix.lower()
    if suffix not in (".txt", ".jsonl"):
        raise InputError(f"unsupported file type {suffix or '(none)'}; upload a .txt (one text per line) or .jsonl")
    try:
        content = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"the uploaded file is not UTF-8 text (byte {exc.start} cannot be decoded)") from None
    if suffix == ".txt":
        return [line.strip() for line in content.splitlines() if line.strip()]
    out = []
    for line_no, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"the uploaded .jsonl is malformed: line {line_no} is not JSON ({exc.msg})") from None
        item = record.get("text") if isinstance(record, dict) else record
        if not isinstance(item, str):
            raise InputError(f"the uploaded .jsonl is malformed: line {line_no} needs a \"text\" string field")
        if item.strip():
            out.append(item.strip())
    return out


def corpus(box: Any, path: Any, limits: Limits, private: Path) -> list[str]:
    """Texts from a text box (one per line) plus an optional uploaded file (see :func:`uploaded_texts`),
    checked against the limits."""
    texts = lines("texts", box or "", limits, limits.max_texts) + uploaded_texts(path, limits, private)
    if not texts:
        raise InputError("no texts: type one text per line or upload a .txt/.jsonl file")
    if len(texts) > limits.max_texts:
        raise InputError(f"{len(texts)} texts; at most {limits.max_texts} per request")
    for i, t in enumerate(texts, 1):
        if len(t) > limits.max_text_chars:
            raise InputError(f"text {i} has {len(t)} characters; at most {limits.max_text_chars}")
    return texts
