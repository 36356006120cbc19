"""Tokenised corpus splits and a deterministic batch order, so a run can resume at any step exactly.

Batch ``k`` of a run is a pure function of (seed, k): epoch ``k // batches_per_epoch`` uses a
seeded permutation (optionally length-bucketed), so the data position needs no saved state.
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..text_codec import TokenBatch, pad_to_blocks
from ..tokenizer import ColaTokenizer
from .corpus import SPLITS, read_corpus

BUCKET_SPAN = 50   # length bucketing sorts windows of BUCKET_SPAN batches by length


def corpus_split_path(corpus: str | Path, split: str) -> Path:
    """The JSONL file of one split in a corpus folder, with a clear error if it is missing."""
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus folder not found: {corpus}; build one with "
                                "`cola-workbench corpus wordnet --out DIR` or `cola-workbench corpus file FILE --out DIR`")
    path = corpus / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{corpus}: missing {split}.jsonl (expected {', '.join(s + '.jsonl' for s in SPLITS)})")
    return path


@dataclass
class ChatBatch(TokenBatch):
    """A batch of rendered conversations; ``response`` (B, L) bool marks answer tokens (SFT noises these)."""

    response: torch.Tensor


class TokenDataset:
    """One split as token id lists (text + eos, cut to max_tokens)."""

    def __init__(self, texts: list[str], tokenizer: ColaTokenizer, max_tokens: int, block_size: int, patch_size: int):
        if not texts:
            raise ValueError("dataset is empty")
        if tokenizer.eos_id is None:
            raise ValueError("tokenizer has no eos token (<|endoftext|>)")
        self.tokenizer = tokenizer
        self.block_size, self.patch_size = block_size, patch_size
        self.max_tokens = max_tokens
        self.rows = [(ids + [tokenizer.eos_id])[:max_tokens] for ids in tokenizer.encode_batch(texts)]
        self.rows = [row for row in self.rows if row]

    @classmethod
    def from_corpus(cls, corpus: str | Path, split: str, tokenizer: ColaTokenizer, max_tokens: int, block_size: int,
                    patch_size: int) -> "TokenDataset":
        return cls(read_corpus(corpus_split_path(corpus, split)), tokenizer, max_tokens, block_size, patch_size)

    def __len__(self) -> int:
        return len(self.rows)

    def precede(self, start_ids: Sequence[int], share: float, seed: int) -> None:
        """Put ``start_ids`` before a fixed share of the rows (each row drawn once, in order, from
        ``random.Random(seed)``), cut to max_tokens: texts that start after a document start, such as a paragraph
        break, and texts that start a row, side by side."""
        draw = random.Random(seed)
        self.rows = [(list(start_ids) + row)[:self.max_tokens] if draw.random() < share else row for row in self.rows]

    def add_rows(self, rows: Sequence[list[int]]) -> None:
        """Append token id rows (already ending as they should, e.g. rendered chats ending in their stop token)."""
        self.rows.extend(row[:self.max_tokens] for row in rows if row)

    def collate(self, rows: list[list[int]]) -> TokenBatch:
        """Pad each row with pad ids to whole blocks, then the batch to its longest row."""
        return pad_to_blocks(rows, self.tokenizer.pad_id, self.block_size, self.patch_size)

    def take(self, indices: list[int]) -> TokenBatch:
        """The batch of the given rows."""
        return self.collate([self.rows[i] for i in indices])


class BatchOrder:
    """Deterministic batches of dataset indices: ``batch(k)`` depends only on (seed, k).

    ``dataset`` is any split with ``rows`` (token id lists) and ``take(indices) -> TokenBatch``
    (:class:`TokenDataset`, or the SFT conversations).
    """

    def __init__(self, dataset, batch_size: int, seed: int, bucketing: bool = True):
        if batch_size > len(dataset):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(dataset)} texts of the split")
        self.dataset, self.batch_size, self.seed, self.bucketing = dataset, batch_size, seed, bucketing
        self.per_epoch = len(dataset) // batch_size
        self._epoch, self._batches = -1, []
        self._lengths = torch.tensor([len(r) for r in dataset.rows])

    def _epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        perm = torch.randperm(len(self.dataset), generator=gen)[: self.per_epoch * self.batch_size]
        if not self.bucketing:
            return list(perm.view(self.per_epoch, self.batch_size))
        span = BUCKET_SPAN * self.batch_size
        batches = []
        for start in range(0, len(perm), span):
            window = perm[start:start + span]
            window = window[torch.sort(self._lengths[window], stable=True).indices]
            batches.extend(window.view(-1, self.batch_size))
        order = torch.randperm(len(batches), generator=gen)
        return [batches[i] for i in order]

    def indices(self, k: int) -> torch.Tensor:
        epoch, offset = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return self._batches[offset]

    def batch(self, k: int) -> TokenBatch:
        return self.dataset.take(self.indices(k).tolist())


def fixed_batches(dataset, batch_size: int, limit: int | None = None) -> list[TokenBatch]:
    """The split in file order as batches (validation / evaluation); ``limit`` caps their number."""
    batches = []
    for start in range(0, len(dataset), batch_size):
        if limit is not None and len(batches) >= limit:
            break
        batches.append(dataset.take(list(range(start, min(start + batch_size, len(dataset))))))
    return batches
