"""Fixtures of the attack tables."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture()
def ckpt(tmp_path: Path, fixture_dir: Path) -> Path:
    """A writable copy of the official tiny checkpoint."""
    root = tmp_path / "ckpt"
    shutil.copytree(fixture_dir / "cola_dlm", root / "cola_dlm")
    shutil.copy(fixture_dir / "tokenizer.json", root / "tokenizer.json")
    return root
