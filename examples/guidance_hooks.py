"""Hooks on the sampler: guidance schedules and cut-off, a custom hook, and run_with_cache."""
import argparse

from workbench import Workbench, guidance_cutoff, guidance_ramp

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
prompts = ["someone who migrates", "a kind of tree"]
knobs = dict(seed=0, steps=8, max_new_tokens=12)
print("plain:", [g.text for g in wb.generate(prompts, **knobs)])
with wb.hooks(guidance_ramp(1.0, 7.0)):
    print("guidance ramp 1 -> 7:", [g.text for g in wb.generate(prompts, **knobs)])
with wb.hooks(guidance_cutoff(0.5)):
    print("guidance cut off after half the steps:", [g.text for g in wb.generate(prompts, **knobs)])


def halve_uncond(state, session):   # a custom hook: edit the unconditional velocity
    state.v_uncond = 0.5 * state.v_uncond   # v_guided is recombined automatically


with wb.hooks(guidance=halve_uncond):
    print("halved v_uncond:", [g.text for g in wb.generate(prompts, **knobs)])
print("hooks left registered:", len(wb.registry))

# How far apart are the conditional and unconditional velocities, step by step?
_, cache = wb.run_with_cache(prompts, names_filter=["block.1.step.*.v_cond", "block.1.step.*.v_uncond"], **knobs)
gaps = [float((cache[f"block.1.step.{k}.v_cond"] - cache[f"block.1.step.{k}.v_uncond"]).norm(dim=-1).mean())
        for k in range(knobs["steps"])]
print("block 1 |v_cond - v_uncond| per step:", " ".join(f"{g:.3f}" for g in gaps))
print("cache keys look like:", sorted(cache)[0])
