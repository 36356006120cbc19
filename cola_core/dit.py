"""Block-causal DiT prior: predicts the flow-matching velocity v ~ z1 - z0 for noisy latents.

Parameter names match the official ``ColaDiTModel`` state dict exactly (see the spec, 3.2).
Bidirectional inside a block, causal across blocks; AdaLN conditioning on the timestep.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionContext, CacheView, KVCache, apply_rope_interleaved, attend, build_context
from .config import DiTConfig
from .hook_points import NO_TAP, Tap, model_taps

TIMESTEP_FEATURES = 256


def sinusoidal_features(t: torch.Tensor) -> torch.Tensor:
    """t (N,) on the [0, 1000] scale -> (N, 256) fp32 features [sin | cos] (denominator 128)."""
    half = TIMESTEP_FEATURES // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def _modulation(dim: int, out: int) -> nn.Sequential:
    """AdaLN projection: Sequential(SiLU, Linear) — the ``.1.`` in the official names."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, out))


class _Proj(nn.Module):
    """A Linear living under ``<name>.proj`` as in the official checkpoint."""

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class TimestepEmbedding(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.proj_in = nn.Linear(TIMESTEP_FEATURES, cfg.txt_dim)
        self.proj_hid = nn.Linear(cfg.txt_dim, cfg.txt_dim)
        self.proj_out = nn.Linear(cfg.txt_dim, cfg.emb_dim)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """t (N,) -> emb (N, emb_dim)."""
        e = sinusoidal_features(t).to(dtype)
        return self.proj_out(F.silu(self.proj_hid(F.silu(self.proj_in(e)))))


def rope_frequencies(rope_dim: int) -> torch.Tensor:
    """(rope_dim/2,) fp32 on the CPU: 10000^(-2j/r); the DiT's RoPE base is fixed at 1e4 in the reference.

    Made on the CPU even while a model is built on the meta device: a meta ``arange`` costs seconds
    of one-time imports at load.
    """
    j = torch.arange(0, rope_dim, 2, dtype=torch.float32, device="cpu")
    return 1.0 / (10000.0 ** (j / rope_dim))


class Rope(nn.Module):
    """Holds the checkpoint's ``freqs`` buffer under ``rope.rope.freqs``."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.register_buffer("freqs", rope_frequencies(cfg.rope_dim), persistent=True)


class _RopeHolder(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.rope = Rope(cfg)


class DiTAttention(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        inner = cfg.inner_dim
        self.proj_qkv = nn.Linear(cfg.txt_dim, 3 * inner, bias=cfg.qk_bias)
        self.proj_out = nn.Linear(inner, cfg.txt_dim, bias=cfg.qk_bias)
        self.norm_q = nn.LayerNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.norm_k = nn.LayerNorm(cfg.head_dim, eps=cfg.norm_eps)
        self.rope = _RopeHolder(cfg)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, layer: int, tap: Tap = NO_TAP) -> torch.Tensor:
        cfg = self.cfg
        batch, lq, _ = x.shape
        qkv = self.proj_qkv(x).view(batch, lq, 3, cfg.heads, cfg.head_dim)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))   # (B, H, Lq, hd)
        q, k = self.norm_q(q), self.norm_k(k)
        q, k = apply_rope_interleaved(q, ctx.rotation), apply_rope_interleaved(k, ctx.rotation)
        q, k, v = tap("attn.q", q), tap("attn.k", k), tap("attn.v", v)
        k, v = ctx.keys_and_values(layer, k, v)
        out = tap("attn.z", attend(q, k, v, ctx.mask, tap))
        return self.proj_out(out.transpose(1, 2).reshape(batch, lq, cfg.inner_dim))


class DiTMLP(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.proj_in = nn.Linear(cfg.txt_dim, cfg.expand_ratio * cfg.txt_dim)
        self.proj_out = nn.Linear(cfg.expand_ratio * cfg.txt_dim, cfg.txt_dim)

    def forward(self, x: torch.Tensor, tap: Tap = NO_TAP) -> torch.Tensor:
        return self.proj_out(tap("mlp.hidden", F.gelu(self.proj_in(x), approximate="tanh")))


class AdaLN(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.txt_dim
        self.msa_in = _modulation(d, 2 * d)
        self.msa_out = _modulation(d, d)
        self.mlp_in = _modulation(d, 2 * d)
        self.mlp_out = _modulation(d, d)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.eps = cfg.norm_eps
        self.msa = DiTAttention(cfg)
        self.mlp = DiTMLP(cfg)
        self.ada = AdaLN(cfg)

    def forward(self, x: torch.Tensor, emb: "RowEmbedding", ctx: AttentionContext, layer: int,
                tap: Tap = NO_TAP) -> torch.Tensor:
        """x (B, Lq, D) -> (B, Lq, D), modulated by the per-row timestep embedding; ``tap`` sees each point."""
        x = tap("resid_pre", x)
        shift, scale = emb.project(self.ada.msa_in).chunk(2, dim=-1)
        shift, scale = tap("ada.shift_msa", shift), tap("ada.scale_msa", scale)
        gate = tap("ada.gate_msa", emb.project(self.ada.msa_out))
        h = tap("attn_in", F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale) + shift)
        x = tap("resid_mid", tap("attn_out", gate * self.msa(h, ctx, layer, tap)) + x)
        shift, scale = emb.project(self.ada.mlp_in).chunk(2, dim=-1)
        shift, scale = tap("ada.shift_mlp", shift), tap("ada.scale_mlp", scale)
        gate = tap("ada.gate_mlp", emb.project(self.ada.mlp_out))
        h = tap("mlp_in", F.layer_norm(x, x.shape[-1:], eps=self.eps) * (1 + scale) + shift)
        return tap("resid_post", tap("mlp_out", gate * self.mlp(h, tap)) + x)


class OutputAdaLN(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.out_in = _modulation(cfg.txt_dim, 2 * cfg.txt_dim)


class ColaDiT(nn.Module):
    """The Cola DiT. ``forward`` works on padded batches; the caller owns any KV cache."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        self.txt_in = _Proj(cfg.txt_in_channels * cfg.patch_size, cfg.txt_dim)
        self.emb_in = TimestepEmbedding(cfg)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.txt_out_norm = nn.LayerNorm(cfg.txt_dim, eps=cfg.norm_eps)
        self.txt_out_ada = OutputAdaLN(cfg)
        self.txt_out = _Proj(cfg.txt_dim, cfg.txt_out_channels * cfg.patch_size)

    def new_cache(self, rows: int, capacity: int | None = None) -> KVCache:
        """A fresh KV cache for one generation call; with ``capacity``, a static one of that many positions."""
        if capacity is not None:
            return KVCache.static(rows, self.config.num_layers, capacity)
        return KVCache(rows, self.config.num_layers)

    def modulations(self) -> list[nn.Module]:
        """Every AdaLN projection (4 per layer, then the output's): functions of the timestep alone."""
        layers = [m for b in self.blocks for m in (b.ada.msa_in, b.ada.msa_out, b.ada.mlp_in, b.ada.mlp_out)]
        return layers + [self.txt_out_ada.out_in]

    def forward(self, x: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor, cache: CacheView | None = None,
                update_cache: bool = False, positions: torch.Tensor | None = None,
                allowed: torch.Tensor | None = None, time: "RowEmbedding | None" = None,
                static: bool = False) -> torch.Tensor:
        """Velocity for padded latents.

        x (B, Lq, C); t (B, Lq) timesteps on [0, T]; lengths (B,) real query rows per sample.
        With ``cache`` the rows follow each sample's cached history; ``update_cache`` keeps them.
        ``positions`` (B, Lq) and ``allowed`` (B, Lq, Lq) override positions and mask (training).
        ``time`` gives the rows' modulations ready-made (a :class:`ModulationTable`'s rows; ``t`` is then
        unused); ``static`` attends over a static cache's whole capacity (see ``build_context``).
        Returns (B, Lq, C_out). Hook points (``cola_core.hook_points``) see every activation when a caller listens.
        """
        tap = model_taps("dit")
        h = self.txt_in(x)
        dtype = h.dtype
        emb = time if time is not None else RowEmbedding.of(self.emb_in, t, dtype)
        freqs = self.blocks[0].msa.rope.rope.freqs   # identical in every layer (checked at load)
        ctx = build_context(lengths, x.shape[1], self.config.block_size, dtype, freqs, cache=cache,
                            positions=positions, allowed=allowed, static=static)
        for layer, block in enumerate(self.blocks):
            h = block(h, emb, ctx, layer, tap.at(f"layer.{layer}"))
        shift, scale = emb.project(self.txt_out_ada.out_in).chunk(2, dim=-1)
        out = tap("velocity", self.head(h, tap("final.shift", shift), tap("final.scale", scale)))
        if cache is not None and update_cache:
            cache.commit(lengths)
        return out

    def head(self, h: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Residual (B, L, D) -> velocity (B, L, C_out) under the output modulation (the x0-lens reads any layer so)."""
        return self.txt_out(self.txt_out_norm(h) * (1 + scale) + shift)


class RowEmbedding:
    """Per-row timestep embedding kept once per distinct timestep.

    AdaLN projections run on the (U, D) distinct embeddings and are then gathered to (B, Lq, ·):
    the same numbers as projecting every row, at a fraction of the cost.
    """

    def __init__(self, emb: torch.Tensor, inverse: torch.Tensor, shape: torch.Size):
        self.emb, self.inverse, self.shape = emb, inverse, shape

    @classmethod
    def of(cls, embed: TimestepEmbedding, t: torch.Tensor, dtype: torch.dtype) -> "RowEmbedding":
        """Embed t (B, Lq). On CPU rows share distinct timesteps (saves FLOPs); on a GPU every row is
        embedded, since finding the distinct values would stall on a device sync."""
        flat = t.reshape(-1)
        if flat.device.type == "cpu":
            distinct, inverse = torch.unique(flat, return_inverse=True)
        else:
            distinct, inverse = flat, torch.arange(flat.numel(), device=flat.device)
        return cls(embed(distinct, dtype), inverse, t.shape)

    def project(self, modulation: nn.Module) -> torch.Tensor:
        return modulation(self.emb)[self.inverse].view(*self.shape, -1)


class TableRows(RowEmbedding):
    """Rows whose modulations are looked up in a :class:`ModulationTable` (no projection at all)."""

    def __init__(self, table: "ModulationTable", index: torch.Tensor, shape: torch.Size):
        super().__init__(table.emb, index, shape)
        self.table = table

    def project(self, modulation: nn.Module) -> torch.Tensor:
        return self.table.outputs[modulation][self.inverse].view(*self.shape, -1)


class ModulationTable:
    """The DiT's AdaLN modulations for a set of timesteps, computed once and looked up by every pass.

    Every modulation is a function of the timestep alone, and a generation uses a handful of distinct
    times (the grid's, then 0 for the commits), yet the AdaLN projections hold a third of the DiT's
    weights: projecting them once per distinct time instead of once per pass spares re-reading them
    (the limit at small batches). Storage is preallocated for ``slots`` times and never moves while
    they fit, so CUDA graphs can read it; ``version`` changes when it had to grow.
    """

    def __init__(self, dit: ColaDiT, dtype: torch.dtype, device: torch.device, slots: int = 64):
        self.dit, self.dtype, self.device = dit, dtype, device
        self.slot: dict[float, int] = {}      # time value -> row of every table
        self.version = 0
        self._allocate(slots)

    def _allocate(self, slots: int) -> None:
        width = {m: m[1].out_features for m in self.dit.modulations()}
        old, old_emb = getattr(self, "outputs", {}), getattr(self, "emb", None)
        self.emb = torch.zeros(slots, self.dit.config.emb_dim, dtype=self.dtype, device=self.device)
        self.outputs = {m: torch.zeros(slots, w, dtype=self.dtype, device=self.device) for m, w in width.items()}
        kept = len(self.slot)
        if old:
            self.emb[:kept] = old_emb[:kept]
        for m, table in old.items():
            self.outputs[m][:kept] = table[:kept]
        self.version += 1

    def reset(self) -> None:
        """Forget every time (for the next call: the weights may have changed); storage is kept."""
        self.slot.clear()

    @torch.no_grad()
    def add(self, times: list[float]) -> None:
        """Project the times not yet in the table, all in one batch (call under the model's autocast)."""
        new = sorted(set(times) - set(self.slot))
        if not new:
            return
        if len(self.slot) + len(new) > self.emb.shape[0]:
            self._allocate(2 * (len(self.slot) + len(new)))
        start = len(self.slot)
        rows = slice(start, start + len(new))
        emb = self.dit.emb_in(torch.tensor(new, dtype=torch.float32, device=self.device), self.dtype)
        self.emb[rows] = emb
        for m, table in self.outputs.items():
            table[rows] = m(emb)
        self.slot.update((v, start + i) for i, v in enumerate(new))

    def rows(self, t: torch.Tensor, out: torch.Tensor | None = None) -> TableRows:
        """Modulation rows for times t (B, Lq): their table slots (written into ``out`` when given). Reads t on
        the host (a device sync on a GPU); times not yet in the table are added first."""
        values = t.reshape(-1).tolist()
        self.add(values)
        index = torch.tensor([self.slot[v] for v in values], dtype=torch.long)
        index = out.copy_(index, non_blocking=True) if out is not None else index.to(self.device)
        return TableRows(self, index, t.shape)
