"""Cost of the probability-flow ODE log-likelihood: seconds per text and per velocity evaluation (NFE).

    python benchmarks/likelihood_bench.py                          # pocket checkpoint, else random 'small'
    python benchmarks/likelihood_bench.py --checkpoint tests/fixtures/visible_a
    python benchmarks/likelihood_bench.py --preset small --steps 2 4 8 --probes 1 4 --json out.json

Every configuration integrates the same texts; ``err`` is the mean |bits/dim| difference to a
reference run (RK4, the most steps given, exact divergence when block_size*C <= 64, else 16 probes).
Timings are medians of ``--repeats`` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cola_core import load_pretrained
from cola_core.pocket import POCKET_DIR
from cola_core.text_codec import encode_tokens
from trajectory_bench import random_model, texts_for
from workbench import Workbench
from workbench.likelihood import EVALS_PER_STEP, prior_log_likelihood
from workbench.textbatch import tokenize

EXACT_LIMIT = 64   # block_size * C up to which the reference uses the exact divergence


def latents(model, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenize(model, texts)
    return model.vae.to_dit_space(encode_tokens(model, batch).mean), batch.latent_lengths


def time_config(model, z0, lengths, repeats: int, sync, **options) -> tuple[float, torch.Tensor]:
    """Median seconds of one batched likelihood call, and its bits/dim."""
    result = prior_log_likelihood(model, z0, lengths, **options)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        prior_log_likelihood(model, z0, lengths, **options)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result.bits_per_dim


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint folder (default: the pocket checkpoint when installed)")
    src.add_argument("--preset", choices=["tiny", "small"], help="random-init size preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--words", type=int, default=12, help="words per text")
    parser.add_argument("--solvers", nargs="+", default=["heun", "rk4"], choices=list(EVALS_PER_STEP))
    parser.add_argument("--steps", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--probes", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="output JSON (default benchmarks/results/likelihood_<label>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint is None and args.preset is None and (POCKET_DIR / "cola_dlm").is_dir():
        args.checkpoint = str(POCKET_DIR)
    if args.checkpoint is None:
        label, model = f"random-{args.preset or 'small'}", random_model(args.preset or "small", args.device)
    else:
        label, model = Path(args.checkpoint).name, load_pretrained(args.checkpoint, device=args.device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    texts = texts_for(Workbench(model), args.texts, args.words, synthetic=args.checkpoint is None)
    z0, lengths = latents(model, texts)
    dims = int(model.block_size * model.vae_config.latent_dim)
    reference = dict(solver="rk4", steps=max(args.steps), exact_divergence=dims <= EXACT_LIMIT,
                     probes=1 if dims <= EXACT_LIMIT else 16)
    ref_s, ref_bits = time_config(model, z0, lengths, 1, sync, **reference)
    rows = []
    for solver in args.solvers:
        for steps in args.steps:
            for probes in args.probes:
                seconds, bits = time_config(model, z0, lengths, args.repeats, sync, solver=solver, steps=steps,
                                            probes=probes)
                nfe = steps * EVALS_PER_STEP[solver]
                rows.append({"solver": solver, "steps": steps, "probes": probes, "nfe": nfe, "seconds": seconds,
                             "s_per_text": seconds / len(texts), "ms_per_text_nfe": 1000 * seconds / len(texts) / nfe,
                             "bits_per_dim": float(bits.mean()),
                             "err_bits_per_dim": float((bits - ref_bits).abs().mean())})
    result = {"label": label, "device": str(model.device), "threads": torch.get_num_threads(), "texts": len(texts),
              "latents": int(lengths.sum()), "block_dims": dims, "repeats": args.repeats,
              "reference": {**reference, "seconds": ref_s, "bits_per_dim": float(ref_bits.mean())}, "rows": rows}
    print(f"{label}: {result['device']}, {result['threads']} threads; {len(texts)} texts, {result['latents']} latents, "
          f"block of {dims} dims; reference {reference} = {result['reference']['bits_per_dim']:.4f} bits/dim "
          f"({ref_s:.2f} s)")
    print(f"  {'solver':<6} {'steps':>5} {'probes':>6} {'NFE':>4} {'s/text':>9} {'ms/text/NFE':>12} {'bits/dim':>9} "
          f"{'err':>8}")
    for r in rows:
        print(f"  {r['solver']:<6} {r['steps']:>5} {r['probes']:>6} {r['nfe']:>4} {r['s_per_text']:>9.4f} "
              f"{r['ms_per_text_nfe']:>12.3f} {r['bits_per_dim']:>9.4f} {r['err_bits_per_dim']:>8.4f}")
    out = Path(args.json) if args.json else Path(__file__).parent / "results" / f"likelihood_{label}_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
