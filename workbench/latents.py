"""The ``Latents`` value type and latent algebra (pure functions; nothing here runs a model).

Latents live in DiT space (the space the prior models and the decoder consumes), one tensor per
text shaped ``(n_blocks, block_size, C)``. Every edit returns new ``Latents``; the source text,
posterior statistics and token alignment describe the *first* operand and edits are recorded in
``ops``.

Length rule: when operands have different block counts, edits truncate to the shorter one
(block-causal latents make a prefix of blocks a valid sequence on its own). To keep the longer
tail instead, encode the texts together with ``wb.encode(texts, pad_to="longest")``: the shorter
text then carries its own encoding of padding tokens, and its real blocks are unchanged.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import torch

from cola_core.constants import TIME_SCALE
from cola_core.sampler import seeded_noise

from .errors import WorkbenchError
from .io import load_bundle, save_bundle

FORMAT_VERSION = 1
Blocks = Iterable[int] | slice | None


@dataclass
class Latents:
    """Latents of a batch of texts. Index it (``lat[0]``, ``lat[1:]``) to get a smaller batch."""

    z: list[torch.Tensor]                     # per text (n_blocks, bs, C) fp32, DiT space
    alignment: list[torch.Tensor]             # per text (n_blocks*bs, P) long: token index per slot, -1 = padding
    token_ids: list[list[int]]                # per text source token ids (unpadded)
    texts: list[str | None]                   # source text; None once an edit mixed texts
    fingerprint: str                          # checkpoint identity (ColaModel.fingerprint)
    mean: list[torch.Tensor] | None = None    # posterior mean (VAE space), same shape as z; None after edits
    std: list[torch.Tensor] | None = None     # posterior std
    ops: tuple[str, ...] = field(default=())  # edits applied since encoding

    def __post_init__(self) -> None:
        n = len(self.z)
        if not (len(self.alignment) == len(self.token_ids) == len(self.texts) == n):
            raise WorkbenchError("Latents fields z, alignment, token_ids and texts must have one entry per text")
        for i, z in enumerate(self.z):
            if z.dim() != 3:
                raise WorkbenchError(f"latents of text {i} must be shaped (n_blocks, block_size, C), "
                                     f"got {tuple(z.shape)}")

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, index: int | slice) -> "Latents":
        pick = (lambda xs: [xs[index]]) if isinstance(index, int) else (lambda xs: list(xs[index]))
        return replace(self, z=pick(self.z), alignment=pick(self.alignment), token_ids=pick(self.token_ids),
                       texts=pick(self.texts), mean=None if self.mean is None else pick(self.mean),
                       std=None if self.std is None else pick(self.std))

    @property
    def n_blocks(self) -> list[int]:
        return [z.shape[0] for z in self.z]

    @property
    def block_size(self) -> int:
        return self.z[0].shape[1]

    @property
    def channels(self) -> int:
        return self.z[0].shape[2]

    def token_count(self, i: int) -> int:
        """Token slots of text i that hold its own tokens (the first ones; decoding shows exactly these)."""
        return int((self.alignment[i] >= 0).sum())

    def padding(self, i: int) -> torch.Tensor:
        """(n_blocks, bs) bool: latents of text i that cover no real token."""
        return (self.alignment[i] < 0).all(dim=1).view(self.z[i].shape[:2])

    def derive(self, z: list[torch.Tensor], op: str) -> "Latents":
        """New Latents with edited values; refuses non-finite results (naming the edit)."""
        for i, zi in enumerate(z):
            if not torch.isfinite(zi).all():
                raise WorkbenchError(f"{op} produced non-finite latent values in text {i}")
        n = [zi.shape[0] * zi.shape[1] for zi in z]
        return replace(self, z=z, alignment=[a[:k] for a, k in zip(self.alignment, n)], mean=None, std=None,
                       texts=[None] * len(z), ops=self.ops + (op,))

    def truncate(self, n_blocks: int) -> "Latents":
        """The first ``n_blocks`` blocks of every text (a valid sequence: the prior is block-causal)."""
        cut = lambda xs: None if xs is None else [x[:n_blocks] for x in xs]   # noqa: E731
        slots = n_blocks * self.block_size
        return replace(self, z=cut(self.z), mean=cut(self.mean), std=cut(self.std),
                       alignment=[a[:slots] for a in self.alignment])

    # -- arithmetic sugar: a - b + c, 0.5 * a ---------------------------------------------------
    def __add__(self, other: "Latents") -> "Latents":
        return combine((1.0, self), (1.0, other))

    def __sub__(self, other: "Latents") -> "Latents":
        return combine((1.0, self), (-1.0, other))

    def __mul__(self, scale: float) -> "Latents":
        return combine((float(scale), self))

    __rmul__ = __mul__

    def __neg__(self) -> "Latents":
        return combine((-1.0, self))

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` + ``path.json``."""
        tensors = {}
        for i in range(len(self)):
            tensors[f"z.{i}"] = self.z[i]
            tensors[f"alignment.{i}"] = self.alignment[i]
            if self.mean is not None:
                tensors[f"mean.{i}"], tensors[f"std.{i}"] = self.mean[i], self.std[i]
        meta = {"kind": "latents", "version": FORMAT_VERSION, "texts": self.texts, "token_ids": self.token_ids,
                "fingerprint": self.fingerprint, "ops": list(self.ops), "has_posterior": self.mean is not None}
        return save_bundle(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> "Latents":
        tensors, meta = load_bundle(path, "latents")
        n = len(meta["texts"])
        get = lambda key: [tensors[f"{key}.{i}"] for i in range(n)]   # noqa: E731
        posterior = meta["has_posterior"]
        return cls(z=get("z"), alignment=get("alignment"), token_ids=meta["token_ids"], texts=meta["texts"],
                   fingerprint=meta["fingerprint"], mean=get("mean") if posterior else None,
                   std=get("std") if posterior else None, ops=tuple(meta["ops"]))


# -- helpers ------------------------------------------------------------------------------------
def _block_index(blocks: Blocks, n_blocks: int) -> list[int]:
    """Normalise a block selection (None = all, slice, or indices; negatives count from the end)."""
    if blocks is None:
        return list(range(n_blocks))
    if isinstance(blocks, slice):
        return list(range(n_blocks))[blocks]
    out = []
    for b in blocks:
        if not -n_blocks <= b < n_blocks:
            raise WorkbenchError(f"block {b} out of range for latents with {n_blocks} blocks")
        out.append(b % n_blocks)
    return out


def _pairs(*lats: Latents) -> list[tuple[torch.Tensor, ...]]:
    """Per text, the operands' z truncated to their shortest block count (batches of 1 broadcast)."""
    sizes = {len(x) for x in lats} - {1}
    if len(sizes) > 1:
        raise WorkbenchError(f"latent batches have different sizes {sorted(len(x) for x in lats)}; "
                             "use equal sizes or a batch of 1")
    fingerprints = {x.fingerprint for x in lats}
    if len(fingerprints) > 1:
        raise WorkbenchError("latents come from different checkpoints (fingerprints differ); they cannot be mixed")
    shapes = {x.z[0].shape[1:] for x in lats}
    if len(shapes) > 1:
        raise WorkbenchError(f"latents have different (block_size, C) shapes: {sorted(tuple(s) for s in shapes)}")
    batch = max(len(x) for x in lats)
    out = []
    for i in range(batch):
        zs = [x.z[i if len(x) > 1 else 0] for x in lats]
        n = min(z.shape[0] for z in zs)
        out.append(tuple(z[:n] for z in zs))
    return out


def _first(lat: Latents, batch: int) -> Latents:
    """The first operand, broadcast to the batch size, for provenance."""
    if len(lat) == batch:
        return lat
    return replace(lat, z=lat.z * batch, alignment=lat.alignment * batch, token_ids=lat.token_ids * batch,
                   texts=lat.texts * batch, mean=None, std=None)


# -- interpolation ------------------------------------------------------------------------------
def slerp(x: torch.Tensor, y: torch.Tensor, alpha: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation along the last dim; falls back to lerp for (anti)parallel rows."""
    xn = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)
    yn = y / y.norm(dim=-1, keepdim=True).clamp_min(eps)
    theta = (xn * yn).sum(-1, keepdim=True).clamp(-1.0, 1.0).acos()
    s = theta.sin()
    ok = s > eps
    safe = torch.where(ok, s, torch.ones_like(s))
    wx = torch.where(ok, ((1 - alpha) * theta).sin() / safe, torch.full_like(s, 1 - alpha))
    wy = torch.where(ok, (alpha * theta).sin() / safe, torch.full_like(s, alpha))
    return wx * x + wy * y


def interpolate(a: Latents, b: Latents, alpha: float, method: str = "lerp", blocks: Blocks = None) -> Latents:
    """Mix ``a`` towards ``b`` (alpha 0 = a, 1 = b) in the chosen blocks; other blocks stay ``a``.

    ``slerp`` works per latent row (C-vector): the encoder LayerNorms its means, so rows share
    one norm and slerp keeps them on that sphere. Lengths differ -> truncate (module docstring).
    The result's token alignment (the length decoding shows) is the nearer endpoint's: ``b``'s for
    alpha > 0.5 when every block is mixed, else ``a``'s.
    """
    if method not in ("lerp", "slerp"):
        raise WorkbenchError(f"unknown interpolation method {method!r}; choose lerp or slerp")
    if not math.isfinite(alpha):
        raise WorkbenchError(f"alpha must be finite, got {alpha!r}")
    out = []
    for za, zb in _pairs(a, b):
        z = za.clone()
        idx = _block_index(blocks, za.shape[0])
        mix = slerp(za[idx], zb[idx], alpha) if method == "slerp" else torch.lerp(za[idx], zb[idx], alpha)
        z[idx] = mix
        out.append(z)
    nearer = b if alpha > 0.5 and blocks is None else a
    return _first(nearer, len(out)).derive(out, f"interpolate({method}, alpha={alpha:g})")


# -- arithmetic ---------------------------------------------------------------------------------
def combine(*terms: tuple[float, Latents]) -> Latents:
    """Linear combination sum_i w_i * z_i (truncating to the shortest operand)."""
    if not terms:
        raise WorkbenchError("combine needs at least one (weight, latents) term")
    weights = [float(w) for w, _ in terms]
    out = [sum(w * z for w, z in zip(weights, zs)) for zs in _pairs(*(lat for _, lat in terms))]
    label = " ".join(f"{w:+g}*x{i}" for i, w in enumerate(weights))
    return _first(terms[0][1], len(out)).derive(out, f"combine({label})")


def analogy(a: Latents, b: Latents, c: Latents) -> Latents:
    """``a - b + c``: "c is to ? as b is to a" (classic word-vector analogy, per latent row)."""
    return combine((1.0, a), (-1.0, b), (1.0, c))


# -- attribute directions -----------------------------------------------------------------------
def mean_latent(lat: Latents) -> torch.Tensor:
    """(C,) mean over every non-padding latent row of every text."""
    rows = [z[~lat.padding(i)] for i, z in enumerate(lat.z)]
    return torch.cat(rows).mean(dim=0)


class TextEncoder(Protocol):
    """Anything that encodes texts to Latents (a ``Workbench``)."""

    def encode(self, texts: Sequence[str]) -> Latents: ...


def attribute_direction(wb: TextEncoder, texts_pos: Sequence[str], texts_neg: Sequence[str]) -> torch.Tensor:
    """(C,) DiT-space direction: mean latent of ``texts_pos`` minus mean latent of ``texts_neg``."""
    if not texts_pos or not texts_neg:
        raise WorkbenchError("attribute_direction needs at least one positive and one negative text")
    return mean_latent(wb.encode(list(texts_pos))) - mean_latent(wb.encode(list(texts_neg)))


def apply_direction(lat: Latents, direction: torch.Tensor, strength: float, blocks: Blocks = None) -> Latents:
    """Add ``strength * direction`` to every latent row of the chosen blocks (strength 0 = identity)."""
    direction = torch.as_tensor(direction, dtype=torch.float32)
    if direction.shape[-1] != lat.channels or direction.dim() > 2:
        raise WorkbenchError(f"direction must be shaped (C,) or (block_size, C) with C={lat.channels}, "
                             f"got {tuple(direction.shape)}")
    out = []
    for z in lat.z:
        z = z.clone()
        idx = _block_index(blocks, z.shape[0])
        z[idx] = z[idx] + strength * direction
        out.append(z)
    return lat.derive(out, f"apply_direction(strength={strength:g})")


# -- block surgery ------------------------------------------------------------------------------
def splice(target: Latents, source: Latents, blocks: Sequence[int], source_blocks: Sequence[int] | None = None
           ) -> Latents:
    """Copy ``source`` blocks (``source_blocks``, default the same indices) into ``target`` ``blocks``."""
    source_blocks = list(blocks) if source_blocks is None else list(source_blocks)
    if len(source_blocks) != len(list(blocks)):
        raise WorkbenchError(f"splice: {len(list(blocks))} target blocks but {len(source_blocks)} source blocks")
    _pairs(target, source)   # same checkpoint, compatible batch and shapes
    out = []
    for i in range(max(len(target), len(source))):
        zt = target.z[i if len(target) > 1 else 0].clone()
        zs = source.z[i if len(source) > 1 else 0]
        zt[_block_index(blocks, zt.shape[0])] = zs[_block_index(source_blocks, zs.shape[0])]
        out.append(zt)
    return _first(target, len(out)).derive(out, f"splice(blocks={list(blocks)})")


def replace_blocks(lat: Latents, blocks: Sequence[int], values: torch.Tensor) -> Latents:
    """Set the chosen blocks to ``values`` ((len(blocks), bs, C) or (bs, C), broadcast over texts)."""
    values = torch.as_tensor(values, dtype=torch.float32)
    want = (lat.block_size, lat.channels)
    if tuple(values.shape[-2:]) != want or values.dim() not in (2, 3):
        raise WorkbenchError(f"replacement blocks must be shaped (n, {want[0]}, {want[1]}) or {want}, "
                             f"got {tuple(values.shape)}")
    out = []
    for z in lat.z:
        z = z.clone()
        z[_block_index(blocks, z.shape[0])] = values
        out.append(z)
    return lat.derive(out, f"replace_blocks({list(blocks)})")


# -- forward noising ----------------------------------------------------------------------------
def block_noise(n_blocks: int, block_size: int, channels: int, seed: int | None, sample_id: int = 0
                ) -> torch.Tensor:
    """(n_blocks, bs, C) noise; with a seed, block k is exactly what generation draws for that
    sample id and block (``cola_core.sampler.noise_seed``) when generation draws on CPU (a CPU
    model, or ``noise_device="cpu"``)."""
    if seed is None:
        return torch.randn(n_blocks, block_size, channels)
    draws = [seeded_noise(seed, sample_id, k, (block_size, channels)) for k in range(n_blocks)]
    return torch.stack(draws) if draws else torch.zeros(0, block_size, channels)


def stream_generator(seed: int, sample_id: int, stream: str, draw: int = 0) -> torch.Generator:
    """A CPU generator for one sample's analysis randomness (posterior draws, flow-matching noise,
    divergence probes), seeded from a hash of ``(stream, seed, sample_id, draw)``: a text's draws never
    depend on the batch it shares, and different streams or draws never share noise."""
    key = hashlib.blake2b(f"{stream}:{seed}:{sample_id}:{draw}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(key, "little") >> 1)


def text_noise(lengths: Sequence[int], n: int, channels: int, seed: int, sample_ids: Sequence[int], stream: str,
               draw: int = 0, rademacher: bool = False) -> torch.Tensor:
    """(B, n, C) per-text noise: text b's first ``lengths[b]`` rows come from its own :func:`stream_generator`
    (N(0, I), or +-1 signs with ``rademacher``), the padding rows are 0."""
    out = torch.zeros(len(lengths), n, channels)
    for b, (length, sid) in enumerate(zip(lengths, sample_ids)):
        gen = stream_generator(seed, sid, stream, draw)
        shape = (int(length), channels)
        out[b, :int(length)] = (torch.randint(0, 2, shape, generator=gen).float() * 2 - 1 if rademacher
                                else torch.randn(shape, generator=gen))
    return out


def noise_to(lat: Latents, t: float, seed: int | None = None, T: float = TIME_SCALE,
             sample_ids: Sequence[int] | None = None) -> Latents:
    """Forward-noise to time t: z_t = (1 - t/T) z0 + (t/T) eps (t=0 is the identity, t=T pure noise)."""
    if not 0.0 <= t <= T:
        raise WorkbenchError(f"t must be in [0, T={T:g}], got {t!r}")
    ids = list(range(len(lat))) if sample_ids is None else list(sample_ids)
    if len(ids) != len(lat):
        raise WorkbenchError(f"{len(ids)} sample ids for {len(lat)} texts")
    s = t / T
    out = [(1 - s) * z + s * block_noise(z.shape[0], z.shape[1], z.shape[2], seed, sid)
           for z, sid in zip(lat.z, ids)]
    return lat.derive(out, f"noise_to(t={t:g}, seed={seed})")
