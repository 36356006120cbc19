"""The DiT side of one generation call: a KV cache of committed blocks and guided velocity passes.

Shared by the block-wise sampler and by anything else that transports latents block by block
(re-generation, inversion, likelihoods), so all of them make bit-identical model calls.
"""
from __future__ import annotations

import torch

from .attention import KVCache
from .checkpoint import ColaModel
from .hook_points import row_groups


def bf16_round(x: torch.Tensor) -> torch.Tensor:
    """The reference casts latents and timesteps to bf16 before every DiT call."""
    return x.to(torch.bfloat16)


class PriorContext:
    """Per-call DiT state for B samples: cache rows [0, B) hold each sample's committed context;
    rows [B, 2B) stay empty so the unconditional pass (block alone) runs in the same forward.

    ``round_inputs`` (the reference's numerics, used by its Euler loop) rounds latents and times to bf16
    before every call; without it the DiT sees them in fp32 (``cola_core.sampler.rounds_dit_inputs``).
    """

    def __init__(self, model: ColaModel, batch: int, round_inputs: bool = True, cache: KVCache | None = None):
        """``cache``: the 2B rows to continue from (e.g. rows regrouped by a batching engine); default a new one."""
        self.model = model
        self.batch = batch
        self.round_inputs = round_inputs
        self.cache = model.dit.new_cache(2 * batch) if cache is None else cache

    @torch.no_grad()
    def _dit(self, z: torch.Tensor, t: torch.Tensor, rows: slice, update: bool,
             lengths: torch.Tensor | None = None) -> torch.Tensor:
        model = self.model
        if lengths is None:
            lengths = torch.full((z.shape[0],), z.shape[1], dtype=torch.long, device=model.device)
        x, t = self.inputs(z, t)
        with model.autocast:
            return model.dit(x, t, lengths, cache=self.cache.view(rows), update_cache=update)

    def inputs(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the DiT is fed: z in the model's dtype, t in fp32, both rounded to bf16 first when ``round_inputs``."""
        if self.round_inputs:
            z, t = bf16_round(z), bf16_round(t)
        return z.to(self.model.dtype), t.float()

    def expect(self, times: torch.Tensor) -> None:
        """Told the times the call will use (a fast context prepares for them; nothing to do here)."""

    def release(self) -> None:
        """The call is over (a fast context gives its buffers back; nothing to do here)."""

    def velocities(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, bs, C) fp32, t (B, bs) -> (v_cond over the cached context, v_uncond over the block alone).

        Hook points inside this forward are named ``dit.cond.*`` (rows [0, B)) and ``dit.uncond.*`` (rows [B, 2B)).
        """
        batch = self.batch
        with row_groups(cond=slice(0, batch), uncond=slice(batch, 2 * batch)):
            out = self._dit(torch.cat([z, z]), torch.cat([t, t]), slice(0, 2 * batch), update=False)
        return out[:self.batch], out[self.batch:]

    def prefill(self, prefix: torch.Tensor, lengths: torch.Tensor) -> None:
        """Write clean prompt prefixes (B, Lp, C) with per-sample lengths (B,) into the context at t=0."""
        self._dit(prefix, torch.zeros(prefix.shape[:2], device=prefix.device), slice(0, self.batch), update=True,
                  lengths=lengths)

    def commit(self, z: torch.Tensor) -> None:
        """Append a finished block (B, bs, C) to every sample's context at t=0 (the reference's commit pass)."""
        self._dit(z.float(), torch.zeros(z.shape[:2], device=z.device), slice(0, self.batch), update=True)
