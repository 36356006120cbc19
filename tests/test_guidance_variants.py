"""Guidance variants beside the CFG combine (CFG-rescale, guidance interval): their maths, that off they
leave the official algorithm untouched, and that CLI, API, specs and the latent verbs all reach them."""
from __future__ import annotations

import json

import pytest
import torch

from apps.api.schemas import CompletionRequest
from apps.api.errors import APIError
from apps.api.server import _job
from apps.api.backend import GenerationBackend
from apps.cli import main as cli_main
from cola_core.generate import GenerationConfig, generate
from cola_core.sampler import guided_velocity, interval_guidance
from workbench import Workbench, regenerate_from
from workbench.experiments import SpecError, parse_spec
from workbench.experiments.spec import generation_config
from workbench.monitor import data_norm

KNOBS = dict(steps=3, guidance=5.0, max_new_tokens=12, seed=2)


def test_rescale_moves_each_samples_std_toward_the_conditional_one():
    gen = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(3, 4, 8, generator=gen), 0.3 * torch.randn(3, 4, 8, generator=gen)
    plain = guided_velocity(cond, uncond, 7.0)
    assert torch.equal(plain, guided_velocity(cond, uncond, 7.0, rescale=0.0))     # off: the official combine
    full = guided_velocity(cond, uncond, 7.0, rescale=1.0)
    std = lambda v: v.std(dim=(1, 2))   # noqa: E731
    assert torch.allclose(std(full), std(cond), rtol=1e-5)                          # phi = 1: the cond's spread
    half = guided_velocity(cond, uncond, 7.0, rescale=0.5)
    assert torch.allclose(std(half), 0.5 * std(cond) + 0.5 * std(plain), rtol=1e-5)
    assert torch.allclose(full / full.norm(dim=(1, 2), keepdim=True), plain / plain.norm(dim=(1, 2), keepdim=True),
                          atol=1e-6)                                                # direction kept


def test_interval_applies_guidance_only_inside_the_window():
    guidance = torch.full((3,), 7.0)
    t = torch.tensor([[900.0, 900.0], [500.0, 0.0], [100.0, 100.0]])             # row 1: a pinned prompt row at 0
    assert interval_guidance(guidance, t, 1000.0, None) is guidance
    assert interval_guidance(guidance, t, 1000.0, (0.2, 0.8)).tolist() == [1.0, 7.0, 1.0]
    assert interval_guidance(guidance, t, 1000.0, (0.0, 1.0)).tolist() == [7.0, 7.0, 7.0]


def test_neutral_variants_leave_generation_bit_identical(wb):
    prompts = ["The cat sat", ""]
    plain = wb.trajectory(prompts, **KNOBS)
    neutral = wb.trajectory(prompts, guidance_interval=(0.0, 1.0), **KNOBS)
    for b in plain.z_final:
        assert torch.equal(plain.z_final[b], neutral.z_final[b])
    assert [g.token_ids for g in plain.generations] == [g.token_ids for g in neutral.generations]


def test_interval_sets_the_guidance_the_steps_actually_use(wb):
    traj = wb.trajectory(["The cat sat on the mat"], guidance_interval=(0.4, 0.7), **dict(KNOBS, steps=5))
    for state in traj.steps:
        if state.block == 0:
            continue                                     # block 0 without a prefix is guided at 1 anyway
        inside = 0.4 <= float(state.t.max()) / 1000.0 <= 0.7
        assert float(state.guidance[0]) == (5.0 if inside else 1.0), (state.step, float(state.t.max()))
    assert traj.steps[-1].block > 0


def test_rescale_keeps_high_guidance_latents_near_the_data(pocket_model):
    """At guidance 7 the pocket's latents sit well above the data's norm (1.61x here); CFG-rescale pulls them back,
    nearly all the way at phi = 1 (1.08x) and most of the way at 0.9 (1.16x)."""
    wb = Workbench(pocket_model)
    reference = data_norm(pocket_model)
    knobs = dict(steps=4, guidance=7.0, max_new_tokens=8, seed=0)
    ratio = {}
    for phi in (0.0, 0.9, 1.0):
        traj = wb.trajectory(["a small bird that", "the act of"], guidance_rescale=phi, **knobs)
        records = [r for r in traj.norm_records(reference) if not r["after_eos"]]
        ratio[phi] = sum(r["ratio"] for r in records) / len(records)
    assert ratio[1.0] < 1.1 and ratio[0.9] < 1.2 < 1.5 < ratio[0.0]


