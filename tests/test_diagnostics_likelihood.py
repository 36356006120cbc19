"""Probability-flow ODE likelihood: analytic Gaussian flows, and Hutchinson vs exact on the tiny DiT."""
from __future__ import annotations

import json
import math

import pytest
import torch

from cola_core.text_codec import encode_tokens
from workbench.diagnostics import diagnose
from workbench.errors import WorkbenchError
from workbench.likelihood import (EXACT_DIVERGENCE_MAX_DIMS, default_exact, ode_log_density,
                                  prior_log_likelihood, text_log_likelihood)
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
    dims_ln2 = sum(r.latents for r in rows) * tiny_model.vae_config.latent_dim * math.log(2)   # bits/dim of the nats
    assert diag.dataset.prior_stderr_bits_per_dim == 0.0                                    # exact divergence
    assert diag.dataset.prior_ode_error_bits_per_dim == pytest.approx(
        sum(r.prior_ode_error_nats for r in rows) / dims_ln2) and diag.dataset.prior_ode_error_bits_per_dim > 0


# -- every estimate carries its error ------------------------------------------------------------------------
def test_one_probe_has_no_standard_error_and_the_exact_divergence_has_none_to_report(tiny_model):
    z0, lengths = _z0(tiny_model, TEXTS[:2])
    one = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=1, probes=1, ode_error=False)
    assert one.stderr.isnan().all() and all(math.isnan(r["stderr_nats"]) for r in one.records())
    assert one.divergence == "hutchinson (1 probes)"
    two = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=1, probes=2, ode_error=False)
    assert (two.stderr > 0).all()
    exact = prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=1, exact_divergence=True,
                                 ode_error=False)
    assert (exact.stderr == 0).all() and exact.divergence == "exact"
    assert one.ode_error.isnan().all()                        # not asked for: NaN, never a silent 0


def test_exact_divergence_is_the_default_when_it_costs_at_most_16_probes(tiny_model, pocket_model):
    assert pocket_model.block_size * pocket_model.vae_config.latent_dim <= EXACT_DIVERGENCE_MAX_DIMS
    assert default_exact(pocket_model) and not default_exact(tiny_model)     # 1 x 8 vs 4 x 8 coordinates
    z0, lengths = _z0(tiny_model, TEXTS[:1])
    assert prior_log_likelihood(tiny_model, z0, lengths, solver="rk4", steps=1,
                                ode_error=False).divergence == "hutchinson (16 probes)"


def test_the_ode_error_estimate_covers_the_true_error_of_an_analytic_flow():
    """rk4 (vs half the steps) and dopri5 (vs 10x looser tolerances) on a smooth flow. Far from their
    asymptotic regime estimates can undershoot (Euler at 8 steps by 2x; rk4 at 4 steps for 2 of 30 draws
    of these points), hence 'estimate'."""
    sigma = _rotated_covariance([0.05, 0.3, 2.0], seed=6)
    dist = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), sigma)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        z0 = dist.sample((4,)).float()
    truth = dist.log_prob(z0.double())
    for solver, steps in (("rk4", 8), ("rk4", 16)):
        flow = ode_log_density(gaussian_flow(sigma), z0, steps=steps, solver=solver, exact=True, ode_error=True)
        error = (flow.logp[:, 0].double() - truth).abs()
        assert (error <= flow.ode_error.double() + 1e-4).all(), (solver, error, flow.ode_error)
    adaptive = ode_log_density(gaussian_flow(sigma), z0, solver="dopri5", rtol=1e-6, atol=1e-6, exact=True,
                               ode_error=True)
    error = (adaptive.logp[:, 0].double() - truth).abs()
    assert (error < 1e-3).all() and (error <= adaptive.ode_error.double() + 1e-4).all()
    assert adaptive.nfe > 0


