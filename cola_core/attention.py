"""Attention plumbing shared by the VAE and the DiT: RoPE, block-causal masks, a per-call KV cache.

Both models work on padded batches ``(B, L, ...)`` internally. The official "NA" layout (rows of
all samples concatenated, plus per-sample lengths) is converted at the model boundary with
:func:`pad_rows` / :func:`unpad_rows`. Positions restart at 0 per sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import ColaError


# ---------------------------------------------------------------------------------------------
# NA layout <-> padded batch
# ---------------------------------------------------------------------------------------------
def pad_rows(rows: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum L_i, C) concatenated rows -> (B, L_max, C) zero-padded batch and (B, L_max) validity."""
    batch, longest = len(lengths), max(lengths)
    padded = rows.new_zeros(batch, longest, *rows.shape[1:])
    valid = torch.zeros(batch, longest, dtype=torch.bool, device=rows.device)
    start = 0
    for b, n in enumerate(lengths):
        padded[b, :n] = rows[start:start + n]
        valid[b, :n] = True
        start += n
    return padded, valid


def unpad_rows(padded: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, L_max, C) -> (sum L_i, C): inverse of :func:`pad_rows`."""
    return torch.cat([padded[b, :n] for b, n in enumerate(lengths)], dim=0)


def lengths_from_shape(shape: torch.Tensor | list[int]) -> list[int]:
    """Accept the official ``txt_shape`` ``(B, 1)`` tensor or a plain list of lengths."""
    if isinstance(shape, torch.Tensor):
        return [int(n) for n in shape.reshape(-1).tolist()]
    return [int(n) for n in shape]


# ---------------------------------------------------------------------------------------------
# RoPE
# ---------------------------------------------------------------------------------------------
def rope_rotation(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, L) x inv_freq (R,) -> (cos, sin), each (B, 1, L, R) fp32; computed once per forward."""
    angles = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope_half(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Split-half RoPE over all channels (VAE): x (B, H, L, hd), rotation tables of width hd/2; fp32 math."""
    cos, sin = rotation
    xf = x.float()
    a, b = xf.chunk(2, dim=-1)
    return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1).to(x.dtype)


def apply_rope_interleaved(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Interleaved-pair RoPE on the first 2R channels (DiT): x (B, H, L, hd), tables of width R."""
    cos, sin = rotation
    rot = cos.shape[-1] * 2
    xf = x[..., :rot].float()
    even, odd = xf[..., 0::2], xf[..., 1::2]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1).flatten(-2)
    return torch.cat([rotated.to(x.dtype), x[..., rot:]], dim=-1)


