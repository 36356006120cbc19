"""The ``cola-workbench`` command: one sub-command per module in ``apps.cli.commands``.

Bad input exits with code 2 and a one-line message, never a traceback. Sub-command modules import
their heavy dependencies (torch models, Gradio, FastAPI, training) only when they run.
"""
from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from .commands import api, bench, chat, corpus, evaluate, generate, run, serve, tokenizer, train
from .commands.common import UsageError

COMMANDS = (generate, chat, api, serve, run, bench, evaluate, corpus, tokenizer, train)


def package_version() -> str:
    try:
        return version("cola-workbench")
    except PackageNotFoundError:   # running from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cola-workbench", description="Cola DLM latent-space research workbench")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cola_core.errors import ColaError   # after parsing: --help and --version never import torch

    try:
        return int(args.func(args) or 0)
    except (ColaError, UsageError, ValueError, FileNotFoundError) as exc:
        print(f"cola-workbench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
