"""Cross-block influence: how much each earlier block's latent moves each later block's final latent, with the
prefix held fixed (direct influence) and with the blocks in between re-generated (carried along the chain)."""
import argparse

from workbench import Workbench
from workbench.inside import cross_block_influence

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--prompt", default="the act of")
parser.add_argument("--method", default="finite_difference", choices=["finite_difference", "jacobian"])
parser.add_argument("--out", default=None, help="write the heatmaps here (.html)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
knobs = dict(seed=0, steps=8, max_new_tokens=4)
print(f"prompt {args.prompt!r} -> {wb.generate(args.prompt, **knobs)[0].text!r}")
influence = cross_block_influence(wb, args.prompt, method=args.method, **knobs)
labels = influence.labels
for mode, gain in influence.gain.items():
    print(f"{mode} prefix: RMS gain d z_target / d z_source (rows: source, columns: generated targets)")
    print("      " + " ".join(f"{labels[k]:>7}" for k in influence.generated))
    for j, label in enumerate(labels[:-1]):
        cells = ("      ." if j >= k else f"{float(gain[j, k]):7.3f}" for k in influence.generated)
        print(f"{label:>5} " + " ".join(cells))
    errors = ", ".join(f"{labels[k]} {float(influence.regeneration_error[mode][k]):.2e}" for k in influence.generated)
    print(f"  re-solving each block ({mode} prefix) lands this far from the sample: {errors}")
print(f"influence of {len(labels) - 1} source blocks on {len(influence.generated)} generated blocks ({args.method})")
if args.out:
    influence.figure().write_html(args.out)
    print("heatmaps written to", args.out)
