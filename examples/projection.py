"""Fit PCA on a corpus' latents (cached on disk), project a generation trajectory and an interpolation onto it."""
import argparse
from pathlib import Path

import torch

from cola_core.training.corpus import read_corpus
from workbench import Workbench, interpolate
from workbench.projection import fit_projection

HERE = Path(__file__).parent
parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--corpus", default=str(HERE / "data" / "glosses.txt"))
parser.add_argument("--method", default="pca", choices=["pca", "umap"], help="umap needs: pip install umap-learn")
parser.add_argument("--cache-dir", default=None, help="projection cache (default ~/.cache/cola_workbench/projections)")
parser.add_argument("--html", default=None, help="write the figure to this HTML file")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
proj = fit_projection(wb.model, read_corpus(args.corpus), args.method, 2, cache_dir=args.cache_dir)
if proj.explained_variance_ratio is not None:
    print("explained variance ratio:", [round(float(x), 3) for x in proj.explained_variance_ratio])
traj = wb.trajectory(["a small bird that"], steps=8, max_new_tokens=8, seed=0)
z = traj.stack("z")[:, :, 0]                              # (blocks, steps, bs, C) for sample 0
path = z[-1].transpose(0, 1)                              # last block: one path of `steps` points per latent row
print("trajectory of the last block, first latent row:", [tuple(round(v, 2) for v in p.tolist())
                                                           for p in proj.transform(path[0])])
lat = wb.encode(["a small bird that sings", "a tree that grows near water"], pad_to="longest")
line = torch.stack([interpolate(lat[0], lat[1], a / 4).z[0][0, 0] for a in range(5)])   # first latent, 5 points
print("interpolation of the first latent:", [tuple(round(v, 2) for v in p.tolist()) for p in proj.transform(line)])
fig = proj.figure({"trajectory": path, "interpolation": line})
print(f"figure: {len(fig.data) - 1} overlay paths on {len(proj.reference)} reference latents")
if args.html:
    Path(args.html).write_text(fig.to_html(include_plotlyjs=True))
    print(f"wrote {args.html}")
