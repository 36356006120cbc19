"""Activation patching, ablation and patching sweeps on the tiny fixture checkpoint."""
from __future__ import annotations

import pytest
import torch

from workbench import WorkbenchError
from workbench.inside import ActivationCache, ablate, patching_sweep

A, B = ["the cat sat on"], ["the dog sat on"]   # same token count: runs of the same shape
KNOBS = dict(seed=0, steps=3, max_new_tokens=8, stop_at_eos=False)


@pytest.fixture(scope="module")
def runs(wb):
    """Everything from runs A and B."""
    return {name: wb.run_with_cache(prompts, names_filter="**", **KNOBS) for name, prompts in (("a", A), ("b", B))}


def test_patching_every_point_reproduces_the_source_run(wb, runs):
    (gens_a, cache_a), (gens_b, _) = runs["a"], runs["b"]
    assert gens_a[0].untrimmed_ids != gens_b[0].untrimmed_ids
    again = wb.run_with_patches(A, cache_a, **KNOBS)
    assert again[0].untrimmed_ids == gens_a[0].untrimmed_ids
    moved, cache = wb.run_with_cache(B, names_filter="block.*.z_final", patches=cache_a, **KNOBS)
    assert moved[0].untrimmed_ids == gens_a[0].untrimmed_ids
    assert all(torch.equal(cache[n], cache_a[n]) for n in cache)


def test_a_patch_lands_where_the_tensor_is_made(wb, runs):
    """The last layer's residual decides the velocity: patched from B, A's generated rows follow B exactly."""
    (_, cache_a), (_, cache_b) = runs["a"], runs["b"]
    last = wb.model.dit_config.num_layers - 1
    patches = cache_b.subset(f"block.*.step.*.dit.*.layer.{last}.resid_post")
    _, cache = wb.run_with_cache(A, names_filter=["block.*.z_final", "block.*.step.*.v_cond"], patches=patches, **KNOBS)
    assert torch.equal(cache["block.1.step.2.v_cond"], cache_b["block.1.step.2.v_cond"])
    assert torch.equal(cache["block.1.z_final"], cache_b["block.1.z_final"])
    assert not torch.equal(cache["block.1.z_final"], cache_a["block.1.z_final"])
    # a sampler-level patch: B's noise and velocities in A's run give B's latents on A's generated rows
    _, cache = wb.run_with_cache(A, names_filter="block.1.z_final",
                                 patches=cache_b.subset(["block.*.z_init", "block.*.step.*.dit.*.velocity"]), **KNOBS)
    assert torch.equal(cache["block.1.z_final"], cache_b["block.1.z_final"])


def test_functions_and_globs_patch_every_match(wb, runs):
    _, cache = wb.run_with_cache(A, names_filter="block.1.step.0.dit.cond.layer.0.*",
                                 patches={"block.1.step.0.dit.*.layer.0.attn_out": lambda x: 2 * x}, **KNOBS)
    at = lambda p: cache[f"block.1.step.0.dit.cond.layer.0.{p}"]   # noqa: E731
    assert torch.equal(at("resid_mid"), at("attn_out") + at("resid_pre"))
    assert torch.allclose(at("attn_out"), 2 * runs["a"][1]["block.1.step.0.dit.cond.layer.0.attn_out"])


def test_zero_and_mean_ablation(wb, runs):
    point = "block.*.step.*.dit.*.layer.1.mlp_out"
    _, cache = ablate(wb, A, point, "zero", names_filter="block.0.step.1.dit.cond.layer.1.*", **KNOBS)
    at = lambda p: cache[f"block.0.step.1.dit.cond.layer.1.{p}"]   # noqa: E731
    assert not at("mlp_out").any() and torch.equal(at("resid_post"), at("resid_mid"))
    _, cache = ablate(wb, A + B, "block.*.step.*.dit.cond.layer.0.attn_out", "mean",
                      names_filter="block.1.step.0.dit.cond.layer.0.attn_out", **KNOBS)
    mean = cache["block.1.step.0.dit.cond.layer.0.attn_out"]
    assert torch.allclose(mean, mean[:1, :1].expand_as(mean))          # one vector for every sample and position
    reference = runs["b"][1]
    _, cache = ablate(wb, A, "block.1.step.0.dit.cond.layer.0.attn_out", "mean", reference=reference,
                      names_filter="block.1.step.0.dit.cond.layer.0.attn_out", **KNOBS)
    expected = reference["block.1.step.0.dit.cond.layer.0.attn_out"].mean(dim=(0, 1))
    assert torch.allclose(cache["block.1.step.0.dit.cond.layer.0.attn_out"][0, 0], expected, atol=1e-6)
    with pytest.raises(WorkbenchError, match="kind must be 'zero' or 'mean'"):
        ablate(wb, A, point, "median", **KNOBS)
    with pytest.raises(WorkbenchError, match="the reference cache has no"):
        ablate(wb, A, point, "mean", reference=ActivationCache(wb.fingerprint, {}), **KNOBS)


