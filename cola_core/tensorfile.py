"""Read and write safetensors files safely: the ``safetensors`` library validates, we stream.

The library checks every header rule (JSON types, known dtypes, shapes, offsets that are
non-negative, in bounds, contiguous and cover the data section exactly, byte counts that match
dtype x shape). Its messages rarely name the tensor, so on failure :func:`diagnose` re-reads the
header to say which tensor breaks which rule. Then each file's data section is read with one
``readinto`` into anonymous memory this process owns (pages faulted in by the allocation itself), and
its tensors are views of that buffer; a caller that converts each tensor reads them one at a time
instead. The library's own reader maps the whole file: its tensors stay backed by a file that may be
overwritten in place (they change) or truncated (reading them then kills the process with SIGBUS), and
copying them out costs up to a file's size on top of the weights. Owning costs allocating the weights'
bytes, which is most of the load time at the release size (``benchmarks/release_speed.py``). Measured
at the release size in bf16 (``benchmarks/loader_memory_bench.py``,
``benchmarks/results/load_memory_release_bf16_*``): peak RSS 1.075x the weight bytes here, 1.28x
(1 GiB shards) and 1.64x (one file per model) for ``safe_open`` + copy; target <= 1.3x.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import TensorFileError
from .files import new_file_mode, require_regular_file

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
HEADER_PREFIX = 8


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a validated file: where its bytes are and what they hold."""

    name: str
    dtype: str                # safetensors code, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int                # absolute byte offset in the file
    nbytes: int


@dataclass(frozen=True)
class TensorFile:
    """A safetensors file whose header passed validation."""

    path: Path
    entries: tuple[TensorEntry, ...]   # in file order
    header: dict                       # the header JSON without ``__metadata__``
    metadata: dict                     # the header's ``__metadata__`` (string to string; {} if absent)


def inspect_tensor_file(path: str | Path) -> TensorFile:
    """Validate ``path`` (library rules, unique names, supported dtypes); TensorFileError names the problem."""
    path = require_regular_file(Path(path), TensorFileError, "safetensors file")
    try:
        with safe_open(str(path), "pt") as handle:
            described = [(name, handle.get_slice(name)) for name in handle.offset_keys()]
            described = [(name, view.get_dtype(), tuple(view.get_shape())) for name, view in described]
    except SafetensorError as exc:
        problem = diagnose(path) or "invalid header"
        library = " ".join(str(exc).split())
        raise TensorFileError(f"{path}: not a valid safetensors file: {problem} [safetensors: {library}]") from None
    header, metadata, data_start = _read_header(path)
    entries, offset = [], data_start
    for name, dtype, shape in described:
        if dtype not in DTYPES:
            raise TensorFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype} "
                                  f"(supported: {', '.join(DTYPES)})")
        nbytes = math.prod(shape) * DTYPES[dtype].itemsize
        entries.append(TensorEntry(name, dtype, shape, offset, nbytes))
        offset += nbytes   # the library checked that tensors are contiguous, in this order
    return TensorFile(path, tuple(entries), header, metadata)


def _read_header(path: Path) -> tuple[dict, dict, int]:
    """The header JSON without its metadata (refusing a name given twice), the metadata, and where the data
    section starts."""
    with open(path, "rb") as handle:
        length = struct.unpack("<Q", handle.read(HEADER_PREFIX))[0]
        raw = handle.read(length)
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
    except _DuplicateName as exc:
        raise TensorFileError(f"{path}: not a valid safetensors file: {exc}") from None
    metadata = header.pop("__metadata__", None)
    metadata = metadata if isinstance(metadata, dict) else {}
    return header, metadata, HEADER_PREFIX + length


class _DuplicateName(ValueError):
    """A JSON object names a key twice (the library silently keeps the last)."""


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateName(f"tensor {key!r} appears twice in the header")
        seen[key] = value
    return seen


