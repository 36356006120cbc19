"""CUDA smoke check of the workbench verbs on the tiny fixture (needs a GPU).

    python benchmarks/workbench_cuda_check.py
"""
import torch

from cola_core.generate import generate
from workbench import Workbench, clamp_latents, guidance_ramp, invert, regenerate_from, steer

wb = Workbench.load("tests/fixtures/visible_a", device="cuda")
prompts = ["the cat sat on", "once upon a time there was a"]
knobs = dict(seed=0, steps=6, stop_at_eos=False)
ref = generate(wb.model, prompts, max_new_tokens=12, **knobs)
out = wb.sampler(prompts, preview=True, max_new_tokens=12, **knobs).result()
print("sampler == cola_core generate on cuda:", [r.token_ids == o.token_ids for r, o in zip(ref, out)])
lat = wb.encode(["the cat sat on the mat and looked around", "a dog ran off"], pad_to="longest").truncate(2)
traj = wb.trajectory(["", ""], max_new_tokens=2 * wb.block_size * wb.patch_size, noise_device="cpu", **knobs)
regen = regenerate_from(wb, lat, strength=1.0, seed=0, steps=6)
gaps = [float((torch.stack([z[b] for z in regen.latents.z]) - traj.z_final[b].cpu()).abs().max()) for b in range(2)]
print("regenerate_from(strength=1) vs sampler (noise on cpu), max abs diff per block:", gaps)
inv = invert(wb, lat, steps=12, solver="heun")
print("invert heun relative error:", inv.relative_error, "token agreement:", inv.token_agreement)
with wb.hooks(guidance_ramp(1, 7), steer(torch.ones(wb.channels), 0.5), clamp_latents(2.0)):
    _, cache = wb.run_with_cache(prompts, names_filter="block.1.*", max_new_tokens=12, **knobs)
print("hooked run_with_cache:", len(cache), "tensors on", next(iter(cache.values())).device)
