"""``cola-workbench bench score|run``: the model card's 8-task benchmark (official templates, seeds, scorer)."""
from __future__ import annotations

import argparse

import torch

from ..bench import PROTOCOLS, BenchConfig, BenchError, Summary, load_summary, run_bench, score_folder, write_results
from ..bench.runner import OFFICIAL_MAX_SAMPLES
from ..bench.tasks import TASK_ORDER
from .common import add_model_args, int_in_range

DEFAULTS = BenchConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="score or run the model card's 8-task benchmark",
                              description="The release's evaluation: official prompt templates, per-item noise "
                                          "seeds and the official scorer.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="{score,run}")

    score = sub.add_parser("score", help="score every <task>.jsonl of a folder (inputs are only read)")
    score.add_argument("folder", metavar="DIR")
    score.add_argument("--out", default=None, help="where results go (default: DIR)")
    score.add_argument("--name", default="default", help="column name in accuracy_summary.csv (default: default)")
    score.add_argument("--compare", default=None, metavar="OTHER",
                       help="a summary.json, or a folder holding one or holding task outputs, shown side by side")
    score.set_defaults(func=run_score)

    run = sub.add_parser("run", help="generate answers for task files, then score them (resumable, torchrun-aware)")
    run.add_argument("--tasks", required=True, metavar="DIR", help="folder of <task>.jsonl files")
    run.add_argument("--out", required=True, help="results folder; rerunning into it resumes")
    run.add_argument("--task", action="append", default=None, metavar="T",
                     help=f"only this task (repeatable; default: every task file present): {', '.join(TASK_ORDER)}")
    run.add_argument("--max-samples", type=int_in_range(0), default=OFFICIAL_MAX_SAMPLES,
                     help=f"first N items per task, 0 = all (default {OFFICIAL_MAX_SAMPLES}, the official)")
    run.add_argument("--batch-size", type=int_in_range(1), default=20, help="prompts per generation call (20)")
    run.add_argument("--steps", type=int, default=DEFAULTS.steps, help="flow-matching steps per block (16)")
    run.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance (7.0)")
    run.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="(32)")
    run.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="0 = greedy (default)")
    run.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="(50)")
    run.add_argument("--top-p", type=float, default=DEFAULTS.top_p, help="(0.9)")
    run.add_argument("--seed", type=int, default=DEFAULTS.seed, help="per-sample noise seed base (66)")
    run.add_argument("--solver", default=DEFAULTS.solver, help="euler (official), heun or midpoint")
    run.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULTS.protocol,
                     help="official: score the untrimmed text, as the model card; completion: the text cut at EOS")
    run.add_argument("--name", default="default", help="column name in accuracy_summary.csv (default: default)")
    run.add_argument("--threads", type=int_in_range(1), default=None,
                     help="CPU threads for torch (default: torch's choice; 1 is fastest for the pocket model)")
    run.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_args(run)
    run.set_defaults(func=run_run)


def _print_table(summary: Summary) -> None:
    for task, result in summary.tasks.items():
        print(f"{task:<14}{result.accuracy:7.2f}  ({result.correct}/{result.total})")
    if summary.average is not None:
        print(f"{'tasks_average':<14}{summary.average:7.2f}")


def run_score(args: argparse.Namespace) -> int:
    summary = score_folder(args.folder, name=args.name)
    compare = load_summary(args.compare) if args.compare else None   # all input checked before writing
    out = args.out or args.folder
    try:
        report = write_results(out, summary, compare)
    except PermissionError as exc:
        raise BenchError(f"{out}: cannot write the results there ({exc.strerror}); pass --out FOLDER") from None
    _print_table(summary)
    print(f"report: {report}")
    return 0


def run_run(args: argparse.Namespace) -> int:
    config = BenchConfig(steps=args.steps, guidance=args.guidance, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                         solver=args.solver, protocol=args.protocol)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_bench(args.tasks, args.out, config, tasks=args.task, max_samples=args.max_samples or None,
                       batch_size=args.batch_size, checkpoint=args.checkpoint, device=args.device, dtype=args.dtype,
                       name=args.name, progress=not args.quiet)
    if result.summary is not None:
        _print_table(result.summary)
        runtime = result.summary.runtime
        rate = f"{runtime['samples_per_s']:.2f} samples/s" if runtime["samples_per_s"] else "nothing left to generate"
        print(f"report: {result.path / 'report.html'} ({runtime['generated']} samples generated in "
              f"{runtime['seconds']:.1f} s, {rate})")
    return 0
