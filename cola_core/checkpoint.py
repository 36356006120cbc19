"""Load and save the release layout: ``cola_dlm/{cola_dit,cola_vae}/`` + ``tokenizer.json``.

Models are built on the meta device and each tensor is materialised once, directly in its final
dtype and device, so a bf16 load never holds an fp32 copy. Only safetensors are read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

from .config import DiTConfig, VAEConfig, check_pair
from .dit import ColaDiT, rope_frequencies
from .errors import CheckpointError
from .hub import resolve_checkpoint
from .tokenizer import ColaTokenizer
from .vae import ColaTextVAE

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'float32' / 'bfloat16' / 'float16' (or a torch dtype, or None) -> torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise CheckpointError(f"unknown dtype {dtype!r}; choose one of float32, bfloat16, float16")
    return DTYPES[dtype]


def parse_device(device: str | torch.device | None) -> torch.device:
    """'cpu', 'cuda', 'cuda:1', 'auto'/None (CUDA when available) -> a usable torch device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CheckpointError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise CheckpointError(f"unsupported device {device!r}; use cpu or cuda")
    return dev


@dataclass
class CheckpointPaths:
    """Where the three parts of a checkpoint live."""

    dit: Path
    vae: Path
    tokenizer: Path

    @classmethod
    def resolve(cls, path: str | Path) -> "CheckpointPaths":
        """Accept the release root, the ``cola_dlm`` folder, or a folder holding both model folders."""
        root = Path(path).expanduser()
        if not root.exists():
            raise CheckpointError(f"{root}: checkpoint folder does not exist")
        if not root.is_dir():
            raise CheckpointError(f"{root}: expected a checkpoint folder, got a file")
        for models in (root / "cola_dlm", root):
            if (models / "cola_dit").is_dir() and (models / "cola_vae").is_dir():
                for tok in (root / "tokenizer.json", models / "tokenizer.json", models.parent / "tokenizer.json"):
                    if tok.is_file():
                        return cls(models / "cola_dit", models / "cola_vae", tok)
                raise CheckpointError(f"{root}: no tokenizer.json next to the cola_dlm folder")
        raise CheckpointError(
            f"{root}: not a Cola DLM checkpoint (expected cola_dlm/cola_dit/ and cola_dlm/cola_vae/ "
            "each with config.json and safetensors, plus tokenizer.json)")


def weight_files(folder: Path) -> list[Path]:
    """The safetensors file(s) of one model folder; pickles are refused."""
    index = folder / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: malformed shard index ({exc})") from None
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index}: shard file(s) missing: {', '.join(missing)}")
        return files
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES] if folder.is_dir() else []
    if pickles:
        raise CheckpointError(f"{folder}: found {', '.join(pickles)} but only safetensors checkpoints are "
                              "supported (pickle files can execute code and are never loaded)")
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """Parse and sanity-check a safetensors header; returns (entries, offset of the data section)."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        raw_len = handle.read(8)
        if len(raw_len) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header)")
        header_len = struct.unpack("<Q", raw_len)[0]
        if header_len > min(size - 8, 100 << 20):
            raise CheckpointError(f"{path}: corrupt or truncated safetensors header")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    header.pop("__metadata__", None)
    data_start = 8 + header_len
    for name, entry in header.items():
        begin, end = entry.get("data_offsets", (0, -1))
        if entry.get("dtype") not in SAFETENSORS_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry.get('dtype')!r}")
        if data_start + end > size:
            raise CheckpointError(f"{path}: truncated safetensors file (tensor {name} ends past the end of the file)")
    return header, data_start


def iter_tensors(files: list[Path], device: torch.device, dtype: torch.dtype | None
                 ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time, floats cast to ``dtype``, on ``device``.

    Reads straight into each tensor's buffer (no mmap), so peak memory is the loaded weights plus
    one tensor, whatever the file's size.
    """
    for path in files:
        header, data_start = read_safetensors_header(path)
        with open(path, "rb") as handle:
            for name, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                begin, end = entry["data_offsets"]
                stored = SAFETENSORS_DTYPES[entry["dtype"]]
                tensor = torch.empty(entry["shape"], dtype=stored)
                nbytes = tensor.numel() * tensor.element_size()
                if nbytes != end - begin:
                    raise CheckpointError(f"{path}: tensor {name} has {end - begin} bytes for shape {entry['shape']}")
                handle.seek(data_start + begin)
                if nbytes and handle.readinto(memoryview(tensor.view(-1).view(torch.uint8).numpy())) != nbytes:
                    raise CheckpointError(f"{path}: truncated safetensors file while reading {name}")
                if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                    tensor = tensor.to(dtype)
                yield name, tensor.to(device)


def load_module(module: torch.nn.Module, folder: Path, device: torch.device, dtype: torch.dtype | None,
                optional: tuple[str, ...] = ()) -> None:
    """Materialise a meta-device module from a folder's safetensors with strict name/shape checks."""
    expected = dict(module.state_dict())
    loaded: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for name, tensor in iter_tensors(weight_files(folder), device, dtype):
        if name not in expected:
            unexpected.append(name)
            continue
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{folder}: tensor {name} has shape {tuple(tensor.shape)}, the config "
                                  f"implies {tuple(expected[name].shape)}")
        loaded[name] = tensor
    missing = [n for n in expected if n not in loaded and not n.endswith(optional)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                        f"{' ...' if len(unexpected) > 8 else ''}")
    if problems:
        raise CheckpointError(f"{folder}: weights do not match config.json — " + "; ".join(problems))
    module.load_state_dict(loaded, strict=False, assign=True)


