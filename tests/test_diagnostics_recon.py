"""Reconstruction and compression diagnostics: exact numbers on controlled decoders/posteriors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cola_core.vae import Posterior
from workbench.bounds import token_nll
from workbench.diagnostics import active_units, diagnose
from workbench.errors import WorkbenchError

TEXTS = ["The cat sat on the mat.", "A river ran across the hill under the sun", "tea",
         "The candle counted the sun across the river and the hill."]


def test_token_nll_of_uniform_logits_is_log_vocab():
    logits = torch.zeros(2, 5, 512)
    ids = torch.randint(0, 512, (2, 5))
    assert torch.allclose(token_nll(logits, ids), torch.full((2, 5), math.log(512)))


def test_active_units_counts_channels_by_variance():
    n = 1000
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2)                     # mean 0, population variance 1
    amplitude = torch.tensor([0.0, 0.05, 0.09, 0.11, 0.2, 1.0])          # variance a^2 * n/(n-1)
    means = signs[:, None] * amplitude[None]
    count, var = active_units(means, threshold=0.01)
    assert torch.allclose(var, amplitude ** 2 * n / (n - 1))
    assert count == 3                                                    # 0.11, 0.2 and 1.0
    with pytest.raises(WorkbenchError, match="at least two"):
        active_units(means[:1])


def _capture_ids(model, monkeypatch) -> dict:
    seen = {}
    real = model.vae.encode_ids

    def encode_ids(ids, lengths, mask_token_ids=None):
        seen["ids"] = ids
        return real(ids, lengths)

    monkeypatch.setattr(model.vae, "encode_ids", encode_ids)
    return seen


def test_identity_decoder_has_accuracy_one_and_zero_nll(tiny_model, monkeypatch):
    seen = _capture_ids(tiny_model, monkeypatch)
    vocab = tiny_model.vae_config.vocab_size
    monkeypatch.setattr(tiny_model.vae, "decode_latents",
                        lambda z, lengths, **kw: 60.0 * F.one_hot(seen["ids"], vocab).float())
    diag = diagnose(tiny_model, TEXTS, prior=False, samples=2, batch_size=3)
    for row in diag.per_text:
        assert row.token_accuracy == 1.0
        assert row.recon_bits_per_token < 1e-12 and row.recon_bits_per_token_sampled < 1e-12
    assert diag.dataset.token_accuracy == 1.0


def test_uniform_decoder_costs_log2_vocab_bits(tiny_model, monkeypatch):
    vocab = tiny_model.vae_config.vocab_size
    monkeypatch.setattr(tiny_model.vae, "decode_latents",
                        lambda z, lengths, **kw: torch.zeros(z.shape[0], z.shape[1], vocab))
    diag = diagnose(tiny_model, TEXTS, prior=False)
    for row in diag.per_text:
        assert row.recon_bits_per_token == pytest.approx(math.log2(vocab), abs=1e-5)
        assert row.token_accuracy == 0.0          # argmax of a flat row is id 0 (eos), never in these texts
    assert diag.dataset.recon_bits_per_token == pytest.approx(9.0, abs=1e-5)


def _fixed_posterior(model, monkeypatch, mean_value: float, logvar_value: float) -> None:
    channels = model.vae_config.latent_dim

    def encode_ids(ids, lengths, mask_token_ids=None):
        n = ids.shape[1]
        valid = torch.arange(n)[None] < lengths[:, None]
        return Posterior(mean=torch.full((ids.shape[0], n, channels), mean_value),
                         logvar=torch.full((ids.shape[0], n, channels), logvar_value), valid=valid)

    monkeypatch.setattr(model.vae, "encode_ids", encode_ids)


def test_standard_normal_posterior_has_zero_kl_and_no_active_units(tiny_model, monkeypatch):
    _fixed_posterior(tiny_model, monkeypatch, 0.0, 0.0)
    diag = diagnose(tiny_model, TEXTS, prior=False)
    assert all(row.kl_nats == 0.0 and row.posterior_std == 1.0 for row in diag.per_text)
    assert diag.dataset.kl_bits_per_token == 0.0
    assert diag.dataset.active_units == 0
    assert diag.dataset.posterior_std == pytest.approx(1.0)
    assert all(d.kl_nats == 0.0 and not d.active for d in diag.per_dimension)


def test_kl_of_a_shifted_posterior_is_half_the_squared_mean(tiny_model, monkeypatch):
    _fixed_posterior(tiny_model, monkeypatch, 0.5, 0.0)
    diag = diagnose(tiny_model, TEXTS, prior=False)
    channels = tiny_model.vae_config.latent_dim
    for row in diag.per_text:
        assert row.kl_nats == pytest.approx(0.5 * 0.25 * channels * row.latents, rel=1e-6)
        assert row.kl_bits_per_token == pytest.approx(row.kl_nats / math.log(2) / row.tokens)
    assert all(d.kl_nats == pytest.approx(0.125) for d in diag.per_dimension)


def test_real_model_numbers_are_consistent(tiny_model):
    diag = diagnose(tiny_model, TEXTS, prior=False, samples=2)
    bs, channels = tiny_model.block_size, tiny_model.vae_config.latent_dim
    for row in diag.per_text:
        assert 0.0 <= row.token_accuracy <= 1.0
        assert row.recon_bits_per_token > 0 and row.recon_bits_per_token_sampled > 0
        assert row.latents % bs == 0 and row.latents >= row.tokens and row.blocks == row.latents // bs
        assert row.kl_nats > 0
        # the encoder LayerNorms its means: every latent has norm sqrt(C)
        assert row.latent_norm == pytest.approx(math.sqrt(channels), rel=1e-3)
    total_kl = sum(r.kl_nats for r in diag.per_text)
    n_latents = sum(r.latents for r in diag.per_text)
    assert sum(d.kl_nats for d in diag.per_dimension) * n_latents == pytest.approx(total_kl, rel=1e-5)
    assert 0 <= diag.dataset.active_units <= channels
    assert diag.dataset.tokens == sum(r.tokens for r in diag.per_text)


def test_elbo_is_recon_plus_rate_for_texts_without_padding(tiny_model):
    tok, chunk = tiny_model.tokenizer, tiny_model.block_size * tiny_model.patch_size
    texts = [t for t in ["the sun.", "the sun and the hill.", "A cat."] if len(tok.encode(t)) % chunk == 0]
    assert len(texts) == 3, "these texts fill whole blocks"
    diag = diagnose(tiny_model, texts, prior=False, samples=3)
    for row in diag.per_text:
        assert row.elbo_bits_per_token == pytest.approx(row.recon_bits_per_token_sampled + row.rate_bits_per_token,
                                                        rel=1e-6)
        # the Monte-Carlo rate estimates the closed-form KL (3 draws: within a few nats of it)
        assert row.rate_bits_per_token == pytest.approx(row.kl_bits_per_token, rel=0.5)


def test_per_text_numbers_do_not_depend_on_the_batch(tiny_model):
    together = diagnose(tiny_model, TEXTS, prior=False, batch_size=4).per_text
    alone = [diagnose(tiny_model, [t], prior=False).per_text[0] for t in TEXTS]
    for a, b in zip(together, alone):
        assert a.token_accuracy == b.token_accuracy
        for name in ("recon_bits_per_token", "kl_nats", "posterior_std", "latent_norm"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-5, abs=1e-6), name


def test_seed_makes_sampled_numbers_reproducible(tiny_model):
    a = diagnose(tiny_model, TEXTS[:2], prior=False, seed=3).per_text
    b = diagnose(tiny_model, TEXTS[:2], prior=False, seed=3).per_text
    c = diagnose(tiny_model, TEXTS[:2], prior=False, seed=4).per_text
    assert [r.recon_bits_per_token_sampled for r in a] == [r.recon_bits_per_token_sampled for r in b]
    assert [r.recon_bits_per_token_sampled for r in a] != [r.recon_bits_per_token_sampled for r in c]


def test_records_and_figures(tiny_model):
    diag = diagnose(tiny_model, TEXTS[:2], t_grid=[0.25, 0.75])
    records = diag.records()
    assert set(records) == {"per_text", "dataset", "per_dimension", "flow_matching"}
    assert len(records["per_dimension"]) == tiny_model.vae_config.latent_dim
    assert records["per_text"][0]["text"] == TEXTS[0]
    figures = diag.figures(height=300)
    assert set(figures) == {"reconstruction", "compression", "prior_fit", "elbo"}
    assert all(fig.layout.height == 300 for fig in figures.values())


@pytest.mark.parametrize("texts, message", [([], "no texts"), (["ok", "  "], "text 1 is empty"),
                                            (["ok", 3], "text 1 is not a string")])
def test_bad_texts_are_named(tiny_model, texts, message):
    with pytest.raises(WorkbenchError, match=message):
        diagnose(tiny_model, texts)


def test_bad_settings_fail_before_work(tiny_model):
    with pytest.raises(WorkbenchError, match="t_grid"):
        diagnose(tiny_model, TEXTS, t_grid=[0.5, 1.5])
    with pytest.raises(WorkbenchError, match="samples"):
        diagnose(tiny_model, TEXTS, samples=0)


def test_informative_units_flag_an_encoder_whose_means_ignore_the_input(tiny_model, monkeypatch):
    """Active units cannot fail for LayerNormed means (pooled over positions, every channel varies); an
    encoder that reads only the position (each latent sees a fixed token) still has 8/8 active units, and
    the informative-units measure flags it with 0."""
    healthy = diagnose(tiny_model, TEXTS, prior=False)
    channels = tiny_model.vae_config.latent_dim
    assert healthy.dataset.informative_units == channels
    assert all(d.text_variance_ratio > 0.3 for d in healthy.per_dimension)
    real = tiny_model.vae.encode_ids

    def ignore_the_text(ids, lengths, mask_token_ids=None):
        positions = 10 + torch.arange(ids.shape[1]).expand_as(ids)       # a fixed ordinary token per position
        return real(positions, lengths)

    monkeypatch.setattr(tiny_model.vae, "encode_ids", ignore_the_text)
    collapsed = diagnose(tiny_model, TEXTS, prior=False)
    assert collapsed.dataset.active_units == channels                  # the old measure sees nothing wrong
    assert collapsed.dataset.informative_units == 0
    assert all(d.text_variance_ratio < 1e-6 and not d.informative for d in collapsed.per_dimension)
    assert "0/8 informative units" in collapsed.figures()["compression"].layout.title.text
