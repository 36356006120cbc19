"""Prior fit: the 2L layout, flow-matching loss on controlled velocity fields, and the real tiny DiT."""
from __future__ import annotations

import pytest
import torch

from cola_core.text_codec import encode_tokens
from cola_core.two_l import two_l_layout
from workbench.diagnostics import diagnose
from workbench.prior import ConditionalVelocity, flow_matching_loss
from workbench.textbatch import tokenize

TEXTS = ["The cat sat on the mat.", "A river ran across the hill under the sun", "tea"]


def _latents(model, texts=TEXTS):
    batch = tokenize(model, texts)
    return model.vae.to_dit_space(encode_tokens(model, batch).mean), batch.latent_lengths


def test_two_l_layout_follows_the_training_rules():
    bs, n = 2, 6
    positions, allowed = two_l_layout(torch.tensor([6, 4]), n, bs)
    assert positions[0].tolist() == list(range(n)) * 2
    for b, length in enumerate([6, 4]):
        for q in range(2 * n):
            for k in range(2 * n):
                qb, kb = (q % n) // bs, (k % n) // bs
                valid = q % n < length and k % n < length
                if q < n:
                    rule = k < n and kb <= qb
                else:
                    rule = (k < n and kb < qb) or (k >= n and kb == qb)
                assert bool(allowed[b, q, k]) == (valid and rule), (b, q, k)


def test_2l_layout_equals_block_queries_with_clean_prefix(tiny_model):
    """Each noisy block's 2L output = that block queried after its clean prefix (inference layout)."""
    z0, lengths = _latents(tiny_model)
    bs = tiny_model.block_size
    gen = torch.Generator().manual_seed(0)
    zt = 0.6 * z0 + 0.4 * torch.randn(z0.shape, generator=gen)
    s = torch.full((z0.shape[0],), 0.4)
    with torch.no_grad():
        v = ConditionalVelocity(tiny_model, z0, lengths)(zt, s)
        for b, n in enumerate(lengths.tolist()):
            for k in range(n // bs):
                x = torch.cat([z0[b, :k * bs], zt[b, k * bs:(k + 1) * bs]])[None]
                t = torch.cat([torch.zeros(k * bs), torch.full((bs,), 400.0)])[None]
                ref = tiny_model.dit(x, t, torch.tensor([(k + 1) * bs]))[0, -bs:]
                assert (v[b, k * bs:(k + 1) * bs] - ref).abs().max() < 2e-5, (b, k)


def test_zero_velocity_model_scores_the_zero_velocity_loss(tiny_model, monkeypatch):
    z0, lengths = _latents(tiny_model)
    monkeypatch.setattr(tiny_model.dit, "forward", lambda x, t, lengths, **kw: torch.zeros_like(x))
    grid = torch.tensor([0.0, 0.5, 1.0])
    fm = flow_matching_loss(tiny_model, z0, lengths, grid, draws=64, generator=torch.Generator().manual_seed(1))
    valid = ~fm.loss.isnan()
    assert torch.equal(fm.loss[valid], fm.zero[valid])
    # E mean_c (z1 - z0)^2 = 1 + mean_c z0^2, and LayerNormed means have mean_c z0^2 = 1
    assert fm.zero[valid].mean().item() == pytest.approx(2.0, abs=0.05)
    assert valid.sum(-1)[0].tolist() == lengths.tolist()


def test_oracle_velocity_has_zero_loss(tiny_model, monkeypatch):
    """A field returning (z_t - z0)/t from the 2L halves is exact: checks target and half alignment."""
    z0, lengths = _latents(tiny_model)

    def oracle(x, t, lengths, **kw):
        n = x.shape[1] // 2
        s = t[:, n:, None] / 1000.0
        return torch.cat([torch.zeros_like(x[:, :n]), (x[:, n:] - x[:, :n]) / s], dim=1)

    monkeypatch.setattr(tiny_model.dit, "forward", oracle)
    fm = flow_matching_loss(tiny_model, z0, lengths, torch.tensor([0.1, 0.3, 0.7, 1.0]),
                            generator=torch.Generator().manual_seed(2))
    assert fm.loss.nan_to_num(0.0).max() < 1e-8
    assert fm.zero.nan_to_num(0.0).max() > 0.1


def test_diagnose_prior_fit_records(tiny_model):
    grid = [0.2, 0.5, 0.9]
    diag = diagnose(tiny_model, TEXTS, t_grid=grid, fm_draws=2, batch_size=2)
    bs = tiny_model.block_size
    points = diag.flow_matching
    assert sorted({p.t for p in points}) == pytest.approx(grid)
    n_blocks = [r.blocks for r in diag.per_text]
    assert {p.block for p in points} == set(range(max(n_blocks)))
    # every latent is counted once per t
    assert sum(p.count for p in points) == len(grid) * sum(r.latents for r in diag.per_text)
    assert all(p.count % bs == 0 for p in points)
    for row in diag.per_text:
        assert len(row.fm_loss_by_block) == row.blocks and len(row.fm_loss_by_t) == len(grid)
        assert row.fm_loss == pytest.approx(sum(row.fm_loss_by_t) / len(grid), rel=1e-5)
        assert row.fm_loss > 0
    total = sum(p.loss * p.count for p in points) / sum(p.count for p in points)
    assert diag.dataset.fm_loss == pytest.approx(total, rel=1e-5)
