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
