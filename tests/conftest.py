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


@pytest.fixture(scope="session")
def pocket_model():
    """The shipped pocket checkpoint (trained; it ends its samples with EOS, which the random fixtures never do)."""
    from cola_core import load_pretrained
    from cola_core.pocket import default_checkpoint
    return load_pretrained(default_checkpoint())


@pytest.fixture(scope="session")
def patch2_model(tiny_model, tmp_path_factory):
    """Random weights with patch_size 2 (two tokens per latent) and block size 4, to exercise every path
    that depends on P (every release-format fixture has P = 1). Built from a seeded init with the tiny
    fixture's shapes and tokenizer, non-trivial scaling/shifting factors (DiT space != VAE space),
    saved with our own ``save_pretrained`` and loaded back."""
    from cola_core import ColaModel, load_pretrained
    from cola_core.config import VAEConfig
    from cola_core.dit import ColaDiT
    from cola_core.training.stages import init_weights
    from cola_core.vae import ColaTextVAE
    vae_cfg = VAEConfig.from_dict({**tiny_model.vae_config.to_dict(), "patch_size": 2, "scaling_factor": 1.5,
                                   "shifting_factor": 0.1})
    with torch.random.fork_rng():
        torch.manual_seed(0)
        vae, dit = ColaTextVAE(vae_cfg), ColaDiT(tiny_model.dit_config)
        init_weights(vae, 0.1)
        init_weights(dit, 0.1)
    model = ColaModel(vae=vae.eval(), dit=dit.eval(), tokenizer=tiny_model.tokenizer, vae_config=vae_cfg,
                      dit_config=tiny_model.dit_config, device=tiny_model.device, dtype=torch.float32)
    return load_pretrained(model.save_pretrained(tmp_path_factory.mktemp("patch2")))


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
