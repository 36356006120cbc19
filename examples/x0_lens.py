"""The x0-lens: decode what every DiT layer predicts the clean block to be, at every step — where in depth
(and when in the flow) each generated token is decided."""
import argparse

from workbench import Workbench
from workbench.inside import x0_lens

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--prompt", default="a small bird that")
parser.add_argument("--out", default=None, help="write the lens heatmap here (.html)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
knobs = dict(seed=0, steps=8, max_new_tokens=4, stop_at_eos=False)
lens = x0_lens(wb, args.prompt, **knobs)
print(f"prompt {args.prompt!r} -> {wb.generate(args.prompt, **knobs)[0].text!r}")
layers = wb.model.dit_config.num_layers
for block in sorted(lens.x0):
    rows = [r for r in lens.records if r["block"] == block]
    final = rows[-1]["token_ids"]
    print(f"block {block} (final tokens {final}):")
    for step in sorted({r["step"] for r in rows}):
        cells = [r for r in rows if r["step"] == step]
        agree = [r["agreement"] == 1.0 for r in cells]   # by depth: input, layer 0, 1, ...
        decided = next((cells[d]["layer"] for d in range(len(cells)) if all(agree[d:])), None)
        texts = " | ".join(f"{r['text']!r:>12}" for r in cells)
        where = "not yet" if decided is None else ("at the input" if decided < 0 else f"by layer {decided}")
        print(f"  step {step} t={cells[0]['t']:6.1f}: {texts}   decided {where}")
print(f"x0-lens: {len(lens.records)} records over {layers} layers (+ input), mode {lens.mode}")
if args.out:
    lens.figure(block=max(lens.x0)).write_html(args.out)
    print("heatmap written to", args.out)
