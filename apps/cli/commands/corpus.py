"""``cola-workbench corpus``: build train/val/test JSONL corpora (WordNet 3.0, the pocket mix, WordNet
dialogues for SFT, or a user file)."""
from __future__ import annotations

import argparse

from .common import HelpFormatter, add_command


def register(subparsers) -> None:
    p = add_command(subparsers, "corpus", help="build a train/val/test corpus folder",
                    description="Write train.jsonl / val.jsonl / test.jsonl ({\"text\": ...} lines) into --out. "
                                "The split is a stable hash of each text, so the test split never leaks.")
    sources = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    wn = sources.add_parser("wordnet", formatter_class=HelpFormatter,
                            help="WordNet 3.0 glosses and examples (Debian package wordnet-base)")
    wn.add_argument("--out", required=True, help="output folder")
    wn.add_argument("--wordnet-dir", default="/usr/share/wordnet", help="WordNet data folder")
    wn.set_defaults(func=run_wordnet)
    pocket = sources.add_parser("pocket", formatter_class=HelpFormatter,
                                help="WordNet + fortunes (Debian fortunes) for training; test = WordNet's test split; "
                                     "ood = The Devil's Dictionary (Debian dict-devil), never trained on")
    pocket.add_argument("--out", required=True, help="output folder")
    pocket.set_defaults(func=run_pocket)
    chat = sources.add_parser("dialogues", formatter_class=HelpFormatter,
                              help="WordNet chat data for `train sft`: questions about a word answered from its first "
                                   "sense; test words are held out")
    chat.add_argument("--out", required=True, help="output folder")
    chat.set_defaults(func=run_dialogues)
    user = sources.add_parser("file", formatter_class=HelpFormatter,
                              help="a .txt (one document per line) or .jsonl (text field) corpus")
    user.add_argument("path", help="corpus file (.txt or .jsonl)")
    user.add_argument("--out", required=True, help="output folder")
    user.add_argument("--val-every", type=int, default=97, help="about 1 in N texts go to val")
    user.add_argument("--test-every", type=int, default=89, help="about 1 in N texts go to test")
    user.set_defaults(func=run_file)


def _report(out: str, sizes: dict[str, int]) -> None:
    print(f"wrote {out}: " + ", ".join(f"{name} {n}" for name, n in sizes.items()))


def run_wordnet(args: argparse.Namespace) -> int:
    from cola_core.training.corpus import build_wordnet_corpus

    _report(args.out, build_wordnet_corpus(args.out, wordnet_dir=args.wordnet_dir))
    return 0


def run_pocket(args: argparse.Namespace) -> int:
    from cola_core.training.corpus import build_pocket_corpus

    _report(args.out, build_pocket_corpus(args.out))
    return 0


def run_dialogues(args: argparse.Namespace) -> int:
    from cola_core.training.wordnet_dialogues import build_wordnet_dialogues

    _report(args.out, build_wordnet_dialogues(args.out))
    return 0


def run_file(args: argparse.Namespace) -> int:
    from cola_core.training.corpus import read_corpus, split_corpus, write_jsonl

    texts = list(dict.fromkeys(" ".join(t.split()) for t in read_corpus(args.path)))
    splits = split_corpus(texts, val_every=args.val_every, test_every=args.test_every)
    for name, part in splits.items():
        if not part:
            raise ValueError(f"{args.path}: too few texts ({len(texts)}) for a non-empty {name} split; "
                             "add texts or lower --val-every/--test-every")
        write_jsonl(f"{args.out}/{name}.jsonl", part)
    _report(args.out, {name: len(part) for name, part in splits.items()})
    return 0
