"""``cola-workbench generate``: block-wise generation with the official defaults."""
from __future__ import annotations

import argparse
import json

from cola_core.generate import GenerationConfig, generate

from .common import UsageError, add_model_args, load_model, seed

DEFAULTS = GenerationConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate continuations of prompts",
                              description="Block-wise latent diffusion generation (official algorithm).")
    p.add_argument("prompts", nargs="+", metavar="PROMPT")
    add_model_args(p)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="flow-matching steps per block (16)")
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance (7.0)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="tokens to generate (32)")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=DEFAULTS.top_k)
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    p.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty)
    p.add_argument("--seed", type=seed, default=None, help="per-sample noise seed (official seeding scheme)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt per line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if any(not prompt.strip() for prompt in args.prompts):
        raise UsageError("empty prompt; give at least one non-blank PROMPT")
    config = GenerationConfig(steps=args.steps, guidance=args.guidance, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed)
    config.validate()   # fail on bad knobs before loading any weights
    model = load_model(args)
    for result in generate(model, args.prompts, config):
        if args.json:
            print(json.dumps({"prompt": result.prompt, "text": result.text, "token_ids": result.token_ids,
                              "completion": result.completion, "stopped_at_eos": result.stopped_at_eos},
                             ensure_ascii=False))
        else:
            print(f"{result.prompt}{result.completion}")
    return 0
