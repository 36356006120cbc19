"""Steppable sampler, hooks, run_with_cache and trajectories on the tiny fixture checkpoint."""
from __future__ import annotations

import pytest
import torch

from cola_core.errors import GenerationError
from cola_core.generate import generate
from cola_core.sampler import predicted_clean
from workbench import (HOOK_POINTS, Trajectory, WorkbenchError, clamp_latents, guidance_cutoff,
                       guidance_ramp, guidance_schedule, steer)

PROMPTS = ["the cat sat on", "once upon a time there was a"]
KNOBS = dict(seed=0, steps=6, max_new_tokens=12, stop_at_eos=False)



@pytest.fixture(scope="module")
def plain(tiny_model):
    return generate(tiny_model, PROMPTS, **KNOBS)


def _ids(gens):
    return [g.token_ids for g in gens]


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_sampler_equals_cola_core_generate(wb, tiny_model, solver):
    knobs = dict(KNOBS, solver=solver, schedule="shifted", max_new_tokens=8)
    session = wb.sampler(PROMPTS, **knobs)
    states = list(session)
    assert len(states) == session.num_blocks * knobs["steps"]
    out = session.result()
    ref = generate(tiny_model, PROMPTS, **knobs)
    assert [(o.text, o.token_ids, o.untrimmed_ids) for o in out] == [(r.text, r.token_ids, r.untrimmed_ids)
                                                                    for r in ref]
    assert _ids(wb.generate(PROMPTS, **knobs)) == _ids(ref)


def test_official_defaults_match(wb, tiny_model):
    """Official knobs (16 steps, guidance 7, greedy, repetition penalty), two blocks."""
    out = wb.sampler(PROMPTS, seed=1, max_new_tokens=8).result()
    assert _ids(out) == _ids(generate(tiny_model, PROMPTS, seed=1, max_new_tokens=8))


def test_step_states(wb):
    session = wb.sampler(PROMPTS, preview=True, **KNOBS)
    first = session.step()
    assert (first.block, first.step) == (0, 0)
    assert torch.equal(first.x0_pred, predicted_clean(first.z, first.v_guided, first.t, 1000.0))
    assert torch.allclose(first.v_guided, first.guidance[:, None, None] * (first.v_cond - first.v_uncond)
                          + first.v_uncond)
    assert torch.allclose(first.z_next, torch.where(session.live.free[..., None],
                                                    first.z - first.v_guided * first.dt, first.z))
    assert first.dt == pytest.approx(1 / KNOBS["steps"])
    assert len(first.preview) == 2 and all(isinstance(p, str) for p in first.preview)
    second = session.step()
    assert torch.equal(second.z, first.z_next) and second.step == 1
    rest = list(session)
    assert rest[-1].block == session.num_blocks - 1 and session.step() is None and session.done


def test_sample_ids_are_per_sample_seeds(wb):
    both = wb.generate(PROMPTS, sample_ids=[5, 9], **KNOBS)
    alone = wb.generate(PROMPTS[1], sample_ids=[9], **KNOBS)
    assert both[1].token_ids == alone[0].token_ids
    assert wb.generate(PROMPTS[1], sample_ids=[8], **KNOBS)[0].token_ids != alone[0].token_ids


def test_hooks_are_scoped_and_removed_exactly(wb, plain):
    calls = []

    def boost(state):
        state.guidance = state.guidance * 3

    with wb.hooks(guidance=boost, post_update=[lambda s: calls.append(s.step)]) as handles:
        assert len(handles) == 2 and len(wb.registry) == 2
        hooked = wb.generate(PROMPTS, **KNOBS)
    assert len(wb.registry) == 0 and len(calls) == 3 * KNOBS["steps"]
    assert _ids(hooked) != _ids(plain)
    assert _ids(wb.generate(PROMPTS, **KNOBS)) == _ids(plain)
    keep = wb.add_hook("decoded", lambda s: None)
    with pytest.raises(RuntimeError, match="boom"):
        with wb.hooks(pre_model=lambda s: None):
            raise RuntimeError("boom")
    assert len(wb.registry) == 1   # only the scoped one went away
    keep.remove()
    assert len(wb.registry) == 0


