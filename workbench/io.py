"""Files on disk written atomically: bundles (``NAME.safetensors`` tensors + ``NAME.json`` metadata) and text."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import WorkbenchError


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a per-process temporary file + rename, so readers never see a half-written file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def bundle_paths(path: str | Path) -> tuple[Path, Path]:
    """``run/x``, ``run/x.json`` or ``run/x.safetensors`` -> (tensor file, metadata file)."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def save_bundle(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write both files via temp files + rename, so a crash never leaves a half-written bundle."""
    tensor_path, meta_path = bundle_paths(path)
    tensor_path.parent.mkdir(parents=True, exist_ok=True)
    owned = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    tmp_t, tmp_m = tensor_path.with_suffix(".safetensors.tmp"), meta_path.with_suffix(".json.tmp")
    save_file(owned, str(tmp_t))
    tmp_m.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp_t, tensor_path)
    os.replace(tmp_m, meta_path)
    return tensor_path


def load_bundle(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a bundle written by :func:`save_bundle`; ``kind`` must match ``meta['kind']``."""
    tensor_path, meta_path = bundle_paths(path)
    for p in (tensor_path, meta_path):
        if not p.is_file():
            raise WorkbenchError(f"{p}: file not found (a {kind} bundle needs .safetensors and .json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != kind:
        raise WorkbenchError(f"{meta_path}: holds a {meta.get('kind')!r} bundle, expected {kind!r}")
    return load_file(str(tensor_path)), meta
