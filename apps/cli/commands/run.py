"""``cola-workbench run SPEC.toml``: run an experiment spec into a run folder (resumes; torchrun-aware)."""
from __future__ import annotations

import argparse
import sys

from .common import add_command


def register(subparsers) -> None:
    p = add_command(subparsers, "run", help="run an experiment spec (TOML) into a run folder",
                              description="Run an experiment spec. Rerunning into the same --out folder resumes; "
                                          "under torchrun the items are sharded across processes.")
    p.add_argument("spec", metavar="SPEC.toml", help="experiment spec (see examples/specs/)")
    p.add_argument("--out", default=None, help="run folder (none: runs/<name>-<spec digest>)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder (overrides the spec's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (overrides the spec's)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="weight dtype (overrides the spec's)")
    p.add_argument("--quiet", action="store_true", help="no per-item progress lines")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from workbench.experiments import load_spec, run as run_experiment

    spec = load_spec(args.spec)   # every spec problem is reported here, before any model loads
    log = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    result = run_experiment(spec, args.out, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype, log=log)
    if result.rank == 0:
        print(f"{result.path}: {len(result.records)} records ({result.ran} items run, {result.skipped} already done)")
    return 0
