"""Cost and accuracy of the probability-flow ODE log-likelihood: seconds per text, NFE, and the error of
each configuration against a truly finer reference, next to the error it reports about itself.

    python benchmarks/likelihood_bench.py                          # pocket checkpoint, else random 'small'
    python benchmarks/likelihood_bench.py --checkpoint tests/fixtures/visible_a
    python benchmarks/likelihood_bench.py --preset small --steps 4 8 16 --tolerances 1e-3 1e-4 --json out.json

Every configuration scores the same posterior draws (one per text, seeded per text); the reference
also scores the posterior means, for comparison (the DiT was trained on draws). ``err`` is the
mean |log p - reference| in nats, where the reference is the adaptive dopri5 solver at rtol = atol =
1e-7 (``REFERENCE``), far finer than any row; ``ode_error`` is the row's own estimate of that error
(a coarser solve), ``stderr`` its Hutchinson standard error. The divergence is exact when a block has
at most 16 coordinates (the default), else Hutchinson with ``--probes``. Timings are medians of
``--repeats`` runs after one warm-up.
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
from cola_core.sampler import text_sample_id
from cola_core.text_codec import encode_tokens
from trajectory_bench import random_model, texts_for
from workbench import Workbench
from workbench.bounds import posterior_draws
from workbench.likelihood import FIXED_STEP_SOLVERS, prior_log_likelihood
from workbench.textbatch import tokenize

REFERENCE = {"solver": "dopri5", "rtol": 1e-7, "atol": 1e-7, "exact_divergence": None, "probes": 64}


def latents(model, texts: list[str], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """DiT-space posterior draws (one per text, seeded per text), the posterior means, lengths and sample ids."""
    batch = tokenize(model, texts)
    ids = [text_sample_id(t) for t in texts]
    post = encode_tokens(model, batch)
    draws = posterior_draws(post, batch.latent_lengths, 1, seed, ids)[0]
    return model.vae.to_dit_space(draws), model.vae.to_dit_space(post.mean), batch.latent_lengths, ids


def time_config(model, z0, lengths, ids, repeats: int, sync, **options):
    """Median seconds of one likelihood call (value and error estimate) over ``repeats`` runs after a warm-up
    (0: the first call's own time), and its result."""
    sync()
    start = time.perf_counter()
    result = prior_log_likelihood(model, z0, lengths, sample_ids=ids, **options)
    sync()
    times = [time.perf_counter() - start] if repeats == 0 else []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        prior_log_likelihood(model, z0, lengths, sample_ids=ids, **options)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def markdown_table(result: dict) -> str:
    """The README's table: each configuration's cost, its true error against the reference and its own estimate."""
    lines = ["| solver | steps / tolerance | NFE | s per text | error vs reference (nats) "
             "| reported ODE error (nats) |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        how = f"{r['steps']} steps" if "steps" in r else f"rtol = atol = {r['rtol']:g}"
        lines.append(f"| {r['solver']} | {how} | {r['nfe']} | {r['s_per_text']:.2f} | {r['err_nats']:.3f} | "
                     f"{r['ode_error_nats']:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint folder (default: the pocket checkpoint when installed)")
    src.add_argument("--preset", choices=["tiny", "small"], help="random-init size preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--texts", type=int, default=4)
    parser.add_argument("--words", type=int, default=8, help="words per text")
    parser.add_argument("--solvers", nargs="+", default=["heun", "rk4"], choices=list(FIXED_STEP_SOLVERS))
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 8, 16, 32])
    parser.add_argument("--tolerances", nargs="+", type=float, default=[1e-3, 1e-4, 1e-5],
                        help="rtol = atol of the adaptive dopri5 rows")
    parser.add_argument("--probes", type=int, default=16, help="Hutchinson probes when the divergence is not exact")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
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
    z0, means, lengths, ids = latents(model, texts)
    ref_s, reference = time_config(model, z0, lengths, ids, 0, sync, ode_error=False, **REFERENCE)
    _, at_mean = time_config(model, means, lengths, ids, 0, sync, ode_error=False, **REFERENCE)
    configs = [{"solver": s, "steps": n} for s in args.solvers for n in args.steps]
    configs += [{"solver": "dopri5", "rtol": tol, "atol": tol} for tol in args.tolerances]
    rows = []
    for config in configs:
        seconds, result = time_config(model, z0, lengths, ids, args.repeats, sync, probes=args.probes, **config)
        rows.append({**config, "divergence": result.divergence, "nfe": result.nfe, "seconds": seconds,
                     "s_per_text": seconds / len(texts), "logp_nats": float(result.logp.mean()),
                     "err_nats": float((result.logp - reference.logp).abs().mean()),
                     "ode_error_nats": float(result.ode_error.mean()),
                     "stderr_nats": float(result.stderr.mean()),
                     "err_bits_per_dim": float((result.bits_per_dim - reference.bits_per_dim).abs().mean())})
    result = {"label": label, "device": str(model.device), "threads": torch.get_num_threads(), "texts": texts,
              "latents": int(lengths.sum()), "block_dims": int(model.block_size * model.vae_config.latent_dim),
              "repeats": args.repeats, "reference": {**REFERENCE, "divergence": reference.divergence,
                                                      "nfe": reference.nfe, "seconds": ref_s,
                                                      "logp_nats": float(reference.logp.mean()),
                                                      "bits_per_dim": float(reference.bits_per_dim.mean()),
                                                      "bits_per_dim_at_mean": float(at_mean.bits_per_dim.mean())},
              "rows": rows}
    print(f"{label}: {result['device']}, {result['threads']} threads; {len(texts)} texts, {result['latents']} latents, "
          f"block of {result['block_dims']} dims; reference dopri5 rtol=atol=1e-7 ({reference.divergence}): "
          f"mean log p {result['reference']['logp_nats']:.3f} nats ({ref_s:.1f} s); "
          f"{result['reference']['bits_per_dim']:.3f} bits/dim for posterior draws vs "
          f"{result['reference']['bits_per_dim_at_mean']:.3f} at the posterior means")
    print(f"  {'solver':<8} {'steps/tol':>9} {'NFE':>5} {'s/text':>8} {'log p':>9} {'err':>7} {'ode_err':>8} "
          f"{'stderr':>7}")
    for r in rows:
        how = f"{r['steps']}" if "steps" in r else f"{r['rtol']:g}"
        print(f"  {r['solver']:<8} {how:>9} {r['nfe']:>5} {r['s_per_text']:>8.3f} {r['logp_nats']:>9.3f} "
              f"{r['err_nats']:>7.3f} {r['ode_error_nats']:>8.3f} {r['stderr_nats']:>7.3f}")
    out = Path(args.json) if args.json else Path(__file__).parent / "results" / f"likelihood_{label}_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
