"""The one rule for user-supplied seeds, shared by the CLI, the API, the UI and experiment specs.

Generation seeds sample ``b``'s noise for block ``k`` with ``seed + 1000*b + 10**7*k`` (the official
per-sample scheme), and ``torch.Generator.manual_seed`` takes 0 .. 2**64 - 1. A seed is an integer
from 0 to ``MAX_SEED = 2**53 - 1``: the largest integer a JSON number (a browser, a JavaScript API
client, the Gradio UI) holds exactly, so a seed survives every front-end unchanged, and far enough
below 2**64 that any offset the formula can add (sample ids up to 2**32 as the reference's crc32
ids, 8192 blocks: under 2**43) keeps the derived seed in the generator's range.
"""
from __future__ import annotations

from .errors import GenerationError

MAX_SEED = 2**53 - 1
SEED_RULE = f"an integer from 0 to {MAX_SEED} (2**53 - 1)"


def is_valid_seed(seed: object) -> bool:
    """True for an int (not a bool) in [0, MAX_SEED]."""
    return isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED


def seed_error(seed: object) -> str:
    """The message for a seed that breaks the rule."""
    return f"seed must be {SEED_RULE}, got {seed!r}"


def check_seed(seed: object) -> int:
    """Return ``seed`` if it follows the rule, else raise GenerationError saying the rule."""
    if not is_valid_seed(seed):
        raise GenerationError(seed_error(seed))
    return seed