# ---------------------------------------------------------------------------------------------
# Masks and attention
# ---------------------------------------------------------------------------------------------
def block_causal_allowed(q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor,
                         block_size: int | None) -> torch.Tensor:
    """(B, Lq, Lk) bool: key valid and, when block_size is set, key block <= query block."""
    allowed = k_valid[:, None, :].expand(-1, q_pos.shape[1], -1)
    if block_size is not None:
        allowed = allowed & ((q_pos // block_size)[:, :, None] >= (k_pos // block_size)[:, None, :])
    return allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool (B, Lq, Lk) -> additive (B, 1, Lq, Lk) with finfo.min where attention is forbidden."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, tap=None) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + mask) v; q (B, H, Lq, hd), k/v (B, Hk, Lk, hd) with Hk | H.

    The pattern (B, H, Lq, Lk) is materialised only when ``tap`` (a :class:`cola_core.hook_points.Tap`)
    wants ``attn.pattern``; a replaced pattern is applied as ``pattern @ v``, otherwise SDPA runs as usual.
    """
    if k.shape[1] != q.shape[1]:
        k = k.expand(-1, q.shape[1], -1, -1)
        v = v.expand(-1, q.shape[1], -1, -1)
    mask = mask.to(q.dtype)
    if tap is not None and tap.wants("attn.pattern"):
        pattern = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask).softmax(dim=-1)
        patched = tap("attn.pattern", pattern)
        if patched is not pattern:
            return patched @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------
class KVCache:
    """K/V of earlier positions for one model and one generation call (never stored on modules).

    Per layer a preallocated buffer ``(rows, heads, capacity, head_dim)`` holds keys after
    normalisation and RoPE (RoPE depends only on a key's own position, so this equals the
    reference's re-rotation of pre-RoPE keys on every call) and values. Appending writes in place;
    capacity doubles when full, so a step never copies the whole history. Row lengths live on the
    host, so reading the cache never waits for the GPU.

    A *static* cache (:meth:`static`) never grows: its capacity is fixed up front, and its lengths are
    mirrored in a device tensor so a forward can read them without a host sync. Calls that ask for
    static keys (``build_context(static=True)``) then attend over the whole capacity, masked, so every
    pass of a generation has the same shapes (what a CUDA graph needs). :meth:`reset` empties it for
    the next call while keeping its buffers.
    """

    def __init__(self, rows: int, num_layers: int, initial_capacity: int = 64, fixed: bool = False):
        self.rows = rows
        self.num_layers = num_layers
        self.lengths = torch.zeros(rows, dtype=torch.long)   # host-side history length per row
        self.capacity = initial_capacity
        self.fixed = fixed
        self.device_lengths: torch.Tensor | None = None      # static caches: the lengths on the buffers' device
        self._k: list[torch.Tensor | None] = [None] * num_layers
        self._v: list[torch.Tensor | None] = [None] * num_layers

    @classmethod
    def static(cls, rows: int, num_layers: int, capacity: int) -> "KVCache":
        """A cache of fixed ``capacity`` positions per row (see the class docstring)."""
        return cls(rows, num_layers, initial_capacity=capacity, fixed=True)

    def view(self, rows: slice | None = None) -> "CacheView":
        """A handle on a row range (e.g. conditional rows only) used by one forward call."""
        return CacheView(self, rows if rows is not None else slice(0, self.rows))

    def reset(self) -> None:
        """Forget every row's history (buffers are kept; stale entries are masked by the zero lengths)."""
        self.lengths.zero_()
        if self.device_lengths is not None:
            self.device_lengths.zero_()

    def device_offsets(self, device: torch.device) -> torch.Tensor:
        """(rows,) lengths on ``device``: a static cache's device mirror (made once), else a copy of the host's."""
        if not self.fixed:
            return self.lengths.to(device, non_blocking=True)
        if self.device_lengths is None:   # made once: CUDA graphs read this very tensor
            self.device_lengths = self.lengths.to(device, copy=True)   # never the host tensor itself (CPU)
        return self.device_lengths

    def _ensure(self, layer: int, k_like: torch.Tensor, v_like: torch.Tensor, needed: int) -> None:
        """Allocate (or double) a layer's buffers so ``needed`` positions fit; K and V keep their dtypes."""
        buf = self._k[layer]
        if buf is not None and needed <= buf.shape[2] and buf.dtype == k_like.dtype:
            return
        if self.fixed and needed > self.capacity:
            raise ColaError(f"static KV cache holds {self.capacity} positions per row; this call needs {needed}")
        capacity = max(self.capacity, needed)
        while capacity < needed:
            capacity *= 2
        new_k = k_like.new_zeros(self.rows, k_like.shape[1], capacity, k_like.shape[3])
        new_v = v_like.new_zeros(self.rows, v_like.shape[1], capacity, v_like.shape[3])
        if buf is not None:
            old = buf.shape[2]
            new_k[:, :, :old] = buf.to(k_like.dtype)
            new_v[:, :, :old] = self._v[layer].to(v_like.dtype)
        self._k[layer], self._v[layer] = new_k, new_v
        self.capacity = capacity


def stack_rows(parts: Sequence[tuple[KVCache, Sequence[int]]], empty: int = 0) -> KVCache:
    """A new growable cache holding the chosen rows of each part, in order, then ``empty`` empty rows.

    How a batching engine regroups its samples at a block boundary (rows leave, rows join): each row keeps
    its history and length bit for bit, so its next forward reads what it would have read in its old cache.
    """
    if not parts:
        raise ColaError("stack_rows needs at least one part")
    if any(cache.fixed for cache, _ in parts):
        raise ColaError("stack_rows regroups growable caches only, not static ones")
    layers = parts[0][0].num_layers
    indices = [torch.as_tensor(list(rows), dtype=torch.long) for _, rows in parts]
    total = sum(len(index) for index in indices) + empty
    capacity = max(cache.capacity for cache, _ in parts)
    out = KVCache(total, layers, initial_capacity=capacity)
    out.lengths = torch.cat([cache.lengths[index] for (cache, _), index in zip(parts, indices)]
                            + [torch.zeros(empty, dtype=torch.long)])
    for layer in range(layers):
        held = [(cache._k[layer], cache._v[layer], index) for (cache, _), index in zip(parts, indices)]
        like = next(((k, v) for k, v, _ in held if k is not None), None)
        if like is None:   # no part has written this layer yet
            continue
        k_out = like[0].new_zeros(total, like[0].shape[1], capacity, like[0].shape[3])
        v_out = like[1].new_zeros(total, like[1].shape[1], capacity, like[1].shape[3])
        start = 0
        for k, v, index in held:
            if k is not None and len(index):
                rows = index.to(k.device)
                k_out[start:start + len(index), :, :k.shape[2]] = k[rows]
                v_out[start:start + len(index), :, :v.shape[2]] = v[rows]
            start += len(index)
        out._k[layer], out._v[layer] = k_out, v_out
    return out


@dataclass
class CacheView:
    """The rows of a :class:`KVCache` that one forward call reads and (optionally) extends."""

    cache: KVCache
    rows: slice

    @property
    def lengths(self) -> torch.Tensor:
        """(B,) host-side history lengths of these rows."""
        return self.cache.lengths[self.rows]

    def write(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor, slots: torch.Tensor, key_len: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Place this call's K/V (B, H, Lq, hd) at ``slots`` (B, Lq); return (B, H, key_len, hd) views."""
        self.cache._ensure(layer, k_new, v_new, key_len)
        k_buf, v_buf = self.cache._k[layer][self.rows], self.cache._v[layer][self.rows]
        index = slots[:, None, :, None].expand(-1, k_new.shape[1], -1, k_new.shape[3])
        k_buf.scatter_(2, index, k_new)
        v_buf.scatter_(2, index, v_new)
        return k_buf[:, :, :key_len], v_buf[:, :, :key_len]

    def commit(self, q_lengths: torch.Tensor) -> None:
        """Keep this call's rows: advance each row's length by its number of real query rows."""
        self.cache.lengths[self.rows] += q_lengths.cpu()
        if self.cache.device_lengths is not None:   # a static cache's mirror, advanced on its device
            self.cache.device_lengths[self.rows] += q_lengths.to(self.cache.device_lengths.device)


@dataclass
class AttentionContext:
    """Everything a layer needs besides its input: RoPE tables, mask, optional cache view."""

    rotation: tuple[torch.Tensor, torch.Tensor]   # (cos, sin) (B, 1, Lq, R) at the query positions
    mask: torch.Tensor                            # (B, 1, Lq, Lk) additive
    cache: CacheView | None = None
    slots: torch.Tensor | None = None             # (B, Lq) cache slots of this call's rows
    key_len: int = 0                              # Lk when reading a cache

    def keys_and_values(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This call's K/V (B, H, Lq, hd), preceded by the cached history when there is a cache."""
        if self.cache is None:
            return k, v
        return self.cache.write(layer, k, v, self.slots, self.key_len)


def build_context(q_lengths: torch.Tensor, max_q: int, block_size: int | None, dtype: torch.dtype,
                  inv_freq: torch.Tensor, cache: CacheView | None = None, positions: torch.Tensor | None = None,
                  allowed: torch.Tensor | None = None, static: bool = False) -> AttentionContext:
    """Positions and mask for a padded call.

    Without a cache, keys are this call's own rows. With one, row b's queries sit at positions
    ``len_b .. len_b + q_b - 1`` after its history. ``positions``/``allowed`` override the
    defaults (the training "2L" layout). ``static`` (a static cache only) reads the whole capacity
    and the device-side lengths: shapes then depend on nothing but the call's own, and nothing is read
    back to the host (masked keys add exact zeros to the softmax).
    """
    device = q_lengths.device
    if cache is None:
        offsets, key_len = torch.zeros_like(q_lengths), max_q
    elif static:
        if not cache.cache.fixed:
            raise ColaError("static keys need a static KV cache (KVCache.static)")
        key_len = cache.cache.capacity
        offsets = cache.cache.device_offsets(device)[cache.rows]
    else:
        key_len = int(cache.lengths.max()) + max_q             # host-side: no device sync
        offsets = cache.lengths.to(device, non_blocking=True)
    slots = offsets[:, None] + torch.arange(max_q, device=device)   # (B, Lq) positions after each history
    q_pos = slots if positions is None else positions
    k_pos = q_pos if cache is None else torch.arange(key_len, device=device)[None].expand(q_lengths.shape[0], -1)
    if allowed is None:
        k_valid = torch.arange(key_len, device=device)[None] < (offsets + q_lengths)[:, None]
        allowed = block_causal_allowed(q_pos, k_pos, k_valid, block_size)
    return AttentionContext(rotation=rope_rotation(q_pos, inv_freq), mask=additive_mask(allowed, dtype), cache=cache,
                            slots=slots, key_len=key_len)
