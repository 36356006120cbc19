"""The training "2L" layout: every block's velocity given its clean prefix, in one DiT call (spec section 8).

The DiT sees ``[z0 (n) | z_t (n)]`` per sample with positions ``[0..n-1, 0..n-1]``: clean rows attend
block-causally to clean rows; a noisy block attends to the clean blocks before it and to itself. Its
output therefore equals an inference query of that block with the clean prefix cached. Used by
training (the flow-matching loss) and by the workbench (prior fit, likelihood).
"""
from __future__ import annotations

import torch

from .dit import ColaDiT


def two_l_layout(n_lengths: torch.Tensor, n: int, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """positions (B, 2n) and allowed (B, 2n, 2n) bool for ``[clean | noisy]`` rows of ``n`` latents each.

    clean q -> clean k with block_k <= block_q; noisy q -> clean k with block_k < block_q and noisy k
    with block_k == block_q; only keys inside the sample's ``n_lengths`` (B,) latents.
    """
    idx = torch.arange(n, device=n_lengths.device)
    blk = idx // block_size
    clean_clean = blk[None, :] <= blk[:, None]              # (q, k)
    noisy_clean = blk[None, :] < blk[:, None]
    noisy_noisy = blk[None, :] == blk[:, None]
    pattern = torch.cat([torch.cat([clean_clean, torch.zeros_like(clean_clean)], 1),
                         torch.cat([noisy_clean, noisy_noisy], 1)], 0)                # (2n, 2n)
    valid = (idx[None] < n_lengths[:, None]).repeat(1, 2)    # (B, 2n)
    allowed = pattern[None] & valid[:, None, :] & valid[:, :, None]
    positions = idx.repeat(2)[None].expand(len(n_lengths), -1)
    return positions, allowed


def two_l_velocity(dit: ColaDiT, z0: torch.Tensor, zt: torch.Tensor, t: torch.Tensor, n_lengths: torch.Tensor
                   ) -> torch.Tensor:
    """Velocity (B, n, C) of every noisy row given the clean blocks before it.

    ``z0``, ``zt`` (B, n, C) clean and noisy latents (DiT space); ``t`` (B, n) DiT timesteps of the noisy
    rows (on [0, T], already rounded as the caller wants); ``n_lengths`` (B,) valid latents.
    """
    n = z0.shape[1]
    positions, allowed = two_l_layout(n_lengths, n, dit.config.block_size)
    x = torch.cat([z0, zt], dim=1)
    timestep = torch.cat([torch.zeros_like(t), t], dim=1)
    return dit(x, timestep, 2 * n_lengths, positions=positions, allowed=allowed)[:, n:]
