"""Attack table for checkpoint loading: every corruption is one clear error naming file and tensor/key.

Each case corrupts a copy of the official tiny checkpoint; ``load_pretrained`` must raise exactly
the listed error class with a one-line message containing every listed fragment, and the CLI must
print that one line and exit 2.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from cola_core import CheckpointError, ConfigError, load_pretrained
from cola_core.errors import NonFiniteWeightsWarning, TensorFileError
from attack_utils import (DIT_WEIGHTS, NEIGHBOUR, TARGET, VAE_WEIGHTS, edit_entry, edit_header, edit_json,
                                 split_safetensors, write_safetensors)
from apps.cli import main as cli_main

DIT_FILE = "cola_dit/model.safetensors"
DIT_CONFIG = Path("cola_dlm") / "cola_dit" / "config.json"
VAE_CONFIG = Path("cola_dlm") / "cola_vae" / "config.json"
DIT_INDEX = Path("cola_dlm") / "cola_dit" / "model.safetensors.index.json"


@dataclass(frozen=True)
class Attack:
    name: str
    corrupt: Callable[[Path], None]
    error: type[Exception]
    mentions: tuple[str, ...]        # fragments the message must contain: file, tensor or key, the problem


# -- corruptions ------------------------------------------------------------------------------------------
def _raw(data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / DIT_WEIGHTS).write_bytes(data)


def _header(edit: Callable[[dict], object | None]) -> Callable[[Path], None]:
    return lambda root: edit_header(root / DIT_WEIGHTS, edit)


def _entry(**fields: object) -> Callable[[Path], None]:
    return lambda root: edit_entry(root / DIT_WEIGHTS, TARGET, **fields)


def _offsets(make: Callable[[int, int], object]) -> Callable[[Path], None]:
    """Replace TARGET's data_offsets with make(begin, end)."""
    return _header(lambda h: h[TARGET].update(data_offsets=make(*h[TARGET]["data_offsets"])))


def _data(edit: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        header, data = split_safetensors(root / DIT_WEIGHTS)
        write_safetensors(root / DIT_WEIGHTS, header, edit(data))
    return apply


def _raw_header(make: Callable[[str], bytes]) -> Callable[[Path], None]:
    """Rewrite the header bytes from its JSON text (for what json.dumps cannot produce)."""
    def apply(root: Path) -> None:
        header, data = split_safetensors(root / DIT_WEIGHTS)
        write_safetensors(root / DIT_WEIGHTS, make(json.dumps(header)), data)
    return apply


def _tensors(edit: Callable[[dict[str, torch.Tensor]], None], weights: Path = DIT_WEIGHTS) -> Callable[[Path], None]:
    """Re-save a well-formed file after editing its tensors."""
    def apply(root: Path) -> None:
        state = load_file(str(root / weights))
        edit(state)
        save_file(state, str(root / weights), metadata={"format": "pt"})
    return apply


def _set_value(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def apply(state: dict[str, torch.Tensor]) -> None:
        state[TARGET][3] = value
    return apply


def _replace_weights(make: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / DIT_WEIGHTS).unlink()
        make(root / DIT_WEIGHTS)
    return apply


def _index(weight_map: Callable[[dict[str, str]], object]) -> Callable[[Path], None]:
    """Add a shard index whose weight_map is built from the real name -> file map."""
    def apply(root: Path) -> None:
        names = {name: "model.safetensors" for name in load_file(str(root / DIT_WEIGHTS))}
        (root / DIT_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map(names)}))
    return apply


def _misassigned(root: Path) -> None:
    """The index puts TARGET in another (real) shard, but model.safetensors holds it too."""
    state = load_file(str(root / DIT_WEIGHTS))
    save_file({TARGET: state[TARGET]}, str(root / DIT_WEIGHTS.parent / "other.safetensors"))
    weight_map = {name: "model.safetensors" for name in state}
    weight_map[TARGET] = "other.safetensors"
    (root / DIT_INDEX).write_text(json.dumps({"weight_map": weight_map}))


