"""The DiT prior evaluated on known clean latents: the training "2L" layout, velocities, flow-matching loss.

cola_core's 2L layout (``cola_core.two_l``, spec section 8) feeds ``[z0 | z_t]`` in one call, so every
noisy block's output equals an inference query of that block with the clean prefix cached, for all
blocks at once. Time here is ``s = t/T`` on [0, 1]:
``z_s = (1-s) z0 + s z1`` and the model's velocity approximates ``dz/ds = z1 - z0``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from cola_core import ColaModel
from cola_core.constants import TIME_SCALE
from cola_core.sampler import guided_velocity
from cola_core.two_l import two_l_velocity

from .latents import text_noise


class ConditionalVelocity:
    """v(z_s | clean prefix) for every block of known clean latents, evaluated in one 2L call.

    ``z0`` (B, n, C) DiT-space clean latents, ``n_lengths`` (B,) valid latents (whole blocks).
    Calling with ``z`` (R*B, n, C) (R stacked copies, e.g. Hutchinson probes) and ``s`` (R*B,)
    returns the guided velocity (R*B, n, C); ``guidance`` != 1 adds the unconditional pass
    (each noisy block alone at positions 0..bs-1), as the sampler does.
    """

    def __init__(self, model: ColaModel, z0: torch.Tensor, n_lengths: torch.Tensor, guidance: float = 1.0,
                 T: float = TIME_SCALE):
        self.model, self.z0, self.n_lengths = model, z0, n_lengths
        self.guidance, self.T = float(guidance), T

    def __call__(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        model, (batch, n, channels) = self.model, self.z0.shape
        reps = z.shape[0] // batch
        t = (s * self.T)[:, None].expand(-1, n)                            # (R*B, n) DiT timesteps
        with model.autocast:
            cond = two_l_velocity(model.dit, self.z0.repeat(reps, 1, 1).to(model.dtype), z.to(model.dtype), t,
                                  self.n_lengths.repeat(reps)).float()
            if self.guidance == 1.0:
                return cond
            bs = model.block_size
            blocks = z.reshape(-1, bs, channels)                           # (R*B*nb, bs, C)
            uncond = model.dit(blocks.to(model.dtype), t.reshape(-1, bs),
                               torch.full((blocks.shape[0],), bs, device=z.device)).float().view_as(z)
        return guided_velocity(cond, uncond, self.guidance)


@dataclass
class FlowMatchingLoss:
    """Per-latent flow-matching losses on a t grid: ``loss``/``zero`` (K, B, n), NaN at padding.

    ``zero`` is the loss of a model that always predicts 0 (``mean_c (z1 - z0)^2``), a scale reference.
    """

    t: torch.Tensor       # (K,) on [0, 1]
    loss: torch.Tensor    # (K, B, n) mean over channels of (v_pred - (z1 - z0))^2
    zero: torch.Tensor    # (K, B, n)


@torch.no_grad()
def flow_matching_loss(model: ColaModel, z0: torch.Tensor, n_lengths: torch.Tensor, t_grid: torch.Tensor,
                       draws: int = 1, generator: torch.Generator | None = None, seed: int | None = None,
                       sample_ids: Sequence[int] | None = None) -> FlowMatchingLoss:
    """Flow-matching loss of the DiT on clean latents ``z0`` (B, n, C) at each ``t`` in ``t_grid`` (K,).

    Noise ``z1 ~ N(0, I)`` is drawn ``draws`` times per t (losses averaged): with a ``seed``, per text from
    its ``(seed, sample id)`` stream (sample ids default to positions), so a text's losses do not depend on
    the batch; else from ``generator``. Like training, the DiT timestep ``t*T`` is rounded to bf16.
    """
    batch, n, channels = z0.shape
    velocity = ConditionalVelocity(model, z0, n_lengths)
    valid = torch.arange(n, device=z0.device)[None] < n_lengths[:, None]
    sample_ids = list(range(batch)) if sample_ids is None else list(sample_ids)
    losses, zeros = [], []
    for k, t in enumerate(t_grid.tolist()):
        acc_loss = torch.zeros(batch, n, device=z0.device)
        acc_zero = torch.zeros(batch, n, device=z0.device)
        for j in range(draws):
            z1 = (text_noise(n_lengths.tolist(), n, channels, seed, sample_ids, "flow_matching", k * draws + j)
                  .to(z0.device) if seed is not None else torch.randn(z0.shape, generator=generator, device=z0.device))
            zt = (1 - t) * z0 + t * z1
            s = torch.tensor(t * velocity.T, device=z0.device).to(torch.bfloat16).float() / velocity.T
            pred = velocity(zt, s.expand(batch))
            target = z1 - z0
            acc_loss += (pred - target).pow(2).mean(-1)
            acc_zero += target.pow(2).mean(-1)
        losses.append((acc_loss / draws).masked_fill(~valid, float("nan")))
        zeros.append((acc_zero / draws).masked_fill(~valid, float("nan")))
    return FlowMatchingLoss(t=t_grid.float().cpu(), loss=torch.stack(losses).cpu(), zero=torch.stack(zeros).cpu())
