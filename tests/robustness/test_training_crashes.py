"""Attack table for training: interrupted saves, old layouts, torn metrics, changed configs, reused folders.

Fast cases drive :mod:`cola_core.training.checkpoints` and tiny in-process runs; the ``heavy`` cases
SIGKILL real training processes (at every point of a checkpoint save, and at random moments) and
check that resuming reproduces the uninterrupted run bit for bit.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from cola_core.errors import ConfigError
from cola_core.training import checkpoints
from cola_core.training.checkpoints import SAVE_POINTS, adopt, latest_state, save_state, state_folder
from cola_core.training.metrics_log import keep_records, read_metrics
from cola_core.training.stages import train_vae
from attack_utils import kill_at_random_until_done, timed_run
from training_utils import TINY_VAE_MODEL, make_corpus, vae_config
from apps.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "tests" / "fixtures" / "visible_a" / "tokenizer.json"


# -- interrupted saves ---------------------------------------------------------------------------------------
def _state(step: int) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"model.w": torch.full((3, 2), float(step)), "rng.cpu": torch.arange(step + 4, dtype=torch.uint8)}
    return tensors, {"step": step, "elapsed_s": 0.0, "stage": "vae", "config": {"lr": 0.1}}


class _Crash(BaseException):
    """Stands in for SIGKILL: nothing after the crash point runs."""


# The state a resume finds after a save of step 2 (over a complete step 1) stops at each point.
RECOVERED_AFTER = {"tmp_cleared": 1, "tensors_written": 1, "meta_written": 2, "switched": 2, "old_invalidated": 2,
                   "done": 2}


@pytest.mark.parametrize("point", SAVE_POINTS)
def test_a_save_interrupted_at_any_point_leaves_a_complete_state(point: str, tmp_path: Path, monkeypatch):
    save_state(tmp_path, 1, *_state(1))

    def crash(reached: str, step: int) -> None:
        if reached == point:
            raise _Crash
    monkeypatch.setattr(checkpoints, "_reached", crash)
    with pytest.raises(_Crash):
        save_state(tmp_path, 2, *_state(2))
    monkeypatch.undo()
    found = latest_state(tmp_path)
    expected_tensors, expected_meta = _state(RECOVERED_AFTER[point])
    assert found.meta == expected_meta
    assert found.tensors.keys() == expected_tensors.keys()
    assert all(torch.equal(found.tensors[k], expected_tensors[k]) for k in expected_tensors)
    save_state(tmp_path, 3, *_state(3))              # the next save cleans up whatever was left
    assert sorted(p.name for p in tmp_path.iterdir()) == [state_folder(tmp_path, 3).name]


def _legacy(root: Path, step: int, folder: str, files: tuple[str, ...] = ("state.safetensors", "state.json")) -> None:
    """A state in the earlier layout (or a temporary folder), with only ``files`` present."""
    save_state(root / "scratch", step, *_state(step))
    source = state_folder(root / "scratch", step)
    (root / folder).mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copy(source / name, root / folder / name)
    shutil.rmtree(root / "scratch")


@dataclass(frozen=True)
class Layout:
    name: str
    arrange: Callable[[Path], None]
    step: int | None                 # the state a resume must find (None: none)


LAYOUTS = [
    Layout("earlier layout, complete", lambda r: _legacy(r, 5, "checkpoint"), 5),
    Layout("old trainer crashed after deleting the old state", lambda r: _legacy(r, 6, ".checkpoint.tmp"), 6),
    Layout("old trainer crashed between its two deletions",
           lambda r: (_legacy(r, 5, "checkpoint", ("state.json",)), _legacy(r, 6, ".checkpoint.tmp")), 6),
    Layout("old trainer crashed with an empty checkpoint folder",
           lambda r: ((r / "checkpoint").mkdir(), _legacy(r, 6, ".checkpoint.tmp")), 6),
    Layout("temporary folder half written", lambda r: (_legacy(r, 5, "checkpoint"),
                                                       _legacy(r, 6, ".checkpoint.tmp", ("state.safetensors",))), 5),
    Layout("newest state truncated", lambda r: (save_state(r, 5, *_state(5)), _legacy(r, 6, "checkpoint"),
                                                (r / "checkpoint" / "state.safetensors").write_bytes(b"\0" * 9)), 5),
    Layout("newest state.json not JSON", lambda r: (save_state(r, 5, *_state(5)), _legacy(r, 6, "checkpoint"),
                                                    (r / "checkpoint" / "state.json").write_text("{")), 5),
    Layout("only a half-written temporary folder", lambda r: _legacy(r, 1, ".checkpoint.tmp", ("state.safetensors",)),
           None),
    Layout("no run at all", lambda r: None, None),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=[layout.name for layout in LAYOUTS])
def test_resume_finds_the_newest_complete_state(layout: Layout, tmp_path: Path):
    layout.arrange(tmp_path)
    if layout.step is None:
        with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no complete trainer checkpoint"):
            latest_state(tmp_path)
        return
    found = latest_state(tmp_path)
    assert found.meta["step"] == layout.step
    assert torch.equal(found.tensors["model.w"], _state(layout.step)[0]["model.w"])
    adopt(tmp_path, found)                           # the resumed state becomes the only one
    assert [p.name for p in tmp_path.iterdir()] == [state_folder(tmp_path, layout.step).name]
    assert latest_state(tmp_path).meta["step"] == layout.step


def test_an_unreadable_newer_state_is_named_when_skipped(tmp_path: Path, capsys):
    save_state(tmp_path, 5, *_state(5))
    _legacy(tmp_path, 6, "checkpoint")
    (tmp_path / "checkpoint" / "state.safetensors").write_bytes(b"\0" * 9)
    assert latest_state(tmp_path).meta["step"] == 5
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "checkpoint/state.safetensors" in err and err.count("\n") == 1


# -- metrics.jsonl -------------------------------------------------------------------------------------------
def _metrics(path: Path, tail: str) -> Path:
    path.write_text("".join(json.dumps({"step": s, "split": "train", "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)) + tail)
    return path


@dataclass(frozen=True)
class MetricsCase:
    name: str
    tail: str
    steps: list[int] | None          # records read (None: an error)
    message: str


METRICS_CASES = [
    MetricsCase("intact", "", [1, 2, 3], ""),
    MetricsCase("torn last line", '{"step": 4, "split": "tr', [1, 2, 3], "dropped a torn last line (line 4"),
    MetricsCase("torn last line with newline", '{"step": 4, "spl\n', [1, 2, 3], "dropped a torn last line"),
    MetricsCase("garbage in the middle", 'xx\n{"step": 5}\n', None, "line 4: not a JSON record"),
    MetricsCase("record without a step", '{"split": "val"}\n', None, "line 4: expected a record with an integer 'step'"),
    MetricsCase("record that is a list", "[4]\n", None, "line 4: expected a record"),
]


@pytest.mark.parametrize("case", METRICS_CASES, ids=[c.name for c in METRICS_CASES])
def test_metrics_file_problems(case: MetricsCase, tmp_path: Path, capsys):
    path = _metrics(tmp_path / "metrics.jsonl", case.tail)
    if case.steps is None:
        with pytest.raises(ConfigError) as caught:
            read_metrics(path)
        assert str(caught.value).startswith(f"{path}, ") and case.message in str(caught.value)
        return
    assert [r["step"] for r in read_metrics(path)] == case.steps
    err = capsys.readouterr().err
    assert (case.message in err and str(path) in err) if case.message else err == ""
    keep_records(path, None, 2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2] and path.read_text().endswith("}\n")
    keep_records(path, 1, 2)
    assert [r["step"] for r in read_metrics(path)] == [1]


# -- resuming runs -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(run: Path, corpus: Path, **overrides):
    knobs = dict(steps=4, save_every=2, num_threads=1, tokenizer=str(TOKENIZER))
    return vae_config(run, corpus, **{**knobs, **overrides})


def _records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(run_dir / "metrics.jsonl")]


def _same_state(a: Path, b: Path) -> None:
    x, y = latest_state(a).tensors, latest_state(b).tensors
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus) -> Path:
    """A completed 4-step run (states every 2 steps) to copy and attack."""
    root = tmp_path_factory.mktemp("finished")
    train_vae(_cfg(root, corpus))
    return root


@pytest.fixture()
def run_copy(finished: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


@dataclass(frozen=True)
class ConfigChange:
    name: str
    overrides: dict
    refused: tuple[str, ...]         # fragments of the refusal; () when the resume goes ahead


CONFIG_CHANGES = [
    ConfigChange("same config", {}, ()),
    ConfigChange("when to save, log and stop", {"save_every": 1, "log_every": 3, "max_minutes": 9.0}, ()),
    ConfigChange("learning rate", {"lr": 6e-3}, ("changed: lr 0.003 -> 0.006",)),
    ConfigChange("learning rate and batch size", {"lr": 6e-3, "batch_size": 8},
                 ("batch_size 16 -> 8", "lr 0.003 -> 0.006")),
    ConfigChange("more steps", {"steps": 6}, ("steps 4 -> 6",)),
    ConfigChange("model shape", {"model": {**TINY_VAE_MODEL, "dim": 48}}, ("model {",)),
    ConfigChange("thread count", {"num_threads": 2}, ("num_threads 1 -> 2",)),
]


@pytest.mark.parametrize("change", CONFIG_CHANGES, ids=[c.name for c in CONFIG_CHANGES])
def test_resume_refuses_a_changed_config_naming_the_fields(change: ConfigChange, run_copy: Path, corpus: Path):
    cfg = _cfg(run_copy, corpus, **change.overrides)
    if not change.refused:
        train_vae(cfg, resume=True)
        assert latest_state(run_copy / "vae").meta["step"] == 4
        return
    with pytest.raises(ConfigError) as caught:
        train_vae(cfg, resume=True)
    message = str(caught.value)
    assert message.startswith(str(run_copy / "vae" / "checkpoint-00000004")) and "\n" not in message
    assert "--allow-config-change" in message and all(f in message for f in change.refused)


def test_allow_config_change_continues_with_the_new_values(run_copy: Path, corpus: Path):
    train_vae(_cfg(run_copy, corpus, steps=6, lr=6e-3), resume=True, allow_config_change=True)
    state = latest_state(run_copy / "vae")
    assert state.meta["step"] == 6 and state.meta["config"]["lr"] == 6e-3
    assert [r["step"] for r in _records(run_copy / "vae") if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_a_state_that_does_not_fit_is_one_clear_error(run_copy: Path, corpus: Path):
    model = {**TINY_VAE_MODEL, "dim": 48}
    with pytest.raises(ConfigError, match=r"checkpoint-00000004: the saved state does not fit this config \("):
        train_vae(_cfg(run_copy, corpus, model=model), resume=True, allow_config_change=True)


def test_a_previous_run_is_never_silently_overwritten(run_copy: Path, corpus: Path):
    before = (run_copy / "vae" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"holds a previous run \(checkpoint-00000004, metrics.jsonl, "
                                          r"loss_curves.html, summary.json\); pass --resume .* or --overwrite"):
        train_vae(_cfg(run_copy, corpus))
    assert (run_copy / "vae" / "metrics.jsonl").read_text() == before
    with pytest.raises(ConfigError, match="choose one"):
        train_vae(_cfg(run_copy, corpus), resume=True, overwrite=True)
    train_vae(_cfg(run_copy, corpus, steps=2, save_every=0), overwrite=True)
    assert [p.name for p in (run_copy / "vae").glob("checkpoint*")] == ["checkpoint-00000002"]


def test_resume_drops_a_torn_metrics_line_and_matches_the_uninterrupted_run(tmp_path: Path, finished: Path,
                                                                           corpus: Path, monkeypatch, capsys):
    def crash(point: str, step: int) -> None:      # killed as the step-4 save began: the step-2 state is the latest
        if (point, step) == ("tmp_cleared", 4):
            raise _Crash
    monkeypatch.setattr(checkpoints, "_reached", crash)
    with pytest.raises(_Crash):
        train_vae(_cfg(tmp_path, corpus))
    monkeypatch.undo()
    metrics = tmp_path / "vae" / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines[:2]) + lines[2][:20])          # and torn while logging step 3
    train_vae(_cfg(tmp_path, corpus), resume=True)
    assert f"warning: {metrics}: dropped a torn last line" in capsys.readouterr().err
    _same_state(tmp_path / "vae", finished / "vae")
    assert _records(tmp_path / "vae") == _records(finished / "vae")


def test_cli_flags_are_checked(tmp_path: Path, corpus: Path, capsys):
    config = tmp_path / "vae.toml"
    base = f'corpus = "{corpus}"\nrun_dir = "{tmp_path / "run"}"\ntokenizer = "{TOKENIZER}"\n'
    config.write_text(base + "seed = -1\n")
    assert cli_main(["train", "vae", "--config", str(config)]) == 2
    assert "field 'seed': seed must be an integer from 0 to 9007199254740991" in capsys.readouterr().err
    config.write_text(base)
    assert cli_main(["train", "vae", "--config", str(config), "--allow-config-change"]) == 2
    assert "--allow-config-change only applies with --resume" in capsys.readouterr().err
    assert cli_main(["train", "vae", "--config", str(config), "--resume"]) == 2
    assert "no complete trainer checkpoint to resume from" in capsys.readouterr().err


def test_trainer_files_get_the_usual_mode(run_copy: Path):
    umask = os.umask(0o022)
    os.umask(umask)
    for path in (run_copy / "vae").rglob("*"):
        if path.is_file():
            assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


# -- real SIGKILLs (subprocesses) -------------------------------------------------------------------------------
TRAIN_SCRIPT = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from training_utils import vae_config
from cola_core.training.stages import train_vae
cfg = vae_config(Path({run!r}), Path({corpus!r}), steps={steps}, save_every=2, num_threads=1, tokenizer={tok!r})
train_vae(cfg, resume={resume}, overwrite={overwrite})
"""


