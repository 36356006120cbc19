"""The x0-lens, the logit lens and cross-block influence on the tiny fixture checkpoint."""
from __future__ import annotations

import math

import pytest
import torch

from cola_core.sampler import predicted_clean
from workbench import WorkbenchError
from workbench.inside import cross_block_influence, logit_lens, x0_lens, x0_lens_names

PROMPTS = ["the cat sat on", "once upon a time there was a"]
KNOBS = dict(seed=0, steps=3, max_new_tokens=8, stop_at_eos=False, repetition_penalty=1.0)


def test_x0_lens_last_layer_is_the_samplers_x0_pred(wb):
    lens = x0_lens(wb, PROMPTS, **KNOBS)
    traj = wb.trajectory(PROMPTS, **KNOBS)
    layers = wb.model.dit_config.num_layers
    assert sorted(lens.x0) == [0, 1] and lens.x0[1].shape == (3, layers + 1, 2, wb.block_size, wb.channels)
    for s in traj.steps:
        assert torch.allclose(lens.x0[s.block][s.step, -1], s.x0_pred, atol=1e-6)
    records = [r for r in lens.records if r["layer"] == layers - 1 and r["step"] == 2]
    assert len(records) == 4 and all(r["agreement"] == 1.0 for r in records)   # the last step's x0 is the block
    assert {r["layer"] for r in lens.records} == set(range(-1, layers))
    cond = x0_lens(wb, PROMPTS, blocks=[1], at_steps=[0], mode="cond", **KNOBS)
    step = traj.block(1)[0]
    assert torch.allclose(cond.x0[1][0, -1], predicted_clean(step.z, step.v_cond, step.t), atol=1e-6)
    fig = lens.figure(sample=1, block=1, height=300)
    assert fig.layout.height == 300 and len(fig.data[0].y) == layers + 1 and len(fig.data[0].x) == 3


def test_x0_lens_guides_as_the_run_did_with_cfg_rescale_and_an_interval(wb):
    knobs = dict(KNOBS, guidance_rescale=0.7, guidance_interval=(0.3, 1.0))
    lens = x0_lens(wb, PROMPTS, blocks=[1], **knobs)
    for s in wb.trajectory(PROMPTS, **knobs).block(1):
        assert torch.allclose(lens.x0[1][s.step, -1], s.x0_pred, atol=1e-6)


def test_x0_lens_reads_the_cache_of_a_run_that_cached_more(wb):
    names = x0_lens_names() + ["block.*.step.*.dit.*.layer.*.attn.pattern"]
    _, cache = wb.run_with_cache(PROMPTS, names_filter=names, **KNOBS)
    shared = x0_lens(wb, PROMPTS, blocks=[1], cache=cache, **KNOBS)
    own = x0_lens(wb, PROMPTS, blocks=[1], **KNOBS)
    assert shared.records == own.records and torch.equal(shared.x0[1], own.x0[1])
    with pytest.raises(WorkbenchError, match="comes from another run"):
        x0_lens(wb, PROMPTS, cache=cache, **dict(KNOBS, seed=1))
    with pytest.raises(WorkbenchError, match="cache must be a run's ActivationCache"):
        x0_lens(wb, PROMPTS, cache=dict(cache), **KNOBS)
    _, thin = wb.run_with_cache(PROMPTS, names_filter=x0_lens_names(steps=[0]), **KNOBS)
    with pytest.raises(WorkbenchError, match="the cache lacks block.0.step.1.dit.cond.layer.0.resid_pre"):
        x0_lens(wb, PROMPTS, cache=thin, **KNOBS)


def test_x0_lens_bad_input(wb):
    with pytest.raises(WorkbenchError, match="mode must be one of"):
        x0_lens(wb, PROMPTS, mode="both", **KNOBS)
    with pytest.raises(WorkbenchError, match="steps \\[3\\] out of range 0-2"):
        x0_lens(wb, PROMPTS, at_steps=[3], **KNOBS)


def test_logit_lens_last_layer_is_the_decoder_output(wb):
    texts = ["the cat sat on the mat", "a dog"]
    lens = logit_lens(wb, texts)
    layers = wb.model.vae_config.decoder_num_blocks
    decoded = wb.decode(wb.encode(texts, pad_to="longest"), all_slots=True)   # the lens reads every slot
    last = [r for r in lens.records if r["layer"] == layers - 1]
    assert all(r["rank_final"] == 0 and r["p_final"] == pytest.approx(r["p_top"]) for r in last)
    ids = [[r["token_id"] for r in last if r["text_index"] == i] for i in range(2)]
    assert ids == [d.token_ids for d in decoded.items]
    assert all("p_target" in r for r in lens.records if r["text_index"] == 1 and r["position"] < 2)
    assert lens.figure(text=0).layout.height == 360


def test_influence_jacobian_and_finite_differences_agree(wb):
    knobs = dict(seed=0, steps=2, max_new_tokens=8)
    exact = cross_block_influence(wb, "the cat sat on", method="jacobian", progress=False, **knobs)
    approx = cross_block_influence(wb, "the cat sat on", progress=False, **knobs)
    assert exact.labels == ["p0", "g0", "g1"] and exact.generated == [1, 2]
    for mode in ("fixed", "generated"):
        g, f = exact.gain[mode], approx.gain[mode]
        known = ~g.isnan()
        assert torch.equal(known, ~f.isnan()) and known.sum() == 3      # p0->g0, p0->g1, g0->g1
        assert torch.allclose(g[known], f[known], rtol=1e-2)
        assert (exact.regeneration_error[mode][1:] < 0.05).all()
    # next-door blocks have nothing in between: both prefixes give the same influence
    assert exact.gain["fixed"][1, 2] == exact.gain["generated"][1, 2]
    records = exact.records()
    pairs = {(r["mode"], r["source"], r["target"]) for r in records}
    assert pairs >= {("fixed", "p0", "g1"), ("generated", "g0", "g1")}
    fig = exact.figure(height=300)
    assert fig.layout.height == 300 and len(fig.data) == 2


def test_influence_random_probes_estimate_the_same_gain(wb):
    knobs = dict(seed=0, steps=2, max_new_tokens=8)
    full = cross_block_influence(wb, "the cat sat on", method="jacobian", prefix="fixed", progress=False, **knobs)
    probed = cross_block_influence(wb, "the cat sat on", method="jacobian", prefix="fixed", probes=64,
                                   progress=False, **knobs)
    assert list(probed.gain) == ["fixed"]
    ratio = probed.gain["fixed"][0, 2] / full.gain["fixed"][0, 2]
    assert math.isclose(float(ratio), 1.0, rel_tol=0.3)


def test_influence_bad_input(wb):
    with pytest.raises(WorkbenchError, match="method must be one of"):
        cross_block_influence(wb, "the cat", method="autograd")
    with pytest.raises(WorkbenchError, match="prefix must be"):
        cross_block_influence(wb, "the cat", prefix="true")
    with pytest.raises(WorkbenchError, match="one prompt"):
        cross_block_influence(wb, ["the cat", "a dog"])
    with pytest.raises(WorkbenchError, match="single block"):
        cross_block_influence(wb, "", max_new_tokens=4)


def test_lens_figures_order_steps_by_number(wb):
    lens = x0_lens(wb, ["the cat"], blocks=[0], **dict(KNOBS, steps=11, max_new_tokens=4))
    labels = lens.figure(block=0).data[0].x
    assert [label.split()[1] for label in labels] == [f"s{s}" for s in range(11)]
    with pytest.raises(WorkbenchError, match="unknown metric 'p'"):
        lens.figure(metric="p")
