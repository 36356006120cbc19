"""Load and save the release layout: ``cola_dlm/{cola_dit,cola_vae}/`` + ``tokenizer.json``.

Models are built on the meta device without their random init (:class:`SkipInit`) and each tensor is
materialised once, directly in its final dtype and device, so a bf16 load never holds an fp32 copy.
Only safetensors are read.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from .config import DiTConfig, VAEConfig, check_pair
from .dit import ColaDiT, rope_frequencies
from .errors import CheckpointError, ConfigError, NonFiniteWeightsWarning
from .files import read_json_object
from .tensorfile import DTYPES as DTYPES_BY_CODE, TensorEntry, inspect_tensor_file, read_tensors, save_tensor_file
from .pocket import resolve_checkpoint
from .shared_parts import shared_parts
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
        """Accept the release root, the ``cola_dlm`` folder, or a folder holding both model folders; parts
        named by the root's ``shared_parts.json`` are borrowed from another folder (:mod:`.shared_parts`)."""
        root = Path(path).expanduser()
        if not root.exists():
            raise CheckpointError(f"{root}: checkpoint folder does not exist")
        if not root.is_dir():
            raise CheckpointError(f"{root}: expected a checkpoint folder, got a file")
        shared = shared_parts(root.parent if root.name == "cola_dlm" else root)
        for models in (root / "cola_dlm", root):
            dit, vae = shared.get("dit", models / "cola_dit"), shared.get("vae", models / "cola_vae")
            if dit.is_dir() and vae.is_dir():
                tokenizers = [shared["tokenizer"]] if "tokenizer" in shared else [
                    root / "tokenizer.json", models / "tokenizer.json", models.parent / "tokenizer.json"]
                for tok in tokenizers:
                    if tok.is_file():
                        return cls(dit, vae, tok)
                raise CheckpointError(f"{root}: no tokenizer.json next to the cola_dlm folder")
        raise CheckpointError(
            f"{root}: not a Cola DLM checkpoint (expected cola_dlm/cola_dit/ and cola_dlm/cola_vae/ "
            "each with config.json and safetensors, plus tokenizer.json)")


def weight_files(folder: Path) -> dict[Path, set[str] | None]:
    """The safetensors file(s) of one model folder, each with the tensor names its shard index assigns
    to it (None for a single file); pickles are refused."""
    index = folder / INDEX_FILE
    if os.path.lexists(index):
        files: dict[Path, set[str] | None] = {}
        for name, shard in read_weight_map(index).items():
            files.setdefault(folder / shard, set()).add(name)
        return dict(sorted(files.items()))
    if os.path.lexists(folder / SINGLE_FILE):
        return {folder / SINGLE_FILE: None}
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES] if folder.is_dir() else []
    if pickles:
        raise CheckpointError(f"{folder}: found {', '.join(pickles)} but only safetensors checkpoints are "
                              "supported (pickle files can execute code and are never loaded)")
    raise CheckpointError(f"{folder}: no {SINGLE_FILE} or {INDEX_FILE}")


def read_weight_map(index: Path) -> dict[str, str]:
    """``weight_map`` of a shard index, checked: tensor name -> a ``.safetensors`` file in the index's folder."""
    weight_map = read_json_object(index, CheckpointError, "shard index").get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index}: key 'weight_map' must be an object of tensor name -> shard file, "
                              f"got {type(weight_map).__name__}")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index}: weight_map[{name!r}] must be a file name in this folder, got {shard!r}")
        if not shard.endswith(".safetensors"):
            raise CheckpointError(f"{index}: weight_map[{name!r}] names {shard!r}; only .safetensors shards are "
                                  "loaded (pickle files can execute code)")
    return weight_map


FLOAT_DTYPES = ("F32", "BF16", "F16", "F64")
NONFINITE_POLICIES = ("error", "warn", "allow")


