"""The official scorer's rules: the release's table to the last digit, every record's score, edge rules."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workbench.bench import TASK_ORDER, score_folder, score_record
from workbench.bench.scorer import (answer_segment, extract_choice, extract_gold, extract_letter, match_by_text,
                                    normalize, similarity, split_generate)
from apps.cli import main

RELEASE = Path(__file__).parent / "fixtures" / "cola-eval-release"


@pytest.fixture(scope="module")
def release_summary():
    return score_folder(RELEASE)


def test_release_table_reproduced_to_the_last_digit(release_summary, tmp_path):
    assert list(release_summary.tasks) == list(TASK_ORDER)
    table = {t: f"{r.accuracy:.2f}" for t, r in release_summary.tasks.items()}
    assert table == {"lambada": "50.80", "mmlu": "19.30", "obqa": "23.00", "hellaswag": "10.70", "race": "19.60",
                     "siqa": "28.90", "squad": "30.90", "story_cloze": "30.77"}
    assert f"{release_summary.average:.2f}" == "26.75"
    assert release_summary.csv_text().encode() == (RELEASE / "accuracy_summary.csv").read_bytes()   # CRLF too


def test_every_record_scored_as_the_official_scorer_did(release_summary):
    golden = json.loads((RELEASE / "official_scores.json").read_text())
    for task, result in release_summary.tasks.items():
        mine = []
        for s in result.scored:
            extracted = [s.record[k] for k in ("extracted_gen_word", "extracted_gt_word", "extracted_gen_choice",
                                               "extracted_gt_choice") if k in s.record]
            mine.append([s.record["id"], s.correct, s.record["similarity_score"], *extracted])
        assert mine == golden[task], task


def test_score_command_writes_official_files_and_leaves_inputs_alone(tmp_path, capsys):
    src = tmp_path / "tasks_default"
    src.mkdir()
    for task in ("mmlu", "squad"):
        shutil.copy(RELEASE / f"{task}.jsonl", src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert main(["bench", "score", str(src), "--name", "mine"]) == 0
    assert "mmlu" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.name in before} == before
    assert (src / "accuracy_summary.csv").read_text().splitlines() == [
        "task,mine", "lambada,", "mmlu,19.30", "obqa,", "hellaswag,", "race,", "siqa,", "squad,30.90",
        "story_cloze,", "tasks_average,25.10"]
    wrong = [json.loads(line) for line in (src / "mmlu_wrong.jsonl").read_text().splitlines()]
    correct = [json.loads(line) for line in (src / "mmlu_correct.jsonl").read_text().splitlines()]
    assert (len(correct), len(wrong)) == (193, 807)
    assert wrong[0]["id"] == 0 and wrong[0]["extracted_gen_choice"] == "" and wrong[0]["extracted_gt_choice"] == "B"
    summary = json.loads((src / "summary.json").read_text())
    assert summary["format"] == "cola-workbench/bench-summary@1" and summary["protocol"] is None
    mmlu = summary["tasks"]["mmlu"]
    assert (mmlu["correct"], mmlu["total"], mmlu["accuracy"]) == (193, 1000, 19.3)
    assert mmlu["ci95"][0] == pytest.approx(16.973, abs=1e-3) and mmlu["ci95"][1] == pytest.approx(21.862, abs=1e-3)
    assert summary["tasks_average"] == pytest.approx((19.3 + 30.9) / 2)
    assert "plotly" in (src / "report.html").read_text()[:300_000].lower()


def test_compare_puts_a_second_summary_side_by_side(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(RELEASE / "obqa.jsonl", other)
    assert main(["bench", "score", str(other), "--out", str(tmp_path / "o1")]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    records = [json.loads(line) for line in (RELEASE / "obqa.jsonl").read_text().splitlines()][:10]
    (mine / "obqa.jsonl").write_text("".join(json.dumps({**r, "generate": r["ground_truth"]}) + "\n" for r in records))
    assert main(["bench", "score", str(mine), "--out", str(tmp_path / "o2"), "--compare", str(tmp_path / "o1")]) == 0
    page = (tmp_path / "o2" / "report.html").read_text()
    assert "100.00 (10/10;" in page and "23.00 (115/500;" in page


# -- the rules, one at a time -----------------------------------------------------------------------------
def test_generate_is_split_at_the_first_newline_after_a_word():
    assert split_generate({"generate": "\n\n Paris\nnext question"}) == {"generate": "\n\n Paris",
                                                                          "others": "next question"}
    assert split_generate({"generate": " no newline"}) == {"generate": " no newline"}
    assert split_generate({"generate": "\n \n"}) == {"generate": "\n \n"}
    once = split_generate({"generate": "a\nb\nc"})
    assert split_generate(once) == once == {"generate": "a", "others": "b\nc"}


def test_normalize_and_similarity():
    assert normalize("  The  Cat's\tHAT! ") == "the cats hat"
    assert similarity("", "?!") == 1.0 and similarity("abc", "") == 0.0
    assert similarity("Denver Broncos", "denver broncos.") == 1.0
    assert similarity("abcd", "abce") == 0.75


def test_letter_extraction():
    assert extract_letter("(b).", 4) == "B"
    assert extract_letter(" [ c ] ", 4) == "C"
    assert extract_letter("E", 4) == ""                                   # out of range
    assert extract_letter("I think the answer is (C), not option A.", 4) == "A"   # the last keyword wins
    assert extract_letter("Answer: D because", 4) == "D"
    assert extract_letter("answer: Dog", 4) == ""                         # a word, not a letter
    assert extract_letter("maybe (B) or (C)", 4) == "C"                   # short text: last bracketed letter
    assert extract_letter("x" * 40 + " (B)", 4) == ""                     # too long for the bracket rule


def test_answer_segment_and_choice_extraction():
    choices = ["red apple", "green pear", "blue plum"]
    assert answer_segment("thinking...\nFinal answer: green pear\n") == "green pear"
    assert answer_segment("no marker here") == "no marker here"
    assert extract_choice("Let me see.\nThe answer is: Blue plum", choices) == "C"
    assert extract_choice(" green pear", choices) == "B"
    assert extract_choice("I like the red apple a lot", choices) == "A"        # exactly one choice contained
    assert extract_choice("red apple or green pear", choices) == ""           # two contained, none similar
    assert extract_choice("gren pear", choices) == "B"                        # similarity >= 0.9
    assert extract_choice("anything", []) == ""
    assert match_by_text("The correct answer is green pear", choices) == "B"
    assert extract_gold("green pear", choices) == "B" and extract_gold("(a)", choices) == "A"


def test_task_rules():
    lam = score_record("lambada", {"generate": " Robot, since he", "ground_truth": "robot"})
    assert lam.correct and lam.record["extracted_gen_word"] == "robot"
    choice = {"generate": " (B)", "ground_truth": "green pear", "choices": ["red apple", "green pear"]}
    assert score_record("siqa", choice).correct
    near = score_record("obqa", {**choice, "generate": " pear"})               # wrong letter: similarity counts
    assert not near.correct and near.score == pytest.approx(similarity("pear", "green pear"))
    assert score_record("mmlu", {**choice, "generate": " Green pear.", "choices": []}).correct   # textual match
    squad = score_record("squad", {"generate": " The Denver Broncos\nQuestion: next", "ground_truth": "Denver Broncos"})
    assert not squad.correct and squad.record["others"] == "Question: next"
    assert squad.record["similarity_score"] == round(similarity("The Denver Broncos", "Denver Broncos"), 4)
    assert score_record("story_cloze", {"generate": "He won.", "answer": "he won"}).correct   # 'answer' fallback
