"""Look inside the DiT: cache activations, patch them from one prompt's run into another's, ablate a layer,
and sweep patching over layers x blocks to see where the text is decided."""
import argparse

from workbench import Workbench
from workbench.inside import ablate, patching_sweep

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--out", default=None, help="write the sweep's heatmap here (.html)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
knobs = dict(seed=0, steps=8, max_new_tokens=6, stop_at_eos=False)
# patching needs two runs of the same shape: prompts with the same number of tokens
pairs = [("a small bird that", "a large tree that"), ("the act of running", "the act of singing"),
         ("a kind of tree", "a kind of fish"), ("the cat sat on", "the dog sat on")]
target, source = next(p for p in pairs if len(set(map(len, wb.tokenizer.encode_batch(list(p))))) == 1)
print(f"target {target!r}, source {source!r}")

# 1. cache only what you ask for, when it is produced
gens, cache = wb.run_with_cache(target, names_filter="block.*.step.*.dit.cond.layer.*.resid_post", **knobs)
name = sorted(cache)[0]
print(f"cached {len(cache)} tensors, e.g. {name} {tuple(cache[name].shape)}")
print(f"target text: {gens[0].text!r}")

# 2. patch: the source run's last-layer residual (both CFG passes) into the target run
_, source_cache = wb.run_with_cache(source, names_filter="**.layer.*.resid_post", **knobs)
last = wb.model.dit_config.num_layers - 1
patched = wb.run_with_patches(target, source_cache.subset(f"block.*.step.*.dit.*.layer.{last}.resid_post"), **knobs)
print(f"source text: {wb.generate(source, **knobs)[0].text!r}")
print(f"target with the source's layer-{last} residual: {patched[0].text!r}")

# 3. ablate: attention of layer 0 zeroed in every pass
ablated, _ = ablate(wb, target, "block.*.step.*.dit.*.layer.0.attn_out", "zero", **knobs)
print(f"target with layer-0 attention zeroed: {ablated[0].text!r}")

# 4. sweep: which (layer, block) carries the source's text into the target's run
sweep = patching_sweep(wb, target, source, point="resid_post", **knobs)
print(f"patching sweep over {len(sweep.records)} (layer, block) cells; baselines: {sweep.baseline['target']} "
      f"(target) vs {sweep.baseline['source']} (source)")
best = max(sweep.records, key=lambda r: r["target_logprob"])
print(f"largest recovery of the source's tokens: layer {best['layer']}, block {best['block']} "
      f"(log p {best['target_logprob']:.3f})")
if args.out:
    sweep.figure("target_logprob").write_html(args.out)
    print("heatmap written to", args.out)
