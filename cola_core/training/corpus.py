"""Build and read plain-text training corpora; the default corpus is WordNet 3.0's glosses.

WordNet ships with Debian (``wordnet-base``) under a permissive licence, so it gives every
install a small, clean English corpus (~180k definitions and example sentences) without a
download. The pocket corpus adds freely licensed prose from Debian packages (:mod:`.prose`).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import zlib
from collections.abc import Iterable
from pathlib import Path

from .prose import DEVIL_LICENSE, FORTUNES_LICENSE, drop_overlapping, extract_devils_dictionary, extract_fortunes

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_LICENSE = Path("/usr/share/doc/wordnet-base/copyright")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
SPLITS = ("train", "val", "test")

_INSTALL_HINT = "install WordNet 3.0 with `apt-get install wordnet-base`"
# A quoted example, optionally followed by an attribution such as `"..." -Shakespeare`.
_EXAMPLE = re.compile(r'^"(?P<text>.*)"\s*(?:-[^"]*)?$')
_SPACES = re.compile(r"\s+")


def extract_wordnet(wordnet_dir: str | Path = WORDNET_DIR) -> list[str]:
    """Return WordNet's definitions and example sentences, cleaned and deduplicated in order."""
    wordnet_dir = Path(wordnet_dir)
    if not wordnet_dir.is_dir():
        raise FileNotFoundError(f"WordNet directory not found: {wordnet_dir}; {_INSTALL_HINT}")
    seen: dict[str, None] = {}
    for name in WORDNET_FILES:
        path = wordnet_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"WordNet data file not found: {path}; {_INSTALL_HINT}")
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # licence header
                    continue
                for piece in _split_gloss(line.split("|", 1)[1]):
                    text = _SPACES.sub(" ", _unquote(piece)).strip()
                    if len(text) >= 2:
                        seen.setdefault(text)
    return list(seen)


def _split_gloss(gloss: str) -> list[str]:
    """Split a gloss on `;`, keeping semicolons inside quoted examples when quotes are balanced."""
    if gloss.count('"') % 2:
        return gloss.split(";")
    pieces, start, quoted = [], 0, False
    for i, char in enumerate(gloss):
        if char == '"':
            quoted = not quoted
        elif char == ";" and not quoted:
            pieces.append(gloss[start:i])
            start = i + 1
    pieces.append(gloss[start:])
    return pieces


def _unquote(piece: str) -> str:
    """Strip the quotes (and any attribution) from an example; drop a lone stray quote."""
    piece = piece.strip()
    match = _EXAMPLE.match(piece)
    if match:
        return match["text"]
    return piece.strip('"') if piece.count('"') == 1 else piece


def split_corpus(
    texts: Iterable[str], val_every: int = 97, test_every: int = 89
) -> dict[str, list[str]]:
    """Split texts by stable CRC32 so a text always lands in the same split (~1% val, ~1% test)."""
    if val_every < 2 or test_every < 2:
        raise ValueError(f"val_every and test_every must be >= 2, got {val_every} and {test_every}")
    splits: dict[str, list[str]] = {name: [] for name in SPLITS}
    for text in texts:
        crc = zlib.crc32(text.encode("utf-8"))
        if crc % test_every == 0:
            splits["test"].append(text)
        elif crc % val_every == 1:
            splits["val"].append(text)
        else:
            splits["train"].append(text)
    return splits


def write_jsonl(path: str | Path, texts: Iterable[str]) -> None:
    """Write texts as `{"text": ...}` lines atomically, so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # same dir, so os.replace is atomic
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise TypeError(f"{path}: text #{i} is {type(text).__name__}, expected str")
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_corpus(path: str | Path) -> list[str]:
    """Read documents from a `.txt` (one per line) or `.jsonl` (`text` field) corpus file."""
    path = Path(path)
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"{path}: unsupported corpus extension {path.suffix!r}; use .txt/.jsonl")
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    lines = list(io.StringIO(_utf8_text(path), newline=None))   # universal newlines, as open() reads
    if path.suffix == ".txt":
        texts = [line.strip() for line in lines if line.strip()]
    else:
        texts = [_jsonl_text(path, n, line) for n, line in enumerate(lines, 1) if line.strip()]
    if not texts:
        raise ValueError(f"{path}: corpus is empty")
    return texts


def _utf8_text(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error naming the file, line and byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                         "re-encode the corpus as UTF-8") from None


def _jsonl_text(path: Path, number: int, line: str) -> str:
    """Return the `text` field of one JSONL record, naming the file and line on any problem."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}, line {number}: malformed JSON ({exc.msg})") from None
    text = record.get("text") if isinstance(record, dict) else None
    if not isinstance(text, str):
        raise ValueError(f'{path}, line {number}: expected an object with a string "text" field')
    return text


def build_wordnet_corpus(
    out_dir: str | Path,
    wordnet_dir: str | Path = WORDNET_DIR,
    license_path: str | Path = WORDNET_LICENSE,
) -> dict[str, int]:
    """Write WordNet train/val/test JSONL and its licence into out_dir; return split sizes."""
    license_path = Path(license_path)
    if not license_path.is_file():
        raise FileNotFoundError(f"WordNet licence not found: {license_path}; {_INSTALL_HINT}")
    splits = split_corpus(extract_wordnet(wordnet_dir))
    out_dir = Path(out_dir)
    for name, texts in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", texts)
    shutil.copyfile(license_path, out_dir / "WORDNET_LICENSE.txt")
    return {name: len(texts) for name, texts in splits.items()}


def build_pocket_corpus(
    out_dir: str | Path,
    wordnet_dir: str | Path = WORDNET_DIR,
    fortunes_dir: str | Path | None = None,
    devil_path: str | Path | None = None,
) -> dict[str, int]:
    """WordNet + fortunes (train/val), WordNet's test split as ``test``, the fortunes' as ``fortunes_test``,
    and The Devil's Dictionary minus anything overlapping the training text as ``ood``; licences beside
    them. Returns file sizes."""
    wordnet = split_corpus(extract_wordnet(wordnet_dir))
    fortunes = split_corpus(extract_fortunes(*(() if fortunes_dir is None else (fortunes_dir,))))
    train = wordnet["train"] + fortunes["train"]
    devil = extract_devils_dictionary(*(() if devil_path is None else (devil_path,)))
    files = {"train": train, "val": wordnet["val"] + fortunes["val"], "test": wordnet["test"],
             "fortunes_test": fortunes["test"], "ood": drop_overlapping(devil, train)}
    out_dir = Path(out_dir)
    for name, texts in files.items():
        write_jsonl(out_dir / f"{name}.jsonl", texts)
    for source, target in ((WORDNET_LICENSE, "WORDNET_LICENSE.txt"), (FORTUNES_LICENSE, "FORTUNES_LICENSE.txt"),
                           (DEVIL_LICENSE, "DEVILS_DICTIONARY_LICENSE.txt")):
        shutil.copyfile(source, out_dir / target)
    return {name: len(texts) for name, texts in files.items()}
