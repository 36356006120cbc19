"""Hub ids: OWNER/NAME[@REVISION] resolve through a Hub cache laid out here; offline; errors; local paths win."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from cola_core import CheckpointError, load_pretrained
from cola_core.hub import parse_hub_id, resolve_hub_id
from workbench import Workbench
from apps.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A Hub cache holding acme/tiny (the tiny fixture) as huggingface_hub lays it out: blobs, refs, snapshots."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny"
    snapshot = repo / "snapshots" / REVISION
    for src in sorted(p for p in FIXTURE.rglob("*") if p.is_file() and not p.name.startswith("golden")):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / src.relative_to(FIXTURE)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")    # never the real Hub from a test
    return cache


def test_hub_ids_are_told_apart_from_paths():
    assert parse_hub_id("ByteDance-Seed/Cola-DLM") == ("ByteDance-Seed/Cola-DLM", None)
    assert parse_hub_id("ByteDance-Seed/Cola-DLM@v1.0") == ("ByteDance-Seed/Cola-DLM", "v1.0")
    for path in ("./a/b", "/abs/path", "a/b/c", "~/x/y", "single", "a b/c"):
        assert parse_hub_id(path) is None
    assert resolve_hub_id(str(FIXTURE)) == FIXTURE


def test_cached_id_loads_like_the_folder(hub_cache, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snapshot = hub_cache / "models--acme--tiny" / "snapshots" / REVISION
    assert resolve_hub_id("acme/tiny") == snapshot
    assert resolve_hub_id(f"acme/tiny@{REVISION}") == snapshot
    assert load_pretrained("acme/tiny").fingerprint == tiny_model.fingerprint
    assert Workbench.load("acme/tiny").fingerprint == tiny_model.fingerprint


def test_cache_is_used_before_the_network(hub_cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)       # online, but the cached snapshot needs no request
    assert resolve_hub_id("acme/tiny").parent.name == "snapshots"


def test_a_local_path_wins_over_an_id(hub_cache, tmp_path, monkeypatch):
    shutil.copytree(FIXTURE, tmp_path / "work" / "acme" / "tiny")
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_hub_id("acme/tiny") == Path("acme/tiny")


def test_missing_ids_are_one_line_errors_naming_id_and_cache(hub_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=rf"acme/other is neither a local folder nor in the Hugging Face cache "
                                              rf"\({hub_cache}\), and HF_HUB_OFFLINE is set"):
        resolve_hub_id("acme/other")
    with pytest.raises(CheckpointError, match="acme/tiny@v2 is neither"):
        resolve_hub_id("acme/tiny@v2")                   # a revision that is not cached
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(CheckpointError, match=rf"acme/other is neither .*\({hub_cache}\), and the Hub could not "):
        resolve_hub_id("acme/other")                     # online, but the Hub is unreachable
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "--checkpoint", "acme/other", "hello"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "acme/other" in err and str(hub_cache) in err


def test_cli_takes_a_hub_id(hub_cache, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "--checkpoint", "acme/tiny", "--steps", "2", "--max-new-tokens", "4", "--seed", "1",
                 "--json", "The river"]) == 0
    assert '"prompt": "The river"' in capsys.readouterr().out
