"""``cola-workbench evaluate-chat``: answers of a chat checkpoint to held-out WordNet questions."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cola_core.generate import GenerationConfig
from cola_core.training.chat_eval import ChatEvalConfig, evaluate_chat, format_chat_table

from .common import add_model_args, load_model

DEFAULTS = GenerationConfig()


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate-chat", help="measure a chat checkpoint on held-out WordNet questions",
                              description="Asks \"What does 'w' mean?\" for held-out words (test.jsonl of "
                                          "`corpus dialogues`) in the checkpoint's chat template: share of non-empty "
                                          "answers and content-word F1 against the true gloss, next to a baseline "
                                          "answering with the most similarly spelled training word's gloss.")
    add_model_args(p)
    p.set_defaults(checkpoint="pocket-chat")
    p.add_argument("--dialogues", required=True, help="folder from `cola-workbench corpus dialogues`")
    p.add_argument("--samples", type=int, default=200, help="held-out questions (200)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the full results (with answers) as JSON here")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    config = ChatEvalConfig(samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                            generation=GenerationConfig(seed=args.seed))
    results = evaluate_chat(load_model(args), args.dialogues, config)
    print(format_chat_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0
