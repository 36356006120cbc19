"""bench run: official seeds and templates give cola_core's tokens; batching, resuming and folders."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import workbench.bench.runner as bench_runner
from cola_core.generate import generate
from workbench.bench import BenchConfig, BenchError, generate_records, load_items, run_bench, score_folder
from apps.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"
RELEASE = Path(__file__).parent / "fixtures" / "cola-eval-release"
FAST = BenchConfig(steps=2, guidance=3.0, max_new_tokens=8)


def _slice(tmp_path: Path, tasks: dict[str, int]) -> Path:
    """A task folder with the first lines of some release files (ready prompts, official ids)."""
    folder = tmp_path / "tasks"
    folder.mkdir(parents=True, exist_ok=True)
    for task, n in tasks.items():
        lines = (RELEASE / f"{task}.jsonl").read_text().splitlines(keepends=True)[:n]
        (folder / f"{task}.jsonl").write_text("".join(lines))
    return folder


def _files(folder: Path) -> dict[str, str]:
    """Every result file's text; summary.json without its runtime (seconds differ between runs)."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = path.read_text()
        if path.name == "summary.json":
            text = json.dumps({k: v for k, v in json.loads(text).items() if k != "runtime"})
        out[str(path.relative_to(folder))] = text
    return out


def test_generation_matches_the_official_goldens_token_for_token(tiny_model, golden_meta, tmp_path):
    """lambada's template is the question itself: the reference's own outputs for ids 0, 1, 2."""
    gen = golden_meta["generate"]
    path = tmp_path / "lambada.jsonl"
    path.write_text("".join(json.dumps({**p, "ground_truth": "x"}) + "\n" for p in gen["prompts"]))
    items = load_items(path, "lambada")
    for tag in ("g1_n4", "g3_n8"):
        run = gen["runs"][tag]
        config = BenchConfig(steps=run["timestep_num"], guidance=run["guidance_scale"],
                             max_new_tokens=gen["call"]["max_new_tokens"],
                             seed=int(gen["env"]["COLA_INFER_PER_SAMPLE_NOISE_SEED"]))
        records = generate_records(tiny_model, items, config)
        expected = run["flavors"]["fp32_dit"]
        assert [r["text"] for r in records] == expected["generated_text"]
        assert [r["token_ids"] for r in records] == expected["trimmed_ids"]


@pytest.mark.parametrize("task", ["mmlu", "squad", "story_cloze"])
def test_official_templates_and_ids_give_cola_core_rows_whatever_the_batching(tiny_model, task):
    items = load_items(RELEASE / f"{task}.jsonl", task, max_samples=4)
    expected = generate(tiny_model, [it.prompt for it in items], FAST.generation(),
                        sample_ids=[it.noise_id for it in items])
    together = generate_records(tiny_model, items, FAST)
    assert [r["text"] for r in together] == [g.text for g in expected]
    assert [r["completion"] for r in together] == [g.completion for g in expected]
    one_by_one = [generate_records(tiny_model, [it], FAST)[0] for it in reversed(items)][::-1]
    assert one_by_one == together
    if task == "squad":   # string ids seed by CRC-32: a sample's noise follows its id, not its row
        assert items[0].noise_id == 3949553719


def test_run_writes_release_format_and_scores_it(tiny_model, tmp_path):
    tasks = _slice(tmp_path, {"lambada": 3, "obqa": 4, "squad": 3})
    result = run_bench(tasks, tmp_path / "out", FAST, batch_size=2, model=tiny_model, progress=False)
    out = result.path
    items = load_items(tasks / "obqa.jsonl", "obqa")
    expected = generate(tiny_model, [it.prompt for it in items], FAST.generation(),
                        sample_ids=[it.noise_id for it in items])
    records = [json.loads(line) for line in (out / "obqa.jsonl").read_text().splitlines()]
    assert [r["id"] for r in records] == [0, 8, 16, 24]
    assert [list(r) for r in records][0][:4] == ["id", "prompt", "generate", "ground_truth"]
    for r, it, g in zip(records, items, expected):
        assert r["few_shot_prefix"] + r["prompt"] == it.prompt
        assert r["generate"] + ("\n" + r["others"] if "others" in r else "") == g.text   # untrimmed (official)
    stored = [json.loads(line) for line in (out / "generations" / "obqa.jsonl").read_text().splitlines()]
    assert [s["token_ids"] for s in stored] == [g.token_ids for g in expected]
    summary = result.summary
    assert summary.protocol == "official" and list(summary.tasks) == ["lambada", "obqa", "squad"]
    assert summary.run["config"]["guidance"] == 3.0 and summary.run["checkpoint"]["fingerprint"] == tiny_model.fingerprint
    assert summary.runtime["generated"] == 10 and summary.runtime["samples_per_s"] > 0
    assert summary.runtime["tasks"]["obqa"]["generated"] == 4
    rescored = score_folder(out)                        # the written outputs score the same
    assert rescored.csv_text().encode() == (out / "accuracy_summary.csv").read_bytes()
    assert rescored.protocol == "official" and rescored.run == summary.run and summary.run["max_samples"] == 1000
    assert json.loads((out / "bench.json").read_text())["config"]["protocol"] == "official"


