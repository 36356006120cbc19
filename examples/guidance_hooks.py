"""Hooks on the sampler: per-call and scoped hooks, guidance schedules, velocity edits, run_with_cache."""
import argparse

import torch

from workbench import Workbench, guidance_cutoff, guidance_ramp

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
prompts = ["someone who migrates", "a kind of tree"]
knobs = dict(seed=0, steps=8, max_new_tokens=12)
print("plain:", [g.completion for g in wb.generate(prompts, **knobs)])
print("guidance ramp 1 -> 7:", [g.completion for g in wb.generate(prompts, hooks=[guidance_ramp(1.0, 7.0)], **knobs)])
with wb.hooks(guidance_cutoff(0.5)):   # scoped: every call inside the block, removed on exit
    print("guidance cut off after half the steps:", [g.completion for g in wb.generate(prompts, **knobs)])


def halve_uncond(state):   # "guidance": edit the inputs of the CFG combine, v_guided follows
    state.v_uncond = 0.5 * state.v_uncond


def damp_guided(state):    # "guided": edit the combined velocity itself, on generated rows only
    state.v_guided = torch.where(state.free[..., None], 0.9 * state.v_guided, state.v_guided)


print("halved v_uncond:", [g.completion for g in wb.generate(prompts, hooks={"guidance": halve_uncond}, **knobs)])
print("damped v_guided:", [g.completion for g in wb.generate(prompts, hooks={"guided": damp_guided}, **knobs)])
print("hooks left registered:", len(wb.registry))

# How far apart are the conditional and unconditional velocities, step by step?
_, cache = wb.run_with_cache(prompts, names_filter=["block.1.step.*.v_cond", "block.1.step.*.v_uncond"], **knobs)
gaps = [float((cache[f"block.1.step.{k}.v_cond"] - cache[f"block.1.step.{k}.v_uncond"]).norm(dim=-1).mean())
        for k in range(knobs["steps"])]
print("block 1 |v_cond - v_uncond| per step:", " ".join(f"{g:.3f}" for g in gaps))
print("cache keys look like:", sorted(cache)[0])
