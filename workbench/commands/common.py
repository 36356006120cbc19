"""Arguments and helpers shared by several sub-commands."""
from __future__ import annotations

import argparse

from cola_core import ColaModel, load_pretrained
from cola_core.checkpoint import parse_device, parse_dtype
from cola_core.pocket import NAMED_CHECKPOINTS, resolve_checkpoint


class UsageError(ValueError):
    """A user error detected by a command (the CLI exits with code 2)."""


def int_in_range(low: int, high: int | None = None):
    """argparse type: an integer in [low, high] with a message naming the bound."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value
    return parse


PORT = int_in_range(0, 65535)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder (release root or cola_dlm folder) or a shipped name "
                             f"({', '.join(NAMED_CHECKPOINTS)}); default: the pocket checkpoint")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weight dtype (default float32; on CUDA the forward runs in bf16 autocast)")


def load_model(args: argparse.Namespace) -> ColaModel:
    """Load ``--checkpoint`` (a folder or shipped name; default the pocket), validating device and dtype first."""
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    return load_pretrained(resolve_checkpoint(args.checkpoint), device=device, dtype=dtype)