def diagnose(path: Path) -> str:
    """Which tensor breaks which safetensors rule, in words ('' if none is found); for error messages only."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(HEADER_PREFIX)
        if len(prefix) < HEADER_PREFIX:
            return f"file has {size} bytes, fewer than the {HEADER_PREFIX}-byte header length"
        length = struct.unpack("<Q", prefix)[0]
        if length > size - HEADER_PREFIX:
            return f"header length {length} runs past the end of the file ({size} bytes)"
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except UnicodeDecodeError as exc:
        return f"header is not UTF-8 text (byte {exc.start})"
    except _DuplicateName as exc:
        return str(exc)
    except (json.JSONDecodeError, RecursionError) as exc:
        return f"header is not JSON ({exc})"
    if not isinstance(header, dict):
        return f"header is a JSON {type(header).__name__}, not an object"
    spans = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        problem = _entry_problem(entry)
        if problem:
            return f"tensor {name!r}: {problem}"
        spans.append((tuple(entry["data_offsets"]), name))
    covered = 0
    for (begin, end), name in sorted(spans):
        if begin != covered:
            return f"tensor {name!r} starts at data byte {begin}, expected {covered} (tensors overlap or leave a gap)"
        covered = end
    data = size - HEADER_PREFIX - length
    if covered != data:
        return (f"tensors cover {covered} bytes but the data section has {data} "
                f"({'truncated file' if data < covered else 'trailing bytes after the last tensor'})")
    return ""


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry: object) -> str:
    """What is wrong with one header entry on its own ('' if nothing)."""
    if not isinstance(entry, dict):
        return f"entry is a JSON {type(entry).__name__}, not an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPES:
        return f"unsupported dtype {dtype!r}"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"shape must be a list of non-negative integers, got {shape!r}"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets) \
            or offsets[0] > offsets[1]:
        return f"data_offsets must be two non-negative integers [begin, end], begin <= end, got {offsets!r}"
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if need != offsets[1] - offsets[0]:
        return f"holds {offsets[1] - offsets[0]} bytes but dtype {dtype} and shape {shape} need {need}"
    return ""


def read_tensors(file: TensorFile, names: set[str] | None = None, one_buffer: bool = False
                 ) -> Iterator[tuple[TensorEntry, torch.Tensor]]:
    """Yield (entry, CPU tensor in its stored dtype) in file order, in memory this process owns.

    By default each tensor is read into its own memory (a caller that converts and drops each holds one
    stored tensor at a time). ``one_buffer``: read the data section with one ``readinto`` into one buffer
    (:func:`owned_buffer`) and yield views of it, the fast way to keep many large tensors as stored (the
    views share one storage, and a few consumers read a tensor's storage from its start, e.g.
    ``torch.set_rng_state``).
    """
    if not one_buffer:
        with open(file.path, "rb") as handle:
            for entry in file.entries:
                if names is None or entry.name in names:
                    tensor = torch.empty(entry.shape, dtype=DTYPES[entry.dtype])
                    _read_exactly(file, handle, entry.begin, tensor.view(-1).view(torch.uint8),
                                  f"tensor {entry.name!r}")
                    yield entry, tensor
        return
    if not file.entries:
        return
    start = file.entries[0].begin
    data = owned_buffer(sum(entry.nbytes for entry in file.entries))   # (bytes,) uint8, page-aligned
    with open(file.path, "rb", buffering=0) as handle:
        _read_exactly(file, handle, start, data, "its data section")
    for entry in file.entries:
        if names is None or entry.name in names:
            raw = data[entry.begin - start:entry.begin - start + entry.nbytes]
            if (entry.begin - start) % DTYPES[entry.dtype].itemsize:   # an odd-sized tensor before it
                raw = raw.clone()
            yield entry, raw.view(DTYPES[entry.dtype]).view(entry.shape)


def _read_exactly(file: TensorFile, handle, offset: int, into: torch.Tensor, what: str) -> None:
    """Fill ``into`` (uint8) from ``offset``; a file that shrank since validation is a TensorFileError."""
    handle.seek(offset)
    if into.numel() and handle.readinto(memoryview(into.numpy())) != into.numel():
        raise TensorFileError(f"{file.path}: file shrank while reading {what}")


def owned_buffer(nbytes: int) -> torch.Tensor:
    """``nbytes`` of anonymous memory, (nbytes,) uint8: this process's own, not backed by any file.

    On Linux the pages are faulted in by the ``mmap`` call itself (``MAP_POPULATE``): faulting one 4 KiB
    page at a time while reading was most of the load time at the release size.
    """
    if nbytes == 0 or not hasattr(mmap, "MAP_POPULATE"):
        return torch.empty(nbytes, dtype=torch.uint8)
    memory = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return torch.frombuffer(memory, dtype=torch.uint8)   # the tensor keeps ``memory`` alive


def _sort_metadata(path: Path) -> None:
    """Rewrite the header with ``__metadata__`` in key order: the library writes it in hash-map order, which
    changes from run to run, so the same tensors would not give the same file bytes. Same length, in place."""
    with open(path, "r+b") as handle:
        length = struct.unpack("<Q", handle.read(HEADER_PREFIX))[0]
        raw = handle.read(length)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()   # UTF-8, as the library
        if len(text) != len(raw.rstrip(b" ")):
            raise TensorFileError(f"{path}: unexpected header layout from the safetensors library")
        handle.seek(HEADER_PREFIX)
        handle.write(text.ljust(length, b" "))


def load_tensor_file(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a validated file (a small file: trainer state, run folder, bundle)."""
    return {entry.name: tensor.to(device) for entry, tensor in read_tensors(inspect_tensor_file(path))}


def save_tensor_file(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None
                     ) -> None:
    """Write a safetensors file atomically, with the mode a new file normally gets (not the library's 0600)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    if metadata and len(metadata) > 1:
        _sort_metadata(tmp)
    os.chmod(tmp, new_file_mode())
    os.replace(tmp, path)
