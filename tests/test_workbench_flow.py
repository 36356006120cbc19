"""Partial re-generation and ODE inversion against the sampler loop, on the tiny fixture checkpoint."""
from __future__ import annotations

import pytest
import torch

from workbench import WorkbenchError, invert, regenerate_from

TEXTS = ["the cat sat on the mat and looked around", "a dog ran off into the green woods"]



@pytest.fixture(scope="module")
def lat(wb):
    return wb.encode(TEXTS, pad_to="longest")


def test_regenerate_from_pure_noise_is_unconditional_generation(wb, lat):
    """strength 1 with a seed transports exactly generation's noise, so it must land exactly where
    the sampler lands for the empty prompt (same model calls, same cache, same solver)."""
    lat = lat.truncate(2)
    n = 2
    knobs = dict(seed=3, steps=6, guidance=5.0, solver="heun")
    traj = wb.trajectory(["", ""], sample_ids=[0, 1], max_new_tokens=n * wb.block_size * wb.patch_size,
                         stop_at_eos=False, **knobs)
    regen = regenerate_from(wb, lat, strength=1.0, **knobs)
    assert regen.t_start == 1000.0 and regen.steps_run == 6
    for b in range(n):
        assert torch.equal(torch.stack([z[b] for z in regen.start.z]), traj.z_init[b])
        assert torch.equal(torch.stack([z[b] for z in regen.latents.z]), traj.z_final[b])


def test_regenerate_strength_and_kept_blocks(wb, lat):
    same = regenerate_from(wb, lat, strength=0.0, seed=1)
    assert same.steps_run == 0 and all(torch.equal(a, b) for a, b in zip(same.latents.z, lat.z))
    part = regenerate_from(wb, lat, strength=0.3, keep_blocks=[0, 2], seed=1, steps=10)
    assert part.steps_run == 3 and part.t_start == pytest.approx(300.0)
    for z, src in zip(part.latents.z, lat.z):
        assert torch.equal(z[0], src[0]) and torch.equal(z[2], src[2])
        assert not torch.equal(z[1], src[1])
    # low strength stays closer to the input than high strength
    near = regenerate_from(wb, lat, strength=0.2, seed=1, steps=10)
    far = regenerate_from(wb, lat, strength=0.9, seed=1, steps=10)
    dist = lambda r: sum(float((a - b).norm()) for a, b in zip(r.latents.z, lat.z))   # noqa: E731
    assert dist(near) < dist(far)
    with pytest.raises(WorkbenchError, match="strength"):
        regenerate_from(wb, lat, strength=1.5)
    with pytest.raises(WorkbenchError, match="keep_blocks"):
        regenerate_from(wb, lat, keep_blocks=[50])


def test_inversion_round_trip(wb, lat):
    lat = lat.truncate(3)
    heun = invert(wb, lat, steps=12, solver="heun")
    assert all(e < 5e-3 for e in heun.relative_error), heun.relative_error
    assert min(heun.token_agreement) >= 0.8   # random tiny weights: near-tied logits can flip a token
    # the noise is a plausible N(0, I) draw: unit-scale, far from the data
    noise = torch.cat([z.reshape(-1) for z in heun.noise.z])
    assert 0.5 < float(noise.std()) < 2.0
    euler = invert(wb, lat, steps=12, solver="euler")
    assert max(euler.relative_error) > max(heun.relative_error)   # first order vs second order
    assert all(e < 0.3 for e in euler.relative_error)
    fast = invert(wb, lat, steps=4, check=False)
    assert fast.reconstruction is None and fast.noise.z[0].shape == lat.z[0].shape
