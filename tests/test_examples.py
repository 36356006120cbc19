"""Every example script runs on the tiny fixture checkpoint and prints its key line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "visible_a"

EXPECTED = {
    "encode_decode.py": "saved and reloaded latents: True",
    "interpolate.py": "alpha=1.00:",
    "attribute_direction.py": "strength=+2.0:",
    "regenerate.py": "strength=1.00 (t_start=1000, block 0 kept):",
    "invert.py": "heun: round-trip relative error",
    "guidance_hooks.py": "hooks left registered: 0",
    "trajectory_capture.py": "reloaded identical: True",
    "diagnose_corpus.py": "active units",
    "likelihood.py": "bits/dim, log p =",
    "projection.py": "overlay paths on",
    "guidance_sweep.py": "run folder:",
    "activation_patching.py": "patching sweep over",
    "x0_lens.py": "x0-lens:",
    "cross_block_influence.py": "influence of",
}


def test_every_example_is_covered():
    missing = {p.name for p in (ROOT / "examples").glob("*.py")} - set(EXPECTED)
    assert not missing, f"add {sorted(missing)} to EXPECTED with a line each prints"


@pytest.mark.heavy   # a subprocess per script
@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script):
    # One intra-op thread: the tiny model is far faster without thread hand-offs on shared cores.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--checkpoint", str(FIXTURE)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert EXPECTED[script] in proc.stdout, proc.stdout[-2000:]
