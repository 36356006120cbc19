"""Interpolate between two texts in latent space (lerp or slerp; whole sequence or chosen blocks)."""
import argparse

from workbench import Workbench, interpolate

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--method", default="slerp", choices=["lerp", "slerp"])
parser.add_argument("--steps", type=int, default=5, help="number of points from a to b")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
# Encoding together with pad_to="longest" gives both texts the same block count: the shorter one
# carries its own encoding of padding tokens instead of being truncated.
lat = wb.encode(["a small bird that sings", "a large vehicle that carries goods on roads"], pad_to="longest")
a, b = lat[0], lat[1]
for k in range(args.steps):
    alpha = k / (args.steps - 1)
    text = wb.decode(interpolate(a, b, alpha, method=args.method)).texts[0]
    print(f"alpha={alpha:.2f}: {text!r}")
mixed = interpolate(a, b, 1.0, blocks=[0])   # only the first block comes from b
print(f"block 0 from b, rest from a: {wb.decode(mixed).texts[0]!r}")
