"""Log-likelihood of texts' latents under the DiT prior (probability-flow ODE), each value with its errors:
the divergence estimate's standard error, the ODE discretisation error and the spread over posterior draws."""
import argparse

from workbench import Workbench
from workbench.likelihood import text_log_likelihood

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--samples", type=int, default=2, help="posterior draws per text (the DiT was trained on draws)")
parser.add_argument("--solver", default="rk4", help="rk4, heun, euler (fixed steps) or dopri5 (adaptive, the library default)")
parser.add_argument("--steps", type=int, default=8, help="steps of a fixed-step solver")
parser.add_argument("--probes", type=int, default=8, help="Hutchinson probes (blocks too large for the exact divergence)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
texts = ["a small bird that sings", "a tree that grows near water", "the sound made by a dog"]
options = dict(solver=args.solver, steps=args.steps, probes=args.probes, seed=0)
sampled = text_log_likelihood(wb.model, texts, samples=args.samples, **options)
at_mean = text_log_likelihood(wb.model, texts, latent="mean", **options)
for rec, mean in zip(sampled, at_mean):
    print(f"{rec['text']!r}: {rec['bits_per_dim']:.3f} bits/dim, log p = {rec['logp_nats']:.2f} nats over "
          f"{rec['dims']} dims of {rec['latent']}")
    print(f"  errors: divergence ({rec['divergence']}) +-{rec['stderr_nats']:.2f}, ODE ({rec['solver']}) "
          f"~{rec['ode_error_nats']:.2f}, posterior draws +-{rec['sample_stderr_nats']:.2f} nats; {rec['nfe']} NFE")
    print(f"  importance-weighted bound on -log2 p(text): {rec['iw_bound_bits_per_token']:.2f} bits/token")
    print(f"  at the posterior mean instead: {mean['bits_per_dim']:.3f} bits/dim (labelled {mean['latent']!r})")
    print("  per block log p(z_k | z_<k):", ", ".join(f"{x:.1f}" for x in rec["logp_blocks"]))
