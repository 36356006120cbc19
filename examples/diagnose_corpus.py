"""Diagnose a corpus: reconstruction, KL and active units, flow-matching loss vs t and block, ELBO in bits."""
import argparse
from pathlib import Path

from cola_core.training.corpus import read_corpus
from workbench import Workbench
from workbench.diagnostics import diagnose

HERE = Path(__file__).parent
parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--corpus", default=str(HERE / "data" / "glosses.txt"), help=".txt (one text per line) or .jsonl")
parser.add_argument("--likelihood", action="store_true", help="add the probability-flow ODE log-likelihood")
parser.add_argument("--html", default=None, help="write the plotly figures to this HTML file")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
texts = read_corpus(args.corpus)
diag = diagnose(wb.model, texts, samples=2, t_grid=[0.1, 0.3, 0.5, 0.7, 0.9], likelihood=args.likelihood,
                likelihood_options={"solver": "rk4", "steps": 16, "probes": 4}, seed=0)
d = diag.dataset
print(f"{d.texts} texts, {d.tokens} tokens, {d.latents} latents")
print(f"token accuracy {d.token_accuracy:.3f}; decoder NLL {d.recon_bits_per_token:.3f} bits/token "
      f"(sampled z: {d.recon_bits_per_token_sampled:.3f})")
print(f"KL {d.kl_bits_per_token:.3f} bits/token; informative units {d.informative_units}/{d.latent_dim} "
      f"(active units {d.active_units}/{d.latent_dim}: pooled over positions, ~all by construction for "
      f"LayerNormed means); posterior std {d.posterior_std:.3f}")
print(f"flow-matching loss {d.fm_loss:.4f}; ELBO {d.elbo_bits_per_token:.3f} bits/token")
if args.likelihood:
    errors = max(r.prior_ode_error_nats for r in diag.per_text)
    print(f"prior {d.prior_bits_per_dim:.3f} bits/dim of posterior draws (largest ODE error {errors:.2f} nats); "
          f"ELBO with the DiT prior {d.elbo_prior_bits_per_token:.3f} bits/token, importance-weighted "
          f"{d.iw_prior_bits_per_token:.3f}")
for t in sorted({p.t for p in diag.flow_matching}):
    cells = [p for p in diag.flow_matching if p.t == t]
    n = sum(p.count for p in cells)
    print(f"  t={t:.1f}: FM loss {sum(p.loss * p.count for p in cells) / n:.4f} "
          f"(predicting 0: {sum(p.zero_velocity_loss * p.count for p in cells) / n:.4f})")
worst = max(diag.per_text, key=lambda r: r.recon_bits_per_token)
print(f"hardest text to reconstruct: {worst.text!r} ({worst.recon_bits_per_token:.2f} bits/token)")
if args.html:
    figures = diag.figures()
    Path(args.html).write_text("".join(fig.to_html(full_html=False, include_plotlyjs=i == 0)
                                       for i, fig in enumerate(figures.values())))
    print(f"wrote {args.html}")
