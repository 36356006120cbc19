"""The shipped pocket checkpoint: default everywhere, within budget, and its model card tells the truth."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from apps.cli import main as cli_main
from cola_core import load_pretrained
from cola_core.pocket import default_checkpoint
from cola_core.training.config import load_config
from cola_core.training.corpus import WORDNET_DIR, extract_wordnet, split_corpus
from cola_core.training.data import TokenDataset
from cola_core.training.evaluate import format_table, latent_metrics

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cola_core" / "training" / "configs"
MAX_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def pocket():
    return load_pretrained(default_checkpoint())


@pytest.fixture(scope="module")
def card_eval() -> dict:
    return json.loads((default_checkpoint() / "eval.json").read_text())


def test_pocket_ships_release_layout_within_size_budget():
    folder = default_checkpoint()
    for part in ("cola_vae", "cola_dit"):
        assert (folder / "cola_dlm" / part / "config.json").is_file()
        assert list((folder / "cola_dlm" / part).glob("*.safetensors"))
    assert (folder / "tokenizer.json").is_file() and (folder / "MODEL_CARD.md").is_file()
    assert "Princeton University" in (folder / "WORDNET_LICENSE.txt").read_text()
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= MAX_BYTES


def test_pocket_weights_match_the_shipped_training_configs(pocket):
    vae_cfg, dit_cfg = load_config("vae", CONFIGS / "pocket_vae.toml"), load_config("dit", CONFIGS / "pocket_dit.toml")
    assert (ROOT / dit_cfg.out_dir).resolve() == default_checkpoint().resolve()
    for key, value in vae_cfg.model.items():
        assert getattr(pocket.vae.config, key) == value, key
    for key, value in dit_cfg.model.items():
        assert getattr(pocket.dit.config, key) == value, key
    assert pocket.tokenizer.vocab_size == vae_cfg.vocab_size


def test_model_card_numbers_are_evaluate_output_for_these_weights(pocket, card_eval):
    assert card_eval["fingerprint"] == pocket.fingerprint
    card = (default_checkpoint() / "MODEL_CARD.md").read_text()
    assert format_table(card_eval) in card


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="WordNet not installed (apt-get install wordnet-base)")
def test_pocket_reconstructs_held_out_wordnet_text(pocket, card_eval):
    test_texts = split_corpus(extract_wordnet())["test"][:256]
    dataset = TokenDataset(test_texts, pocket.tokenizer, 32, pocket.block_size, pocket.patch_size)
    accuracy = latent_metrics(pocket, dataset, batch_size=64, seed=0)["recon_accuracy"]
    assert accuracy >= 0.99
    assert accuracy == pytest.approx(card_eval["latent"]["recon_accuracy"], abs=0.01)


def test_cli_uses_the_pocket_checkpoint_by_default(pocket, capsys):
    assert cli_main(["generate", "--max-new-tokens", "6", "--seed", "0", "--json", "a river is"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["prompt"] == "a river is"
    assert 1 <= len(record["token_ids"]) <= 6 and all(0 <= t < pocket.tokenizer.vocab_size for t in record["token_ids"])
