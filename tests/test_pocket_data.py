"""The pocket's data: prose from Debian packages, the mixed corpus, WordNet dialogues and the chat metrics."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from cola_core.training.chat_eval import (ChatEvalConfig, NearestGloss, content_f1, format_chat_table,
                                         question_intervals, training_definitions)
from cola_core.training.conversations import read_conversations, write_conversations
from cola_core.training.corpus import WORDNET_DIR, build_pocket_corpus, extract_wordnet, split_corpus
from cola_core.training.prose import (DEVIL_DICT, FORTUNES_DIR, drop_overlapping, extract_devils_dictionary,
                                      extract_fortunes, sentence_pieces)
from cola_core.training.wordnet_dialogues import dialogues, read_senses, split_of

needs_wordnet = pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="apt-get install wordnet-base")
needs_prose = pytest.mark.skipif(not (FORTUNES_DIR / "wisdom").is_file() or not DEVIL_DICT.is_file(),
                                 reason="apt-get install fortunes dict-devil")


def test_sentence_pieces_join_short_sentences_and_cut_long_ones():
    text = "A cat.  It sat\n\ton the mat!  Then it left the house for good. Short."
    assert sentence_pieces(text, max_words=8, min_words=2) == ["A cat. It sat on the mat!",
                                                               "Then it left the house for good. Short."]
    assert sentence_pieces(text, max_words=6, min_words=2) == ["A cat.", "It sat on the mat!",
                                                               "Then it left the house for", "good. Short."]
    assert sentence_pieces("one two", min_words=4) == []
    quoted = "Absurdity, n. A statement or belief manifestly inconsistent with one's own opinion."
    assert drop_overlapping([quoted, "A wholly different line of six words here."],
                            ["as Bierce said: a statement or belief manifestly inconsistent with it"]) == \
        ["A wholly different line of six words here."]


def test_fortunes_and_the_devils_dictionary_parse_from_their_formats(tmp_path):
    (tmp_path / "wisdom").write_text("A clash of doctrine is not a disaster.\n%\nShort one.\n%\n"
                                     "A man said to the Universe:\n\t\"Sir, I exist!\"\n\t\t-- Stephen Crane\n")
    (tmp_path / "art").write_text("  /\\_/\\  cat drawn in ascii art here\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01")
    assert extract_fortunes(tmp_path) == ["A clash of doctrine is not a disaster.",
                                          'A man said to the Universe: "Sir, I exist!" -- Stephen Crane']
    dict_dz = tmp_path / "devil.dict.dz"
    dict_dz.write_bytes(gzip.compress(b"00-database-short\n     The Devil's Dictionary\n\n\n"
                                      b"PREFACE\n\nABSURDITY, n.  A statement or belief manifestly\n"
                                      b"inconsistent with one's own opinion.\n"))
    assert extract_devils_dictionary(dict_dz) == [
        "ABSURDITY, n. A statement or belief manifestly inconsistent with one's own opinion."]
    with pytest.raises(FileNotFoundError, match="apt-get install dict-devil"):
        extract_devils_dictionary(tmp_path / "missing.dz")


@pytest.mark.heavy   # reads all of WordNet
@needs_wordnet
@needs_prose
def test_pocket_corpus_keeps_wordnets_test_split_and_holds_out_the_devils_dictionary(tmp_path):
    sizes = build_pocket_corpus(tmp_path)
    wordnet = split_corpus(extract_wordnet())
    read = lambda name: [json.loads(line)["text"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
    assert read("test") == wordnet["test"]
    train = read("train")
    assert train[:len(wordnet["train"])] == wordnet["train"] and len(train) > len(wordnet["train"]) + 20_000
    assert not set(read("ood")) & set(train) and sizes["ood"] > 3000
    assert not set(read("fortunes_test")) & set(train)
    for name in ("WORDNET_LICENSE.txt", "FORTUNES_LICENSE.txt", "DEVILS_DICTIONARY_LICENSE.txt"):
        assert (tmp_path / name).stat().st_size > 500


@pytest.mark.heavy   # reads all of WordNet
@needs_wordnet
def test_wordnet_dialogues_answer_from_the_first_sense():
    senses = {s.word: s for s in read_senses()}
    river = senses["river"]
    assert river.definition == "a large natural stream of water (larger than a creek)"
    assert river.examples == ["the river was navigable for 50 miles"] and river.hypernym == "stream"
    assert senses["dog"].synonyms[:1] == ["domestic dog"]
    conversations = dialogues(river)
    assert conversations[0][-2:] == [("user", "What does 'river' mean?"),
                                     ("assistant", "a large natural stream of water (larger than a creek)")]
    assert [("user", "What kind of thing is 'river'?"), ("assistant", "'river' is a kind of stream.")] in conversations
    assert split_of("river") == "train" and {split_of(w) for w in list(senses)[:2000]} == {"train", "val", "test"}


def test_content_f1_and_the_nearest_gloss_baseline(tmp_path):
    assert content_f1("a large stream of water", "a large natural stream of water") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert content_f1("", "water") == 0.0 and content_f1("the of", "the of") == 0.0
    write_conversations(tmp_path / "train.jsonl", [
        [("user", "What does 'rivers' mean?"), ("assistant", "streams of water")],
        [("system", "s"), ("user", "What does 'dog' mean?"), ("assistant", "a pet")],
        [("user", "Use 'cat' in a sentence."), ("assistant", "the cat sat")]])
    definitions = training_definitions(tmp_path)
    assert definitions == {"rivers": "streams of water", "dog": "a pet"}
    baseline = NearestGloss(definitions)
    assert baseline.answer("river") == "streams of water" and baseline.answer("dogs") == "a pet"
    assert baseline.answer("zzz") == ""
    assert len(read_conversations(tmp_path / "train.jsonl")) == 3


def test_chat_intervals_pair_answers_with_the_baseline():
    rows = [{"answer": "a stream", "f1": 0.5, "baseline_f1": 0.25}, {"answer": "", "f1": 0.0, "baseline_f1": 0.5},
            {"answer": "water", "f1": 1.0, "baseline_f1": 0.75}] * 10
    ci = question_intervals(rows, resamples=400, level=0.9, seed=1)
    assert ci == question_intervals(rows, resamples=400, level=0.9, seed=1)
    for name, point in (("non_empty", 2 / 3), ("overlap_f1", 0.5), ("baseline_overlap_f1", 0.5), ("f1_minus_baseline", 0.0)):
        assert ci[name][0] < point < ci[name][1], name
    # paired: each draw's difference is its F1 minus its baseline, so the difference's interval is no wider
    # than the two means' intervals together
    assert ci["f1_minus_baseline"][1] - ci["f1_minus_baseline"][0] <= (ci["overlap_f1"][1] - ci["overlap_f1"][0]
                                                                     + ci["baseline_overlap_f1"][1] - ci["baseline_overlap_f1"][0])
    results = {"samples": 30, "non_empty": 2 / 3, "overlap_f1": 0.5, "baseline_overlap_f1": 0.5, "interval": ci}
    assert "90% intervals over the 30 questions (Wilson; bootstrap with 400 resamples for F1): non-empty" \
        in format_chat_table(results)
    every = question_intervals(rows[:1] * 200, resamples=10, level=0.95, seed=0)["non_empty"]   # 200 of 200 answered
    assert every[1] == 1.0 and every[0] == pytest.approx(0.9812, abs=1e-4)   # Wilson stays below 100 %
    with pytest.raises(ValueError, match="resamples >= 1"):
        ChatEvalConfig(resamples=0)
