"""Attack table for run folders and bundles: a damaged file is one clear error naming it, or is repaired.

Every case damages a copy of a finished experiment run folder (or a saved latents bundle) and
reruns/reloads it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from attack_utils import kill_at_random_until_done, timed_run
from cola_core.errors import TensorFileError
from cola_core.tensorfile import load_tensor_file, save_tensor_file
from workbench import Latents
from workbench.errors import WorkbenchError
from workbench.experiments import SpecError, run
from workbench.experiments.runner import read_jsonl

SPEC = {"kind": "guidance_sweep", "prompts": ["The cat"], "guidance": [2.0], "steps": [2], "seed": [0, 1],
        "max_new_tokens": 4, "semantic": "off"}


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory) -> Path:
    return run(SPEC, tmp_path_factory.mktemp("finished") / "run", model=tiny_model).path


@pytest.fixture()
def run_copy(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _cut(name: str, drop: int) -> Callable[[Path], None]:
    """Drop the last ``drop`` bytes of a file (all of them with a huge ``drop``)."""
    def apply(out: Path) -> None:
        data = (out / name).read_bytes()
        (out / name).write_bytes(data[: max(0, len(data) - drop)])
    return apply


def _pending_part(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """A finished item's tensors waiting in parts/ (as after a crash before the merge), then damaged."""
    def apply(out: Path) -> None:
        (out / "parts").mkdir()
        tensors = load_tensor_file(out / "tensors.safetensors")
        save_tensor_file(out / "parts" / "item00001.safetensors",
                         {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("item00001.")})
        damage(out / "parts" / "item00001.safetensors")
    return apply


@dataclass(frozen=True)
class Damage:
    name: str
    apply: Callable[[Path], None]
    error: type[Exception] | None    # None: the rerun repairs the folder
    mentions: tuple[str, ...] = ()


DAMAGES = [
    Damage("tensors.safetensors cut short", _cut("tensors.safetensors", 3), TensorFileError,
           ("tensors.safetensors", "truncated")),
    Damage("tensors.safetensors cut into its header", _cut("tensors.safetensors", 500), TensorFileError,
           ("tensors.safetensors", "runs past the end")),
    Damage("tensors.safetensors empty", _cut("tensors.safetensors", 10**9), TensorFileError,
           ("tensors.safetensors", "0 bytes")),
    Damage("tensors.safetensors a folder", lambda out: ((out / "tensors.safetensors").unlink(),
                                                         (out / "tensors.safetensors").mkdir()),
           TensorFileError, ("tensors.safetensors", "is a folder")),
    Damage("pending part truncated", _pending_part(lambda p: p.write_bytes(p.read_bytes()[:-3])), TensorFileError,
           ("parts/item00001.safetensors", "truncated")),
    Damage("pending part not safetensors", _pending_part(lambda p: p.write_bytes(b"PK\x03\x04junk")), TensorFileError,
           ("parts/item00001.safetensors",)),
    Damage("environment.json not JSON", lambda out: (out / "environment.json").write_text("{"), SpecError,
           ("environment.json", "not valid JSON")),
    Damage("spec.toml not UTF-8", lambda out: (out / "spec.toml").write_bytes(b"kind = \"\xff\"\n"), SpecError,
           ("spec.toml", "not valid TOML")),
    Damage("results.jsonl torn last line", _cut("results.jsonl", 40), None),
    Damage("results.jsonl lost", lambda out: (out / "results.jsonl").unlink(), None),
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
def test_damaged_run_folder(damage: Damage, run_copy: Path, finished: Path, tiny_model):
    damage.apply(run_copy)
    if damage.error is None:
        result = run(SPEC, run_copy, model=tiny_model)
        assert result.records == read_jsonl(finished / "results.jsonl")
        return
    with pytest.raises(damage.error) as caught:
        run(SPEC, run_copy, model=tiny_model)
    message = str(caught.value)
    assert type(caught.value) is damage.error and "\n" not in message
    assert all(fragment in message for fragment in damage.mentions), message


BUNDLE_DAMAGES = [
    Damage("tensors truncated", lambda p: p.with_suffix(".safetensors").write_bytes(
        p.with_suffix(".safetensors").read_bytes()[:40]), TensorFileError, ("lat.safetensors",)),
    Damage("metadata is a list", lambda p: p.with_suffix(".json").write_text("[]"), WorkbenchError,
           ("lat.json", "JSON object")),
    Damage("metadata not JSON", lambda p: p.with_suffix(".json").write_text("{"), WorkbenchError,
           ("lat.json", "not valid JSON")),
    Damage("metadata of another kind", lambda p: p.with_suffix(".json").write_text('{"kind": "trajectory"}'),
           WorkbenchError, ("lat.json", "'trajectory'")),
]


@pytest.mark.parametrize("damage", BUNDLE_DAMAGES, ids=[d.name for d in BUNDLE_DAMAGES])
def test_damaged_latents_bundle(damage: Damage, wb, tmp_path: Path):
    wb.encode(["a small bird"]).save(tmp_path / "lat")
    damage.apply(tmp_path / "lat")
    with pytest.raises(damage.error) as caught:
        Latents.load(tmp_path / "lat")
    assert type(caught.value) is damage.error and "\n" not in str(caught.value)
    assert all(fragment in str(caught.value) for fragment in damage.mentions), str(caught.value)


def test_run_files_get_the_usual_mode(finished: Path, wb, tmp_path: Path):
    wb.encode(["a small bird"]).save(tmp_path / "lat")
    umask = os.umask(0o022)
    os.umask(umask)
    for path in [*finished.iterdir(), tmp_path / "lat.safetensors", tmp_path / "lat.json"]:
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


# -- real SIGKILLs (subprocesses) ----------------------------------------------------------------------------
KILL_SPEC = """kind = "guidance_sweep"
prompts = ["The cat", "A river"]
guidance = "1-6"
steps = [2, 3]
seed = [0]
max_new_tokens = 8
semantic = "off"
"""


def _run_process(spec: Path, out: Path) -> subprocess.Popen:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "apps.cli", "run", str(spec), "--out", str(out), "--quiet",
               "--checkpoint", str(root / "tests" / "fixtures" / "visible_a")]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.heavy
def test_sigkill_at_random_moments_then_rerun_equals_the_uninterrupted_run(tmp_path: Path):
    spec = tmp_path / "spec.toml"
    spec.write_text(KILL_SPEC)
    duration = timed_run(lambda: _run_process(spec, tmp_path / "reference"))
    assert kill_at_random_until_done(lambda: _run_process(spec, tmp_path / "run"), duration, seed=99) >= 1
    for name in ("results.jsonl", "spec.toml"):
        assert (tmp_path / "run" / name).read_text() == (tmp_path / "reference" / name).read_text()
    a = load_tensor_file(tmp_path / "run" / "tensors.safetensors")
    b = load_tensor_file(tmp_path / "reference" / "tensors.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
