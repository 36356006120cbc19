"""Stop strings: the Aho–Corasick scanner against a brute-force reference, and choices read each character once."""
from __future__ import annotations

import random

import pytest

from apps.api.backend import ChoiceText
from apps.api.stops import StopScanner, StopStrings


def first_stop(text: str, stops: list[str]) -> int | None:
    """Reference: the start of the stop string completed first (the longest one if several end together)."""
    for end in range(1, len(text) + 1):
        ending = [s for s in stops if text[:end].endswith(s)]
        if ending:
            return end - max(map(len, ending))
    return None


def longest_open_prefix(text: str, stops: list[str]) -> int:
    """Reference: the longest tail of ``text`` that is a proper prefix of a stop string."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


@pytest.mark.parametrize("seed", range(4))
def test_scanner_matches_the_reference_however_the_text_is_split(seed):
    rng = random.Random(seed)
    for _ in range(2000):
        stops = sorted({"".join(rng.choice("ab") for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 5))})
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 24)))
        scanner, pos, hit = StopScanner(StopStrings(stops)), 0, None
        while pos < len(text) and hit is None:
            piece = text[pos:pos + rng.randint(1, 5)]
            hit, pos = scanner.feed(piece), pos + len(piece)
            if hit is None:
                assert scanner.held == longest_open_prefix(text[:pos], stops)
        assert hit == first_stop(text, stops), (stops, text)


def test_the_stop_completed_first_wins_over_one_that_starts_earlier():
    scanner = StopScanner(StopStrings(["abcd", "c"]))
    assert scanner.feed("xabcd") == 3            # "c" ends before "abcd" does: cut at "xab"


def test_no_stop_strings_hold_nothing_back():
    scanner = StopScanner(StopStrings([]))
    assert not scanner.stops and scanner.feed("anything") is None and scanner.held == 0


def test_a_choice_feeds_each_character_to_its_scanner_once(tiny_model):
    tok = tiny_model.tokenizer
    fed: list[str] = []

    class Spy(StopScanner):
        def feed(self, chars):
            fed.append(chars)
            return super().feed(chars)

    ids = tok.encode("héllo wörld — 日本 ok, once more and again")
    choice = ChoiceText(tok, trim=0, stop_ids=frozenset(tok.stop_ids), scanner=Spy(StopStrings(["zz", "wq"])),
                        max_tokens=100)
    text = "".join(choice.update(ids[:k]) for k in range(1, len(ids) + 1)) + choice.update(ids, final=True)
    assert "".join(fed) == text == tok.decode(ids)          # every character read once, in order
