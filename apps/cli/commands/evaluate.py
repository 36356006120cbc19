"""``cola-workbench evaluate`` / ``evaluate-chat``: recon accuracy, flow-matching loss and sample quality on a
test split; non-empty answers and gloss overlap of a chat checkpoint."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cola_core.generate import GenerationConfig

from .common import SEED, add_command, add_model_args, int_in_range, load_model

DEFAULTS = GenerationConfig()


def register(subparsers) -> None:
    p = add_command(subparsers, "evaluate", help="measure a checkpoint on a corpus's test split",
                    description="VAE token recon accuracy (posterior mean), DiT flow-matching loss vs zero velocity, "
                                "and for generated samples (half prompted by the first 2-3 words of test sentences, "
                                "half unprompted): in-vocab word rate, distinct-1/2, word-bigram perplexity next to "
                                "real test text, with 95 % bootstrap intervals over the samples for the in-vocab "
                                "rate and the perplexity ratio (more --samples narrow them).")
    p.add_argument("--corpus", required=True, help="corpus folder with train.jsonl and test.jsonl")
    _shared_args(p, minimum=2)
    p.add_argument("--steps", type=int, default=DEFAULTS.steps, help="flow-matching steps per block")
    p.add_argument("--guidance", type=float, default=DEFAULTS.guidance, help="classifier-free guidance scale")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens, help="tokens per sample")
    p.add_argument("--temperature", type=float, default=DEFAULTS.temperature, help="token sampling; 0 = greedy")
    p.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty,
                   help="divide logits of tokens already generated (1 = off)")
    p.set_defaults(func=run)
    chat = add_command(subparsers, "evaluate-chat", help="measure a chat checkpoint on held-out WordNet questions",
                       description="Asks \"What does 'w' mean?\" for held-out words (test.jsonl of `corpus "
                                   "dialogues`) in the checkpoint's chat template, official sampler defaults: share "
                                   "of non-empty answers and content-word F1 against the true gloss, next to a "
                                   "baseline answering with the gloss of the most similarly spelled training word.")
    chat.add_argument("--dialogues", required=True, help="folder from `cola-workbench corpus dialogues`")
    _shared_args(chat, minimum=1)
    chat.set_defaults(func=run_chat, checkpoint="pocket-chat")


def _shared_args(p: argparse.ArgumentParser, minimum: int) -> None:
    add_model_args(p)
    p.add_argument("--samples", type=int_in_range(minimum), default=200, help="generated samples")
    p.add_argument("--batch-size", type=int_in_range(1), default=64, help="texts per encoder/sampler batch")
    p.add_argument("--seed", type=SEED, default=0, help="noise seed of the samples and of the posterior draws")
    p.add_argument("--out", default=None, help="write the full results (with samples) as JSON here")


def _report(args: argparse.Namespace, results: dict, table: str) -> int:
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from cola_core.training.evaluate import EvalConfig, evaluate, format_table

    generation = GenerationConfig().with_knobs(steps=args.steps, guidance=args.guidance,
                                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                               repetition_penalty=args.repetition_penalty, seed=args.seed)
    config = EvalConfig(samples=args.samples, batch_size=args.batch_size, seed=args.seed, generation=generation)
    results = evaluate(load_model(args), args.corpus, config)
    return _report(args, results, format_table(results))


def run_chat(args: argparse.Namespace) -> int:
    from cola_core.training.chat_eval import ChatEvalConfig, evaluate_chat, format_chat_table

    config = ChatEvalConfig(samples=args.samples, batch_size=args.batch_size, seed=args.seed,
                            generation=GenerationConfig(seed=args.seed))
    results = evaluate_chat(load_model(args), args.dialogues, config)
    return _report(args, results, format_chat_table(results))
