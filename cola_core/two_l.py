"""The training "2L" layout: every block's velocity given its clean prefix, in one DiT call (spec section 8).

The DiT sees ``[z0 (n) | z_t (n)]`` per sample with positions ``[0..n-1, 0..n-1]``: clean rows attend
block-causally to clean rows; a noisy block attends to the clean blocks before it and to itself. Its
output therefore equals an inference query of that block with the clean prefix cached. Used by
training (the flow-matching loss) and by the workbench (prior fit, likelihood).
"""
from __future__ import annotations

import torch

from .dit import ColaDiT


def two_l_layout(n_lengths: torch.Tensor, n: int, block_size: int | torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, 2n) and allowed (B, 2n, 2n) bool for ``[clean | noisy]`` rows of ``n`` latents each.

    clean q -> clean k with block_k <= block_q; noisy q -> clean k with block_k < block_q and noisy k
    with block_k == block_q; only keys inside the sample's ``n_lengths`` (B,) latents. ``block_size`` is
    one size or one per sample (B,) (SFT draws random block sizes).
    """
    idx = torch.arange(n, device=n_lengths.device)
    sizes = torch.as_tensor(block_size, device=n_lengths.device).reshape(-1, 1)   # (B or 1, 1)
    blk = (idx[None] // sizes)[:, None, :]                   # (B or 1, 1, k) block of each key
    clean_clean = blk <= blk.transpose(1, 2)                # (B or 1, q, k)
    noisy_clean = blk < blk.transpose(1, 2)
    noisy_noisy = blk == blk.transpose(1, 2)
    pattern = torch.cat([torch.cat([clean_clean, torch.zeros_like(clean_clean)], 2),
                         torch.cat([noisy_clean, noisy_noisy], 2)], 1)                # (B or 1, 2n, 2n)
    valid = (idx[None] < n_lengths[:, None]).repeat(1, 2)    # (B, 2n)
    allowed = pattern & valid[:, None, :] & valid[:, :, None]
    positions = idx.repeat(2)[None].expand(len(n_lengths), -1)
    return positions, allowed


def two_l_velocity(dit: ColaDiT, z0: torch.Tensor, zt: torch.Tensor, t: torch.Tensor, n_lengths: torch.Tensor,
                   block_size: int | torch.Tensor | None = None) -> torch.Tensor:
    """Velocity (B, n, C) of every noisy row given the clean blocks before it.

    ``z0``, ``zt`` (B, n, C) clean and noisy latents (DiT space); ``t`` (B, n) DiT timesteps of the noisy
    rows (on [0, T], already rounded as the caller wants); ``n_lengths`` (B,) valid latents;
    ``block_size`` one size or (B,) per sample (default: the DiT's).
    """
    n = z0.shape[1]
    block_size = dit.config.block_size if block_size is None else block_size
    positions, allowed = two_l_layout(n_lengths, n, block_size)
    x = torch.cat([z0, zt], dim=1)
    timestep = torch.cat([torch.zeros_like(t), t], dim=1)
    return dit(x, timestep, 2 * n_lengths, positions=positions, allowed=allowed)[:, n:]