def test_completion_protocol_scores_the_text_cut_at_eos(tiny_model, tmp_path):
    tasks = _slice(tmp_path, {"siqa": 3})
    config = BenchConfig(steps=2, guidance=3.0, max_new_tokens=8, protocol="completion")
    result = run_bench(tasks, tmp_path / "out", config, model=tiny_model, progress=False)
    items = load_items(tasks / "siqa.jsonl", "siqa")
    expected = generate(tiny_model, [it.prompt for it in items], config.generation(),
                        sample_ids=[it.noise_id for it in items])
    records = [json.loads(line) for line in (result.path / "siqa.jsonl").read_text().splitlines()]
    assert [r["generate"] + ("\n" + r["others"] if "others" in r else "") for r in records] == \
        [g.completion for g in expected]
    assert result.summary.protocol == "completion"
    with pytest.raises(BenchError, match=r"differs in: protocol \('completion' there, 'official' here\)"):
        run_bench(tasks, tmp_path / "out", FAST, model=tiny_model, progress=False)


def test_both_protocols_store_batch_independent_records_past_eos():
    """The pocket checkpoint stops early: official rows run on past EOS, completion rows keep only up to it."""
    from cola_core import load_pretrained
    from cola_core.pocket import default_checkpoint

    pocket = load_pretrained(default_checkpoint())
    items = load_items(RELEASE / "siqa.jsonl", "siqa", max_samples=4)
    for protocol in ("official", "completion"):
        config = BenchConfig(steps=2, max_new_tokens=12, protocol=protocol)
        together = generate_records(pocket, items, config)
        assert [generate_records(pocket, [it], config)[0] for it in items] == together
        assert all(r["eos_index"] is not None for r in together)           # every row said EOS early...
        lengths = {len(r["token_ids"]) for r in together}
        if protocol == "official":                                          # ...and ran on past it
            assert all(len(r["token_ids"]) > r["eos_index"] + 1 and "<|endoftext|>" in r["text"] for r in together)
        else:
            assert all(len(r["token_ids"]) == r["eos_index"] + 1 for r in together) and max(lengths) < 12
        assert all("<|endoftext|>" not in r["completion"] for r in together)


