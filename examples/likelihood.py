"""Log-likelihood of texts' latents under the DiT prior (probability-flow ODE), Hutchinson vs exact divergence."""
import argparse

from workbench import Workbench
from workbench.likelihood import text_log_likelihood

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--steps", type=int, default=4, help="RK4 steps from data (s=0) to noise (s=1)")
parser.add_argument("--probes", type=int, default=8, help="Rademacher probes for the Hutchinson estimate")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
texts = ["a small bird that sings", "a tree that grows near water", "the sound made by a dog"]
hutch = text_log_likelihood(wb.model, texts, steps=args.steps, probes=args.probes, seed=0)
block_dims = wb.block_size * wb.channels
exact = text_log_likelihood(wb.model, texts, steps=args.steps, exact_divergence=True) if block_dims <= 64 else None
for i, rec in enumerate(hutch):
    line = (f"{rec['text']!r}: {rec['bits_per_dim']:.3f} bits/dim, log p = {rec['logp_nats']:.1f} "
            f"+- {rec['stderr_nats']:.1f} nats over {rec['dims']} dims ({rec['nfe']} NFE)")
    if exact:
        line += f"; exact divergence: {exact[i]['logp_nats']:.1f} nats"
    print(line)
    print("  per block log p(z_k | z_<k):", ", ".join(f"{x:.1f}" for x in rec["logp_blocks"]))
