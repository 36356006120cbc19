"""``cola-workbench bench score|run``: the model card's 8-task benchmark (official templates, seeds, scorer)."""
from __future__ import annotations

import argparse

from workbench.bench import PROTOCOLS, BenchConfig, BenchError, Summary, load_summary, run_bench, score_folder, write_results
from workbench.bench.runner import OFFICIAL_MAX_SAMPLES
from workbench.bench.tasks import TASK_ORDER

from .common import HelpFormatter, SEED, add_command, add_model_args, apply_threads, int_in_range

DEFAULTS = BenchConfig()


def register(subparsers) -> None:
    p = add_command(subparsers, "bench", help="score or run the model card's 8-task benchmark",
                              description="The release's evaluation: official prompt templates, per-item noise "
                                          "seeds and the official scorer.")
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="{score,run}")

    score = sub.add_parser("score", formatter_class=HelpFormatter, help="score every <task>.jsonl of a folder (inputs are only read)")
    score.add_argument("folder", metavar="DIR", help="folder of <task>.jsonl outputs")
    score.add_argument("--out", default=None, help="where results go (none: DIR)")
    score.add_argument("--name", default="default", help="column name in accuracy_summary.csv")
    score.add_argument("--compare", default=None, metavar="OTHER",
                       help="a summary.json, or a folder holding one or holding task outputs, shown side by side")
    score.set_defaults(func=run_score)

    run = sub.add_parser("run", formatter_class=HelpFormatter, help="generate answers for task files, then score them (resumable, torchrun-aware)")
    run.add_argument("--tasks", required=True, metavar="DIR", help="folder of <task>.jsonl files")
    run.add_argument("--out", required=True, help="results folder; rerunning into it resumes")
    run.add_argument("--task", action="append", default=None, metavar="T",
                     help=f"only this task (repeatable; none: every task file present): {', '.join(TASK_ORDER)}")
    run.add_argument("--max-samples", type=int_in_range(0), default=OFFICIAL_MAX_SAMPLES,
                     help="first N items per task, 0 = all (the default is the official script's)")
    run.add_argument("--batch-size", type=int_in_range(1), default=20, help="prompts per generation call")
    run.add_argument("--steps", type=int, default=DEFAULTS.steps, help="flow-matching steps per block")
    run.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance scale")
    run.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="tokens generated per item")
    run.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="token sampling; 0 = greedy")
    run.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="top-k filter when sampling (0 = off)")
    run.add_argument("--top-p", type=float, default=DEFAULTS.top_p, help="nucleus filter when sampling (1 = off)")
    run.add_argument("--seed", type=SEED, default=DEFAULTS.seed, help="per-sample noise seed base")
    run.add_argument("--solver", default=DEFAULTS.solver, help="ODE solver: euler (official), heun or midpoint")
    run.add_argument("--protocol", choices=PROTOCOLS, default=DEFAULTS.protocol,
                     help="official: score the untrimmed text, as the model card; completion: the text cut at EOS")
    run.add_argument("--name", default="default", help="column name in accuracy_summary.csv")
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
    apply_threads(args)
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