def test_unknown_hook_names(wb):
    with pytest.raises(WorkbenchError, match="valid hook points: " + ", ".join(HOOK_POINTS)):
        with wb.hooks(pre_modle=lambda s: None):
            pass
    with pytest.raises(WorkbenchError, match="not callable"):
        with wb.hooks(guidance=3):
            pass
    assert len(wb.registry) == 0   # nothing half-registered


def test_guidance_hook_recombines_v_guided(wb):
    with wb.hooks(guidance=lambda s: setattr(s, "guidance", torch.full_like(s.guidance, 2.0))):
        state = wb.sampler(PROMPTS, **KNOBS).step()
    assert torch.allclose(state.v_guided, 2.0 * (state.v_cond - state.v_uncond) + state.v_uncond)
    assert (state.guidance == 2.0).all()


def test_guidance_schedules(wb, plain):
    with wb.hooks(guidance_schedule(7.0)):
        assert _ids(wb.generate(PROMPTS, **KNOBS)) == _ids(plain)   # constant = the configured default
    with wb.hooks(guidance_ramp(1.0, 6.0)):
        _, cache = wb.run_with_cache(PROMPTS, names_filter="block.1.step.*.guidance", **KNOBS)
    assert [float(cache[f"block.1.step.{k}.guidance"][0]) for k in range(6)] == [1, 2, 3, 4, 5, 6]
    values = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5]
    with wb.hooks(guidance_schedule(values), guidance_cutoff(0.5, after=1.0)):
        _, cache = wb.run_with_cache(PROMPTS, names_filter="block.2.step.*.guidance", **KNOBS)
    assert [float(cache[f"block.2.step.{k}.guidance"][1]) for k in range(6)] == [0.5, 1.5, 2.5, 1, 1, 1]
    with wb.hooks(guidance_schedule([1.0, 2.0])):
        with pytest.raises(WorkbenchError, match="2 values but the sampler runs 6 steps"):
            wb.generate(PROMPTS, **KNOBS)


def test_clamp_and_steer(wb, plain):
    prepared = wb.sampler(PROMPTS, **KNOBS).sampler.prepared
    pinned, prompt_rows = prepared.pinned, prepared.clean_window[prepared.pinned]
    with wb.hooks(clamp_latents(0.05)):
        traj = wb.trajectory(PROMPTS, **KNOBS)
    for b, z in traj.z_final.items():
        free = z[~pinned] if b == 0 else z
        assert free.abs().max() <= 0.05 + 1e-7
    # pinned prompt rows keep their clean latents, which a clamp to 0.05 would have changed
    assert torch.equal(traj.z_final[0][pinned], prompt_rows) and prompt_rows.abs().max() > 0.05
    with wb.hooks(steer(torch.ones(wb.channels), 0.0)):
        assert _ids(wb.generate(PROMPTS, **KNOBS)) == _ids(plain)
    direction = torch.zeros(wb.channels)
    direction[0] = 1.0
    with wb.hooks(steer(direction, 0.5)):
        session = wb.sampler(PROMPTS, **KNOBS)
        steered = session.step()
    delta = steered.z - wb.sampler(PROMPTS, **KNOBS).step().z
    rows = ~pinned
    assert torch.allclose(delta[rows][:, 0], torch.full_like(delta[rows][:, 0], 0.5 / KNOBS["steps"]))
    assert (delta[rows][:, 1:] == 0).all() and (delta[pinned] == 0).all()


def test_interrupt_and_decoded_edits(wb):
    def stop(state):
        state.interrupt = True

    with wb.hooks(block_end=stop):
        session = wb.sampler(PROMPTS, **KNOBS)
        assert len(list(session)) == KNOBS["steps"]
        assert session.result()[0].untrimmed_ids == []
    eos = wb.tokenizer.eos_id

    def force(state):
        state.token_ids = torch.full_like(state.token_ids, eos)

    with wb.hooks(decoded=force):
        out = wb.generate(PROMPTS, **dict(KNOBS, stop_at_eos=True))
    assert all(g.stopped_at_eos and set(g.untrimmed_ids) == {eos} for g in out)
    assert all(len(g.untrimmed_ids) == wb.block_size * wb.patch_size for g in out)