def _train_process(run: Path, corpus: Path, steps: int, resume: bool, overwrite: bool = False,
                   kill_at: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(checkpoints.KILL_ENV, None)
    if kill_at:
        env[checkpoints.KILL_ENV] = kill_at
    code = TRAIN_SCRIPT.format(tests=str(ROOT / "tests"), run=str(run), corpus=str(corpus), steps=steps,
                               tok=str(TOKENIZER), resume=resume, overwrite=overwrite)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.heavy
@pytest.mark.parametrize("point", SAVE_POINTS)
def test_sigkill_at_each_point_of_a_save_then_resume_is_bit_exact(point: str, tmp_path: Path, finished: Path,
                                                                   corpus: Path):
    killed = _train_process(tmp_path, corpus, 4, resume=False, kill_at=f"4:{point}")
    assert killed.wait(timeout=300) == -signal.SIGKILL, killed.stderr.read().decode()
    resumed = _train_process(tmp_path, corpus, 4, resume=True)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    _same_state(tmp_path / "vae", finished / "vae")
    assert _records(tmp_path / "vae") == _records(finished / "vae")
    assert [p.name for p in (tmp_path / "vae").glob("*checkpoint*")] == ["checkpoint-00000004"]


@pytest.mark.heavy
def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path: Path, corpus: Path):
    steps, reference, run = 24, tmp_path / "reference", tmp_path / "run"

    def start() -> subprocess.Popen:
        resume = checkpoints.has_state(run / "vae")
        return _train_process(run, corpus, steps, resume=resume, overwrite=not resume)
    duration = timed_run(lambda: _train_process(reference, corpus, steps, resume=False))
    assert kill_at_random_until_done(start, duration, seed=1234) >= 1
    _same_state(run / "vae", reference / "vae")
    assert _records(run / "vae") == _records(reference / "vae")
