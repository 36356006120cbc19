"""End-to-end training on a tiny corpus: losses fall, resume is exact, exports reload and generate."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from apps.cli import main as cli_main
from cola_core import load_pretrained
from cola_core.errors import ConfigError
from cola_core.generate import GenerationConfig, generate
from cola_core.training.checkpoints import latest_state
from cola_core.training.config import config_from_dict, load_config
from cola_core.training.corpus import read_corpus
from cola_core.training.evaluate import EvalConfig, evaluate, format_table
from cola_core.chat_template import ChatTemplate
from cola_core.training.conversations import write_conversations
from cola_core.training.stages import grow_decoder, load_vae, rendered_dialogues, train_dit, train_sft, train_vae
from cola_core.training.text_metrics import first_word_in_vocab, words
from training_utils import dit_config, make_corpus, vae_config


def _train_losses(run_dir, key):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in lines if r["split"] == "train"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny VAE + DiT run shared by the tests below."""
    tmp = tmp_path_factory.mktemp("pipeline")
    corpus = make_corpus(tmp / "corpus")
    train_vae(vae_config(tmp, corpus, steps=30))
    train_dit(dit_config(tmp, corpus, tmp / "vae" / "model", steps=30, ema_decay=0.9))
    return tmp, corpus


def test_vae_and_dit_losses_decrease(trained):
    tmp, _ = trained
    recon = _train_losses(tmp / "vae", "recon")
    fm = _train_losses(tmp / "dit", "fm")
    assert sum(recon[-5:]) / 5 < 0.8 * sum(recon[:5]) / 5
    assert sum(fm[-5:]) / 5 < sum(fm[:5]) / 5
    record = json.loads((tmp / "vae" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"recon", "kl", "mask", "loss", "lr", "grad_norm"} <= set(record)
    assert (tmp / "dit" / "loss_curves.html").stat().st_size > 1000


def test_export_is_release_layout_and_generates(trained):
    tmp, _ = trained
    final = tmp / "final"
    assert (final / "tokenizer.json").is_file()
    for part in ("cola_vae", "cola_dit"):
        assert (final / "cola_dlm" / part / "config.json").is_file()
        assert (final / "cola_dlm" / part / "model.safetensors").is_file()
    vae_cfg = json.loads((final / "cola_dlm" / "cola_vae" / "config.json").read_text())
    assert vae_cfg["model_type"] == "cola_text_vae" and vae_cfg["scaling_factor"] != 1.0
    model = load_pretrained(final)
    out = generate(model, ["the cat", ""], GenerationConfig(max_new_tokens=8, seed=0))
    assert len(out) == 2 and all(len(g.untrimmed_ids) == 8 or g.stopped_at_eos for g in out)
    assert generate(model, ["the cat"], GenerationConfig(max_new_tokens=8, seed=0))[0].text == out[0].text


def test_scaling_factors_give_unit_variance_latents(trained):
    tmp, _ = trained
    model = load_pretrained(tmp / "final")
    ids = torch.tensor([model.tokenizer.encode("the cat sees the ball") + [1]])
    ids = torch.nn.functional.pad(ids, (0, -ids.shape[1] % 4), value=model.tokenizer.pad_id)
    with torch.no_grad():
        post = model.vae.encode_ids(ids, torch.tensor([ids.shape[1]]))
    z = model.vae.to_dit_space(post.mean + post.std * torch.randn(post.mean.shape, generator=torch.Generator().manual_seed(0)))
    assert 0.5 < float(z.std()) < 2.0


def test_evaluate_reports_all_metrics(trained):
    tmp, corpus = trained
    results = evaluate(load_pretrained(tmp / "final"), corpus,
                       EvalConfig(samples=4, batch_size=4, generation=GenerationConfig(max_new_tokens=8, steps=4)))
    latent = results["latent"]
    assert 0.0 <= latent["recon_accuracy"] <= 1.0 and latent["zero_velocity_loss"] > 0
    assert latent["fm_ratio"] == pytest.approx(latent["fm_loss"] / latent["zero_velocity_loss"])
    samples = results["samples"]
    assert samples["real_test"]["in_vocab"] == 1.0          # the tiny grammar's test words all occur in train
    assert len(results["examples"]) == 4 and results["examples"][0]["prompt"].count(" ") in (1, 2)
    assert results["examples"][-1]["prompt"] == ""
    interval = samples["interval"]
    assert interval["in_vocab"][0] <= interval["in_vocab"][1] and interval["resamples"] == 1000
    assert "95% bootstrap interval over the 4 samples (1000 resamples)" in format_table(results)
    unprompted = [e["continuation"] for e in results["examples"][2:]]
    assert (samples["unprompted"]["in_vocab_first_word"], samples["unprompted"]["in_vocab_later_words"]) == \
        first_word_in_vocab(unprompted, {w for text in read_corpus(corpus / "train.jsonl") for w in words(text)})
    assert "in-vocab by position (first generated word / later words): prompted " in format_table(results)


def test_joint_training_updates_the_vae_against_its_frozen_copy(tmp_path, trained):
    tmp, corpus = trained
    stage1 = load_pretrained(tmp / "final").vae.state_dict()
    train_dit(dit_config(tmp_path, corpus, tmp / "vae" / "model", steps=6, joint_vae=True, vae_lr=1e-2))
    records = [json.loads(line) for line in (tmp_path / "dit" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    assert {"fm", "recon", "kl_ref"} <= set(train[0])
    assert train[0]["kl_ref"] == pytest.approx(0.0, abs=1e-6)   # step 1: the VAE still equals its reference
    assert train[-1]["kl_ref"] > 1e-4                            # later steps moved the encoder
    joint = load_pretrained(tmp_path / "final")
    moved = [k for k, v in joint.vae.state_dict().items() if not torch.equal(v, stage1[k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("decoder.") for k in moved)
    out = generate(joint, ["the cat"], GenerationConfig(max_new_tokens=8, seed=0))
    assert len(out[0].untrimmed_ids) == 8 or out[0].stopped_at_eos


def test_decoder_tuning_keeps_the_latent_space_bit_exact(tmp_path, trained):
    tmp, corpus = trained
    stage1 = tmp / "vae" / "model"
    train_vae(vae_config(tmp_path, corpus, init_from=str(stage1), train_encoder=False, model={}, steps=4,
                         mask_seq_prob=0.0))
    before = load_file(str(stage1 / "cola_vae" / "model.safetensors"))
    after = load_file(str(tmp_path / "vae" / "model" / "cola_vae" / "model.safetensors"))
    for key in before:
        assert torch.equal(before[key], after[key]) == key.startswith("encoder."), key
    configs = [json.loads((folder / "cola_vae" / "config.json").read_text()) for folder in (stage1, tmp_path / "vae" / "model")]
    assert configs[0] == configs[1]                       # same scaling/shifting factors: the DiT still fits
    with pytest.raises(ConfigError, match="train_encoder = false' needs 'init_from'"):
        vae_config(tmp_path, corpus, train_encoder=False)
    with pytest.raises(ConfigError, match="'decoder_prior' needs 'train_encoder = false'"):
        vae_config(tmp_path, corpus, init_from=str(stage1), model={}, decoder_prior=str(tmp / "final"))


def test_decoder_blocks_grows_the_decoder_from_its_trained_predictions(tmp_path, trained):
    """``decoder_blocks`` appends zero-output blocks: before any step the grown decoder agrees with the trained
    one's predictions, the encoder and latent scaling stay bit-exact, and the export records the new depth."""
    tmp, corpus = trained
    stage1 = tmp / "vae" / "model"
    vae = load_vae(stage1, torch.device("cpu"))[0]
    grown = copy.deepcopy(vae)
    grow_decoder(grown, vae.config.decoder_num_blocks + 2)
    assert len(grown.decoder.blocks) == grown.config.decoder_num_blocks == vae.config.decoder_num_blocks + 2
    z = torch.randn(3, 5, vae.config.latent_dim, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([5, 4, 2])
    with torch.no_grad():
        agree = (grown.decode_latents(z, lengths).argmax(-1) == vae.decode_latents(z, lengths).argmax(-1)).float()
    assert float(agree.mean()) >= 0.9
    with pytest.raises(ConfigError, match="fewer than the"):
        grow_decoder(grown, 1)
    train_vae(vae_config(tmp_path, corpus, init_from=str(stage1), train_encoder=False, model={}, steps=2,
                         mask_seq_prob=0.0, decoder_blocks=vae.config.decoder_num_blocks + 2))
    after = load_vae(tmp_path / "vae" / "model", torch.device("cpu"))[0]
    assert after.config.decoder_num_blocks == vae.config.decoder_num_blocks + 2
    assert (after.config.scaling_factor, after.config.shifting_factor) == \
        (vae.config.scaling_factor, vae.config.shifting_factor)
    for key, value in vae.encoder.state_dict().items():
        assert torch.equal(value, after.encoder.state_dict()[key]), key
    with pytest.raises(ConfigError, match="'decoder_blocks' must be >= 0 and needs 'init_from'"):
        vae_config(tmp_path, corpus, decoder_blocks=4)
    with pytest.raises(ConfigError, match="'decoder_swap_noised' needs 'decoder_swap' and 'decoder_noise'"):
        vae_config(tmp_path, corpus, decoder_noise=0.0, decoder_swap=0.5, decoder_swap_noised=True)


def test_first_block_weight_and_crop_start_prob_are_checked(tmp_path, trained):
    tmp, corpus = trained
    assert dit_config(tmp_path, corpus, tmp / "vae" / "model", first_block_weight=4.0).first_block_weight == 4.0
    with pytest.raises(ConfigError, match="'first_block_weight' must be > 0"):
        dit_config(tmp_path, corpus, tmp / "vae" / "model", first_block_weight=0.0)
    with pytest.raises(ConfigError, match="'crop_start_prob' must be in \\[0, 1\\]"):
        dit_config(tmp_path, corpus, tmp / "vae" / "model", crop_start_prob=1.5)


def test_a_trained_document_start_is_recorded_and_precedes_prompts(tmp_path, trained):
    tmp, corpus = trained
    vae = tmp / "vae" / "model"
    tokenizer = load_pretrained(tmp / "final").tokenizer
    chunk = 4                                                        # the tiny models' block of 4 latents, patch 1
    start = next(s for s in ("== ", "==== ", "#", "##", "###", "####", "#####") if len(tokenizer.encode(s)) == chunk)
    with pytest.raises(ConfigError, match="must fill whole blocks of 4 tokens"):
        train_dit(dit_config(tmp_path, corpus, vae, steps=1, document_start="x",
                             document_start_share=0.5))
    train_dit(dit_config(tmp_path, corpus, vae, steps=2, document_start=start, document_start_share=0.5))
    model = load_pretrained(tmp_path / "final")
    assert model.dit_config.extra["document_start_ids"] == tokenizer.encode(start) == model.document_start_ids
    assert model.prompt_ids("the cat") == tokenizer.encode(start) + tokenizer.encode("the cat")


def test_decoder_tuning_can_read_dialogues_as_the_chat_model_renders_them(tmp_path, trained, capsys):
    """``dialogues`` adds the first ``dialogue_rows`` train conversations, rendered by a checkpoint's template."""
    tmp, corpus = trained
    chats = [[("user", "what does cat mean"), ("assistant", "a small animal")], [("user", "hi"), ("assistant", "hello")],
             [("user", "unused"), ("assistant", "never read")]]
    write_conversations(tmp_path / "chat" / "train.jsonl", chats)
    knobs = dict(init_from=str(tmp / "vae" / "model"), train_encoder=False, model={}, steps=2, mask_seq_prob=0.0,
                 dialogues=str(tmp_path / "chat"), dialogue_rows=2, dialogue_template=str(tmp / "final"))
    cfg = vae_config(tmp_path, corpus, **knobs)
    final = load_pretrained(tmp / "final")
    expected = [ChatTemplate.for_model(final).render(final.tokenizer, messages).ids for messages in chats[:2]]
    assert rendered_dialogues(cfg, final.tokenizer) == expected
    capsys.readouterr()
    train_vae(cfg)
    texts = len((corpus / "train.jsonl").read_text().splitlines())
    assert f"{texts + 2} train texts" in capsys.readouterr().err     # the corpus and the two dialogues
    with pytest.raises(ConfigError, match="'dialogues', 'dialogue_rows' .* and 'dialogue_template' go together"):
        vae_config(tmp_path, corpus, **{**knobs, "dialogue_template": ""})


def test_decoder_tuning_on_the_priors_estimates_keeps_the_encoder(tmp_path, trained):
    tmp, corpus = trained
    stage1 = tmp / "vae" / "model"
    train_vae(vae_config(tmp_path, corpus, init_from=str(stage1), train_encoder=False, model={}, steps=2,
                         mask_seq_prob=0.0, decoder_noise=0.0, decoder_prior=str(tmp / "final"),
                         decoder_prior_prob=1.0, decoder_prior_t_max=0.5))
    before = load_file(str(stage1 / "cola_vae" / "model.safetensors"))
    after = load_file(str(tmp_path / "vae" / "model" / "cola_vae" / "model.safetensors"))
    for key in before:
        assert torch.equal(before[key], after[key]) == key.startswith("encoder."), key
    with pytest.raises(ConfigError, match="remove \\[model\\]"):
        vae_config(tmp_path, corpus, init_from=str(stage1))


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    straight = vae_config(tmp_path / "a", corpus, steps=8, grad_accum=2, decoder_noise=0.3)
    train_vae(straight)
    first = vae_config(tmp_path / "b", corpus, steps=8, grad_accum=2, decoder_noise=0.3, tokenizer=str(tmp_path / "a" / "vae" / "tokenizer.json"))
    first.max_minutes = 1e-9            # stop (and checkpoint) after the first step
    train_vae(first)
    assert latest_state(tmp_path / "b" / "vae").meta["step"] == 1
    first.max_minutes = 0.0
    train_vae(first, resume=True)
    a = latest_state(tmp_path / "a" / "vae").tensors
    b = latest_state(tmp_path / "b" / "vae").tensors
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert _train_losses(tmp_path / "a" / "vae", "loss") == _train_losses(tmp_path / "b" / "vae", "loss")


def test_dit_resume_with_ema_is_exact(tmp_path, trained):
    tmp, corpus = trained
    vae_dir = tmp / "vae" / "model"
    train_dit(dit_config(tmp_path / "a", corpus, vae_dir, steps=6, ema_decay=0.5, save_every=3))
    cut = dit_config(tmp_path / "b", corpus, vae_dir, steps=6, ema_decay=0.5, save_every=3)
    cut.max_minutes = 1e-9
    train_dit(cut)                      # interrupted after step 1
    cut.max_minutes = 0.0
    train_dit(cut, resume=True)
    a = latest_state(tmp_path / "a" / "dit").tensors
    b = latest_state(tmp_path / "b" / "dit").tensors
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_dit_init_from_continues_a_checkpoints_dit(tmp_path, trained):
    tmp, corpus = trained
    raw = {"vae": "", "init_from": str(tmp / "final"), "model": {}, "steps": 2, "lr": 1e-9, "warmup_steps": 1}
    train_dit(dit_config(tmp_path, corpus, tmp / "vae" / "model", **raw))
    before, after = load_pretrained(tmp / "final"), load_pretrained(tmp_path / "final")
    assert after.dit_config == before.dit_config and after.vae_config == before.vae_config   # same shape, same VAE
    assert after.fingerprint != before.fingerprint           # new weights, though of the same shapes
    for key, value in before.dit.state_dict().items():       # lr ~0: the weights it started from
        assert torch.allclose(value, after.dit.state_dict()[key], atol=1e-2), key
    first = _train_losses(tmp_path / "dit", "fm")[0]
    assert first < _train_losses(tmp / "dit", "fm")[0]       # starts where the trained DiT is, not from scratch
    with pytest.raises(ConfigError, match="remove \\[model\\] and 'vae'"):
        dit_config(tmp_path, corpus, tmp / "vae" / "model", init_from=str(tmp / "final"))
    with pytest.raises(ConfigError, match="field 'vae' .* or 'init_from' .* is required"):
        dit_config(tmp_path, corpus, tmp / "vae" / "model", vae="")


def test_an_export_into_a_non_empty_folder_needs_overwrite(tmp_path, trained, capsys):
    tmp, corpus = trained
    out = tmp_path / "installed"
    out.mkdir()
    (out / "MODEL_CARD.md").write_text("card")
    sft = config_from_dict("sft", {"corpus": str(corpus), "init_from": str(tmp / "final"), "run_dir": str(tmp_path / "s"),
                                   "out_dir": str(out)}, source="test")
    runs = [(train_vae, vae_config(tmp_path / "v", corpus, out_dir=str(out))),
            (train_dit, dit_config(tmp_path / "d", corpus, tmp / "vae" / "model", out_dir=str(out), steps=2)),
            (train_sft, sft)]
    for train, cfg in runs:                  # refused before anything is trained or written
        with pytest.raises(ConfigError, match=re.escape(f"out_dir {out} is not empty (MODEL_CARD.md); ") + ".* pass --overwrite"):
            train(cfg)
        assert not Path(cfg.run_dir).exists() and sorted(p.name for p in out.iterdir()) == ["MODEL_CARD.md"]
    config = tmp_path / "dit.toml"
    config.write_text(f'corpus = "{corpus}"\nvae = "{tmp / "vae" / "model"}"\nrun_dir = "{tmp_path / "c"}"\n'
                      f'out_dir = "{out}"\n')
    assert cli_main(["train", "dit", "--config", str(config)]) == 2
    assert "is not empty (MODEL_CARD.md)" in capsys.readouterr().err
    train_dit(runs[1][1], overwrite=True)    # writes the model files, keeps the card
    assert (out / "MODEL_CARD.md").read_text() == "card" and load_pretrained(out).dit_config.num_layers == 1
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        train_dit(dit_config(tmp_path / "e", corpus, tmp / "vae" / "model", out_dir=str(tmp_path / "file")))


def test_bad_configs_and_corpora_fail_clearly(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    with pytest.raises(ConfigError, match="unknown field 'stepz'"):
        vae_config(tmp_path, corpus, stepz=3)
    with pytest.raises(ConfigError, match="field 'steps' must be int"):
        vae_config(tmp_path, corpus, steps="10")
    with pytest.raises(ConfigError, match=r"unknown field 'width' in \[model\]"):
        vae_config(tmp_path, corpus, model={"width": 3})
    with pytest.raises(ConfigError, match="grad_accum"):
        vae_config(tmp_path, corpus, batch_size=10, grad_accum=3)
    (tmp_path / "bad.toml").write_text("steps = [1\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config("vae", tmp_path / "bad.toml")
    with pytest.raises(FileNotFoundError, match="corpus folder not found"):
        train_vae(vae_config(tmp_path, tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    for split in ("train", "val", "test"):
        (tmp_path / "empty" / f"{split}.jsonl").write_text("")
    with pytest.raises(ValueError, match="corpus is empty"):
        train_vae(vae_config(tmp_path, tmp_path / "empty", tokenizer=""))
    with pytest.raises(FileNotFoundError, match="no cola_vae/config.json"):
        train_dit(dit_config(tmp_path, corpus, tmp_path / "nowhere"))
