"""``cola-workbench tokenizer``: train a byte-level BPE tokenizer.json with Cola's special tokens."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_command


def register(subparsers) -> None:
    p = add_command(subparsers, "tokenizer", help="train a byte-level BPE tokenizer",
                              description="Special tokens: <|pad|> 0, <|endoftext|> 1, <|mask|> 2, "
                                          "<|im_start|> 3, <|im_end|> 4.")
    p.add_argument("--corpus", required=True, help="a .txt/.jsonl file, or a corpus folder (uses train.jsonl)")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size")
    p.add_argument("--out", required=True, help="output tokenizer.json")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cola_core.training.corpus import read_corpus
    from cola_core.training.data import corpus_split_path
    from cola_core.training.tokenizer_train import train_bpe_tokenizer

    source = Path(args.corpus)
    path = corpus_split_path(source, "train") if source.is_dir() else source
    tokenizer = train_bpe_tokenizer(read_corpus(path), args.vocab_size, args.out)
    print(f"wrote {args.out}: {tokenizer.get_vocab_size()} tokens from {path}")
    return 0
