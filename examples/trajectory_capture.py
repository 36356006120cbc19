"""Step through the sampler, steer between steps, capture a full Trajectory and save/load it."""
import argparse
import tempfile
from pathlib import Path

from workbench import Trajectory, Workbench

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--out", default=None, help="where to save the trajectory (default: a temporary folder)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
knobs = dict(seed=0, steps=6, max_new_tokens=8, solver="heun", schedule="shifted")

session = wb.sampler("a kind of tree", preview=True, **knobs)   # one state per solver step
for state in session:
    t = float(state.t.max())
    print(f"block {state.block} step {state.step} t={t:6.1f} guidance={float(state.guidance[0]):.1f} "
          f"|x0_pred|={float(state.x0_pred.norm()):.2f} preview={state.preview[0]!r}")
    if state.block == 0 and state.step == 3:
        session.live.z = session.live.z * 0.9   # steer the live latent before the next step
print("steered result:", session.result()[0].completion)   # up to the first EOS; .text is the official raw form

traj = wb.trajectory(["a kind of tree", "someone who migrates"], **knobs)
print(f"captured {len(traj.steps)} steps over {traj.num_blocks} blocks; "
      f"x0_pred stacked {tuple(traj.stack('x0_pred').shape)} (blocks, steps, B, bs, C)")
with tempfile.TemporaryDirectory() as tmp:
    path = Path(args.out or tmp) / "trajectory"
    traj.save(path)
    back = Trajectory.load(path)
    a, b = traj.named_tensors(), back.named_tensors()
    same = a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    print(f"saved trajectory to {path}.safetensors/.json; reloaded identical: {same}")