def test_interrupted_run_resumes_without_recomputing(tiny_model, tmp_path, monkeypatch):
    tasks = _slice(tmp_path, {"mmlu": 5, "siqa": 3})
    reference = run_bench(tasks, tmp_path / "reference", FAST, batch_size=2, model=tiny_model, progress=False).path
    real = bench_runner.generate_records
    calls: list[list[str]] = []

    def flaky(model, items, config):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append([it.key for it in items])
        return real(model, items, config)

    monkeypatch.setattr(bench_runner, "generate_records", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_bench(tasks, tmp_path / "out", FAST, batch_size=2, model=tiny_model, progress=False)
    assert not (tmp_path / "out" / "mmlu.jsonl").exists()
    calls.clear()
    monkeypatch.setattr(bench_runner, "generate_records", lambda *a: calls.append([it.key for it in a[1]]) or real(*a))
    resumed = run_bench(tasks, tmp_path / "out", FAST, batch_size=3, model=tiny_model, progress=False)
    assert calls == [["32"], ["0", "8", "16"]]                 # mmlu's 5th item, then all of siqa: nothing twice
    assert resumed.summary.runtime["tasks"]["mmlu"]["generated"] == 1
    assert _files(tmp_path / "out") == _files(reference)
    calls.clear()
    run_bench(tasks, tmp_path / "out", FAST, model=tiny_model, progress=False)
    assert calls == [] and _files(tmp_path / "out") == _files(reference)


def test_a_torn_last_line_is_ignored_and_cut(tiny_model, tmp_path):
    tasks = _slice(tmp_path, {"obqa": 3})
    reference = run_bench(tasks, tmp_path / "reference", FAST, model=tiny_model, progress=False).path
    out = tmp_path / "out"
    run_bench(tasks, out, FAST, max_samples=2, model=tiny_model, progress=False)
    store = out / "generations" / "obqa.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    store.write_text(lines[0])
    (out / "generations" / "obqa.rank0.jsonl").write_text(lines[1][:40])       # a write cut by a kill
    run_bench(tasks, out, FAST, model=tiny_model, progress=False)
    assert _files(out) == _files(reference)


def test_folders_holding_other_results_are_refused_and_left_alone(tiny_model, tmp_path, capsys):
    tasks = _slice(tmp_path, {"obqa": 2})
    out = tmp_path / "out"
    run_bench(tasks, out, FAST, model=tiny_model, progress=False)
    before = _files(out)
    argv = ["bench", "run", "--tasks", str(tasks), "--out", str(out), "--checkpoint", str(FIXTURE), "--quiet",
            "--steps", "2", "--max-new-tokens", "8"]
    assert main(argv + ["--guidance", "5"]) == 2
    err = capsys.readouterr().err
    assert "differs in: guidance (3.0 there, 5.0 here)" in err and "start fresh with another --out" in err
    assert len(err.strip().splitlines()) == 1
    meta = json.loads((out / "bench.json").read_text())
    meta["checkpoint"]["fingerprint"] = "0" * 16
    (out / "bench.json").write_text(json.dumps(meta))
    before["bench.json"] = (out / "bench.json").read_text()
    assert main(argv + ["--guidance", "3"]) == 2
    assert "differs in: checkpoint" in capsys.readouterr().err
    assert _files(out) == before
    assert main(["bench", "run", "--tasks", str(tasks), "--out", str(tasks), "--checkpoint", str(FIXTURE)]) == 2
    assert "is the task folder" in capsys.readouterr().err
    foreign = _slice(tmp_path / "x", {"obqa": 2})                      # outputs from elsewhere, no bench.json
    assert main(["bench", "run", "--tasks", str(tasks), "--out", str(foreign), "--checkpoint", str(FIXTURE)]) == 2
    assert "did not write (no bench.json)" in capsys.readouterr().err


def test_bad_task_input_exits_2_before_writing(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "siqa.jsonl").write_text('{"id": 1, "question": "q", "choices": ["a"], "ground_truth": "a"}\n{oops\n')
    out = tmp_path / "out"
    argv = ["bench", "run", "--tasks", str(tasks), "--out", str(out), "--checkpoint", str(FIXTURE)]
    assert main(argv) == 2
    assert f"{tasks / 'siqa.jsonl'}:2: not valid JSON" in capsys.readouterr().err
    assert main(argv + ["--task", "arc"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'arc'; known tasks: lambada, mmlu, obqa, hellaswag, race, siqa, squad, story_cloze" in err
    assert main(["bench", "score", str(tasks)]) == 2
    assert "siqa.jsonl:2: not valid JSON" in capsys.readouterr().err
    (tasks / "siqa.jsonl").write_text('{"id": 1, "question": "q", "choices": ["a"], "ground_truth": "a"}\n')
    assert main(["bench", "score", str(tasks)]) == 2
    assert "siqa.jsonl:1: 'generate' must be a string" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tasks.iterdir()) == ["siqa.jsonl"]


def test_cli_run_prints_the_table_and_speed(tmp_path, capsys):
    tasks = _slice(tmp_path, {"lambada": 2, "siqa": 2})
    argv = ["bench", "run", "--tasks", str(tasks), "--out", str(tmp_path / "out"), "--checkpoint", str(FIXTURE),
            "--steps", "2", "--max-new-tokens", "4", "--max-samples", "1", "--task", "siqa", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "siqa" in out and "lambada" not in out and "samples/s" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["tasks"]["siqa"]["total"] == 1 and summary["run"]["max_samples"] == 1
    assert summary["runtime"]["batch_size"] == 20 and summary["runtime"]["world_size"] == 1


# -- subprocesses: torchrun with 2 gloo ranks, SIGKILL mid-task ------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def _command(tasks: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "apps.cli", "bench", "run", "--tasks", str(tasks), "--out", str(out), "--checkpoint",
            str(FIXTURE), "--steps", "2", "--guidance", "3", "--max-new-tokens", "8", "--quiet", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.mark.heavy
def test_two_torchrun_ranks_give_the_files_of_one_process(tmp_path):
    tasks = _slice(tmp_path, {"lambada": 5, "obqa": 4, "squad": 3})
    one = subprocess.run([sys.executable, *_command(tasks, tmp_path / "one", "--batch-size", "2")], cwd=ROOT,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port), *_command(tasks, tmp_path / "two", "--batch-size", "3")],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["runtime"]["world_size"] == 2 and summary["runtime"]["generated"] == 12
    assert not list((tmp_path / "two" / "generations").glob("*.rank*"))


@pytest.mark.heavy
def test_sigkill_mid_task_then_rerun_gives_identical_files(tmp_path):
    tasks = _slice(tmp_path, {"mmlu": 12, "siqa": 2})
    reference = tmp_path / "reference"
    proc = subprocess.run([sys.executable, *_command(tasks, reference, "--batch-size", "1")], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    command = [sys.executable, *_command(tasks, out, "--batch-size", "1")]
    victim = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = out / "generations" / "mmlu.rank0.jsonl"
    deadline = time.monotonic() + 300
    while victim.poll() is None and time.monotonic() < deadline:
        if shard.is_file() and shard.read_bytes().count(b"\n") >= 3:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert victim.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    stored = shard.read_bytes().count(b"\n")
    assert 3 <= stored < 12 and not (out / "mmlu.jsonl").exists()
    rerun = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _files(out) == _files(reference)
    runtime = json.loads((out / "summary.json").read_text())["runtime"]
    assert runtime["tasks"]["mmlu"]["generated"] == 12 - stored and runtime["tasks"]["siqa"]["generated"] == 2
