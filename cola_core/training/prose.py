"""Freely licensed English prose from Debian packages, cut into sentence-sized training texts.

* ``fortunes`` (BSD fortune-mod data: quotations, jokes, aphorisms; Debian packages ``fortunes`` and
  ``fortunes-min``): broadens the pocket corpus beyond dictionary glosses.
* ``dict-devil`` (Ambrose Bierce, *The Devil's Dictionary*, 1911, public domain): never trained on;
  the out-of-domain test set.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

FORTUNES_DIR = Path("/usr/share/games/fortunes")
FORTUNES_LICENSE = Path("/usr/share/doc/fortunes/copyright")
# Drawings and non-English files; every other fortune file is prose.
FORTUNES_SKIP = frozenset({"art", "ascii-art", "translate-me"})
DEVIL_DICT = Path("/usr/share/dictd/devil.dict.dz")
DEVIL_LICENSE = Path("/usr/share/doc/dict-devil/copyright")
MAX_WORDS = 24            # a piece is at most this many words (the pocket reads 32 tokens)
MIN_WORDS = 4
SHINGLE = 6               # pieces sharing a run of this many words count as overlapping

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_SPACES = re.compile(r"\s+")


def _require(path: Path, package: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; install it with `apt-get install {package}`")


def sentence_pieces(text: str, max_words: int = MAX_WORDS, min_words: int = MIN_WORDS) -> list[str]:
    """Whitespace-normalised sentences of ``text``, consecutive ones joined while within ``max_words``."""
    pieces: list[str] = []
    current: list[str] = []
    for sentence in _SENTENCE_END.split(_SPACES.sub(" ", text).strip()):
        words = sentence.split()
        if current and len(current) + len(words) > max_words:
            pieces.append(" ".join(current))
            current = []
        current.extend(words)
        while len(current) > max_words:
            pieces.append(" ".join(current[:max_words]))
            current = current[max_words:]
    if current:
        pieces.append(" ".join(current))
    return [p for p in pieces if len(p.split()) >= min_words]


def extract_fortunes(fortunes_dir: str | Path = FORTUNES_DIR) -> list[str]:
    """Sentence pieces of every prose fortune file (sorted by name), deduplicated in order."""
    fortunes_dir = Path(fortunes_dir)
    _require(fortunes_dir, "fortunes")
    files = sorted(p for p in fortunes_dir.iterdir()
                   if p.is_file() and not p.is_symlink() and not p.suffix and p.name not in FORTUNES_SKIP)
    if not files:
        raise FileNotFoundError(f"{fortunes_dir}: no fortune files; install them with `apt-get install fortunes`")
    seen: dict[str, None] = {}
    for path in files:
        for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            for piece in sentence_pieces(cookie):
                seen.setdefault(piece)
    return list(seen)


def extract_devils_dictionary(path: str | Path = DEVIL_DICT) -> list[str]:
    """Sentence pieces of The Devil's Dictionary's entries (the dictd header and preface left out)."""
    path = Path(path)
    _require(path, "dict-devil")
    text = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
    body = text.split("\n\n\n", 3)[-1] if "PREFACE" not in text else text[text.index("PREFACE"):]
    seen: dict[str, None] = {}
    for paragraph in re.split(r"\n\s*\n", body):
        if paragraph.lstrip().startswith("00-database"):
            continue
        for piece in sentence_pieces(paragraph):
            seen.setdefault(piece)
    return list(seen)


def _shingles(text: str, n: int) -> set[int]:
    tokens = re.findall(r"[a-z0-9']+", text.lower())
    return {hash(" ".join(tokens[i:i + n])) for i in range(max(len(tokens) - n + 1, 1))}


def drop_overlapping(texts: list[str], reference: list[str], n: int = SHINGLE) -> list[str]:
    """``texts`` without those sharing a run of ``n`` words with any reference text (some fortunes quote
    The Devil's Dictionary, so its held-out pieces must not overlap the training text)."""
    seen = set().union(*(_shingles(text, n) for text in reference))
    return [text for text in texts if not _shingles(text, n) & seen]
