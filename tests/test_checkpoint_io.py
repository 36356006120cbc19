"""Checkpoint loading/saving and config validation: clear errors for every malformed input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cola_core import CheckpointError, ConfigError, DiTConfig, VAEConfig, load_pretrained
from cola_core.checkpoint import CONTENT_DIGEST_KEY, read_configs
from cola_core.config import check_pair
from cola_core.tensorfile import inspect_tensor_file, save_tensor_file


def _edit_config(root: Path, model: str, **changes) -> None:
    path = root / "cola_dlm" / model / "config.json"
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))


def test_load_accepts_release_root_and_model_folder(ckpt: Path):
    a = load_pretrained(ckpt)
    b = load_pretrained(ckpt / "cola_dlm")
    assert a.fingerprint == b.fingerprint
    assert a.dit_config.rope_dim == 12 and a.vae_config.latent_dim == 8
    assert a.dit_config.extra["architectures"] == ["ColaDiTModel"]   # unknown keys kept, ignored
    assert (a.tokenizer.pad_id, a.tokenizer.eos_id, a.tokenizer.im_end_id) == (511, 0, 2)


def test_read_configs_needs_no_weights(ckpt: Path):
    """Configs and tokenizer (what a chat template needs) read without the weight files, as loading them does."""
    model = load_pretrained(ckpt)
    for weights in ckpt.rglob("*.safetensors"):
        weights.unlink()
    paths, dit_cfg, vae_cfg, tokenizer = read_configs(ckpt)
    assert paths.tokenizer.is_file() and dit_cfg.extra == model.dit_config.extra and vae_cfg == model.vae_config
    assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.im_end_id) == (511, 0, 2)
    with pytest.raises(CheckpointError):
        load_pretrained(ckpt)


def test_save_pretrained_round_trips_single_and_sharded(ckpt: Path, tmp_path: Path):
    model = load_pretrained(ckpt)
    for shard_bytes, name in ((None, "single"), (20_000, "sharded")):
        out = model.save_pretrained(tmp_path / name, max_shard_bytes=shard_bytes)
        index = out / "cola_dlm" / "cola_dit" / "model.safetensors.index.json"
        assert index.exists() == (shard_bytes is not None)
        again = load_pretrained(out)
        for ref, got in ((model.dit, again.dit), (model.vae, again.vae)):
            for (k1, v1), (k2, v2) in zip(ref.state_dict().items(), got.state_dict().items()):
                assert k1 == k2 and torch.equal(v1, v2)
        saved = load_file(str(next((out / "cola_dlm" / "cola_vae").glob("*.safetensors"))))
        assert all(k.startswith(("encoder.", "decoder.")) for k in saved)


def test_fingerprint_tells_retrained_weights_of_the_same_shapes_apart(ckpt: Path, tmp_path: Path):
    """Saved files record a digest of their tensors, so a changed value changes the fingerprint; files without one
    (the official code's) keep the header-only identity."""
    model = load_pretrained(ckpt)
    first = load_pretrained(model.save_pretrained(tmp_path / "a"))
    again = load_pretrained(model.save_pretrained(tmp_path / "b"))
    with torch.no_grad():
        model.vae.decoder.in_layer.weight[0, 0] += 1.0
    nudged = load_pretrained(model.save_pretrained(tmp_path / "c", max_shard_bytes=20_000))
    sharded_again = load_pretrained(load_pretrained(tmp_path / "c").save_pretrained(tmp_path / "d",
                                                                                    max_shard_bytes=20_000))
    assert first.fingerprint == again.fingerprint
    assert nudged.fingerprint == sharded_again.fingerprint != first.fingerprint
    assert load_pretrained(ckpt).fingerprint != first.fingerprint   # the fixture's files carry no digest

def test_saving_the_same_weights_gives_the_same_bytes(ckpt: Path, tmp_path: Path):
    """The library writes header metadata in hash-map order; ours is sorted, so a rerun reproduces every file."""
    model = load_pretrained(ckpt)
    roots = [model.save_pretrained(tmp_path / str(i), max_shard_bytes=20_000 if i % 2 else None) for i in range(8)]
    for root in roots[2:]:
        twin = roots[int(root.name) % 2]   # the same layout: single file or shards
        for f in sorted((twin / "cola_dlm").rglob("*.safetensors")):
            assert (root / f.relative_to(twin)).read_bytes() == f.read_bytes(), f.relative_to(twin)
    meta = inspect_tensor_file(roots[0] / "cola_dlm" / "cola_vae" / "model.safetensors").metadata
    assert list(meta) == sorted(meta) and meta["format"] == "pt" and len(meta[CONTENT_DIGEST_KEY]) == 64


def test_sorted_metadata_keeps_non_ascii_names(tmp_path: Path):
    """The header is rewritten as the library wrote it (UTF-8), so a non-ASCII tensor name still saves and loads."""
    path = tmp_path / "t.safetensors"
    save_tensor_file(path, {"poids_é": torch.ones(3)}, metadata={"z": "ü", "a": "1"})
    described = inspect_tensor_file(path)
    assert [e.name for e in described.entries] == ["poids_é"] and list(described.metadata) == ["a", "z"]
    assert torch.equal(load_file(str(path))["poids_é"], torch.ones(3))


def test_bf16_load_materialises_bf16_directly(ckpt: Path):
    model = load_pretrained(ckpt, dtype="bfloat16")
    assert {p.dtype for p in model.dit.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.vae.parameters()} == {torch.bfloat16}
    assert model.dit.blocks[0].msa.rope.rope.freqs.dtype == torch.float32   # RoPE tables stay fp32


def test_missing_and_unexpected_keys_are_named(ckpt: Path):
    path = ckpt / "cola_dlm" / "cola_dit" / "model.safetensors"
    state = load_file(str(path))
    state.pop("txt_out.proj.bias")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): txt_out.proj.bias.*unexpected keys \(1\): extra.weight"):
        load_pretrained(ckpt)


