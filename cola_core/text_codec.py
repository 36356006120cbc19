"""Text <-> token ids <-> latents <-> DiT space: the one codec, with the one context-length rule.

A latent covers P = ``patch_size`` tokens and a block holds bs = ``block_size`` latents, so texts are
right-padded with the pad id to whole blocks of bs*P tokens (spec section 7 step 1); token i belongs
to latent i // P, and a latent is real when any of its P tokens is (step 3). A prompt keeps its
whole blocks, bs * floor(ceil(n/P) / bs) latents, as cached context; its last partial block is
re-generated with its real latents pinned (step 4). One call holds at most ``MAX_POSITIONS`` latents.
The encoder's posterior lives in VAE space; the DiT and the decoder read DiT space,
``(z - shift) * scale`` (``ColaTextVAE.to_dit_space``; spec pitfall 10).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, Sequence

import torch

from .attention import CacheView
from .checkpoint import ColaModel
from .config import MAX_POSITIONS
from .errors import GenerationError
from .tokenizer import display_text
from .vae import Posterior


# -- the length rules ------------------------------------------------------------------------------
def latent_count(n_tokens: int, patch_size: int) -> int:
    """Latents that cover ``n_tokens`` tokens: ceil(n / P)."""
    return math.ceil(n_tokens / patch_size)


def block_count(n_tokens: int, block_size: int, patch_size: int) -> int:
    """Whole blocks that hold ``n_tokens`` tokens: ceil(n / (bs*P))."""
    return math.ceil(n_tokens / (block_size * patch_size))


def context_latents(n_tokens: int, block_size: int, patch_size: int) -> int:
    """Latents of a prompt's whole blocks, cached as context before generation: bs * floor(ceil(n/P) / bs)."""
    return block_size * (latent_count(n_tokens, patch_size) // block_size)


def check_positions(needed: int, what: str, detail: str) -> None:
    """The context-length rule: one call holds at most ``MAX_POSITIONS`` latents (raises GenerationError)."""
    if needed > MAX_POSITIONS:
        raise GenerationError(f"{what} is too long: {detail} need {needed} latent positions; the model supports "
                              f"{MAX_POSITIONS}")


# -- tokens in whole blocks ------------------------------------------------------------------------
@dataclass
class TokenBatch:
    """Token rows right-padded with the pad id to whole blocks, then to the longest row."""

    ids: torch.Tensor       # (B, L) long; L a multiple of bs*P
    lengths: torch.Tensor   # (B,) tokens per row after block padding (multiples of bs*P)
    real: torch.Tensor      # (B, L) bool: the rows' own tokens (not block padding)
    patch_size: int

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "TokenBatch":
        """The same batch with ``fn`` applied to every tensor field (subclasses' fields too)."""
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if isinstance(getattr(self, f.name), torch.Tensor)})

    def to(self, device: torch.device | str) -> "TokenBatch":
        return self._map(lambda x: x.to(device))

    def rows(self, index: slice | Sequence[int]) -> "TokenBatch":
        """A sub-batch of rows (same width)."""
        index = index if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        return self._map(lambda x: x[index])

    @property
    def token_lengths(self) -> torch.Tensor:
        """(B,) real tokens per row."""
        return self.real.sum(dim=1)

    @property
    def latent_lengths(self) -> torch.Tensor:
        """(B,) latents per row (whole blocks)."""
        return torch.div(self.lengths, self.patch_size, rounding_mode="floor")

    @property
    def real_latents(self) -> torch.Tensor:
        """(B, n) bool: latents covering at least one real token (the others encode padding only)."""
        return self.real.unflatten(1, (-1, self.patch_size)).any(dim=-1)


def pad_to_blocks(rows: Sequence[Sequence[int]], pad_id: int, block_size: int, patch_size: int,
                  n_blocks: Sequence[int] | None = None) -> TokenBatch:
    """Right-pad each row with ``pad_id`` to its whole blocks (or to ``n_blocks[i]`` blocks), then to the longest."""
    chunk = block_size * patch_size
    lengths = [chunk * (block_count(len(r), block_size, patch_size) if n_blocks is None else n_blocks[i])
               for i, r in enumerate(rows)]
    ids = torch.full((len(rows), max(lengths, default=0)), pad_id, dtype=torch.long)
    real = torch.zeros(ids.shape, dtype=torch.bool)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(list(row), dtype=torch.long)
        real[b, :len(row)] = True
    return TokenBatch(ids=ids, lengths=torch.tensor(lengths, dtype=torch.long), real=real, patch_size=patch_size)


def token_slots(n_tokens: int, n_latents: int, patch_size: int) -> torch.Tensor:
    """(n_latents, P) token index held by each latent slot, -1 where the slot holds padding."""
    slots = torch.arange(n_latents * patch_size).view(n_latents, patch_size)
    return slots.masked_fill(slots >= n_tokens, -1)


# -- through the VAE -------------------------------------------------------------------------------
@torch.no_grad()
def encode_tokens(model: ColaModel, tokens: TokenBatch) -> Posterior:
    """q(z|x) in fp32 and VAE space over (B, n, C); only the columns the rows use are encoded."""
    width = int(tokens.lengths.max()) if len(tokens.lengths) else 0
    with model.autocast:
        post = model.vae.encode_ids(tokens.ids[:, :width].to(model.device), tokens.lengths.to(model.device))
    return Posterior(mean=post.mean.float(), logvar=post.logvar.float(), valid=post.valid)


@torch.no_grad()
def decode_logits(model: ColaModel, z: torch.Tensor, lengths: torch.Tensor, cache: CacheView | None = None,
                  update_cache: bool = False) -> torch.Tensor:
    """DiT-space latents (B, n, C) with per-row lengths (B,) -> fp32 logits (B, n*P, V) (block-causal decoder)."""
    with model.autocast:
        return model.vae.decode_latents(z.to(model.device, model.dtype), lengths.to(model.device), cache=cache,
                                        update_cache=update_cache).float()


def decode_text(model: ColaModel, ids: Sequence[int]) -> str:
    """Text of decoded token ids for display: pad tokens dropped (they only fill whole blocks), other special
    tokens as visible markers (``tokenizer.display_text``)."""
    pad = model.tokenizer.pad_id
    return display_text([i for i in ids if i != pad], model.tokenizer, stop_at_eos=False)


def greedy_texts(model: ColaModel, z: torch.Tensor) -> list[str]:
    """Greedy text of DiT-space latents (B, n, C), each row decoded on its own (no context)."""
    lengths = torch.full((z.shape[0],), z.shape[1], dtype=torch.long)
    return [decode_text(model, row) for row in decode_logits(model, z, lengths).argmax(dim=-1).tolist()]
