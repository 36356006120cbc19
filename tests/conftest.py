"""Shared fixtures: the official tiny checkpoint and its golden tensors (copied from shared/fixtures)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    """A writable copy of the official tiny checkpoint."""
    root = tmp_path / "ckpt"
    shutil.copytree(FIXTURE / "cola_dlm", root / "cola_dlm")
    shutil.copy(FIXTURE / "tokenizer.json", root / "tokenizer.json")
    return root


@pytest.fixture(scope="session")
def golden() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "golden.safetensors"))


@pytest.fixture(scope="session")
def golden_meta() -> dict:
    return json.loads((FIXTURE / "golden.json").read_text())


@pytest.fixture(scope="session")
def tiny_model():
    from cola_core import load_pretrained
    return load_pretrained(FIXTURE)


@pytest.fixture(scope="module")
def wb(tiny_model):
    """A Workbench over the tiny model (one per module, so hook registries never leak across files)."""
    from workbench import Workbench
    return Workbench(tiny_model)


# -- heavy tests: subprocesses, live servers, browsers, training runs, UMAP fits -------------------------
# The default ``python -m pytest -q`` leaves them out (it must stay under 90 s on 2 cores); CI runs them
# in a second step with ``python -m pytest -q -m heavy``.
def pytest_configure(config):
    config.addinivalue_line("markers", "heavy: expensive test (subprocess, server, browser, training, UMAP); "
                                       "run with -m heavy")
    # The test models are tiny: intra-op thread hand-offs dominate on shared cores (measured 48 s -> 5 s).
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if config.getoption("markexpr"):
        return   # an explicit -m selects what runs
    heavy = [item for item in items if "heavy" in item.keywords]
    if heavy:
        config.hook.pytest_deselected(items=heavy)
        items[:] = [item for item in items if "heavy" not in item.keywords]
