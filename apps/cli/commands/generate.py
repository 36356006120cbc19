"""``cola-workbench generate``: block-wise generation with the official defaults."""
from __future__ import annotations

import argparse
import json

from cola_core.generate import GenerationConfig

from .common import add_command, add_model_args, add_seed_arg, load_workbench, resolve_seed

DEFAULTS = GenerationConfig()


def register(subparsers) -> None:
    p = add_command(subparsers, "generate", help="generate continuations of prompts",
                    description='Block-wise latent diffusion generation (official algorithm). An empty prompt ("") '
                                "generates unconditionally.")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="prompt texts")
    add_model_args(p)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="flow-matching steps per block")
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance scale")
    p.add_argument("--guidance-rescale", type=float, default=DEFAULTS.guidance_rescale, metavar="PHI",
                   help="CFG-rescale: pull the guided velocity's std toward the conditional one's (0 = off, 1 = full)")
    p.add_argument("--guidance-interval", type=interval, default=None, metavar="LO,HI",
                   help="guide only while t/T is in [LO, HI] (e.g. 0.2,0.8); elsewhere the conditional velocity "
                        "(none: guide at every step)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="tokens to generate")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="token sampling; 0 = greedy")
    p.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="top-k filter when sampling (0 = off)")
    p.add_argument("--top-p", type=float, default=DEFAULTS.top_p, help="nucleus filter when sampling (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty,
                   help="divide logits of tokens already generated (1 = off)")
    add_seed_arg(p)
    p.add_argument("--json", action="store_true", help="one JSON object per prompt per line")
    p.set_defaults(func=run)


def interval(text: str) -> tuple[float, float]:
    """argparse type: ``LO,HI`` -> (lo, hi) (the range itself is checked with the other knobs)."""
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers LO,HI such as 0.2,0.8, got {text!r}") from None
    return lo, hi


def run(args: argparse.Namespace) -> int:
    knobs = dict(steps=args.steps, guidance=args.guidance, max_new_tokens=args.max_new_tokens,
                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                 repetition_penalty=args.repetition_penalty, guidance_rescale=args.guidance_rescale,
                 guidance_interval=args.guidance_interval)
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
