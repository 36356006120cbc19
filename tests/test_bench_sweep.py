"""The `bench` experiment kind: accuracy per task over guidance x steps x solver, equal to bench run."""
from __future__ import annotations

from pathlib import Path

import pytest

from workbench.bench import BenchConfig, run_bench
from workbench.experiments import SpecError, parse_spec, run

RELEASE = Path(__file__).parent / "fixtures" / "cola-eval-release"


@pytest.fixture
def tasks(tmp_path) -> Path:
    folder = tmp_path / "tasks"
    folder.mkdir()
    for task in ("obqa", "squad"):
        lines = (RELEASE / f"{task}.jsonl").read_text().splitlines(keepends=True)[:3]
        (folder / f"{task}.jsonl").write_text("".join(lines))
    return folder


def test_sweep_records_equal_bench_runs(tiny_model, tasks, tmp_path):
    spec = {"kind": "bench", "tasks_dir": str(tasks), "guidance": [1.0, 3.0], "steps": 2, "solver": ["euler", "heun"],
            "max_new_tokens": 4, "batch_size": 2}
    result = run(spec, tmp_path / "sweep", model=tiny_model)
    assert len(result.records) == 2 * 2 * 2
    assert {(r["guidance"], r["solver"]) for r in result.records} == {(1.0, "euler"), (1.0, "heun"), (3.0, "euler"),
                                                                      (3.0, "heun")}
    for r in result.records:
        if r["solver"] == "heun" and r["guidance"] == 3.0:
            config = BenchConfig(steps=2, guidance=3.0, solver="heun", max_new_tokens=4)
            direct = run_bench(tasks, tmp_path / "direct", config, model=tiny_model, progress=False).summary
            assert r["correct"] == direct.tasks[r["task"]].correct and r["total"] == 3
            assert r["accuracy"] == pytest.approx(direct.tasks[r["task"]].accuracy)
            assert r["mean_score"] == pytest.approx(direct.tasks[r["task"]].to_json()["mean_score"])
    page = (result.path / "report.html").read_text()
    assert "Accuracy (%) per task vs guidance" in page and "tasks_average" in page


@pytest.mark.parametrize("change, message", [
    ({"tasks": ["arc"]}, "unknown task 'arc'; known tasks: lambada"),
    ({"tasks": ["mmlu"]}, "no task file mmlu.jsonl"),
    ({"protocol": "lenient"}, "protocol must be one of official, completion"),
    ({"solver": "rk9"}, "solver: 'rk9' is not one of"),
    ({"tasks_dir": "/nonexistent"}, "tasks_dir: folder '/nonexistent' does not exist"),
])
def test_bad_bench_specs_are_refused_before_any_model_work(tasks, change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec({"kind": "bench", "tasks_dir": str(tasks), **change})