def test_bad_patches_are_named_before_the_run(wb, runs):
    cache_b = runs["b"][1]
    name = "block.1.step.0.dit.cond.layer.0.resid_post"
    cases = [
        ({name: torch.zeros(2, 4, 64)}, f"patch for {name} is shaped \\(2, 4, 64\\), but in this run"),
        ({"block.1.step.0.dit.cond.layer.0.resid_pots": torch.zeros(1)}, "did you mean 'resid_post'"),
        ({"block.0.step.0.t": torch.zeros(1, 4)}, "read-only"),
        ({"block.*.step.0.dit.cond.layer.0.resid_post": cache_b[name]}, "a tensor replaces one name, not a glob"),
        ({name: "zeros"}, "must be a tensor or fn"),
        (ActivationCache("0" * 64, {}), "recorded on another checkpoint"),
    ]
    for patches, message in cases:
        with pytest.raises(WorkbenchError, match=message):
            wb.run_with_patches(A, patches, **KNOBS)
    longer = wb.run_with_cache(["once upon a time there was a"],
                               names_filter="block.1.step.0.dit.cond.layer.0.attn.pattern", **KNOBS)[1]
    with pytest.raises(WorkbenchError, match="another batch, prompt length or checkpoint"):
        wb.run_with_patches(A, longer, **KNOBS)
    with pytest.raises(WorkbenchError, match="patch for .* gave \\(1,\\)"):
        wb.run_with_patches(A, {name: lambda x: torch.zeros(1)}, **KNOBS)


def test_unused_patches_are_reported(wb, runs):
    cache_a = runs["a"][1]
    eos = wb.tokenizer.eos_id
    with pytest.warns(UserWarning, match="never applied"):
        patches = {"block.0.token_ids": torch.full((1, 4), eos), "block.1.z_final": cache_a["block.1.z_final"]}
        wb.run_with_patches(A, patches, **dict(KNOBS, stop_at_eos=True))


def test_patching_sweep(wb):
    sweep = patching_sweep(wb, A, B, progress=False, **KNOBS)
    layers, blocks = wb.model.dit_config.num_layers, 2
    assert [(r["layer"], r["block"]) for r in sweep.records] == [(i, b) for i in range(layers) for b in range(blocks)]
    last = [r for r in sweep.records if r["layer"] == layers - 1 and r["block"] == blocks - 1][0]
    assert last["final_latent_distance"] == 0.0    # the last layer of the last block decides its latent
    assert sweep.baseline["source"]["final_latent_distance"] == 0.0
    assert sweep.baseline["target"]["final_latent_distance"] > 0
    assert sweep.baseline["source"]["target_logprob"] > sweep.baseline["target"]["target_logprob"]
    fig = sweep.figure("target_logprob", height=300)
    assert fig.layout.height == 300 and len(fig.data[0].z) == layers and len(fig.data[0].x) == blocks
    frame = sweep.frame()
    assert list(frame.columns[:3]) == ["layer", "block", "step"] and len(frame) == layers * blocks
    per_step = patching_sweep(wb, A, B, layers=[0], blocks=[1], per_step=True, group="cond", point="attn_out",
                              metrics={"norm": lambda run, source: float(run.z_final.norm())}, progress=False, **KNOBS)
    assert [(r["block"], r["step"]) for r in per_step.records] == [(1, 0), (1, 1), (1, 2)]
    assert per_step.figure().data[0].x == ("b1 s0", "b1 s1", "b1 s2")


def test_should_stop_ends_the_sweep_between_cells(wb):
    asked = []

    def should_stop() -> bool:
        asked.append(len(asked))
        return len(asked) > 3          # three cells run, the fourth is refused
    sweep = patching_sweep(wb, A, B, layers=[0, 1], blocks=[0, 1], should_stop=should_stop, progress=False, **KNOBS)
    full = patching_sweep(wb, A, B, layers=[0, 1], blocks=[0, 1], progress=False, **KNOBS)
    assert len(asked) == 4 and sweep.records == full.records[:3] and sweep.baseline == full.baseline
    assert list(sweep.figure().data[0].z[1]) == [full.records[2]["target_logprob"], None]   # unmeasured: blank
    stopped = patching_sweep(wb, A, B, layers=[0], blocks=[0], should_stop=lambda: True, progress=False, **KNOBS)
    with pytest.raises(WorkbenchError, match="measured no cell"):
        stopped.figure()


def test_bad_sweeps(wb):
    with pytest.raises(WorkbenchError, match="source and target runs differ"):
        patching_sweep(wb, A, ["once upon a time there was a"], **KNOBS)
    with pytest.raises(WorkbenchError, match="unknown DiT layer point 'resid'"):
        patching_sweep(wb, A, B, point="resid", **KNOBS)
    with pytest.raises(WorkbenchError, match="layers \\[5\\] out of range"):
        patching_sweep(wb, A, B, layers=[5], **KNOBS)
    with pytest.raises(WorkbenchError, match="group must be"):
        patching_sweep(wb, A, B, group="both", **KNOBS)
