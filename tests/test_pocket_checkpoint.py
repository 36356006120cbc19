"""The shipped pocket checkpoints: default everywhere, within budget, meeting their bars, and the card tells the truth."""
from __future__ import annotations

import json
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import pytest

from apps.cli import main as cli_main
from cola_core import load_pretrained
from cola_core.checkpoint import CheckpointPaths
from cola_core.chat_template import ChatTemplate
from cola_core.generate import GenerationConfig, generate
from cola_core.pocket import NAMED_CHECKPOINTS, chat_checkpoint, default_checkpoint, resolve_checkpoint
from cola_core.training.chat_eval import format_chat_table
from cola_core.training.config import load_config
from cola_core.training.corpus import WORDNET_DIR, extract_wordnet, split_corpus
from cola_core.training.data import TokenDataset
from cola_core.training.evaluate import format_table, latent_metrics
from cola_core.training.text_metrics import words

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cola_core" / "training" / "configs"
MAX_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def pocket():
    return load_pretrained(default_checkpoint())


@pytest.fixture(scope="module")
def pocket_chat():
    return load_pretrained(resolve_checkpoint("pocket-chat"))


@pytest.fixture(scope="module")
def card_eval() -> dict:
    return json.loads((default_checkpoint() / "eval.json").read_text())


@pytest.fixture(scope="module")
def chat_eval() -> dict:
    return json.loads((chat_checkpoint() / "eval_chat.json").read_text())


def _shipped_files() -> set[Path]:
    """Every file of both shipped checkpoints."""
    return {f for folder in NAMED_CHECKPOINTS.values() for f in folder.rglob("*") if f.is_file()}


def test_pocket_ships_release_layout_within_size_budget():
    for folder in (default_checkpoint(), chat_checkpoint()):
        parts = CheckpointPaths.resolve(folder)
        for part in (parts.vae, parts.dit):
            assert (part / "config.json").is_file() and list(part.glob("*.safetensors"))
        assert parts.tokenizer.is_file()
    folder = default_checkpoint()
    assert (folder / "MODEL_CARD.md").is_file()
    assert "Princeton University" in (folder / "WORDNET_LICENSE.txt").read_text()
    assert "Regents of the University of California" in (folder / "FORTUNES_LICENSE.txt").read_text()
    assert sum(f.stat().st_size for f in _shipped_files()) <= MAX_BYTES


def test_pocket_chat_shares_the_base_vae_and_tokenizer():
    base, chat = default_checkpoint(), chat_checkpoint()
    parts = CheckpointPaths.resolve(chat)           # through chat's shared_parts.json, not symlinks
    assert parts.vae.resolve() == (base / "cola_dlm" / "cola_vae").resolve()
    assert parts.tokenizer.resolve() == (base / "tokenizer.json").resolve()
    assert parts.dit == chat / "cola_dlm" / "cola_dit"
    assert resolve_checkpoint(None) == base and resolve_checkpoint(None, chat=True) == chat
    assert resolve_checkpoint("pocket") == base and resolve_checkpoint("./some/path") == Path("./some/path")


