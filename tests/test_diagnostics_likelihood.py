"""Probability-flow ODE likelihood: analytic Gaussian flows, and Hutchinson vs exact on the tiny DiT."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cola_core.text_codec import encode_tokens
from workbench.diagnostics import diagnose
from workbench.errors import WorkbenchError
from workbench.likelihood import ode_log_density, prior_log_likelihood, text_log_likelihood
from workbench.textbatch import tokenize

TEXTS = ["The cat sat on the mat.", "tea", "A river ran across the hill under the sun"]


def gaussian_flow(sigma: torch.Tensor):
    """Flow-matching field (straight paths) carrying N(0, Sigma) at s=0 to N(0, I) at s=1, and Sigma."""
    eye = torch.eye(len(sigma), dtype=torch.float64)

    def velocity(z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        out = []
        for zi, si in zip(z, s.tolist()):
            a = (si * eye - (1 - si) * sigma) @ torch.linalg.inv((1 - si) ** 2 * sigma + si ** 2 * eye)
            out.append(a.float() @ zi)
        return torch.stack(out)

    return velocity


def _rotated_covariance(variances: list[float], seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(variances), len(variances), generator=gen, dtype=torch.float64))
    return (q * torch.tensor(variances, dtype=torch.float64)) @ q.T


def test_isotropic_linear_flow_recovers_the_gaussian_log_density():
    s = 0.3                                          # data N(0, s^2 I) -> noise N(0, I)
    dim = 5
    sigma = torch.eye(dim, dtype=torch.float64) * s ** 2
    z0 = torch.randn(4, dim, generator=torch.Generator().manual_seed(1)) * s
    truth = torch.distributions.Normal(0.0, s).log_prob(z0.double()).sum(-1)
    flow = ode_log_density(gaussian_flow(sigma), z0, steps=16, solver="rk4", exact=True)
    assert (flow.logp[:, 0].double() - truth).abs().max() < 1e-3
    # Rademacher probes are exact for an isotropic field (the Jacobian is a multiple of I)
    hutch = ode_log_density(gaussian_flow(sigma), z0, steps=16, solver="rk4", probes=1,
                            generator=torch.Generator().manual_seed(0))
    assert (hutch.logp[:, 0].double() - truth).abs().max() < 1e-3
    assert flow.nfe == 64


def test_anisotropic_flow_exact_and_hutchinson():
    sigma = _rotated_covariance([0.05, 0.2, 0.5, 1.0, 2.0, 4.0])
    dist = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), sigma)
    z0 = dist.sample((5,)).float()
    truth = dist.log_prob(z0.double())
    exact = ode_log_density(gaussian_flow(sigma), z0, steps=16, solver="rk4", exact=True)
    assert (exact.logp[:, 0].double() - truth).abs().max() < 1e-3
    assert exact.stderr.abs().max() == 0
    hutch = ode_log_density(gaussian_flow(sigma), z0, steps=16, solver="rk4", probes=128,
                            generator=torch.Generator().manual_seed(0))
    err = (hutch.logp[:, 0].double() - truth).abs()
    assert (hutch.stderr > 0).all()
    assert (err < 4 * hutch.stderr[:, 0].double() + 1e-3).all()


def test_coarse_solvers_converge_in_order():
    sigma = _rotated_covariance([0.1, 0.5, 3.0], seed=2)
    dist = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), sigma)
    z0 = dist.sample((3,)).float()
    truth = dist.log_prob(z0.double())
    errors = {solver: (ode_log_density(gaussian_flow(sigma), z0, steps=8, solver=solver, exact=True).logp[:, 0]
                       .double() - truth).abs().max().item() for solver in ("euler", "heun", "rk4")}
    assert errors["rk4"] < errors["heun"] < errors["euler"]


def test_groups_split_the_log_density():
    sa, sb = _rotated_covariance([0.2, 1.5], seed=3), _rotated_covariance([0.5, 2.0], seed=4)
    va, vb = gaussian_flow(sa), gaussian_flow(sb)
    z0 = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))

    def joint(z, s):
        return torch.cat([va(z[:, :2], s), vb(z[:, 2:], s)], dim=1)

    both = ode_log_density(joint, z0, steps=8, solver="rk4", group_size=2, exact=True)
    a = ode_log_density(va, z0[:, :2], steps=8, solver="rk4", exact=True)
    b = ode_log_density(vb, z0[:, 2:], steps=8, solver="rk4", exact=True)
    assert torch.allclose(both.logp, torch.cat([a.logp, b.logp], dim=1), atol=1e-4)


def test_bad_options_are_named():
    z0 = torch.zeros(1, 3)
    field = lambda z, s: z   # noqa: E731
    with pytest.raises(WorkbenchError, match="solver"):
        ode_log_density(field, z0, solver="dopri")
    with pytest.raises(WorkbenchError, match="steps"):
        ode_log_density(field, z0, steps=0)
    with pytest.raises(WorkbenchError, match="group_size"):
        ode_log_density(field, z0, group_size=2)


def _z0(model, texts=TEXTS):
    batch = tokenize(model, texts)
    return model.vae.to_dit_space(encode_tokens(model, batch).mean), batch.latent_lengths


def test_hutchinson_matches_exact_divergence_on_the_tiny_dit(tiny_model):
    z0, lengths = _z0(tiny_model)
    exact = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=1, exact_divergence=True)
    hutch = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=1, probes=32, seed=1)
    assert exact.nfe == hutch.nfe == 4   # rk4: 4 evaluations per step
    se = hutch.stderr
    assert (se > 0).all()
    assert ((exact.logp - hutch.logp).abs() < 4 * se + 0.05).all()
    assert torch.allclose(exact.z1, hutch.z1, atol=1e-5)     # same path, only the divergence is estimated


def test_tiny_dit_likelihood_bookkeeping(tiny_model):
    z0, lengths = _z0(tiny_model)
    res = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=2, exact_divergence=True)
    channels, bs = tiny_model.vae_config.latent_dim, tiny_model.block_size
    assert res.dims.tolist() == (lengths * channels).tolist()
    n_blocks = (lengths // bs).tolist()
    for b, n in enumerate(n_blocks):
        assert not res.logp_blocks[b, :n].isnan().any() and res.logp_blocks[b, n:].isnan().all()
    assert torch.allclose(res.logp, res.logp_blocks.nan_to_num(0).sum(-1))
    assert torch.allclose(res.bits_per_dim, -res.logp / (res.dims * math.log(2)))
    records = res.records(TEXTS)
    assert [len(r["logp_blocks"]) for r in records] == n_blocks
    # padding rows of shorter texts are frozen: they do not move and do not count
    assert torch.equal(res.z1[1, lengths[1]:], z0[1, lengths[1]:])


def test_likelihood_of_a_text_does_not_depend_on_the_batch(tiny_model):
    options = dict(solver="rk4", steps=2, probes=2, seed=5)
    together = text_log_likelihood(tiny_model, TEXTS, **options)
    alone = [text_log_likelihood(tiny_model, [t], **options)[0] for t in TEXTS]
    reordered = text_log_likelihood(tiny_model, [TEXTS[2], "a neighbour of another length", TEXTS[0], TEXTS[1]],
                                    **options)
    for a, b, c in zip(together, alone, [reordered[2], reordered[3], reordered[0]]):
        a, b, c = (json.dumps({k: v for k, v in r.items() if k != "index"}, sort_keys=True) for r in (a, b, c))
        assert a == b == c   # bit for bit (json also compares NaN fields)


def test_guidance_one_equals_the_conditional_field(tiny_model):
    z0, lengths = _z0(tiny_model, TEXTS[:1])
    plain = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=2, exact_divergence=True)
    guided = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=2, exact_divergence=True,
                                  guidance=3.0)
    assert guided.logp_blocks[0, 0] == pytest.approx(float(plain.logp_blocks[0, 0]), abs=1e-3)  # block 0: no prefix
    assert not torch.allclose(guided.logp, plain.logp)


def test_diagnose_with_likelihood_reports_prior_bits(tiny_model):
    diag = diagnose(tiny_model, TEXTS[:2], likelihood=True, t_grid=[0.5],
                    likelihood_options={"solver": "rk4", "steps": 2, "exact_divergence": True})
    for row in diag.per_text:
        assert math.isfinite(row.prior_bits_per_dim) and math.isfinite(row.elbo_prior_bits_per_token)
    rows = diag.per_text
    expected = sum(r.prior_bits_per_dim * r.latents for r in rows) / sum(r.latents for r in rows)
    assert diag.dataset.prior_bits_per_dim == pytest.approx(expected)