def load_module(module: torch.nn.Module, folder: Path, device: torch.device, dtype: torch.dtype | None,
                optional: tuple[str, ...] = (), nonfinite: str = "error") -> None:
    """Materialise a meta-device module from a folder's safetensors with strict name/shape/dtype checks.

    A file whose tensors are all stored in ``dtype`` is read in one go and its tensors are views of one
    buffer per file; otherwise each tensor is read, cast to ``dtype`` and moved to ``device`` before the
    next is read, so peak memory is the weights plus one stored tensor. ``nonfinite`` says what a NaN/inf weight
    does: raise (``error``), warn with :class:`NonFiniteWeightsWarning` (``warn``), or nothing (``allow``).
    """
    if nonfinite not in NONFINITE_POLICIES:
        raise CheckpointError(f"nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {nonfinite!r}")
    expected = dict(module.state_dict())
    assigned = weight_files(folder)
    files = [inspect_tensor_file(path) for path in assigned]
    for file in files:                     # every header is checked before any weight is read
        for entry in file.entries:
            names = assigned[file.path]
            if names is not None and entry.name not in names:
                raise CheckpointError(f"{file.path}: holds tensor {entry.name!r}, which {INDEX_FILE} assigns to "
                                      "another shard or not at all")
            _check_entry(file.path, entry, expected.get(entry.name))
    unexpected = [e.name for file in files for e in file.entries if e.name not in expected]
    loaded: dict[str, torch.Tensor] = {}
    for file in files:
        as_stored = dtype is None or all(DTYPES_BY_CODE[e.dtype] == dtype for e in file.entries)
        for entry, tensor in read_tensors(file, set(expected), one_buffer=as_stored):
            if dtype is not None and tensor.dtype != dtype:
                tensor = tensor.to(dtype)
            _check_finite(file.path, entry.name, tensor, nonfinite)
            loaded[entry.name] = tensor.to(device)
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


def _check_entry(path: Path, entry: TensorEntry, target: torch.Tensor | None) -> None:
    """A stored tensor must have the parameter's shape and a float dtype (checked before reading it)."""
    if target is None:
        return
    if entry.shape != tuple(target.shape):
        raise CheckpointError(f"{path}: tensor {entry.name} has shape {entry.shape}, the config "
                              f"implies {tuple(target.shape)}")
    if entry.dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{path}: tensor {entry.name} is stored as {entry.dtype}; a float parameter needs "
                              f"one of {', '.join(FLOAT_DTYPES)}")


def _check_finite(path: Path, name: str, tensor: torch.Tensor, policy: str) -> None:
    """Apply the NaN/inf policy to one loaded tensor."""
    if policy == "allow" or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)   # a reduction: no temporary the size of the tensor on the common path
    if math.isfinite(low) and math.isfinite(high):
        return
    bad = int(tensor.numel() - torch.isfinite(tensor).sum())
    message = (f"{path}: tensor {name} holds {bad} non-finite value(s) (NaN/inf) after loading as "
               f"{str(tensor.dtype).replace('torch.', '')}")
    if policy == "error":
        raise CheckpointError(message + "; pass nonfinite='warn' or 'allow' to load it anyway")
    warnings.warn(message, NonFiniteWeightsWarning, stacklevel=4)


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


RANDOM_FILLS = (torch.Tensor.normal_, torch.Tensor.uniform_)


