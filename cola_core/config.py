"""Typed configs for the two Cola DLM models, read from the release's ``config.json`` files.

Every key of the official configs is a field here; unknown keys are kept in ``extra`` and
ignored, so HF bookkeeping (``architectures``, ``dtype``, ...) round-trips untouched.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError
from .files import read_json_object

# The DiT's RoPE table in the reference holds 8192 positions; we use it as the context limit.
MAX_POSITIONS = 8192


@dataclass
class _BaseConfig:
    """Shared JSON (de)serialisation and validation for both model configs."""

    model_type: ClassVar[str] = ""
    architecture: ClassVar[str] = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> "_BaseConfig":
        known = {f.name: f for f in dataclasses.fields(cls) if f.name != "extra"}
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            if key in known:
                values[key] = _coerce(value, known[key], source)
            else:
                extra[key] = value
        declared = raw.get("model_type")
        if declared is not None and declared != cls.model_type:
            raise ConfigError(f"{source}: model_type is {declared!r}, expected {cls.model_type!r}")
        config = cls(**values, extra=extra)
        config.validate(source)
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> "_BaseConfig":
        path = Path(path)
        return cls.from_dict(read_json_object(path, ConfigError, "config file"), source=str(path))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.extra)
        out.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"})
        out["model_type"] = self.model_type
        out.setdefault("architectures", [self.architecture])
        return dict(sorted(out.items()))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def validate(self, source: str) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


def _coerce(value: Any, f: dataclasses.Field, source: str) -> Any:
    """Check a JSON value against a field's annotated type; ints are accepted for floats."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind.startswith("bool"):
        ok = isinstance(value, bool)
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind.startswith("float | None"):
        ok = value is None or _is_finite_number(value)
        value = float(value) if ok and value is not None else value
    elif kind.startswith("float"):
        ok = _is_finite_number(value)
        value = float(value) if ok else value
    elif kind.startswith("str"):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        expected = kind.replace("float", "finite float")
        raise ConfigError(f"{source}: key {f.name!r} has invalid value {value!r} (expected {expected})")
    return value


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(cond: bool, source: str, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(f"{source}: key {key!r} {message}")


@dataclass
class DiTConfig(_BaseConfig):
    """Block-causal DiT prior (``model_type: cola_dit``)."""

    model_type: ClassVar[str] = "cola_dit"
    architecture: ClassVar[str] = "ColaDiTModel"

    txt_in_channels: int = 16
    txt_out_channels: int = 16
    txt_dim: int = 2048
    emb_dim: int = 2048
    heads: int = 16
    head_dim: int = 128
    expand_ratio: int = 4
    num_layers: int = 24
    norm_eps: float = 1e-5
    qk_bias: bool = False
    patch_size: int = 1
    rope_dim: int = 96
    block_size: int = 4

    @property
    def inner_dim(self) -> int:
        return self.heads * self.head_dim

    def validate(self, source: str) -> None:
        for key in ("txt_in_channels", "txt_out_channels", "txt_dim", "emb_dim", "heads", "head_dim",
                    "expand_ratio", "num_layers", "patch_size", "rope_dim", "block_size"):
            _require(getattr(self, key) >= 1, source, key, "must be >= 1")
        _require(self.norm_eps > 0, source, "norm_eps", "must be > 0")
        _require(self.emb_dim == self.txt_dim, source, "emb_dim",
                 f"must equal txt_dim ({self.txt_dim}); the AdaLN linears take txt_dim inputs")
        _require(self.patch_size == 1, source, "patch_size",
                 "must be 1: DiT patching is broken in the reference implementation and unsupported")
        _require(self.rope_dim % 2 == 0 and self.rope_dim <= self.head_dim, source, "rope_dim",
                 f"must be even and <= head_dim ({self.head_dim})")


@dataclass
class VAEConfig(_BaseConfig):
    """Text VAE (``model_type: cola_text_vae``)."""

    model_type: ClassVar[str] = "cola_text_vae"
    architecture: ClassVar[str] = "ColaTextVAEModel"

    vocab_size: int = 100278
    encoder_num_blocks: int = 4
    decoder_num_blocks: int = 4
    dim: int = 1536
    ffn_dim: int = 6144
    num_heads: int = 12
    latent_dim: int = 16
    patch_size: int = 1
    shared_heads_kv: int = 1
    encoder_last_ln: bool = True
    layer_norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    layer_norm_affine: bool = True
    post_norm: bool = True
    qk_bias: bool = False
    qk_norm: bool = True
    qk_norm_affine: bool = True
    clip_qkv: float | None = None
    rope_theta: float = 500000.0
    rope_full_precision: bool = True
    bias: bool = True
    act: str = "swiglu"
    block_causal: bool = True
    block_size: int = 4
    use_variation: bool = True
    scaling_factor: float = 1.0
    shifting_factor: float = 0.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    init_fn: str = "normal"
    init_std: float = 0.02
    init_cutoff_factor: float = 3.0
    causal: bool = False
    use_emb: bool = True

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.dim // self.shared_heads_kv

    def validate(self, source: str) -> None:
        for key in ("vocab_size", "encoder_num_blocks", "decoder_num_blocks", "dim", "ffn_dim",
                    "num_heads", "latent_dim", "patch_size", "shared_heads_kv", "block_size"):
            _require(getattr(self, key) >= 1, source, key, "must be >= 1")
        _require(self.dim % self.num_heads == 0, source, "num_heads", f"must divide dim ({self.dim})")
        _require(self.head_dim % 2 == 0, source, "num_heads", "must give an even head dim (RoPE)")
        _require(self.shared_heads_kv in (1, self.num_heads), source, "shared_heads_kv",
                 f"must be 1 or num_heads ({self.num_heads}); other values crash the reference")
        _require(self.layer_norm_type == "layer_norm", source, "layer_norm_type",
                 "must be 'layer_norm' (the only value the reference accepts)")
        _require(self.act in ("swiglu", "silu", "gelu"), source, "act", "must be swiglu, silu or gelu")
        _require(self.act != "swiglu" or self.ffn_dim % 2 == 0, source, "ffn_dim", "must be even for swiglu")
        _require(self.layer_norm_eps > 0, source, "layer_norm_eps", "must be > 0")
        _require(self.rope_theta > 0, source, "rope_theta", "must be > 0")
        _require(self.clip_qkv is None or self.clip_qkv > 0, source, "clip_qkv", "must be null or > 0")
        _require(self.scaling_factor != 0, source, "scaling_factor", "must be non-zero")


def check_pair(vae: VAEConfig, dit: DiTConfig) -> None:
    """Cross-model consistency: latent width and generation block must agree."""
    if vae.latent_dim != dit.txt_in_channels or vae.latent_dim != dit.txt_out_channels:
        raise ConfigError(
            f"VAE latent_dim ({vae.latent_dim}) must equal DiT txt_in_channels ({dit.txt_in_channels}) "
            f"and txt_out_channels ({dit.txt_out_channels})")
    if vae.block_size != dit.block_size:
        raise ConfigError(f"VAE block_size ({vae.block_size}) must equal DiT block_size ({dit.block_size})")
