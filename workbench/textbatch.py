"""Texts in: checked, tokenised and block-aligned through cola_core's codec (``cola_core.text_codec``).

The shared front end of encode, diagnostics, likelihood and projections. Every problem is a
``WorkbenchError`` naming the text.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from cola_core import ColaModel
from cola_core.text_codec import TokenBatch, block_count, check_positions, pad_to_blocks

from .errors import WorkbenchError, as_workbench_error


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


def tokenize(model: ColaModel, texts: Sequence[str] | str, pad_to: int | str | None = None) -> TokenBatch:
    """Check, tokenise and pad texts to whole blocks, on the model's device.

    ``pad_to`` (a block count or ``"longest"``) pads every text further with pad tokens to that many
    blocks (the encoder is block-causal, so the real blocks do not change).
    """
    texts = check_texts(texts)
    bs, patch = model.block_size, model.patch_size
    rows = model.tokenizer.encode_batch(texts)
    n_blocks = [block_count(len(row), bs, patch) for row in rows]
    for i, n in enumerate(n_blocks):
        if n == 0:
            raise WorkbenchError(f"text {i} encodes to no tokens: {texts[i]!r}")
    if pad_to == "longest":
        n_blocks = [max(n_blocks)] * len(rows)
    elif pad_to is not None:
        if not isinstance(pad_to, int) or pad_to < max(n_blocks):
            raise WorkbenchError(f"pad_to must be 'longest' or a block count >= {max(n_blocks)}, got {pad_to!r}")
        n_blocks = [pad_to] * len(rows)
    with as_workbench_error():
        for i, (row, n) in enumerate(zip(rows, n_blocks)):
            check_positions(n * bs, f"text {i}", f"{len(row)} tokens")
    return pad_to_blocks(rows, model.tokenizer.pad_id, bs, patch, n_blocks).to(model.device)


def batches(texts: Sequence[str], batch_size: int) -> Iterator[tuple[int, list[str]]]:
    """(start index, slice) chunks of ``texts``."""
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(texts), batch_size):
        yield start, list(texts[start:start + batch_size])


def length_groups(n_blocks: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices of texts in batches of at most ``batch_size`` that share one block count (shortest first).

    Padding a text to a neighbour's length changes the float rounding of its numbers, so batching only
    equal lengths makes every per-text number independent of which texts share its batch.
    """
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    for width in sorted(set(n_blocks)):
        group = [i for i, n in enumerate(n_blocks) if n == width]
        for start in range(0, len(group), batch_size):
            yield group[start:start + batch_size]


def block_counts(model: ColaModel, texts: Sequence[str]) -> list[int]:
    """Whole blocks each text needs (texts already checked)."""
    rows = model.tokenizer.encode_batch(list(texts))
    return [block_count(len(row), model.block_size, model.patch_size) for row in rows]
