"""Stop strings found in linear time: one Aho–Corasick automaton per request, one scanner per choice.

A scanner reads each character of a choice's text once (amortised O(1) per character, whatever the stop
strings' lengths), reports the first stop string *completed*, and knows the longest tail of the text that
could still grow into one (what a stream must hold back).
"""
from __future__ import annotations

from collections import deque
from typing import Sequence


class StopStrings:
    """The automaton of a request's stop strings: built once, read by every choice's :class:`StopScanner`."""

    def __init__(self, stops: Sequence[str]):
        self.goto: list[dict[str, int]] = [{}]   # trie edges
        self.depth: list[int] = [0]               # length of the prefix a state stands for
        self.fail: list[int] = [0]                # state of the longest proper suffix that is a trie prefix
        self.match: list[int] = [0]               # length of the longest stop ending here (0: none)
        for stop in stops:
            self._insert(stop)
        self._link()

    def __bool__(self) -> bool:
        return len(self.goto) > 1

    def _insert(self, stop: str) -> None:
        state = 0
        for char in stop:
            nxt = self.goto[state].get(char)
            if nxt is None:
                nxt = len(self.goto)
                self.goto[state][char] = nxt
                self.goto.append({})
                self.depth.append(self.depth[state] + 1)
                self.fail.append(0)
                self.match.append(0)
            state = nxt
        self.match[state] = len(stop)

    def _link(self) -> None:
        """Failure links in breadth-first order; a state's match falls back to its suffix's."""
        queue = deque(self.goto[0].values())
        while queue:
            state = queue.popleft()
            for char, nxt in self.goto[state].items():
                fallback = self.fail[state]
                while fallback and char not in self.goto[fallback]:
                    fallback = self.fail[fallback]
                target = self.goto[fallback].get(char, 0)
                self.fail[nxt] = target if target != nxt else 0
                self.match[nxt] = self.match[nxt] or self.match[self.fail[nxt]]
                queue.append(nxt)

    def step(self, state: int, char: str) -> int:
        while state and char not in self.goto[state]:
            state = self.fail[state]
        return self.goto[state].get(char, 0)


class StopScanner:
    """One choice's place in the automaton; :meth:`feed` consumes only characters it has not seen."""

    def __init__(self, stops: StopStrings):
        self.stops = stops
        self.state = 0
        self.consumed = 0          # characters fed so far

    def feed(self, chars: str) -> int | None:
        """Consume ``chars``; the start (in all text fed) of the first stop string completed, else None.

        When several stop strings end at the same character, the longest one (the earliest start) wins.
        """
        if not self.stops:
            self.consumed += len(chars)
            return None
        stops, state = self.stops, self.state
        for offset, char in enumerate(chars):
            state = stops.step(state, char)
            if stops.match[state]:
                self.state, self.consumed = state, self.consumed + offset + 1
                return self.consumed - stops.match[state]
        self.state, self.consumed = state, self.consumed + len(chars)
        return None

    @property
    def held(self) -> int:
        """Length of the longest tail of the text fed that is a proper prefix of some stop string."""
        return self.stops.depth[self.state]
