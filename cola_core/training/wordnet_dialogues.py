"""Chat data derived from WordNet 3.0: questions about a word, answered from its most frequent sense.

For each lemma (its first sense in index.noun, .verb, .adj, .adv, in that order of preference):
"What does 'w' mean?" -> the definition; "Use 'w' in a sentence." -> an example; "Give a synonym of
'w'." -> another lemma of the synset; "What kind of thing is 'w'?" -> "'w' is a kind of <hypernym>."
Some conversations chain two questions (multi-turn) or open with a system message. Words are split
by a stable hash: the ``test`` words never appear in ``train`` or ``val``, and ``test.jsonl`` holds one
"What does 'w' mean?" question per plain test word (letters only), in a stable hash order, the chat
evaluation's prompts.
"""
from __future__ import annotations

import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

from ..chat_template import Message
from .conversations import write_conversations
from .corpus import _SPACES, WORDNET_DIR, WORDNET_LICENSE, _split_gloss, _unquote

POS_FILES = (("noun", "n"), ("verb", "v"), ("adj", "a"), ("adv", "r"))
SYSTEM_PROMPT = "You are a dictionary. Answer briefly."
HOLDOUT_EVERY = 20            # 1 in 20 words is a test word, 1 in 20 a validation word


@dataclass
class Sense:
    """What WordNet says about a word's first sense."""

    word: str
    pos: str
    definition: str
    examples: list[str]
    synonyms: list[str]
    hypernym: str | None


def question(word: str) -> str:
    """The canonical question the chat evaluation asks."""
    return f"What does '{word}' mean?"


def _lemma(raw: str) -> str:
    return raw.split("(")[0].replace("_", " ")


def _parse_synset(line: str) -> tuple[list[str], list[str], str, list[str]]:
    """(lemmas, hypernym offsets, definition, examples) of one data-file line."""
    head, gloss = line.split("|", 1)
    fields = head.split()
    count = int(fields[3], 16)
    lemmas = [_lemma(w) for w in fields[4:4 + 2 * count:2]]
    pointer_at = 4 + 2 * count
    pointers = fields[pointer_at + 1:pointer_at + 1 + 4 * int(fields[pointer_at])]
    hypernyms = [pointers[i + 1] for i in range(0, len(pointers), 4) if pointers[i] in ("@", "@i")]
    definitions, examples = [], []
    for piece in _split_gloss(gloss):
        text = _SPACES.sub(" ", _unquote(piece)).strip()
        if not text:
            continue
        (examples if piece.strip().startswith('"') else definitions).append(text)
    return lemmas, hypernyms, "; ".join(definitions), examples


def read_senses(wordnet_dir: str | Path = WORDNET_DIR) -> list[Sense]:
    """Every lemma's first sense, in index order (nouns first); a lemma appears once."""
    wordnet_dir = Path(wordnet_dir)
    senses: dict[str, Sense] = {}
    for name, _ in POS_FILES:
        synsets: dict[str, tuple] = {}
        with (wordnet_dir / f"data.{name}").open(encoding="utf-8") as f:
            for line in f:
                if not line.startswith("  ") and "|" in line:
                    synsets[line[:8]] = _parse_synset(line)
        with (wordnet_dir / f"index.{name}").open(encoding="utf-8") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                fields = line.split()
                word = fields[0].replace("_", " ")
                if word in senses:
                    continue
                lemmas, hypernyms, definition, examples = synsets[fields[-int(fields[2])]]
                if not definition:
                    continue
                hypernym = synsets[hypernyms[0]][0][0] if hypernyms and hypernyms[0] in synsets else None
                synonyms = [lemma for lemma in lemmas if lemma.lower() != word.lower()]
                senses[word] = Sense(word, name, definition, examples, synonyms, hypernym)
    return list(senses.values())


def _hash(word: str) -> int:
    return zlib.crc32(word.encode("utf-8"))


def split_of(word: str) -> str:
    """train, val or test, by a stable hash of the word."""
    bucket = _hash(word) % HOLDOUT_EVERY
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def dialogues(sense: Sense) -> list[list[Message]]:
    """The conversations one sense yields (see the module docstring)."""
    w, h = sense.word, _hash(sense.word)
    mean: list[Message] = [("user", question(w)), ("assistant", sense.definition)]
    out = [[("system", SYSTEM_PROMPT), *mean] if h % 8 == 1 else mean]
    if sense.examples:
        example = [("user", f"Use '{w}' in a sentence."), ("assistant", sense.examples[0])]
        out.append([*mean, *example] if h % 4 == 2 else example)
    if sense.synonyms:
        out.append([("user", f"Give a synonym of '{w}'."), ("assistant", sense.synonyms[0])])
    if sense.pos == "noun" and sense.hypernym:
        out.append([("user", f"What kind of thing is '{w}'?"), ("assistant", f"'{w}' is a kind of {sense.hypernym}.")])
    return out


def build_wordnet_dialogues(out_dir: str | Path, wordnet_dir: str | Path = WORDNET_DIR,
                            license_path: str | Path = WORDNET_LICENSE) -> dict[str, int]:
    """train/val.jsonl (all dialogues of their words) and test.jsonl (one definition question per test word)."""
    files: dict[str, list[list[Message]]] = {"train": [], "val": [], "test": []}
    tests: list[Sense] = []
    for sense in read_senses(wordnet_dir):
        split = split_of(sense.word)
        if split != "test":
            files[split].extend(dialogues(sense))
        elif sense.word.isalpha():
            tests.append(sense)
    for sense in sorted(tests, key=lambda s: (_hash(s.word[::-1]), s.word)):
        files["test"].append([("user", question(sense.word)), ("assistant", sense.definition)])
    out_dir = Path(out_dir)
    for name, conversations in files.items():
        write_conversations(out_dir / f"{name}.jsonl", conversations)
    shutil.copyfile(license_path, out_dir / "WORDNET_LICENSE.txt")
    return {name: len(conversations) for name, conversations in files.items()}
