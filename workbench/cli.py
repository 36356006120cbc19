"""The ``cola-workbench`` command: one sub-command per module in ``workbench.commands``.

Bad input exits with code 2 and a one-line message, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from cola_core.errors import ColaError

# Each module exposes ``register(subparsers)`` which adds its parser and sets ``func``.
COMMAND_MODULES = ["generate", "api", "corpus", "tokenizer", "train", "evaluate", "run", "serve"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cola-workbench",
                                     description="Cola DLM latent-space research workbench")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"workbench.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ColaError, ValueError, FileNotFoundError) as exc:   # UsageError is a ValueError
        print(f"cola-workbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
