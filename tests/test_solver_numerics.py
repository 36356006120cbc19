"""Knobs that cannot lie: T is the training scale; Heun and midpoint keep their order (fp32 DiT inputs, while
Euler keeps the reference's bf16 rounding); the README's solver table is the script's output and a rerun
reproduces it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import cola_core
from cola_core.prior_context import PriorContext
from workbench import Workbench, invert

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
import solver_error  # noqa: E402

QUOTED = (("visible_a", 1.0), ("pocket", 1.0), ("pocket", 3.0))   # the tables the README shows


def result(label: str) -> dict:
    return json.loads((RESULTS / f"solver_error_{label}.json").read_text())


@pytest.mark.parametrize("label, guidance", QUOTED)
def test_readme_solver_tables_are_the_scripts_output(label, guidance):
    readme = (ROOT / "README.md").read_text()
    assert solver_error.markdown_table(result(label), guidance) in readme


@pytest.mark.parametrize("label", ["visible_a", pytest.param("pocket", marks=pytest.mark.heavy)])
def test_a_rerun_reproduces_the_solver_results(label, request):
    wb = Workbench(request.getfixturevalue("tiny_model" if label == "visible_a" else "pocket_model"))
    saved = result(label)
    assert saved["checkpoint"] == wb.fingerprint
    (row,) = solver_error.solver_rows(wb, saved["texts"], (12,), ("heun",))
    (expected,) = [r for r in saved["rows"] if (r["solver"], r["steps"], r["guidance"]) == ("heun", 12, 1.0)]
    assert row["free"] == pytest.approx(expected["free"], rel=1e-3)
    assert row["held"] == pytest.approx(expected["held"], rel=1e-3)


def test_heun_keeps_its_order_because_its_dit_inputs_are_not_rounded(wb, monkeypatch):
    lat = wb.encode(result("visible_a")["texts"][:1]).truncate(2)

    def errors() -> dict[int, float]:
        return {n: invert(wb, lat, steps=n, solver="heun").relative_error[0] for n in (12, 24)}

    fp32 = errors()
    assert fp32[24] < 1.5e-4 and fp32[12] / fp32[24] > 3        # second order: x4 per halving of the step
    monkeypatch.setattr("workbench.flow.rounds_dit_inputs", lambda solver: True)   # the old numerics
    rounded = errors()
    assert rounded[24] > 2 * fp32[24] and rounded[12] / rounded[24] < fp32[12] / fp32[24]   # the rounding caps it


def test_euler_keeps_the_references_bf16_rounding(wb):
    seen = []
    real = PriorContext.inputs   # what every DiT call is fed, on the eager and the fast path alike

    def spy(self, z, t):
        seen.append((self.round_inputs, t.dtype))
        return real(self, z, t)

    PriorContext.inputs = spy
    try:
        wb.generate(["The cat"], steps=2, max_new_tokens=4, seed=0)
        wb.generate(["The cat"], steps=2, max_new_tokens=4, seed=0, solver="heun")
    finally:
        PriorContext.inputs = real
    assert {r for r, _ in seen} == {True, False}


def test_pocket_is_importable_from_the_package(tmp_path):
    assert "pocket" in cola_core.__all__ and cola_core.pocket.default_checkpoint().is_dir()
    assert "from . import pocket" in (ROOT / "cola_core" / "__init__.py").read_text()


@pytest.mark.heavy
def test_readme_pocket_snippet_runs_in_a_fresh_interpreter():
    import subprocess
    code = "import cola_core\nprint(cola_core.pocket.default_checkpoint())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and "pocket_checkpoint" in proc.stdout, proc.stderr


def test_time_scale_is_checked(wb):
    from workbench import WorkbenchError
    with pytest.raises(WorkbenchError, match="T must be the DiT's training time scale"):
        wb.generate(["x"], T=500.0)
    assert torch.tensor(wb.config().T) == 1000.0


def test_readme_guidance_table_is_the_scripts_output():
    import guidance_norms
    saved = json.loads((RESULTS / "guidance_norms_pocket.json").read_text())
    assert guidance_norms.markdown_table(saved) in (ROOT / "README.md").read_text()
    by = {(r["rescale"], r["guidance"]): r for r in saved["rows"]}
    assert by[(0.0, 7.0)]["norm_ratio"] > 1.5 > by[(0.0, 1.0)]["norm_ratio"]     # guidance 7 leaves the data
    assert by[(0.7, 7.0)]["norm_ratio"] < by[(0.0, 7.0)]["norm_ratio"]           # CFG-rescale pulls it back


def test_readme_likelihood_table_is_the_benchmarks_output(monkeypatch):
    import likelihood_bench
    saved = json.loads((RESULTS / "likelihood_pocket_checkpoint_cpu.json").read_text())
    readme = (ROOT / "README.md").read_text()
    assert likelihood_bench.markdown_table(saved) in readme
    reference = saved["reference"]
    assert f"{reference['bits_per_dim']:.3f} bits/dim for posterior draws vs {reference['bits_per_dim_at_mean']:.3f}" \
        in readme
    finest = min(r.get("rtol", 1.0) for r in saved["rows"])
    assert reference["rtol"] < finest / 10                      # the reference is truly finer than every row
