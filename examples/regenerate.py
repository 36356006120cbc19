"""Partial re-generation (like img2img): noise latents to t = strength*T, then let the prior
transport them back, block by block, keeping chosen blocks fixed."""
import argparse

from workbench import Workbench, regenerate_from

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--steps", type=int, default=8)
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
lat = wb.encode("a piece of furniture on which people sit at a table")
print(f"source ({lat.n_blocks[0]} blocks): {wb.decode(lat).texts[0]!r}")
for strength in (0.25, 0.5, 1.0):
    out = regenerate_from(wb, lat, strength=strength, keep_blocks=[0], steps=args.steps, guidance=3.0, seed=0)
    print(f"strength={strength:.2f} (t_start={out.t_start:.0f}, block 0 kept): {wb.decode(out.latents).texts[0]!r}")
