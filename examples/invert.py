"""ODE inversion: integrate the probability-flow ODE from data (t=0) to noise (t=T), then
regenerate from that noise and measure the round-trip error."""
import argparse

from workbench import Workbench, invert

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--steps", type=int, default=10)
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
lat = wb.encode(["a tool for cutting wood", "to move through water by swimming"], pad_to="longest")
for solver in ("euler", "heun"):
    inv = invert(wb, lat, steps=args.steps, solver=solver)
    print(f"{solver}: round-trip relative error {max(inv.relative_error):.2e}, "
          f"max abs error {max(inv.max_abs_error):.2e}, "
          f"token agreement {min(inv.token_agreement):.1%}")
    # free-running, each block is regenerated after the regenerated blocks before it, so an early error
    # carries on; with the true prefix held, each block's error is its own ODE error
    print("  per block, free-running:     ", " ".join(f"{e:.1e}" for e in inv.block_error[0]))
    print("  per block, true prefix held: ", " ".join(f"{e:.1e}" for e in inv.block_error_held[0]))
noise = inv.noise.z[0]
print(f"inverted noise: mean {float(noise.mean()):+.3f}, std {float(noise.std()):.3f} (N(0, I) is 0, 1)")
