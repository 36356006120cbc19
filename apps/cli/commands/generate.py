"""``cola-workbench generate``: block-wise generation with the official defaults."""
from __future__ import annotations

import argparse
import json

from cola_core.generate import GenerationConfig

from .common import (add_command, add_model_args, add_sampling_args, add_seed_arg, load_workbench, resolve_seed,
                     sampling_knobs)


def register(subparsers) -> None:
    p = add_command(subparsers, "generate", help="generate continuations of prompts",
                    description='Block-wise latent diffusion generation (official algorithm). An empty prompt ("") '
                                "generates unconditionally.")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt texts")
    add_model_args(p)
    add_sampling_args(p)
    add_seed_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per prompt per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    knobs = sampling_knobs(args)
    GenerationConfig().with_knobs(**knobs)   # fail on bad knobs before loading any weights
    wb = load_workbench(args)
    seed = resolve_seed(args.seed)   # printed once the run can start, so an error stays one line
    for result in wb.generate(args.prompts, seed=seed, **knobs):
        if args.json:
            print(json.dumps({"prompt": result.prompt, "completion": result.completion, "text": result.text,
                              "token_ids": result.token_ids, "stopped_at_eos": result.stopped_at_eos, "seed": seed},
                             ensure_ascii=False))
        else:
            print(f"{result.prompt}{result.completion}")
    return 0
