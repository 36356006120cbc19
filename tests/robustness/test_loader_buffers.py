"""Weights read in one buffer per file stay this process's own: a file changed after loading changes nothing."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cola_core import load_pretrained
from cola_core.errors import TensorFileError
from cola_core.tensorfile import inspect_tensor_file, read_tensors
from attack_utils import DIT_WEIGHTS, TARGET


def test_weights_survive_the_file_being_overwritten_and_truncated_in_place(ckpt: Path):
    stored = load_file(str(ckpt / DIT_WEIGHTS))[TARGET].clone()   # the library maps the file: copy it out
    model = load_pretrained(ckpt)                 # fp32 files into fp32 weights: the one-buffer path
    path = ckpt / DIT_WEIGHTS
    size = path.stat().st_size
    with open(path, "r+b") as handle:             # in place, as a non-atomic writer would
        handle.seek(size // 2)
        handle.write(b"\xff" * (size - size // 2))
    assert torch.equal(model.dit.state_dict()[TARGET], stored)
    path.write_bytes(b"")                         # truncated: a mapped file would fault (SIGBUS) here
    assert torch.equal(model.dit.state_dict()[TARGET], stored)
    assert all(torch.isfinite(p).all() for p in model.dit.parameters())


def test_both_read_paths_give_the_stored_values_at_odd_offsets(tmp_path: Path):
    path = tmp_path / "odd.safetensors"
    tensors = {"a_bytes": torch.arange(3, dtype=torch.uint8),          # 3 bytes: the next tensors are misaligned
               "b_float": torch.linspace(-1, 1, 7), "c_half": torch.linspace(0, 5, 5).to(torch.bfloat16),
               "d_empty": torch.zeros(0, 4)}
    save_file(tensors, str(path))
    file = inspect_tensor_file(path)
    for one_buffer in (True, False):
        read = {entry.name: tensor for entry, tensor in read_tensors(file, one_buffer=one_buffer)}
        assert read.keys() == tensors.keys()
        for name, tensor in tensors.items():
            assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor)
        read["b_float"].add_(1)                                            # writable memory of our own
        assert torch.equal(read["c_half"], tensors["c_half"])
    some = dict(read_tensors(file, names={"c_half"}))
    assert [entry.name for entry in some] == ["c_half"]


@pytest.mark.parametrize("one_buffer", [True, False])
def test_a_file_that_shrinks_after_validation_is_one_clear_error(tmp_path: Path, one_buffer: bool):
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.ones(64)}, str(path))
    file = inspect_tensor_file(path)
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 8)
    with pytest.raises(TensorFileError, match=f"{path}: file shrank while reading"):
        list(read_tensors(file, one_buffer=one_buffer))
