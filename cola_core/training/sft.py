"""The SFT objective of the official ``scripts/cola_sft.py``: flow matching on answer latents of chat data.

Per block of the (possibly randomly drawn) block size, each latent of the noisy copy is one of:

* **noised** ``(1-t) z0 + t z1`` at time t, in the loss: answer latents; with ``loss_mode = "all_token"``
  also prompt latents that come before any answer in their block;
* **masked** pure noise ``z1`` at time t, out of the loss: prompt latents after an answer in the same
  block, which would otherwise leak the next turn into the answer's block. ``boundary_mode = "token"``
  masks every such latent; ``"block"`` (the official legacy mode) masks the prompt latents of blocks
  whose first answer latent comes before their first prompt latent;
* **clean** ``z0`` at time 0, out of the loss: the rest (prompt context, as generation pins it).

The VAE is frozen; the DiT sees the official 2L layout with each sample's own block size.
"""
from __future__ import annotations

import torch

from ..constants import TIME_SCALE
from ..dit import ColaDiT
from ..two_l import two_l_velocity
from ..vae import ColaTextVAE
from .data import ChatBatch
from .objectives import Terms, _randn, sample_t, velocity_terms

LOSS_MODES = ("sft", "all_token")
BOUNDARY_MODES = ("token", "block")


def sft_noising(response: torch.Tensor, valid: torch.Tensor, block_sizes: torch.Tensor, loss_mode: str,
                boundary_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(noised, masked) (B, n) bool per latent; response, valid (B, n) bool; block_sizes (B,) int."""
    batch, n = response.shape
    pos = torch.arange(n, device=response.device)[None].expand(batch, n)
    block = pos // block_sizes[:, None]
    prompt = valid & ~response
    if boundary_mode == "token":
        seen = torch.cumsum(response.long(), 1)
        start = block * block_sizes[:, None]
        before = torch.where(start > 0, seen.gather(1, (start - 1).clamp(min=0)), torch.zeros_like(seen))
        masked = prompt & (seen - before > 0)
    elif boundary_mode == "block":
        in_block = block[..., None] == torch.arange(n, device=response.device)     # (B, n pos, n blocks)
        first_answer = torch.where(in_block & response[..., None], pos[..., None], n).amin(1)
        first_prompt = torch.where(in_block & prompt[..., None], pos[..., None], n).amin(1)
        answer_first = (first_answer < first_prompt).gather(1, block)
        masked = prompt & answer_first
    else:
        raise ValueError(f"boundary_mode must be one of {', '.join(BOUNDARY_MODES)}, got {boundary_mode!r}")
    if loss_mode not in LOSS_MODES:
        raise ValueError(f"loss_mode must be one of {', '.join(LOSS_MODES)}, got {loss_mode!r}")
    noised = valid & response
    if loss_mode == "all_token":
        noised |= prompt & ~masked
    return noised, masked


def block_size_choices(block_size: int) -> list[int]:
    """The block sizes SFT may draw from: 1, 2, 4, ..., block_size."""
    return [2 ** i for i in range(block_size.bit_length()) if 2 ** i <= block_size]


def sft_terms(dit: ColaDiT, vae: ColaTextVAE, batch: ChatBatch, gen: torch.Generator, rows: slice, *,
              t_sampling: str, t_loc: float, t_scale: float, posterior_mean: bool, loss_mode: str, boundary_mode: str,
              block_size_probs: list[float]) -> Terms:
    """Flow-matching terms of one SFT micro-batch (see the module docstring); the VAE stays frozen.

    ``block_size_probs`` weighs the block sizes of :func:`block_size_choices` (empty: always the DiT's).
    """
    cfg = vae.config
    n, channels, batch_size = batch.ids.shape[1] // cfg.patch_size, cfg.latent_dim, len(batch.ids)
    eps = _randn((batch_size, n, channels), gen)
    z1 = _randn((batch_size, n, channels), gen)
    t = sample_t(batch_size, gen, t_sampling, t_loc, t_scale)
    choices = torch.tensor(block_size_choices(dit.config.block_size), device=gen.device)
    if block_size_probs:
        probs = torch.tensor(block_size_probs, dtype=torch.float, device=gen.device)
        sizes = choices[torch.multinomial(probs, batch_size, replacement=True, generator=gen)]
    else:
        sizes = torch.full((batch_size,), dit.config.block_size, device=gen.device)
    device = batch.ids.device
    batch = batch.rows(rows)
    eps, z1, t, sizes = eps[rows].to(device), z1[rows].to(device), t[rows].to(device), sizes[rows].to(device)

    with torch.no_grad():
        post = vae.encode_ids(batch.ids, batch.lengths)
        z0 = vae.to_dit_space(post.mean if posterior_mean else post.mean + post.std * eps)
    n_lengths = batch.lengths // cfg.patch_size
    valid = torch.arange(n, device=device)[None] < n_lengths[:, None]
    noised, masked = sft_noising(batch.response, valid, sizes, loss_mode, boundary_mode)
    t_tok = torch.where(noised | masked, t[:, None], torch.zeros_like(t[:, None]))
    mixed = (1 - t_tok[..., None]) * z0 + t_tok[..., None] * z1
    zt = torch.where(masked[..., None], z1, torch.where(noised[..., None], mixed, z0))
    timestep = (t_tok * TIME_SCALE).to(torch.bfloat16).float()          # t*T in bf16, as the official recipe
    v = two_l_velocity(dit, z0, zt, timestep, n_lengths, block_size=sizes)
    return velocity_terms(v, z1 - z0, noised)
