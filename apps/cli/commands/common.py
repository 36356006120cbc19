"""Arguments and helpers shared by several sub-commands.

Heavy imports (torch models, Gradio, FastAPI, training) happen inside the functions that need them,
so ``cola-workbench --help`` stays fast.
"""
from __future__ import annotations

import argparse
import secrets
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cola_core import ColaModel
    from workbench import Workbench

RANDOM_SEEDS = 2**31   # a seed drawn for the user is short enough to retype


class UsageError(ValueError):
    """A user error detected by a command (the CLI exits with code 2)."""


class HelpFormatter(argparse.HelpFormatter):
    """Shows every option's default in ``--help``; options whose default is None or off say what
    happens instead in their own help text."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if action.option_strings and not (default is None or default is False or default == argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def add_command(subparsers, name: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command parser whose help shows defaults."""
    return subparsers.add_parser(name, formatter_class=HelpFormatter, **kwargs)


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


def SEED(text: str) -> int:   # noqa: N802 (an argparse type, named like the others)
    """argparse type: a seed under cola_core's one seed rule (checked before any model loads)."""
    from cola_core.seeds import is_valid_seed, seed_error
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not is_valid_seed(value):
        raise argparse.ArgumentTypeError(seed_error(value))
    return value


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint: a folder (release root or cola_dlm folder), a shipped name (pocket, "
                             "pocket-chat) or a Hugging Face id OWNER/NAME[@REV]; none: the pocket checkpoint")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="weight dtype (none: float32; on CUDA the forward runs in bf16 autocast)")
    parser.add_argument("--threads", type=int_in_range(1), default=None,
                        help="CPU threads for torch (none: torch's default; on a busy machine 1 is often fastest)")


def add_seed_arg(parser: argparse.ArgumentParser, help: str = "noise seed (official per-sample seeding)") -> None:
    parser.add_argument("--seed", type=SEED, default=None, help=f"{help}; none: a random seed, printed to stderr")


def resolve_seed(seed: int | None) -> int:
    """The seed a run uses: the given one, or a fresh random one; printed so the run can be repeated."""
    if seed is None:
        seed = secrets.randbelow(RANDOM_SEEDS)
    print(f"seed: {seed}", file=sys.stderr)
    return seed


def apply_threads(args: argparse.Namespace) -> None:
    """Apply ``--threads`` (if given) to torch's intra-op pool."""
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)


def _prepare(args: argparse.Namespace):
    """Validate device and dtype and apply --threads before any weights load."""
    from cola_core.checkpoint import parse_device, parse_dtype

    apply_threads(args)
    return parse_device(args.device), parse_dtype(args.dtype)


def load_model(args: argparse.Namespace) -> "ColaModel":
    """Load ``--checkpoint`` (or the pocket checkpoint)."""
    return load_workbench(args).model


def load_workbench(args: argparse.Namespace) -> "Workbench":
    """A Workbench over ``--checkpoint`` (or the pocket checkpoint)."""
    from workbench import Workbench
    device, dtype = _prepare(args)
    return Workbench.load(args.checkpoint, device=device, dtype=dtype)
