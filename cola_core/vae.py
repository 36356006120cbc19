"""Text VAE: encoder q_phi(z|x) -> Gaussian posterior over latents; decoder p_theta(x|z) -> logits.

Parameter names match the official ``ColaTextVAEModel`` state dict exactly (see the spec, 3.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import AttentionContext, CacheView, KVCache, apply_rope_half, attend, build_context, pad_rows
from .config import VAEConfig
from .hook_points import NO_TAP, Tap, model_taps


def vae_rope_frequencies(head_dim: int, theta: float, device: torch.device) -> torch.Tensor:
    """(hd/2,) fp32: theta^(-2j/hd) over all head channels (split-half convention)."""
    j = torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
    return 1.0 / (theta ** (j / head_dim))


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=eps)


class VAEBlock(nn.Module):
    """Transformer block; ``post_norm`` reproduces the release's asymmetric LN(x)+Attn(x) layout.

    Attention parameters sit directly on the block, as in the official state dict.
    """

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.norm_attn = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps, elementwise_affine=cfg.layer_norm_affine)
        self.qkv_proj = nn.Linear(cfg.dim, cfg.dim + 2 * cfg.kv_dim, bias=cfg.qk_bias)
        if cfg.qk_norm:
            self.q_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps, elementwise_affine=cfg.qk_norm_affine)
            self.k_norm = nn.LayerNorm(cfg.kv_dim, eps=cfg.layer_norm_eps, elementwise_affine=cfg.qk_norm_affine)
        self.attn_out_proj = nn.Linear(cfg.dim, cfg.dim, bias=cfg.bias)
        self.norm_ffn = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.ffn_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=cfg.bias)
        ffn_hidden = cfg.ffn_dim // 2 if cfg.act == "swiglu" else cfg.ffn_dim
        self.ffn_out = nn.Linear(ffn_hidden, cfg.dim, bias=cfg.bias)

    def attn(self, x: torch.Tensor, ctx: AttentionContext, layer: int, tap: Tap = NO_TAP) -> torch.Tensor:
        """Fused-QKV attention, whole-width q/k LayerNorm, split-half RoPE; x (B, Lq, D)."""
        cfg = self.cfg
        batch, lq, _ = x.shape
        qkv = self.qkv_proj(x)
        if cfg.clip_qkv is not None:
            qkv = qkv.clamp(-cfg.clip_qkv, cfg.clip_qkv)
        q, k, v = qkv.split([cfg.dim, cfg.kv_dim, cfg.kv_dim], dim=-1)
        if cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        hd = cfg.head_dim
        q = q.view(batch, lq, -1, hd).transpose(1, 2)       # (B, H, Lq, hd)
        k = k.view(batch, lq, -1, hd).transpose(1, 2)       # (B, Hk, Lq, hd)
        v = v.view(batch, lq, -1, hd).transpose(1, 2)
        q, k = apply_rope_half(q, ctx.rotation), apply_rope_half(k, ctx.rotation)
        q, k, v = tap("attn.q", q), tap("attn.k", k), tap("attn.v", v)
        k, v = ctx.keys_and_values(layer, k, v)
        out = tap("attn.z", attend(q, k, v, ctx.mask, tap))   # (B, H, Lq, hd)
        return self.attn_out_proj(out.transpose(1, 2).reshape(batch, lq, cfg.dim))

    def ffn(self, h: torch.Tensor, tap: Tap = NO_TAP) -> torch.Tensor:
        h = self.ffn_proj(h)
        if self.cfg.act == "swiglu":
            up, gate = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.cfg.act == "silu":
            h = F.silu(h)
        else:
            h = F.gelu(h)
        return self.ffn_out(tap("mlp.hidden", h))

    def forward(self, x: torch.Tensor, ctx: AttentionContext, layer: int, tap: Tap = NO_TAP) -> torch.Tensor:
        x = tap("resid_pre", x)
        if self.cfg.post_norm:
            x = tap("resid_mid", tap("norm_attn", self.norm_attn(x)) + tap("attn_out", self.attn(x, ctx, layer, tap)))
            return tap("resid_post", x + tap("mlp_out", self.norm_ffn(self.ffn(x, tap))))
        h = tap("norm_attn", self.norm_attn(x))
        x = tap("resid_mid", x + tap("attn_out", self.attn(h, ctx, layer, tap)))
        return tap("resid_post", x + tap("mlp_out", self.ffn(self.norm_ffn(x), tap)))


class VAEEncoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size + 1, cfg.dim)
        self.patch_embedder = nn.Conv1d(cfg.dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.blocks = nn.ModuleList(VAEBlock(cfg) for _ in range(cfg.encoder_num_blocks))
        out = 2 * cfg.latent_dim if cfg.use_variation else cfg.latent_dim
        self.final_layer = nn.Linear(cfg.dim, out, bias=cfg.bias)


class VAEDecoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.in_layer = nn.Linear(cfg.latent_dim, cfg.dim, bias=cfg.bias)
        self.blocks = nn.ModuleList(VAEBlock(cfg) for _ in range(cfg.decoder_num_blocks))
        self.unpatch_layer = nn.Linear(cfg.dim, cfg.patch_size * cfg.dim)
        self.final_norm = nn.LayerNorm(cfg.dim, eps=cfg.layer_norm_eps)
        self.final_layer = nn.Linear(cfg.dim, cfg.vocab_size, bias=cfg.bias)


@dataclass
class Posterior:
    """Diagonal Gaussian q(z|x) on a padded batch: mean/logvar (B, n, C), valid (B, n)."""

    mean: torch.Tensor
    logvar: torch.Tensor
    valid: torch.Tensor

    @property
    def std(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl_to_standard_normal(self) -> torch.Tensor:
        """KL(q || N(0, I)) per latent and channel, (B, n, C)."""
        return 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)


class ColaTextVAE(nn.Module):
    """The Cola Text VAE. Works on padded batches; see :meth:`encode_ids` and :meth:`decode_latents`."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = VAEEncoder(cfg)
        self.decoder = VAEDecoder(cfg)

    @property
    def mask_block_size(self) -> int | None:
        # block_causal=false: the reference drops the mask entirely (and leaks across samples);
        # we keep attention bidirectional but inside each sample.
        return self.config.block_size if self.config.block_causal else None

    def rope_frequencies(self, device: torch.device) -> torch.Tensor:
        return vae_rope_frequencies(self.config.head_dim, self.config.rope_theta, device)

    def new_cache(self, rows: int) -> KVCache:
        """A fresh decoder KV cache for one generation call."""
        return KVCache(rows, self.config.decoder_num_blocks)

    # -- encoder ---------------------------------------------------------------------------------
    def encode_ids(self, ids: torch.Tensor, lengths: torch.Tensor, mask_token_ids: torch.Tensor | None = None
                   ) -> Posterior:
        """ids (B, L) padded token ids with per-sample token lengths (B,) -> posterior over (B, L/P, C).

        Lengths must be multiples of ``patch_size * block_size``. ``mask_token_ids`` (B, L) bool
        replaces those tokens with the extra embedding row V (BERT-style mask id) for training.
        """
        cfg = self.config
        enc = self.encoder
        tap = model_taps("encode")
        if mask_token_ids is not None:
            ids = ids.masked_fill(mask_token_ids, cfg.vocab_size)
        x = tap("embed", enc.wte(ids))                             # (B, L, D)
        x = enc.patch_embedder(x.transpose(1, 2)).transpose(1, 2)  # (B, n, D)
        n_lengths = torch.div(lengths, cfg.patch_size, rounding_mode="floor")
        ctx = build_context(n_lengths, x.shape[1], self.mask_block_size, x.dtype, self.rope_frequencies(x.device))
        for layer, block in enumerate(enc.blocks):
            x = block(x, ctx, layer, tap.at(f"layer.{layer}"))
        out = enc.final_layer(x)
        if cfg.use_variation:
            mean, logvar = out.chunk(2, dim=-1)
            if cfg.encoder_last_ln:
                mean = _layer_norm(mean, cfg.layer_norm_eps)
            logvar = logvar.clamp(-30.0, 20.0)
        else:
            mean = _layer_norm(out, cfg.layer_norm_eps)
            logvar = torch.full_like(mean, -30.0)
        mean, logvar = tap("mean", mean), tap("logvar", logvar)
        valid = torch.arange(x.shape[1], device=x.device)[None] < n_lengths[:, None]
        return Posterior(mean=mean, logvar=logvar, valid=valid)

    def to_dit_space(self, z: torch.Tensor) -> torch.Tensor:
        """(mean - shift) * scale: the space the DiT models and the decoder consumes."""
        return (z - self.config.shifting_factor) * self.config.scaling_factor

    # -- decoder ---------------------------------------------------------------------------------
    def decode_latents(self, z: torch.Tensor, lengths: torch.Tensor, cache: CacheView | None = None,
                       update_cache: bool = False) -> torch.Tensor:
        """z (B, n, C) padded latents with per-sample lengths (B,) -> logits (B, n*P, V).

        With a cache, the rows continue each sample's history; ``update_cache`` keeps them.
        """
        dec = self.decoder
        tap = model_taps("decode")
        x = dec.in_layer(z)
        ctx = build_context(lengths, x.shape[1], self.mask_block_size, x.dtype, self.rope_frequencies(x.device),
                            cache=cache)
        for layer, block in enumerate(dec.blocks):
            x = block(x, ctx, layer, tap.at(f"layer.{layer}"))
        logits = self.decoder_head(x, tap)
        if cache is not None and update_cache:
            cache.commit(lengths)
        return logits

    def decoder_head(self, x: torch.Tensor, tap: Tap = NO_TAP) -> torch.Tensor:
        """Decoder residual (B, n, D) -> logits (B, n*P, V): unpatch, final norm, vocabulary projection
        (the logit lens applies it to any decoder layer)."""
        dec, patch = self.decoder, self.config.patch_size
        batch, n, dim = x.shape
        x = dec.unpatch_layer(x)                                   # (B, n, P*D), channel-major
        x = x.view(batch, n, dim, patch).transpose(2, 3).reshape(batch, n * patch, dim)
        return tap("logits", dec.final_layer(dec.final_norm(tap("unpatched", x))))

    # -- official NA-layout entry points (parity with the reference API) ---------------------------
    def encode(self, ids_list: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """List of 1-D token tensors -> (list of posterior means (n_i, C), list of logvars)."""
        lengths = [len(ids) for ids in ids_list]
        ids, _ = pad_rows(torch.cat(ids_list)[:, None], lengths)
        post = self.encode_ids(ids[..., 0], torch.tensor(lengths, device=ids.device))
        n = [length // self.config.patch_size for length in lengths]
        return ([post.mean[b, :k] for b, k in enumerate(n)], [post.logvar[b, :k] for b, k in enumerate(n)])