def test_run_with_cache_names(wb, plain):
    gens, cache = wb.run_with_cache(PROMPTS, **KNOBS)
    assert _ids(gens) == _ids(plain)
    bs, c = wb.block_size, wb.channels
    assert cache["block.2.step.5.v_uncond"].shape == (2, bs, c)
    assert cache["block.0.token_ids"].shape == (2, bs * wb.patch_size)
    expected = {f"block.{b}.{n}" for b in range(3) for n in ("z_init", "z_final", "token_ids", "after_eos")}
    expected |= {f"block.{b}.step.{k}.{f}" for b in range(3) for k in range(6)
                 for f in ("t", "t_next", "dt", "guidance", "z", "v_cond", "v_uncond", "v_guided", "x0_pred",
                           "z_next")}
    assert set(cache) == expected
    assert torch.equal(cache["block.1.step.5.z_next"], cache["block.1.z_final"])
    _, some = wb.run_with_cache(PROMPTS, names_filter=["block.0.step.0.z", "block.*.logits"], **KNOBS)
    assert set(some) == {"block.0.step.0.z", "block.0.logits", "block.1.logits", "block.2.logits"}
    assert some["block.0.logits"].shape[-1] == wb.model.vae_config.vocab_size
    _, heun = wb.run_with_cache(PROMPTS, names_filter=lambda n: n.startswith("block.0.step.0."),
                                **dict(KNOBS, solver="heun"))
    assert {"block.0.step.0.stage.1.v_guided", "block.0.step.0.stage.1.t"} <= set(heun)


def test_trajectory_save_load(tmp_path, wb, plain):
    traj = wb.trajectory(PROMPTS, preview=True, **dict(KNOBS, solver="midpoint"))
    assert traj.num_blocks == 3 and len(traj.steps) == 18
    assert traj.stack("x0_pred").shape == (3, 6, 2, wb.block_size, wb.channels)
    traj.save(tmp_path / "traj")
    back = Trajectory.load(tmp_path / "traj")
    assert back.prompts == traj.prompts and back.config == traj.config and back.fingerprint == wb.fingerprint
    assert [g.token_ids for g in back.generations] == [g.token_ids for g in traj.generations]
    a, b = traj.named_tensors(), back.named_tensors()
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [s.preview for s in back.steps] == [s.preview for s in traj.steps]
    assert [s.dt for s in back.steps] == [s.dt for s in traj.steps]


def test_bad_generation_input(wb):
    with pytest.raises(WorkbenchError, match="unknown generation option.*stepz"):
        wb.sampler(PROMPTS, stepz=3)
    with pytest.raises(GenerationError, match="solver must be one of"):
        wb.generate(PROMPTS, solver="rk4")
    with pytest.raises(WorkbenchError, match="prompt 0 is too long"):
        wb.generate(["a b " * 40000])
    with pytest.raises(WorkbenchError, match="not a string"):
        wb.generate([None])


def test_session_delegates_to_diagnostics_likelihood_and_projection(wb, tiny_model, tmp_path):
    from workbench.diagnostics import diagnose
    texts = ["The river flows slowly", "She opened the door"]
    direct = diagnose(tiny_model, texts, prior=False)
    via = wb.diagnose(texts, prior=False)
    assert [r.token_accuracy for r in via.per_text] == [r.token_accuracy for r in direct.per_text]
    records = wb.log_likelihood(texts, steps=2, probes=1)
    assert len(records) == 2 and all("bits_per_dim" in r for r in records)
    proj = wb.projection(texts, "pca", 2, cache_dir=tmp_path)
    assert proj.transform(wb.encode(texts).z[0].reshape(-1, tiny_model.vae_config.latent_dim)).shape[-1] == 2