def _restore_rope_freqs(dit: ColaDiT, device: torch.device) -> None:
    """Keep RoPE frequencies in fp32 (the checkpoint's values upcast, or recomputed if absent)."""
    computed = rope_frequencies(dit.config.rope_dim).to(device)
    for layer, block in enumerate(dit.blocks):
        rope = block.msa.rope.rope
        freqs = computed.clone() if rope.freqs.is_meta else rope.freqs.to(device=device, dtype=torch.float32)
        if not torch.allclose(freqs, computed, rtol=1e-2, atol=0):
            raise CheckpointError(f"DiT layer {layer}: rope freqs buffer differs from 10000^(-2j/rope_dim); "
                                  "the checkpoint does not match its config")
        rope.freqs = freqs


@dataclass
class ColaModel:
    """A loaded Cola DLM: VAE, DiT, tokenizer, configs, and where/how they run."""

    vae: ColaTextVAE
    dit: ColaDiT
    tokenizer: ColaTokenizer
    vae_config: VAEConfig
    dit_config: DiTConfig
    device: torch.device
    dtype: torch.dtype
    source: str = ""
    fingerprint: str = field(default="", repr=False)

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA for fp32 weights (the official numerics); a no-op elsewhere."""
        if self.device.type == "cuda" and self.dtype == torch.float32:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def block_size(self) -> int:
        return self.dit_config.block_size

    @property
    def patch_size(self) -> int:
        return self.vae_config.patch_size

    def save_pretrained(self, root: str | Path, max_shard_bytes: int | None = None) -> Path:
        return save_pretrained(self, root, max_shard_bytes=max_shard_bytes)


def checkpoint_fingerprint(paths: CheckpointPaths) -> str:
    """Cheap identity of a checkpoint: configs, tokenizer, and each weight file's size and header."""
    digest = hashlib.sha256()
    for folder in (paths.dit, paths.vae):
        digest.update((folder / "config.json").read_bytes())
        for f in weight_files(folder):
            header, _ = read_safetensors_header(f)
            digest.update(f.name.encode() + str(f.stat().st_size).encode() + json.dumps(header, sort_keys=True).encode())
    digest.update(paths.tokenizer.read_bytes())
    return digest.hexdigest()[:16]


def load_pretrained(path: str | Path, device: str | torch.device | None = "cpu",
                    dtype: str | torch.dtype | None = None, **special_ids: int | None) -> ColaModel:
    """Load a Cola DLM checkpoint folder (release root or the folder holding both model folders).

    ``dtype`` None means float32 weights (on CUDA the forward runs under bf16 autocast, like the
    official code); ``bfloat16`` materialises bf16 weights directly.
    """
    dev = parse_device(device)
    weight_dtype = parse_dtype(dtype) or torch.float32
    path = resolve_checkpoint(path)   # a Hub id (OWNER/NAME[@REVISION]) becomes its cached snapshot
    paths = CheckpointPaths.resolve(path)
    dit_cfg = DiTConfig.from_json(paths.dit / "config.json")
    vae_cfg = VAEConfig.from_json(paths.vae / "config.json")
    check_pair(vae_cfg, dit_cfg)
    with torch.device("meta"):
        dit = ColaDiT(dit_cfg)
        vae = ColaTextVAE(vae_cfg)
    load_module(dit, paths.dit, dev, weight_dtype, optional=("rope.rope.freqs",))
    load_module(vae, paths.vae, dev, weight_dtype)
    _restore_rope_freqs(dit, dev)
    for key in ("pad_token_id", "eos_token_id"):
        value = vae_cfg.extra.get(key, dit_cfg.extra.get(key))
        name = {"pad_token_id": "pad_id", "eos_token_id": "eos_id"}[key]
        if isinstance(value, int) and special_ids.get(name) is None:
            special_ids[name] = value
    tokenizer = ColaTokenizer.from_file(paths.tokenizer, **special_ids)
    if tokenizer.vocab_size > vae_cfg.vocab_size:
        raise CheckpointError(f"{paths.tokenizer}: tokenizer has {tokenizer.vocab_size} entries but the VAE "
                              f"vocab_size is {vae_cfg.vocab_size}")
    dit.eval()
    vae.eval()
    return ColaModel(vae=vae, dit=dit, tokenizer=tokenizer, vae_config=vae_cfg, dit_config=dit_cfg, device=dev,
                     dtype=weight_dtype, source=str(Path(path).expanduser().resolve()),
                     fingerprint=checkpoint_fingerprint(paths))


def save_model_folder(module: torch.nn.Module, config, folder: Path, max_shard_bytes: int | None = None) -> None:
    """Write one model folder (config.json + single or sharded safetensors), replacing old weights."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    config.save(folder / "config.json")
    for stale in list(folder.glob("model*.safetensors")) + [folder / INDEX_FILE]:
        if stale.exists():
            stale.unlink()
    total = sum(t.numel() * t.element_size() for t in state.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        _atomic_save(state, folder / SINGLE_FILE)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _atomic_save(shard, folder / fname)
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def _atomic_save(state: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def save_pretrained(model: ColaModel, root: str | Path, max_shard_bytes: int | None = None) -> Path:
    """Write the release layout under ``root``; shard weights above ``max_shard_bytes``."""
    root = Path(root)
    save_model_folder(model.dit, model.dit_config, root / "cola_dlm" / "cola_dit", max_shard_bytes)
    save_model_folder(model.vae, model.vae_config, root / "cola_dlm" / "cola_vae", max_shard_bytes)
    model.tokenizer.save(root / "tokenizer.json")
    return root
