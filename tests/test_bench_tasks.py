"""Task files: the official templates reproduce the release's prompts; ids give the official seeds; bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.bench import TASK_ORDER, TEMPLATES, BenchError, find_task_files, load_items, noise_id

RELEASE = Path(__file__).parent / "fixtures" / "cola-eval-release"


def _release(task: str, n: int = 50) -> list[dict]:
    return [json.loads(line) for line in (RELEASE / f"{task}.jsonl").read_text().splitlines()[:n]]


def _input_form(task: str, record: dict) -> dict:
    """Recover the official input form (question, context, choices) from a release prompt."""
    full = record.get("few_shot_prefix", "") + record["prompt"]
    template, choices = TEMPLATES[task], record.get("choices", [])
    head, tail = template.item("\0", "\1", choices).split("\0")
    body = full[len(template.few_shot()):]
    assert full.startswith(template.few_shot()) and body.startswith(head.split("\1")[0]) and body.endswith(tail)
    form = {"id": record["id"], "ground_truth": record["ground_truth"], "choices": choices}
    if task == "squad":          # "Context: {context}\nQuestion: {question}\nAnswer:"
        context, question = body[len("Context: "):-len(tail)].rsplit("\nQuestion: ", 1)
        return {**form, "context": context, "question": question}
    return {**form, "question": body[len(head):-len(tail)] if tail else body[len(head):]}


@pytest.mark.parametrize("task", TASK_ORDER)
def test_official_templates_reproduce_the_release_prompts(task, tmp_path):
    records = _release(task)
    forms = [_input_form(task, r) for r in records]
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in forms))
    items = load_items(path, task)
    assert [it.prompt for it in items] == [r.get("few_shot_prefix", "") + r["prompt"] for r in records]
    assert [it.id for it in items] == [r["id"] for r in records]
    ready = load_items(RELEASE / f"{task}.jsonl", task, max_samples=50)     # the release files are inputs too
    assert [it.prompt for it in ready] == [it.prompt for it in items]


def test_few_shot_blocks_are_the_release_prefixes():
    for task in TASK_ORDER[1:]:
        prefix = _release(task, 1)[0]["few_shot_prefix"]
        assert prefix.startswith(TEMPLATES[task].few_shot())
        assert prefix[len(TEMPLATES[task].few_shot()):] in ("Question: ", "Context: ", "Article: ", "Story: ")
    assert TEMPLATES["lambada"].prompt("as is") == "as is"


def test_noise_ids_follow_the_official_rule():
    assert noise_id(7, 0) == 7 and noise_id(-3, 0) == -3
    assert noise_id("42", 0) == 42                                    # int() parses it, as the official code
    assert noise_id("56be4db0acb8001400a502ec", 0) == 3949553719      # CRC-32 of the UTF-8 text
    assert noise_id(None, 5) == 5                                     # no id: position in the file
    squad = load_items(RELEASE / "squad.jsonl", "squad", max_samples=1)[0]
    assert squad.key == '"56be4db0acb8001400a502ec"' and squad.noise_id == 3949553719


def _write(tmp_path: Path, task: str, lines: list) -> Path:
    path = tmp_path / f"{task}.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


GOOD = {"id": 1, "question": "Why?", "choices": ["a", "b"], "ground_truth": "a"}


@pytest.mark.parametrize("task, lines, message", [
    ("siqa", [GOOD, "{not json"], r"siqa.jsonl:2: not valid JSON"),
    ("siqa", [GOOD, [1, 2]], r"siqa.jsonl:2: expected a JSON object, got list"),
    ("siqa", [{**GOOD, "ground_truth": None}], r"siqa.jsonl:1: 'ground_truth' must be a string"),
    ("siqa", [{k: v for k, v in GOOD.items() if k != "ground_truth"}], r"siqa.jsonl:1: missing 'ground_truth'"),
    ("siqa", [{**GOOD, "choices": "a, b"}], r"siqa.jsonl:1: 'choices' must be a non-empty list of strings"),
    ("mmlu", [{**GOOD, "choices": [1, 2]}], r"'choices' must be a non-empty list of strings"),
    ("mmlu", [{"id": 1, "prompt": "Q?", "ground_truth": "a"}], r"mmlu.jsonl:1: 'choices' .* \(missing\)"),
    ("story_cloze", [{**GOOD, "choices": ["a", "b", "c"]}], r"story_cloze needs exactly 2 choices"),
    ("squad", [{"id": "x", "question": "Q?", "ground_truth": "a"}], r"squad.jsonl:1: 'context' must be a string"),
    ("lambada", [{"id": 1, "ground_truth": "a"}], r"needs 'prompt' .* or 'question'"),
    ("lambada", [{"id": 1.5, "question": "q", "ground_truth": "a"}], r"'id' must be an integer or a string"),
    ("lambada", [{**GOOD, "id": 4}, GOOD, {**GOOD, "id": 4}], r"lambada.jsonl:3: id 4 already used at .*:1"),
    ("lambada", [{"id": 1, "prompt": "  ", "ground_truth": "a"}], r"empty prompt"),
    ("lambada", ["", "  "], r"no items"),
])
def test_bad_task_files_name_file_and_line(tmp_path, task, lines, message):
    path = _write(tmp_path, task, lines)
    with pytest.raises(BenchError, match=message):
        load_items(path, task)


def test_max_samples_reads_only_the_first_items(tmp_path):
    path = _write(tmp_path, "siqa", [GOOD, {**GOOD, "id": 2}, "{broken"])
    assert [it.id for it in load_items(path, "siqa", max_samples=2)] == [1, 2]


def test_task_discovery(tmp_path):
    _write(tmp_path, "obqa", [GOOD])
    _write(tmp_path, "lambada", [GOOD])
    (tmp_path / "notes.jsonl").write_text("{}\n")
    assert list(find_task_files(tmp_path)) == ["lambada", "obqa"]          # official order, others ignored
    assert list(find_task_files(tmp_path, ["obqa"])) == ["obqa"]
    with pytest.raises(BenchError, match="unknown task 'arc'; known tasks: lambada, mmlu, obqa, hellaswag"):
        find_task_files(tmp_path, ["arc"])
    with pytest.raises(BenchError, match="no task file mmlu.jsonl"):
        find_task_files(tmp_path, ["mmlu"])
    with pytest.raises(BenchError, match="no task files"):
        find_task_files(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else tmp_path)
