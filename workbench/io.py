"""Files on disk written atomically: bundles (``NAME.safetensors`` tensors + ``NAME.json`` metadata) and text."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cola_core.files import read_json_object, write_text_atomic   # noqa: F401 (re-exported for the workbench)
from cola_core.tensorfile import load_tensor_file, save_tensor_file

from .errors import WorkbenchError


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
    save_tensor_file(tensor_path, {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()})
    write_text_atomic(meta_path, json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return tensor_path


def load_bundle(path: str | Path, kind: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a bundle written by :func:`save_bundle`; ``kind`` must match ``meta['kind']``."""
    tensor_path, meta_path = bundle_paths(path)
    for p in (tensor_path, meta_path):
        if not p.is_file():
            raise WorkbenchError(f"{p}: file not found (a {kind} bundle needs .safetensors and .json)")
    meta = read_json_object(meta_path, WorkbenchError, f"{kind} bundle metadata")
    if meta.get("kind") != kind:
        raise WorkbenchError(f"{meta_path}: holds a {meta.get('kind')!r} bundle, expected {kind!r}")
    return load_tensor_file(tensor_path), meta