def _config(path: Path, **changes: object) -> Callable[[Path], None]:
    return lambda root: edit_json(root / path, **changes)


def _config_drop(path: Path, key: str) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        data = json.loads((root / path).read_text())
        del data[key]
        (root / path).write_text(json.dumps(data))
    return apply


def _write(path: Path, data: bytes) -> Callable[[Path], None]:
    return lambda root: (root / path).write_bytes(data)


def _to_folder(path: Path) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / path).unlink()
        (root / path).mkdir()
    return apply


class _Pickled:
    def __reduce__(self):
        return (print, ("never unpickled",))


ATTACKS = [
    # the safetensors container
    Attack("zero-length file", _raw(b""), TensorFileError, (DIT_FILE, "0 bytes")),
    Attack("shorter than the length prefix", _raw(b"\x05\x00\x00"), TensorFileError, (DIT_FILE, "3 bytes")),
    Attack("header length past the end", _raw(struct.pack("<Q", 10**9) + b"{}"), TensorFileError,
           (DIT_FILE, "header length 1000000000 runs past the end")),
    Attack("header not UTF-8", _raw(struct.pack("<Q", 8) + b'{"a\xff":1}'), TensorFileError, (DIT_FILE, "not UTF-8")),
    Attack("header not JSON", _raw(struct.pack("<Q", 8) + b"not json"), TensorFileError, (DIT_FILE, "not JSON")),
    Attack("header nested 5000 deep", _raw(struct.pack("<Q", 5000) + b"[" * 5000), TensorFileError,
           (DIT_FILE, "not JSON")),
    Attack("header is a JSON list", _header(lambda h: [1, 2]), TensorFileError, (DIT_FILE, "JSON list, not an object")),
    Attack("entry is an int", _header(lambda h: h.update({TARGET: 5})), TensorFileError, (DIT_FILE, TARGET, "JSON int")),
    Attack("negative data_offsets", _offsets(lambda b, e: [-256, 0]), TensorFileError,
           (DIT_FILE, TARGET, "non-negative")),
    Attack("data_offsets as strings", _offsets(lambda b, e: [str(b), str(e)]), TensorFileError,
           (DIT_FILE, TARGET, "data_offsets")),
    Attack("data_offsets missing", _entry(data_offsets=None), TensorFileError, (DIT_FILE, TARGET, "data_offsets")),
    Attack("one-element data_offsets", _offsets(lambda b, e: [b]), TensorFileError, (DIT_FILE, TARGET, "data_offsets")),
    Attack("three-element data_offsets", _offsets(lambda b, e: [b, e, e]), TensorFileError,
           (DIT_FILE, TARGET, "data_offsets")),
    Attack("reversed data_offsets", _offsets(lambda b, e: [e, b]), TensorFileError, (DIT_FILE, TARGET, "begin <= end")),
    Attack("overlapping tensors", _header(lambda h: h[TARGET].update(data_offsets=h[NEIGHBOUR]["data_offsets"])),
           TensorFileError, (DIT_FILE, "overlap")),
    Attack("gap between tensors", _offsets(lambda b, e: [b + 4, e + 4]), TensorFileError, (DIT_FILE, "overlap or leave a gap")),
    Attack("offsets past the data", _offsets(lambda b, e: [b + 10**6, e + 10**6]), TensorFileError, (DIT_FILE,)),
    Attack("trailing bytes after the data", _data(lambda d: d + b"junk"), TensorFileError,
           (DIT_FILE, "trailing bytes")),
    Attack("last tensor cut short", _data(lambda d: d[:-100]), TensorFileError, (DIT_FILE, "truncated")),
    Attack("file cut in half", _data(lambda d: d[: len(d) // 2]), TensorFileError, (DIT_FILE, "truncated")),
    Attack("negative shape", _entry(shape=[-64]), TensorFileError, (DIT_FILE, TARGET, "shape")),
    Attack("shape of strings", _entry(shape=["64"]), TensorFileError, (DIT_FILE, TARGET, "shape")),
    Attack("shape of floats", _entry(shape=[64.0]), TensorFileError, (DIT_FILE, TARGET, "shape")),
    Attack("2^50-element shape", _entry(shape=[2**50]), TensorFileError, (DIT_FILE, TARGET, "need")),
    Attack("shape needs more bytes than stored", _entry(shape=[128]), TensorFileError,
           (DIT_FILE, TARGET, "holds 256 bytes")),
    Attack("unknown dtype", _entry(dtype="Q9"), TensorFileError, (DIT_FILE, TARGET, "dtype")),
    Attack("dtype missing", _entry(dtype=None), TensorFileError, (DIT_FILE, TARGET, "dtype")),
    Attack("I16 dtype, byte count of F32", _entry(dtype="I16"), TensorFileError, (DIT_FILE, TARGET, "I16")),
    Attack("F8 dtype (unsupported)", _entry(dtype="F8_E4M3", shape=[256]), TensorFileError,
           (DIT_FILE, TARGET, "unsupported dtype F8_E4M3")),
    Attack("I32 where a float is expected", _entry(dtype="I32"), CheckpointError, (DIT_FILE, TARGET, "stored as I32")),
    Attack("I16 weights file", _tensors(lambda s: s.update({TARGET: s[TARGET].to(torch.int16)})), CheckpointError,
           (DIT_FILE, TARGET, "stored as I16")),
    Attack("a tensor named twice", _raw_header(lambda text: text[:-1].encode() + b', "' + TARGET.encode()
                                               + b'": ' + json.dumps({"dtype": "F32", "shape": [64],
                                                                       "data_offsets": [0, 256]}).encode() + b"}"),
           TensorFileError, (DIT_FILE, TARGET, "appears twice")),
    Attack("metadata values not strings", _header(lambda h: h.update({"__metadata__": {"format": 5}})),
           TensorFileError, (DIT_FILE,)),
    Attack("a pickle named model.safetensors", _raw(pickle.dumps(_Pickled())), TensorFileError, (DIT_FILE,)),
    Attack("a zip archive named model.safetensors", _raw(b"PK\x03\x04" + b"\x00" * 64), TensorFileError, (DIT_FILE,)),
    # the weights themselves
    Attack("NaN weight", _tensors(_set_value(float("nan"))), CheckpointError, (DIT_FILE, TARGET, "non-finite")),
    Attack("inf weight", _tensors(_set_value(float("inf"))), CheckpointError, (DIT_FILE, TARGET, "non-finite")),
    Attack("missing tensor", _tensors(lambda s: s.pop(TARGET)), CheckpointError, ("cola_dit", "missing keys", TARGET)),
    Attack("unexpected tensor", _tensors(lambda s: s.update(extra=torch.zeros(2))), CheckpointError,
           ("cola_dit", "unexpected keys", "extra")),
    Attack("tensor shape differs from config", _tensors(lambda s: s.update({TARGET: torch.zeros(32)})), CheckpointError,
           (DIT_FILE, TARGET, "(32,)", "(64,)")),
    Attack("VAE weight NaN", _tensors(lambda s: s["decoder.final_layer.bias"].fill_(float("nan")), VAE_WEIGHTS),
           CheckpointError, ("cola_vae/model.safetensors", "decoder.final_layer.bias", "non-finite")),
    # what sits where the weights should be
    Attack("only a pickle file", lambda root: (root / DIT_WEIGHTS).rename(root / DIT_WEIGHTS.parent / "pytorch_model.bin"),
           CheckpointError, ("cola_dit", "pytorch_model.bin", "only safetensors")),
    Attack("no weights at all", lambda root: (root / DIT_WEIGHTS).unlink(), CheckpointError,
           ("cola_dit", "no model.safetensors")),
    Attack("weights file is a folder", _replace_weights(lambda p: p.mkdir()), TensorFileError, (DIT_FILE, "is a folder")),
    Attack("weights file is a FIFO", _replace_weights(lambda p: os.mkfifo(p)), TensorFileError,
           (DIT_FILE, "not a regular file")),
    Attack("dangling symlink", _replace_weights(lambda p: p.symlink_to(p.parent / "gone.safetensors")), TensorFileError,
           (DIT_FILE, "dangling symlink")),
    Attack("symlink to a folder", _replace_weights(lambda p: p.symlink_to(p.parent)), TensorFileError,
           (DIT_FILE, "is a folder")),
    Attack("symlink to /dev/zero", _replace_weights(lambda p: p.symlink_to("/dev/zero")), TensorFileError,
           (DIT_FILE, "not a regular file")),
    Attack("symlink loop", _replace_weights(lambda p: p.symlink_to(p)), TensorFileError, (DIT_FILE, "cannot be read")),
    # shard indexes
    Attack("index weight_map is a list", _index(lambda m: list(m)), CheckpointError, ("index.json", "weight_map")),
    Attack("index values are ints", _index(lambda m: {k: 1 for k in m}), CheckpointError,
           ("index.json", "weight_map[", "file name")),
    Attack("index points outside the folder", _index(lambda m: {**m, TARGET: "../x.safetensors"}), CheckpointError,
           ("index.json", TARGET, "../x.safetensors")),
    Attack("index names an absolute path", _index(lambda m: {**m, TARGET: "/etc/passwd"}), CheckpointError,
           ("index.json", TARGET, "/etc/passwd")),
    Attack("index names a pickle shard", _index(lambda m: {**m, TARGET: "pytorch_model.bin"}), CheckpointError,
           ("index.json", TARGET, "only .safetensors")),
    Attack("index names a missing shard", _index(lambda m: {**m, TARGET: "model-00002.safetensors"}), TensorFileError,
           ("model-00002.safetensors", "missing")),
    Attack("index not JSON", _write(DIT_INDEX, b"{not json"), CheckpointError, ("index.json", "not valid JSON")),
    Attack("index is a JSON list", _write(DIT_INDEX, b"[]"), CheckpointError, ("index.json", "JSON object")),
    Attack("index without weight_map", _write(DIT_INDEX, b"{}"), CheckpointError, ("index.json", "weight_map")),
    Attack("tensor in a shard the index does not assign", _misassigned, CheckpointError,
           (DIT_FILE, TARGET, "assigns to another shard")),
    # config.json
    Attack("config.json is a folder", _to_folder(DIT_CONFIG), ConfigError, ("cola_dit/config.json", "is a folder")),
    Attack("config.json not JSON", _write(DIT_CONFIG, b"{'heads': 4}"), ConfigError, ("cola_dit/config.json", "JSON")),
    Attack("config.json is a list", _write(DIT_CONFIG, b"[1]"), ConfigError, ("cola_dit/config.json", "JSON object")),
    Attack("config.json not UTF-8", _write(DIT_CONFIG, b'{"heads": "\xff"}'), ConfigError,
           ("cola_dit/config.json", "UTF-8")),
    Attack("config value of the wrong type", _config(DIT_CONFIG, heads="four"), ConfigError,
           ("cola_dit/config.json", "'heads'", "four")),
    Attack("config bool for an int", _config(DIT_CONFIG, num_layers=True), ConfigError,
           ("cola_dit/config.json", "'num_layers'")),
    Attack("config NaN float", _config(VAE_CONFIG, scaling_factor=float("nan")), ConfigError,
           ("cola_vae/config.json", "'scaling_factor'", "finite")),
    Attack("config infinite float", _config(DIT_CONFIG, norm_eps=float("inf")), ConfigError,
           ("cola_dit/config.json", "'norm_eps'")),
    Attack("config key missing (default differs)", _config_drop(DIT_CONFIG, "heads"), CheckpointError,
           (DIT_FILE, "blocks.0.msa.proj_", "the config implies")),
    Attack("config of the other model", _config(DIT_CONFIG, model_type="cola_text_vae"), ConfigError,
           ("cola_dit/config.json", "model_type")),
    Attack("negative eos_token_id", _config(VAE_CONFIG, eos_token_id=-7), ConfigError,
           ("cola_vae/config.json", "'eos_token_id'", "-7")),
    Attack("pad_token_id past the vocabulary", _config(VAE_CONFIG, pad_token_id=99999), ConfigError,
           ("cola_vae/config.json", "'pad_token_id'", "99999")),
    Attack("eos_token_id a bool", _config(DIT_CONFIG, eos_token_id=True), ConfigError,
           ("cola_dit/config.json", "'eos_token_id'")),
    Attack("pad_token_id a string", _config(VAE_CONFIG, pad_token_id="511"), ConfigError,
           ("cola_vae/config.json", "'pad_token_id'")),
    Attack("block sizes disagree", _config(VAE_CONFIG, block_size=8), ConfigError, ("block_size",)),
    # tokenizer
    Attack("tokenizer not JSON", _write(Path("tokenizer.json"), b"{"), CheckpointError,
           ("tokenizer.json", "not a valid tokenizers JSON")),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_one_clear_error(attack: Attack, ckpt: Path, capsys):
    attack.corrupt(ckpt)
    with pytest.raises(attack.error) as caught:
        load_pretrained(ckpt)
    message = str(caught.value)
    assert type(caught.value) is attack.error
    assert "\n" not in message
    for fragment in attack.mentions:
        assert fragment in message, (fragment, message)
    assert cli_main(["generate", "--checkpoint", str(ckpt), "hello"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and attack.mentions[0] in err


def test_nonfinite_weights_load_on_request(ckpt: Path):
    _tensors(_set_value(float("nan")))(ckpt)
    with pytest.warns(NonFiniteWeightsWarning, match=f"{DIT_FILE}: tensor {TARGET} holds 1 non-finite"):
        model = load_pretrained(ckpt, nonfinite="warn")
    assert torch.isnan(model.dit.state_dict()[TARGET][3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = load_pretrained(ckpt, nonfinite="allow")
    assert torch.isnan(model.dit.state_dict()[TARGET][3])
    with pytest.raises(CheckpointError, match="nonfinite must be one of error, warn, allow"):
        load_pretrained(ckpt, nonfinite="ignore")


def test_overflow_when_casting_is_reported(ckpt: Path):
    _tensors(_set_value(1e6))(ckpt)
    assert load_pretrained(ckpt).dit.state_dict()[TARGET][3] == 1e6
    with pytest.raises(CheckpointError, match=f"tensor {TARGET} holds 1 non-finite value.*float16"):
        load_pretrained(ckpt, dtype="float16")


def test_symlinked_weights_resolving_to_a_regular_file_load(ckpt: Path, tmp_path: Path):
    """Policy: symlinks are followed to regular files anywhere (a Hugging Face cache is all symlinks)."""
    blob = tmp_path / "blobs" / "abc123"
    blob.parent.mkdir()
    shutil.move(ckpt / DIT_WEIGHTS, blob)
    (ckpt / DIT_WEIGHTS).symlink_to(blob)
    model = load_pretrained(ckpt)
    assert torch.equal(model.dit.state_dict()[TARGET], load_file(str(blob))[TARGET])


def test_a_pickle_beside_the_weights_is_never_unpickled(ckpt: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(type("Payload", (), {"__reduce__": lambda self: (marker.write_text, ("x",))})())
    (ckpt / DIT_WEIGHTS.parent / "pytorch_model.bin").write_bytes(payload)
    (ckpt / DIT_WEIGHTS.parent / "training_args.pt").write_bytes(payload)
    load_pretrained(ckpt)
    assert not marker.exists()


def test_float16_and_bfloat16_files_load_upcast(ckpt: Path, fixture_dir: Path):
    original = load_file(str(fixture_dir / DIT_WEIGHTS))
    for dtype in (torch.float16, torch.bfloat16):
        save_file({k: v.to(dtype) for k, v in original.items()}, str(ckpt / DIT_WEIGHTS))
        loaded = load_pretrained(ckpt).dit.state_dict()[TARGET]
        assert loaded.dtype == torch.float32 and torch.equal(loaded, original[TARGET].to(dtype).float())
