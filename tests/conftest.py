"""Shared fixtures: the official tiny checkpoint and its golden tensors (copied from shared/fixtures)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    return FIXTURE


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


# -- slow tests: marked @pytest.mark.slow, skipped unless --runslow ------------------------------------
def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: slow test (e.g. UMAP fitting); run with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow test: use --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for the module: the tiny model's ops are so small that thread hand-offs
    dominate on shared cores (measured: the workbench tests take 5 s instead of 48 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
