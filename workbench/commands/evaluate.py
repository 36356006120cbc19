"""``cola-workbench evaluate``: recon accuracy, flow-matching loss and sample quality on a test split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cola_core.generate import GenerationConfig
from cola_core.training.evaluate import EvalConfig, evaluate, format_table

from .common import add_model_args, load_model, seed

DEFAULTS = GenerationConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="measure a checkpoint on a corpus's test split",
                              description="VAE token recon accuracy (posterior mean), DiT flow-matching loss vs "
                                          "zero velocity, and for generated samples (half prompted by the first "
                                          "2-3 words of test sentences, half unprompted): in-vocab word rate, "
                                          "distinct-1/2, word-bigram perplexity next to real test text.")
    add_model_args(p)
    p.add_argument("--corpus", required=True, help="corpus folder with train.jsonl and test.jsonl")
    p.add_argument("--samples", type=int, default=200, help="generated samples (200)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=seed, default=0, help="noise and sampling seed (0)")
    p.add_argument("--steps", type=int, default=DEFAULTS.steps)
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance)
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
    p.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty)
    p.add_argument("--out", default=None, help="write the full results (with samples) as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.samples < 2:
        raise ValueError(f"--samples must be >= 2, got {args.samples}")
    generation = GenerationConfig(steps=args.steps, guidance=args.guidance, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature, repetition_penalty=args.repetition_penalty,
                                  seed=args.seed)
    generation.validate()
    config = EvalConfig(samples=args.samples, batch_size=args.batch_size, seed=args.seed, generation=generation)
    results = evaluate(load_model(args), args.corpus, config)
    print(format_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
