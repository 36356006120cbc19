"""Cheap word-level metrics for generated text: vocabulary hit rate, diversity, perplexity."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
BOS, EOS, UNK = "<s>", "</s>", "<unk>"


def words(text: str) -> list[str]:
    """Lowercase word tokens such as "cat" or "don't": the unit every metric here counts."""
    return _WORD.findall(text.lower())


def in_vocab_counts(texts: Iterable[str], vocab: set[str]) -> list[tuple[int, int]]:
    """(words found in vocab, words) of each text: the per-text terms of :func:`in_vocab_rate`."""
    return [(sum(word in vocab for word in tokens), len(tokens)) for tokens in map(words, texts)]


def in_vocab_rate(texts: Iterable[str], vocab: set[str]) -> float:
    """Share of words in texts found in vocab (lowercase words); 0.0 when texts hold no words."""
    counts = in_vocab_counts(texts, vocab)
    total = sum(n for _, n in counts)
    return sum(hits for hits, _ in counts) / total if total else 0.0


def first_word_in_vocab(texts: Iterable[str], vocab: set[str]) -> tuple[float, float]:
    """(in-vocab share of each text's first word, of its later words): where the non-words sit. A generated
    text's first word comes from the first block, which an unprompted sample draws without guidance."""
    counts = [[0, 0], [0, 0]]                  # [hits, words] of first words, of later words
    for tokens in map(words, texts):
        for k, word in enumerate(tokens):
            counts[k > 0][0] += word in vocab
            counts[k > 0][1] += 1
    return tuple(hits / total if total else 0.0 for hits, total in counts)


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique over total word n-grams (none cross texts), a repetition measure; 0.0 if none."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams: list[tuple[str, ...]] = []
    for text in texts:
        tokens = words(text)
        grams.extend(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))
    return len(set(grams)) / len(grams) if grams else 0.0


class BigramLM:
    """Add-k smoothed word bigram model; its perplexity tells how English-like generated text is."""

    def __init__(self, k: float = 0.01) -> None:
        if k <= 0:
            raise ValueError(f"smoothing k must be > 0, got {k}")
        self.k = k
        self.vocab: set[str] = set()
        self._bigrams: Counter[tuple[str, str]] = Counter()
        self._contexts: Counter[str] = Counter()

    def fit(self, texts: Iterable[str]) -> BigramLM:
        """Count bigrams with <s>/</s> boundaries; vocabulary = the words plus </s> and <unk>."""
        sentences = [words(text) for text in texts]
        if not any(sentences):
            raise ValueError("BigramLM.fit needs at least one text containing words")
        self.vocab = {word for sentence in sentences for word in sentence} | {EOS, UNK}
        self._bigrams.clear()
        self._contexts.clear()
        for sentence in sentences:
            for prev, word in self._pairs(sentence):
                self._bigrams[prev, word] += 1
                self._contexts[prev] += 1
        return self

    def perplexity(self, texts: Iterable[str]) -> float:
        """Perplexity over every word plus one </s> per text; unseen words count as <unk>."""
        scores = self.text_scores(texts)
        if not scores:
            raise ValueError("perplexity needs at least one text")
        return math.exp(-sum(lp for lp, _ in scores) / sum(n for _, n in scores))

    def text_scores(self, texts: Iterable[str]) -> list[tuple[float, int]]:
        """(log-probability, predicted words incl. </s>) of each text: the per-text terms of the perplexity."""
        if not self.vocab:
            raise RuntimeError("BigramLM is not fitted; call fit(train_texts) first")
        denom_extra = self.k * len(self.vocab)
        scores = []
        for text in texts:
            sentence = [word if word in self.vocab else UNK for word in words(text)]
            pairs = self._pairs(sentence)
            scores.append((sum(math.log((self._bigrams[prev, word] + self.k) / (self._contexts[prev] + denom_extra))
                               for prev, word in pairs), len(pairs)))
        return scores

    @staticmethod
    def _pairs(sentence: list[str]) -> list[tuple[str, str]]:
        """Consecutive (previous, word) pairs of a sentence padded with <s> and </s>."""
        padded = [BOS, *sentence, EOS]
        return list(zip(padded, padded[1:]))
