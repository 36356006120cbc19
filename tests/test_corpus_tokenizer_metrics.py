"""Tests for the WordNet corpus builder, BPE tokenizer training and generated-text metrics."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from cola_core.training.corpus import (
    WORDNET_DIR,
    WORDNET_LICENSE,
    build_wordnet_corpus,
    extract_wordnet,
    read_corpus,
    split_corpus,
    write_jsonl,
)
from cola_core.training.evaluate import EvalConfig, sample_intervals
from cola_core.training.text_metrics import (BigramLM, distinct_n, first_word_in_vocab, in_vocab_counts, in_vocab_rate,
                                             words)
from cola_core.training.tokenizer_train import SPECIAL_TOKENS, train_bpe_tokenizer

needs_wordnet = pytest.mark.skipif(
    not (WORDNET_DIR / "data.noun").is_file(),
    reason="WordNet not installed (apt-get install wordnet-base)",
)


@pytest.fixture(scope="module")
def wordnet() -> list[str]:
    """WordNet pieces, extracted once for the whole module."""
    return extract_wordnet()


@pytest.fixture(scope="module")
def toy_corpus() -> list[str]:
    """A small varied English corpus, enough for a few hundred BPE merges."""
    adjectives = ["quick", "lazy", "brown", "small", "bright", "silent", "ancient", "curious"]
    nouns = ["fox", "dog", "river", "mountain", "teacher", "garden", "engine", "window"]
    verbs = ["jumps over", "runs past", "watches", "follows", "ignores", "remembers"]
    rng = random.Random(0)
    return [
        f"The {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} "
        f"the {rng.choice(adjectives)} {rng.choice(nouns)}."
        for _ in range(2000)
    ]


# --- WordNet extraction and splits -------------------------------------------------------


@needs_wordnet
def test_extract_wordnet_has_glosses_and_examples(wordnet: list[str]) -> None:
    assert len(wordnet) > 100_000
    assert len(set(wordnet)) == len(wordnet)
    # data.noun 00001740 (entity): the very first gloss.
    assert wordnet[0] == (
        "that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)"
    )
    # data.verb (breathe): a definition and an example sentence with its quotes stripped.
    assert "draw air into, and expel out of, the lungs" in wordnet
    assert "I can breathe better when the air is clean" in wordnet
    # data.adj (unobjectionable): the `;` inside the quoted example does not split it.
    assert "the ends are unobjectionable; it's the means that one can't accept" in wordnet
    assert all(len(p) >= 2 and p == p.strip() and "  " not in p for p in wordnet)


def test_extract_wordnet_missing_dir_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        extract_wordnet(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="data.noun"):
        extract_wordnet(tmp_path)


@needs_wordnet
def test_split_is_deterministic_disjoint_and_complete(wordnet: list[str]) -> None:
    splits = split_corpus(wordnet)
    shuffled = wordnet[:]
    random.Random(1).shuffle(shuffled)
    again = split_corpus(shuffled)
    sets = {name: set(texts) for name, texts in splits.items()}
    assert sets == {name: set(texts) for name, texts in again.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sum(len(texts) for texts in splits.values()) == len(wordnet)
    for name in ("val", "test"):
        assert 0.005 < len(splits[name]) / len(wordnet) < 0.02


def test_split_rejects_bad_moduli() -> None:
    with pytest.raises(ValueError, match="val_every"):
        split_corpus(["a text"], val_every=1)


@needs_wordnet
@pytest.mark.skipif(not WORDNET_LICENSE.is_file(), reason="WordNet licence file not installed")
def test_build_wordnet_corpus_writes_splits_and_licence(tmp_path: Path, wordnet: list[str]) -> None:
    counts = build_wordnet_corpus(tmp_path)
    expected = split_corpus(wordnet)
    assert counts == {name: len(texts) for name, texts in expected.items()}
    assert read_corpus(tmp_path / "val.jsonl") == expected["val"]
    assert "Princeton" in (tmp_path / "WORDNET_LICENSE.txt").read_text()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


# --- Corpus files ------------------------------------------------------------------------


def test_read_corpus_txt_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "docs.txt"
    txt.write_text("first doc\n\n   \n  second doc  \n", encoding="utf-8")
    assert read_corpus(txt) == ["first doc", "second doc"]

    texts = ['a "quoted" text', "ünïcode — ok", "line\nbreak"]
    jsonl = tmp_path / "docs.jsonl"
    write_jsonl(jsonl, texts)
    assert read_corpus(jsonl) == texts
    lines = jsonl.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["text"] for line in lines] == texts


def test_read_corpus_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        read_corpus(empty)

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2: malformed JSON"):
        read_corpus(broken)

    no_text = tmp_path / "no_text.jsonl"
    no_text.write_text('{"text": "fine"}\n\n{"body": "x"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match='line 3: .*"text"'):
        read_corpus(no_text)

    with pytest.raises(FileNotFoundError, match="missing.txt"):
        read_corpus(tmp_path / "missing.txt")

    with pytest.raises(ValueError, match="extension '.csv'"):
        read_corpus(tmp_path / "docs.csv")


def test_write_jsonl_rejects_non_strings_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="#1"):
        write_jsonl(tmp_path / "out.jsonl", ["ok", 3])
    assert list(tmp_path.iterdir()) == []


# --- Tokenizer ---------------------------------------------------------------------------


def test_tokenizer_special_ids_vocab_size_and_file(
    tmp_path: Path, toy_corpus: list[str]
) -> None:
    out = tmp_path / "tok" / "tokenizer.json"
    tokenizer = train_bpe_tokenizer(toy_corpus, vocab_size=300, out_path=out)
    assert SPECIAL_TOKENS == {
        "<|pad|>": 0, "<|endoftext|>": 1, "<|mask|>": 2, "<|im_start|>": 3, "<|im_end|>": 4
    }
    for token, token_id in SPECIAL_TOKENS.items():
        assert tokenizer.token_to_id(token) == token_id
    assert tokenizer.get_vocab_size() == 300
    assert out.is_file()
    loaded = type(tokenizer).from_file(str(out))
    assert loaded.encode(toy_corpus[0]).ids == tokenizer.encode(toy_corpus[0]).ids


def test_tokenizer_round_trips_any_text(toy_corpus: list[str]) -> None:
    tokenizer = train_bpe_tokenizer(toy_corpus, vocab_size=400)
    assert tokenizer.get_vocab_size() <= 400
    samples = [
        toy_corpus[0],
        "The quick fox",
        "  leading and  double spaces, trailing ",
        "tabs\tand\nnewlines\r\n",
        "naïve café — 東京 🙂 unseen bytes",
        "",
    ]
    for text in samples:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    # Merges learned from the corpus make common text shorter than its byte count.
    assert len(tokenizer.encode(toy_corpus[0]).ids) < len(toy_corpus[0].encode()) / 2


@pytest.mark.parametrize("vocab_size", [299, 200_001])
def test_tokenizer_rejects_bad_vocab_size(vocab_size: int) -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(["text"], vocab_size=vocab_size)


# --- Text metrics ------------------------------------------------------------------------


def test_words() -> None:
    # ASCII letters only, so "café" loses its accented letter.
    expected = ["don't", "stop", "it's", "o'clock", "caf"]
    assert words("Don't STOP, it's 3 o'clock — café!") == expected
    assert words("") == []


def test_in_vocab_rate() -> None:
    assert in_vocab_rate(["The cat sat", "zzz cat"], {"the", "cat", "sat"}) == pytest.approx(4 / 5)
    assert in_vocab_rate(["", "123 !"], {"the"}) == 0.0


def test_first_word_in_vocab_splits_first_words_from_later_ones() -> None:
    vocab = {"the", "cat", "sat"}
    assert first_word_in_vocab(["zzz cat sat", "The qqq", "", "cat"], vocab) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert first_word_in_vocab(["", "!"], vocab) == (0.0, 0.0)


def test_in_vocab_counts_are_the_rate_per_text() -> None:
    assert in_vocab_counts(["The cat sat", "zzz cat", ""], {"the", "cat", "sat"}) == [(3, 3), (1, 2), (0, 0)]


def test_bigram_text_scores_add_up_to_the_perplexity() -> None:
    lm = BigramLM(k=1.0).fit(["a b"])
    scores = lm.text_scores(["a b", "C"])
    assert scores == [(pytest.approx(3 * math.log(0.4)), 3), (pytest.approx(math.log(1 / 5) + math.log(1 / 4)), 2)]
    assert lm.perplexity(["a b", "C"]) == pytest.approx(math.exp(-sum(lp for lp, _ in scores) / 5))


def test_sample_intervals_bracket_the_estimate_and_are_reproducible() -> None:
    vocab, lm = {"the", "cat", "sat"}, BigramLM(k=1.0).fit(["the cat sat", "a cat"])
    continuations = ["cat sat", "zzz", "the cat", "qq cat", "sat", "xx yy"] * 5           # 30 samples, 60 % real
    texts = [f"the {c}" for c in continuations]
    real = lm.perplexity(["the cat sat"])
    first = sample_intervals(continuations, texts, vocab, lm, real, resamples=500, level=0.9, seed=3)
    assert first == sample_intervals(continuations, texts, vocab, lm, real, resamples=500, level=0.9, seed=3)
    low, high = first["in_vocab"]
    assert low < in_vocab_rate(continuations, vocab) < high and 0.0 <= low and high <= 1.0
    low, high = first["ppl_ratio_vs_real"]
    assert low < lm.perplexity(texts) / real < high
    wider = sample_intervals(continuations, texts, vocab, lm, real, resamples=500, level=0.99, seed=3)
    assert wider["in_vocab"][0] <= first["in_vocab"][0] and wider["in_vocab"][1] >= first["in_vocab"][1]
    same = sample_intervals(["cat sat"] * 8, ["the cat sat"] * 8, vocab, lm, real, resamples=50, level=0.95, seed=0)
    assert same["in_vocab"] == [1.0, 1.0] and same["ppl_ratio_vs_real"] == [pytest.approx(1.0)] * 2
    with pytest.raises(ValueError, match="resamples >= 1"):
        EvalConfig(resamples=0)
    with pytest.raises(ValueError, match="0 < level < 1"):
        EvalConfig(level=1.0)


def test_distinct_n() -> None:
    assert distinct_n(["a a b", "b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    # Bigrams do not cross text boundaries: "b c" would otherwise be counted.
    assert distinct_n(["a b", "c d"], 2) == pytest.approx(1.0)
    assert distinct_n(["a", ""], 2) == 0.0
    with pytest.raises(ValueError, match="n must be"):
        distinct_n(["a"], 0)


def test_bigram_perplexity_hand_computed() -> None:
    # Vocabulary {a, b, </s>, <unk>} (V=4), k=1; each context was seen once.
    lm = BigramLM(k=1.0).fit(["a b"])
    # P(a|<s>) = P(b|a) = P(</s>|b) = (1 + 1) / (1 + 4) = 0.4
    assert lm.perplexity(["a b"]) == pytest.approx(2.5)
    # "c" -> <unk>: P(<unk>|<s>) = 1/5, P(</s>|<unk>) = 1/4 (unseen context).
    assert lm.perplexity(["C"]) == pytest.approx(math.sqrt(20))


def test_bigram_errors() -> None:
    with pytest.raises(RuntimeError, match="not fitted"):
        BigramLM().perplexity(["a"])
    with pytest.raises(ValueError, match="at least one text"):
        BigramLM().fit(["", "123"])
    with pytest.raises(ValueError, match="at least one text"):
        BigramLM().fit(["a b"]).perplexity([])
    with pytest.raises(ValueError, match="k must be"):
        BigramLM(k=0)


@needs_wordnet
def test_bigram_prefers_real_word_order(wordnet: list[str]) -> None:
    train = split_corpus(wordnet)["train"][:20_000]
    lm = BigramLM().fit(train)
    sample = train[:500]
    rng = random.Random(2)
    shuffled = []
    for text in sample:
        tokens = words(text)
        rng.shuffle(tokens)
        shuffled.append(" ".join(tokens))
    assert lm.perplexity(sample) < lm.perplexity(shuffled) / 2