class SkipInit(TorchFunctionMode):
    """Build modules without their random init (every parameter is then overwritten by the checkpoint).

    On the meta device an init draws nothing, but ``normal_`` runs a Python reference that imports
    ``torch._dynamo`` (about 1.2 s here). A torch function mode is thread-local: other threads keep their init.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__module__", None) == "torch.nn.init" or func in RANDOM_FILLS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


DOCUMENT_START_KEY = "document_start_ids"     # DiT config key: the ids a text starts after (ColaModel.prompt_ids)


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
    runtime: dict = field(default_factory=dict, repr=False, compare=False)   # buffers kept between calls
                                                                            # (cola_core.static_prior)

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA for fp32 weights (the official numerics); a no-op elsewhere."""
        if self.compute_dtype != self.dtype:
            return torch.autocast("cuda", dtype=self.compute_dtype)
        return contextlib.nullcontext()

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype linear layers produce under :attr:`autocast`: bf16 for fp32 weights on CUDA, else the weights'."""
        return torch.bfloat16 if self.device.type == "cuda" and self.dtype == torch.float32 else self.dtype

    @property
    def block_size(self) -> int:
        return self.dit_config.block_size

    @property
    def patch_size(self) -> int:
        return self.vae_config.patch_size

    @property
    def document_start_ids(self) -> list[int]:
        """Token ids the DiT config says a text starts after (``document_start_ids``, whole blocks, checked at load;
        none in the release): ``train dit`` with ``document_start`` writes them, and a text prompt is preceded by
        them, so even an unprompted sample has a prefix and its first block of text is guided."""
        return list(self.dit_config.extra.get(DOCUMENT_START_KEY, []))

    def encode_prompts(self, texts: Sequence[str]) -> list[list[int]]:
        """Text prompts' token ids: the document start (if any), then each text as the official code tokenises it."""
        start = self.document_start_ids
        return [start + ids for ids in self.tokenizer.encode_batch(list(texts))] if texts else []

    def prompt_ids(self, text: str) -> list[int]:
        """One text prompt's token ids (:meth:`encode_prompts`)."""
        return self.encode_prompts([text])[0]

    def save_pretrained(self, root: str | Path, max_shard_bytes: int | None = None) -> Path:
        return save_pretrained(self, root, max_shard_bytes=max_shard_bytes)


def checkpoint_fingerprint(paths: CheckpointPaths) -> str:
    """Cheap identity of a checkpoint: configs, tokenizer, and each weight file's size, header and, for files this
    project wrote, the digest of their tensors recorded at save (so retrained weights of the same shapes differ)."""
    digest = hashlib.sha256()
    for folder in (paths.dit, paths.vae):
        digest.update((folder / "config.json").read_bytes())
        for f in weight_files(folder):
            described = inspect_tensor_file(f)
            header = json.dumps(described.header, sort_keys=True)
            digest.update(f.name.encode() + str(f.stat().st_size).encode() + header.encode())
            digest.update(str(described.metadata.get(CONTENT_DIGEST_KEY, "")).encode())
    digest.update(paths.tokenizer.read_bytes())
    return digest.hexdigest()[:16]


def read_configs(path: str | Path, **special_ids: int | None
                 ) -> tuple[CheckpointPaths, DiTConfig, VAEConfig, ColaTokenizer]:
    """A local checkpoint folder's configs and tokenizer, checked against each other, without its weights: what
    a chat template or a vocabulary check needs, in milliseconds."""
    paths = CheckpointPaths.resolve(path)
    dit_cfg = DiTConfig.from_json(paths.dit / "config.json")
    vae_cfg = VAEConfig.from_json(paths.vae / "config.json")
    check_pair(vae_cfg, dit_cfg)
    declared = config_special_ids([(paths.dit / "config.json", dit_cfg), (paths.vae / "config.json", vae_cfg)],
                                  vae_cfg.vocab_size)
    tokenizer = ColaTokenizer.from_file(paths.tokenizer, **{**declared, **{k: v for k, v in special_ids.items()
                                                                          if v is not None}})
    if tokenizer.vocab_size > vae_cfg.vocab_size:
        raise CheckpointError(f"{paths.tokenizer}: tokenizer has {tokenizer.vocab_size} entries but the VAE "
                              f"vocab_size is {vae_cfg.vocab_size}")
    check_document_start(paths.dit / "config.json", dit_cfg, vae_cfg.patch_size, tokenizer.vocab_size)
    return paths, dit_cfg, vae_cfg, tokenizer


def check_document_start(path: Path, dit_cfg: DiTConfig, patch_size: int, vocab_size: int) -> None:
    """A declared document start must be token ids below ``vocab_size`` that fill whole blocks."""
    ids = dit_cfg.extra.get(DOCUMENT_START_KEY, [])
    chunk = dit_cfg.block_size * patch_size
    if not (isinstance(ids, list) and len(ids) % chunk == 0
            and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ids)):
        raise CheckpointError(f"{path}: {DOCUMENT_START_KEY!r} must be a list of token ids in [0, {vocab_size}) "
                              f"filling whole blocks of {chunk}, got {ids!r}")