def test_latent_verbs_use_the_same_variants_as_the_sampler(wb):
    """Re-generation from pure noise equals unconditional generation with the variants on too."""
    lat = wb.encode(["the cat sat on the mat and looked around", "a dog ran off into the woods"], pad_to="longest")
    lat = lat.truncate(2)
    knobs = dict(seed=3, steps=4, guidance=5.0, solver="heun", guidance_rescale=0.6, guidance_interval=(0.3, 0.9))
    traj = wb.trajectory(["", ""], sample_ids=[0, 1], max_new_tokens=2 * wb.block_size, stop_at_eos=False, **knobs)
    regen = regenerate_from(wb, lat, strength=1.0, **knobs)
    for b in range(2):
        assert torch.equal(torch.stack([z[b] for z in regen.latents.z]), traj.z_final[b])


def test_cli_api_and_specs_pass_the_variants_on(tiny_model, fixture_dir, capsys, monkeypatch):
    import workbench.session as session
    seen = []
    real = session.BlockwiseSampler

    def recording(model, prompts, config, sample_ids=None):
        seen.append(config)
        return real(model, prompts, config, sample_ids)

    monkeypatch.setattr(session, "BlockwiseSampler", recording)
    assert cli_main(["generate", "--checkpoint", str(fixture_dir), "--steps", "2", "--max-new-tokens", "8",
                     "--seed", "5", "--guidance-rescale", "0.5", "--guidance-interval", "0.2,0.8", "--json",
                     "The river"]) == 0
    assert (seen[-1].guidance_rescale, tuple(seen[-1].guidance_interval)) == (0.5, (0.2, 0.8))
    direct = generate(tiny_model, ["The river"], steps=2, max_new_tokens=8, seed=5, guidance_rescale=0.5,
                      guidance_interval=(0.2, 0.8))[0]
    assert json.loads(capsys.readouterr().out)["completion"] == direct.completion
    body = CompletionRequest(model="cola-dlm", prompt="The river", guidance_rescale=0.5, guidance_interval=[0.2, 0.8])
    job = _job(GenerationBackend(tiny_model), body, body.prompts, (), 64)
    assert job.config.guidance_rescale == 0.5 and tuple(job.config.guidance_interval) == (0.2, 0.8)
    bad = CompletionRequest(model="cola-dlm", prompt="x", guidance_interval=[0.9, 0.1])
    with pytest.raises(APIError) as caught:
        _job(GenerationBackend(tiny_model), bad, bad.prompts, (), 64)
    assert caught.value.status == 400 and "guidance_interval must satisfy" in str(caught.value)
    spec = parse_spec({"kind": "guidance_sweep", "prompts": ["a"], "guidance_rescale": 0.5,
                       "guidance_interval": [0.2, 0.8]})
    config = generation_config(spec.params, guidance=7.0, steps=4, seed=0)
    assert config.guidance_rescale == 0.5 and list(config.guidance_interval) == [0.2, 0.8]
    assert parse_spec({"kind": "trajectory", "prompts": ["a"]}).params["guidance_interval"] is None
    with pytest.raises(SpecError, match="guidance_interval: guidance_interval must satisfy"):
        parse_spec({"kind": "guidance_sweep", "prompts": ["a"], "guidance_interval": [0.9, 0.1]})
    with pytest.raises(SpecError, match="guidance_rescale"):
        parse_spec({"kind": "guidance_sweep", "prompts": ["a"], "guidance_rescale": 3.0})
    assert GenerationConfig().guidance_rescale == 0.0 and GenerationConfig().guidance_interval is None
