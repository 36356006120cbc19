"""Helpers for the attack tables: safetensors header surgery, JSON edits, processes killed at random."""
from __future__ import annotations

import json
import random
import signal
import struct
import subprocess
import time
from pathlib import Path
from typing import Callable

DIT_WEIGHTS = Path("cola_dlm") / "cola_dit" / "model.safetensors"
VAE_WEIGHTS = Path("cola_dlm") / "cola_vae" / "model.safetensors"
TARGET = "txt_out_norm.bias"          # a (64,) float32 DiT tensor
NEIGHBOUR = "txt_out_norm.weight"     # same shape and size


def split_safetensors(path: Path) -> tuple[dict, bytes]:
    """(header JSON, data section) of a well-formed file."""
    raw = path.read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_safetensors(path: Path, header: object, data: bytes) -> None:
    """Write a file from a header (JSON value, or raw bytes) and a data section, whatever they hold."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def edit_header(path: Path, edit: Callable[[dict], object | None]) -> None:
    """Apply ``edit`` to the header dict (it may return a replacement header) and rewrite the file."""
    header, data = split_safetensors(path)
    replaced = edit(header)
    write_safetensors(path, header if replaced is None else replaced, data)


def edit_entry(path: Path, name: str, **fields: object) -> None:
    """Set (or with None, drop) fields of one tensor's header entry."""
    def apply(header: dict) -> None:
        for key, value in fields.items():
            if value is None:
                header[name].pop(key, None)
            else:
                header[name][key] = value
    edit_header(path, apply)


def edit_json(path: Path, **changes: object) -> None:
    """Set keys of a JSON object file."""
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def timed_run(start: Callable[[], subprocess.Popen]) -> float:
    """Run one process to a clean exit; its wall time in seconds."""
    started = time.monotonic()
    process = start()
    assert process.wait(timeout=600) == 0, process.stderr.read().decode()
    return time.monotonic() - started


def kill_at_random_until_done(start: Callable[[], subprocess.Popen], duration: float, seed: int,
                              kills: int = 4) -> int:
    """Start processes, SIGKILL the first ``kills`` at random moments in the first 10-60 % of
    ``duration``, let the next one finish cleanly; returns how many were killed."""
    rng, killed = random.Random(seed), 0
    while True:
        process = start()
        try:
            code = process.wait(timeout=rng.uniform(0.1, 0.6) * duration if killed < kills else 600)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed += 1
            continue
        assert code == 0, process.stderr.read().decode()
        return killed
