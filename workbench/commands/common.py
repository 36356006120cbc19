"""Arguments and helpers shared by several sub-commands."""
from __future__ import annotations

import argparse

from cola_core import ColaModel, load_pretrained
from cola_core.checkpoint import parse_device, parse_dtype
from cola_core.pocket import default_checkpoint
from cola_core.seeds import check_seed


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


def seed(text: str) -> int:
    """argparse type: a seed under cola_core's one seed rule (checked before any model loads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    try:
        return check_seed(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint folder (release root or cola_dlm folder); default: the pocket checkpoint")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weight dtype (default float32; on CUDA the forward runs in bf16 autocast)")


def load_model(args: argparse.Namespace) -> ColaModel:
    """Load ``--checkpoint`` (or the pocket checkpoint), validating device and dtype first."""
    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    return load_pretrained(args.checkpoint or default_checkpoint(), device=device, dtype=dtype)