def test_likelihood_records_put_the_value_beside_its_errors(tiny_model):
    rec = text_log_likelihood(tiny_model, TEXTS[:1], solver="rk4", steps=4, probes=4)[0]
    for key in ("stderr_nats", "ode_error_nats", "divergence", "solver", "sample_stderr_nats"):
        assert key in rec
    assert rec["ode_error_nats"] > 0 and rec["stderr_nats"] > 0 and rec["solver"] == "rk4, 4 steps"


def test_posterior_samples_by_default_and_the_mean_is_labelled(tiny_model):
    options = dict(solver="rk4", steps=2, probes=2, seed=1)
    sampled = text_log_likelihood(tiny_model, TEXTS[:2], samples=3, **options)
    mean = text_log_likelihood(tiny_model, TEXTS[:2], latent="mean", **options)
    for s, m in zip(sampled, mean):
        assert s["latent"] == "posterior samples (K=3)" and m["latent"] == "posterior mean"
        assert len(s["logp_samples"]) == 3 and s["logp_nats"] == pytest.approx(sum(s["logp_samples"]) / 3)
        assert s["sample_stderr_nats"] > 0 and math.isfinite(s["iw_bound_bits_per_token"])
        assert s["logp_nats"] != m["logp_nats"] and "iw_bound_bits_per_token" not in m
    assert math.isnan(text_log_likelihood(tiny_model, TEXTS[:1], **options)[0]["sample_stderr_nats"])   # K = 1


def test_both_elbos_share_one_estimator_and_honour_samples(tiny_model):
    options = {"solver": "rk4", "steps": 2, "probes": 2}
    rows = {k: diagnose(tiny_model, TEXTS, samples=k, prior=False, likelihood=True, likelihood_options=options,
                        seed=2).per_text for k in (1, 3)}
    for k, per_text in rows.items():
        for r in per_text:
            # same draws, same decoder term: the ELBOs differ by their rates only
            assert r.elbo_prior_bits_per_token - r.elbo_bits_per_token == pytest.approx(
                r.rate_prior_bits_per_token - r.rate_bits_per_token, abs=1e-9)
            # the importance-weighted bound is never looser than the ELBO, and equals it for one draw
            assert r.iw_prior_bits_per_token <= r.elbo_prior_bits_per_token + 1e-9
            if k == 1:
                assert r.iw_prior_bits_per_token == pytest.approx(r.elbo_prior_bits_per_token, rel=1e-6)
    assert [r.elbo_prior_bits_per_token for r in rows[1]] != [r.elbo_prior_bits_per_token for r in rows[3]]
    assert [r.rate_bits_per_token for r in rows[1]] != [r.rate_bits_per_token for r in rows[3]]


def test_log_likelihood_and_diagnose_agree_on_the_prior_fit(tiny_model):
    """Both score the same posterior draws (seeded per text), so the two entry points give one number."""
    options = {"solver": "rk4", "steps": 2, "probes": 2}
    diag = diagnose(tiny_model, TEXTS, samples=2, prior=False, likelihood=True, likelihood_options=options, seed=4)
    direct = text_log_likelihood(tiny_model, TEXTS, samples=2, seed=4, **options)
    for row, rec in zip(diag.per_text, direct):
        assert row.prior_bits_per_dim == pytest.approx(rec["bits_per_dim"], rel=1e-6)
        assert row.iw_prior_bits_per_token == pytest.approx(rec["iw_bound_bits_per_token"], rel=1e-6)
        assert row.prior_ode_error_nats == pytest.approx(rec["ode_error_nats"], rel=1e-6)


def test_the_likelihood_benchmark_reference_is_finer_than_every_row(monkeypatch):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "likelihood_bench.py"
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location("likelihood_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reference = bench.REFERENCE   # finer than the finest row the benchmark runs by default (dopri5 at 1e-5)
    assert reference["solver"] == "dopri5" and reference["rtol"] <= 1e-7 and reference["atol"] <= 1e-7
    assert reference["probes"] >= 64 and reference["exact_divergence"] in (None, True)
