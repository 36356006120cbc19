"""``shared_parts.json``: a checkpoint folder borrows parts from another, and a bad pointer is one clear error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from apps.cli import main as cli_main
from cola_core import load_pretrained
from cola_core.checkpoint import CheckpointPaths
from cola_core.errors import CheckpointError


@pytest.fixture()
def borrower(ckpt: Path, tmp_path: Path) -> Path:
    """A folder holding only the tiny checkpoint's DiT, borrowing its VAE and tokenizer (relative paths)."""
    root = tmp_path / "chat"
    shutil.copytree(ckpt / "cola_dlm" / "cola_dit", root / "cola_dlm" / "cola_dit")
    _point(root, vae_from="../ckpt/cola_dlm/cola_vae", tokenizer_from="../ckpt/tokenizer.json")
    return root


def _point(root: Path, **entries) -> None:
    (root / "shared_parts.json").write_text(json.dumps(entries))


def test_a_borrowing_folder_loads_the_lenders_parts(borrower: Path, ckpt: Path):
    paths = CheckpointPaths.resolve(borrower)
    assert paths.dit == borrower / "cola_dlm" / "cola_dit"
    assert paths.vae.resolve() == (ckpt / "cola_dlm" / "cola_vae").resolve()
    assert paths.tokenizer.resolve() == (ckpt / "tokenizer.json").resolve()
    assert CheckpointPaths.resolve(borrower / "cola_dlm").vae == paths.vae      # the cola_dlm folder reads it too
    lent, borrowed = load_pretrained(ckpt), load_pretrained(borrower)
    assert lent.fingerprint == borrowed.fingerprint
    for key, value in lent.vae.state_dict().items():
        assert torch.equal(value, borrowed.vae.state_dict()[key]), key


BAD_POINTERS = [
    ({"vae_from": "../nowhere/cola_vae"}, "'vae_from' points to .*nowhere/cola_vae, which does not exist"),
    ({"vae_from": "../ckpt"}, "'vae_from' must name a model folder holding config.json"),     # a checkpoint, not a part
    ({"tokenizer_from": "../ckpt/cola_dlm"}, "'tokenizer_from' must name a tokenizer.json file"),
    ({"vae_from": ""}, "'vae_from' must be a path"),
    ({"vae_from": 3}, "'vae_from' must be a path"),
    ({"vae": "../ckpt/cola_dlm/cola_vae"}, "unknown key\\(s\\) 'vae'; known: dit_from, vae_from, tokenizer_from"),
    ({"dit_from": "../ckpt/cola_dlm/cola_dit"}, "'dit_from' borrows the dit but .*cola_dit exists too"),
]


@pytest.mark.parametrize("entries, message", BAD_POINTERS)
def test_a_bad_pointer_is_one_error_naming_it(borrower: Path, entries: dict, message: str):
    _point(borrower, **entries)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_pretrained(borrower)
    assert str(caught.value).startswith(str(borrower / "shared_parts.json"))


def test_a_pointer_that_is_not_a_json_object_fails_clearly(borrower: Path, capsys):
    (borrower / "shared_parts.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="shared-parts pointer must hold a JSON object"):
        CheckpointPaths.resolve(borrower)
    (borrower / "shared_parts.json").write_text("{")
    assert cli_main(["generate", "--checkpoint", str(borrower), "--max-new-tokens", "2", "hi"]) == 2
    assert "shared-parts pointer is not valid JSON" in capsys.readouterr().err


def test_a_folder_missing_a_part_without_a_pointer_says_so(borrower: Path):
    (borrower / "shared_parts.json").unlink()
    with pytest.raises(CheckpointError, match="not a Cola DLM checkpoint"):
        CheckpointPaths.resolve(borrower)
