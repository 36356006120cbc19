"""Texts -> padded token batches -> posteriors: the shared front end of diagnostics, likelihood and projections.

Each text is tokenised and right-padded with the pad id to whole blocks (``patch_size * block_size``
tokens), as the official prompt path does; the batch is then padded to its longest row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from cola_core import ColaModel
from cola_core.config import MAX_POSITIONS
from cola_core.vae import Posterior

from .errors import WorkbenchError


@dataclass
class TextBatch:
    """A tokenised batch. ``ids`` (B, L) padded to whole blocks; ``token_mask`` marks real tokens."""

    texts: list[str]
    ids: torch.Tensor            # (B, L) long, pad id after each text
    lengths: torch.Tensor        # (B,) tokens per row after block padding (multiples of P*bs)
    token_lengths: torch.Tensor  # (B,) real tokens per text
    patch_size: int

    @property
    def token_mask(self) -> torch.Tensor:
        """(B, L) bool: real (non-padding) tokens."""
        return torch.arange(self.ids.shape[1], device=self.ids.device)[None] < self.token_lengths[:, None]

    @property
    def latent_lengths(self) -> torch.Tensor:
        """(B,) latents per row (whole blocks)."""
        return torch.div(self.lengths, self.patch_size, rounding_mode="floor")

    @property
    def latent_mask(self) -> torch.Tensor:
        """(B, n) bool: latents covering at least one real token (the others encode padding only)."""
        real = torch.div(self.token_lengths + self.patch_size - 1, self.patch_size, rounding_mode="floor")
        n = self.ids.shape[1] // self.patch_size
        return torch.arange(n, device=self.ids.device)[None] < real[:, None]


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """A non-empty list of non-blank strings, or a WorkbenchError naming the bad entry."""
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise WorkbenchError("no texts given")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise WorkbenchError(f"text {i} is not a string: {text!r}")
        if not text.strip():
            raise WorkbenchError(f"text {i} is empty or blank")
    return texts


def tokenize(model: ColaModel, texts: Sequence[str] | str, pad_to: int | None = None) -> TextBatch:
    """Tokenise and block-pad texts; ``pad_to`` forces at least that many tokens per row."""
    texts = check_texts(texts)
    tok = model.tokenizer
    chunk = model.block_size * model.patch_size
    rows = tok.encode_batch(texts)
    for i, row in enumerate(rows):
        if not row:
            raise WorkbenchError(f"text {i} produces no tokens: {texts[i]!r}")
        if len(row) > MAX_POSITIONS * model.patch_size:
            raise WorkbenchError(f"text {i} has {len(row)} tokens; the model supports at most "
                                 f"{MAX_POSITIONS * model.patch_size}")
    padded_lengths = [max(len(r), pad_to or 0) for r in rows]
    padded_lengths = [n + (-n % chunk) for n in padded_lengths]
    ids = torch.full((len(rows), max(padded_lengths)), tok.pad_id, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
    return TextBatch(texts=texts, ids=ids.to(model.device), lengths=torch.tensor(padded_lengths, device=model.device),
                     token_lengths=torch.tensor([len(r) for r in rows], device=model.device),
                     patch_size=model.patch_size)


@torch.no_grad()
def encode(model: ColaModel, batch: TextBatch) -> Posterior:
    """q(z|x) for a batch, in fp32 (VAE space: apply ``model.vae.to_dit_space`` for the DiT's)."""
    with model.autocast:
        post = model.vae.encode_ids(batch.ids, batch.lengths)
    return Posterior(mean=post.mean.float(), logvar=post.logvar.float(), valid=post.valid)


def batches(texts: Sequence[str], batch_size: int) -> Iterator[tuple[int, list[str]]]:
    """(start index, slice) chunks of ``texts``."""
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(texts), batch_size):
        yield start, list(texts[start:start + batch_size])