def load_pretrained(path: str | Path | None = None, device: str | torch.device | None = "cpu",
                    dtype: str | torch.dtype | None = None, nonfinite: str = "error",
                    **special_ids: int | None) -> ColaModel:
    """Load a Cola DLM checkpoint: a folder (release root or the folder holding both model folders), a
    shipped name (``pocket``, ``pocket-chat``), a Hugging Face id, or None for the pocket checkpoint.

    ``dtype`` None means float32 weights (on CUDA the forward runs under bf16 autocast, like the
    official code); ``bfloat16`` materialises bf16 weights directly. A NaN/inf weight is an error;
    ``nonfinite="warn"`` loads it with a :class:`NonFiniteWeightsWarning`, ``"allow"`` silently.
    """
    dev = parse_device(device)
    weight_dtype = parse_dtype(dtype) or torch.float32
    path = resolve_checkpoint(path)   # None, a shipped name or a Hub id becomes a local folder
    paths, dit_cfg, vae_cfg, tokenizer = read_configs(path, **special_ids)
    with torch.device("meta"), SkipInit():
        dit = ColaDiT(dit_cfg)
        vae = ColaTextVAE(vae_cfg)
    load_module(dit, paths.dit, dev, weight_dtype, optional=("rope.rope.freqs",), nonfinite=nonfinite)
    load_module(vae, paths.vae, dev, weight_dtype, nonfinite=nonfinite)
    _restore_rope_freqs(dit, dev)
    dit.eval()
    vae.eval()
    return ColaModel(vae=vae, dit=dit, tokenizer=tokenizer, vae_config=vae_cfg, dit_config=dit_cfg, device=dev,
                     dtype=weight_dtype, source=str(Path(path).expanduser().resolve()),
                     fingerprint=checkpoint_fingerprint(paths))


CONFIG_SPECIAL_IDS = {"pad_token_id": "pad_id", "eos_token_id": "eos_id"}


def config_special_ids(configs: list[tuple[Path, DiTConfig | VAEConfig]], vocab_size: int) -> dict[str, int]:
    """pad/eos ids the config files declare (later files win), each checked to be a token id < ``vocab_size``."""
    found: dict[str, int] = {}
    for path, config in configs:
        for key, name in CONFIG_SPECIAL_IDS.items():
            value = config.extra.get(key)
            if value is None:
                continue
            if not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size):
                raise ConfigError(f"{path}: key {key!r} must be a token id from 0 to {vocab_size - 1} "
                                  f"(the VAE vocabulary), got {value!r}")
            found[name] = value
    return found


CONTENT_DIGEST_KEY = "content_sha256"   # safetensors metadata: sha256 of the file's tensors, written at save


def tensor_file_metadata(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """The metadata our weight files carry: the format tag, and a digest of every tensor's name, dtype, shape and
    bytes (name order), which the checkpoint fingerprint reads instead of hashing gigabytes at load."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        flat = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensors[name].shape)}|".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))   # the tensor's own bytes, not a copy
    return {"format": "pt", CONTENT_DIGEST_KEY: digest.hexdigest()}


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
        save_tensor_file(folder / SINGLE_FILE, state, metadata=tensor_file_metadata(state))
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
        save_tensor_file(folder / fname, shard, metadata=tensor_file_metadata(shard))
        weight_map.update({name: fname for name in shard})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def save_pretrained(model: ColaModel, root: str | Path, max_shard_bytes: int | None = None) -> Path:
    """Write the release layout under ``root``; shard weights above ``max_shard_bytes``."""
    root = Path(root)
    save_model_folder(model.dit, model.dit_config, root / "cola_dlm" / "cola_dit", max_shard_bytes)
    save_model_folder(model.vae, model.vae_config, root / "cola_dlm" / "cola_vae", max_shard_bytes)
    model.tokenizer.save(root / "tokenizer.json")
    return root