def test_wrong_shape_is_named(ckpt: Path):
    _edit_config(ckpt, "cola_dit", expand_ratio=2)
    with pytest.raises(CheckpointError, match=r"blocks.0.mlp.proj_in.bias has shape \(256,\), the config implies \(128,\)"):
        load_pretrained(ckpt)


def test_truncated_and_corrupt_files(ckpt: Path):
    path = ckpt / "cola_dlm" / "cola_vae" / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_pretrained(ckpt)
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not JSON"):
        load_pretrained(ckpt)


def test_pickle_checkpoints_are_refused(ckpt: Path):
    folder = ckpt / "cola_dlm" / "cola_vae"
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="only safetensors"):
        load_pretrained(ckpt)


def test_not_a_checkpoint(tmp_path: Path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a Cola DLM checkpoint"):
        load_pretrained(tmp_path)


def test_config_errors_name_file_and_key(ckpt: Path):
    _edit_config(ckpt, "cola_dit", emb_dim=32)
    with pytest.raises(ConfigError, match=r"cola_dit/config.json: key 'emb_dim' must equal txt_dim"):
        load_pretrained(ckpt)
    _edit_config(ckpt, "cola_dit", emb_dim=64, heads="four")
    with pytest.raises(ConfigError, match=r"key 'heads' has invalid value 'four'"):
        load_pretrained(ckpt)
    _edit_config(ckpt, "cola_dit", heads=4)
    _edit_config(ckpt, "cola_vae", shared_heads_kv=2)
    with pytest.raises(ConfigError, match="shared_heads_kv"):
        load_pretrained(ckpt)


def test_cross_model_checks():
    with pytest.raises(ConfigError, match="latent_dim"):
        check_pair(VAEConfig(latent_dim=8), DiTConfig())
    with pytest.raises(ConfigError, match="block_size"):
        check_pair(VAEConfig(block_size=16), DiTConfig(block_size=4))
    with pytest.raises(ConfigError, match="patch_size"):
        DiTConfig.from_dict({"patch_size": 2})
    with pytest.raises(ConfigError, match="rope_dim"):
        DiTConfig.from_dict({"rope_dim": 7})
    with pytest.raises(ConfigError, match="layer_norm_type"):
        VAEConfig.from_dict({"layer_norm_type": "rms_norm"})


def test_release_defaults_have_release_parameter_counts():
    from cola_core.dit import ColaDiT
    from cola_core.vae import ColaTextVAE
    with torch.device("meta"):
        dit, vae = ColaDiT(DiTConfig()), ColaTextVAE(VAEConfig())
    assert sum(p.numel() for p in dit.parameters()) == 1_829_875_728
    assert len(dit.state_dict()) == 470
    assert sum(p.numel() for p in vae.parameters()) == 501_871_574
    assert len(vae.state_dict()) == 133


def test_skip_init_leaves_tensors_untouched_in_its_thread_only():
    """Load builds the models without random init (the checkpoint overwrites it); other threads still init."""
    import threading

    from cola_core.checkpoint import SkipInit
    other: list[torch.Tensor] = []
    with SkipInit():
        mine = torch.nn.init.normal_(torch.zeros(64))
        torch.zeros(64).uniform_()
        linear = torch.nn.Linear(4, 4, device="meta")
        worker = threading.Thread(target=lambda: other.append(torch.nn.init.normal_(torch.zeros(64))))
        worker.start()
        worker.join()
    assert torch.equal(mine, torch.zeros(64)) and linear.weight.shape == (4, 4)
    assert other[0].std() > 0.5
    assert torch.nn.init.normal_(torch.zeros(64)).std() > 0.5   # and init is back after the block