def test_packaging_ships_every_checkpoint_file_and_no_symlink():
    """Wheels and sdists copy or drop symlinks, so none may be shipped; pyproject's package-data globs
    (as setuptools expands them, relative to the package) must cover every file, the pointer included."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["cola_core"]
    package = ROOT / "cola_core"
    packaged = {f for pattern in globs for f in package.glob(pattern) if f.is_file()}
    shipped = {f for folder in NAMED_CHECKPOINTS.values() for f in folder.rglob("*")}
    assert not [f for f in shipped if f.is_symlink()]
    assert {f for f in shipped if f.is_file()} <= packaged
    assert chat_checkpoint() / "shared_parts.json" in packaged


def test_study_arm_configs_load_and_write_only_under_artifacts():
    """The card's study arms keep their exact TOMLs beside their results; each still loads under today's trainer."""
    arms = sorted((ROOT / "benchmarks" / "results").glob("*/arm_*.toml"))
    assert len(arms) >= 6
    for path in arms:
        cfg = load_config("dit" if "dit" in path.parent.name else "vae", path)
        assert Path(cfg.out_dir).parts[0] == "artifacts" and Path(cfg.run_dir).parts[0] == "artifacts", path


def test_pocket_weights_match_the_shipped_training_configs(pocket):
    vae_cfg, dit_cfg = load_config("vae", CONFIGS / "pocket_vae.toml"), load_config("dit", CONFIGS / "pocket_dit.toml")
    sft_cfg = load_config("sft", CONFIGS / "pocket_sft.toml")
    decoder_cfg = load_config("vae", CONFIGS / "pocket_vae_decoder.toml")
    continued_cfg = load_config("dit", CONFIGS / "pocket_dit_continue.toml")
    chat_base_cfg = load_config("dit", CONFIGS / "pocket_dit_chat_base.toml")
    noised_decoder_cfg = load_config("vae", CONFIGS / "pocket_vae_decoder_noise.toml")
    for cfg in (vae_cfg, decoder_cfg, dit_cfg, chat_base_cfg, continued_cfg, sft_cfg, noised_decoder_cfg):
        assert Path(cfg.out_dir).parts[0] == "artifacts" and Path(cfg.run_dir).parts[0] == "artifacts"   # never shipped
    # the chat model tunes a stage 2 run without the document start: the base's recipe otherwise
    assert sft_cfg.init_from == continued_cfg.init_from == chat_base_cfg.out_dir
    assert dit_cfg.document_start == "\n\n" and not chat_base_cfg.document_start
    differ = {key for key in vars(dit_cfg) if getattr(dit_cfg, key) != getattr(chat_base_cfg, key)}
    assert differ == {"document_start", "document_start_share", "run_dir", "out_dir"}
    assert pocket.document_start_ids == pocket.tokenizer.encode(dit_cfg.document_start)
    assert noised_decoder_cfg.init_from == decoder_cfg.out_dir and not noised_decoder_cfg.train_encoder
    assert noised_decoder_cfg.dialogue_template == sft_cfg.out_dir   # the decoder sees chats as pocket-chat renders them
    for key, value in vae_cfg.model.items():
        assert getattr(pocket.vae.config, key) == value, key
    for key, value in dit_cfg.model.items():
        assert getattr(pocket.dit.config, key) == value, key
    assert pocket.tokenizer.vocab_size == vae_cfg.vocab_size
    assert pocket.block_size >= 2          # a block's latents are denoised jointly
    assert ChatTemplate.for_model(pocket) == ChatTemplate()      # the base has no chat training


def test_model_card_numbers_are_evaluate_output_for_these_weights(pocket, card_eval):
    assert card_eval["fingerprint"] == pocket.fingerprint
    card = (default_checkpoint() / "MODEL_CARD.md").read_text()
    assert format_table(card_eval) in card


def test_pocket_reconstruction_bars_and_sample_quality_floors(card_eval):
    samples = card_eval["samples"]
    assert card_eval["latent"]["recon_accuracy"] >= 0.99
    assert card_eval["prose_recon"]["ood"] >= 0.97 and card_eval["prose_recon"]["fortunes_test"] >= 0.97
    # The bars (>= 90 % real words, <= 2x perplexity; shipped: 93.2 % / 1.40x), read beside diversity:
    # degenerate text meets both (a DiT with every text after the document start: 98.5 % / 1.83x, distinct-1 0.15).
    assert samples["all"]["in_vocab"] >= 0.90 and samples["ppl_ratio_vs_real"] <= 2.0
    assert samples["all"]["distinct_1"] >= 0.3 and samples["all"]["distinct_2"] >= 0.7


def test_pocket_meets_the_sample_bars_at_1000_samples(pocket):
    """The card's verdict rests on the 1,000-sample run of these weights: both intervals clear of the bars."""
    run = json.loads((ROOT / "benchmarks" / "results" / "pocket_dit_arms"
                      / "evaluate_document_start_1000samples.json").read_text())
    assert run["fingerprint"] == pocket.fingerprint and len(run["examples"]) == 1000
    interval = run["samples"]["interval"]
    assert interval["in_vocab"][0] >= 0.90 and interval["ppl_ratio_vs_real"][1] <= 2.0
    assert run["samples"]["all"]["distinct_2"] >= 0.65


def test_chat_card_numbers_are_evaluate_chat_output_for_these_weights(pocket_chat, chat_eval):
    assert chat_eval["fingerprint"] == pocket_chat.fingerprint
    assert chat_eval["template"] == ChatTemplate.for_model(pocket_chat).config_fields()
    assert chat_eval["samples"] >= 200 and chat_eval["non_empty"] >= 0.95
    assert format_chat_table(chat_eval) in (default_checkpoint() / "MODEL_CARD.md").read_text()


def test_pocket_chat_answers_in_words(pocket_chat):
    template = ChatTemplate.for_model(pocket_chat)
    assert template == ChatTemplate("text", pocket_chat.tokenizer.eos_id, True)
    prompt = template.prompt(pocket_chat.tokenizer, [("user", "What does 'river' mean?")])
    answer = generate(pocket_chat, [prompt], GenerationConfig(seed=0))[0]
    assert answer.stopped_at_eos and len(words(answer.completion)) >= 2


@pytest.mark.heavy   # spawns processes / encodes a whole split
@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="WordNet not installed (apt-get install wordnet-base)")
def test_pocket_reconstructs_held_out_wordnet_text(pocket, card_eval):
    test_texts = split_corpus(extract_wordnet())["test"][:256]
    dataset = TokenDataset(test_texts, pocket.tokenizer, 32, pocket.block_size, pocket.patch_size)
    accuracy = latent_metrics(pocket, dataset, batch_size=64, seed=0)["recon_accuracy"]
    assert accuracy >= 0.99
    assert accuracy == pytest.approx(card_eval["latent"]["recon_accuracy"], abs=0.01)


def test_cli_uses_the_pocket_checkpoint_by_default_and_names(pocket, capsys):
    for extra in ([], ["--checkpoint", "pocket-chat"]):
        assert cli_main(["generate", "--max-new-tokens", "6", "--seed", "0", "--json", *extra, "a river is"]) == 0
        record = json.loads(capsys.readouterr().out.splitlines()[0])
        assert record["prompt"] == "a river is"
        assert 1 <= len(record["token_ids"]) <= 7 and all(0 <= t < pocket.tokenizer.vocab_size
                                                           for t in record["token_ids"])
