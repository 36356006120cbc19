"""The official scorer's rules (``scripts/acc_calc.py`` of the release), exactly.

``score_record(task, record)`` returns the record as the official scorer writes it to
``<task>_correct.jsonl`` / ``<task>_wrong.jsonl``: ``generate`` split at its first newline after a
word character (the rest goes to ``others``), the extracted answers, and ``similarity_score``.
The regular expressions and string operations are the official ones, rule for rule (the
benchmark protocol spec describes them in prose).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

THRESHOLD = 1.0          # the pass threshold of every task
CHOICE_TASKS = ("mmlu", "obqa", "race", "siqa")      # letter extraction, then similarity
WORD_TASKS = ("lambada",)                           # first word of the answer
# every other task (hellaswag, squad, story_cloze): similarity of the whole answer

_COLON = "(?:is|=|:|\uff1a)"   # "is", "=", ":" or a full-width colon
_ANSWER_LINE = re.compile(rf"(?i)\b(?:final\s+answer|answer)\b\s*{_COLON}?\s*(.+)$")
_ONE_LETTER = re.compile(r"[\(\[]?\s*([A-Za-z])\s*[\)\]]?\.?")
_KEYWORD_LETTER = re.compile(
    rf"(?i)\b(?:final\s+answer|answer|option|choice)\b\s*{_COLON}?\s*[\(\[]?\s*([A-Za-z])\s*[\)\]]?(?=\s|$|[.,;:!?])")
_BRACKET_LETTER = re.compile(r"[\(\[]\s*([A-Za-z])\s*[\)\]]")
_ANSWER_PREFIX = re.compile(rf"(?i)^(the\s+)?(correct\s+)?(final\s+)?(answer|option|choice)\b\s*({_COLON})?\s*")
SHORT_TEXT = 40          # bracketed letters count only in texts this short
TEXT_MATCH = 0.9         # a choice this similar to the answer is taken as the answer


def split_generate(record: dict[str, Any]) -> dict[str, Any]:
    """Cut ``generate`` at the first newline preceded by a word character; the rest becomes ``others``."""
    text = record.get("generate")
    if not isinstance(text, str):
        return record
    word = re.search(r"\w", text)
    cut = text.find("\n", word.start()) if word else -1
    if cut == -1:
        return record
    return {**record, "generate": text[:cut], "others": text[cut + 1:]}


def normalize(text: Any) -> str:
    """Lower-case, strip, drop everything but word characters and whitespace, collapse whitespace."""
    if text is None:
        return ""
    text = re.sub(r"[^\w\s]", "", str(text).lower().strip())
    return " ".join(text.split())


def similarity(a: Any, b: Any) -> float:
    """difflib ratio of the normalised texts (1.0 when both are empty)."""
    norm_a, norm_b = normalize(a), normalize(b)
    if not norm_a and not norm_b:
        return 1.0
    return difflib.SequenceMatcher(None, norm_a, norm_b).ratio()


def first_word(text: Any) -> str:
    words = normalize(text).split()
    return words[0] if words else ""


def answer_segment(text: Any) -> str:
    """The rest of the last line that says ``answer ...`` (or ``final answer ...``); else the whole text."""
    if text is None:
        return ""
    raw = str(text).strip()
    lines = [line.strip() for line in raw.splitlines() if line.strip()]
    for line in reversed(lines):
        found = _ANSWER_LINE.search(line)
        if found and found.group(1).strip():
            return found.group(1).strip()
    return raw


def _letter_in_range(letter: str, n: int) -> str:
    letter = letter.upper()
    return letter if 0 <= ord(letter) - 65 < n else ""


def extract_letter(text: Any, n: int = 26) -> str:
    """A choice letter stated in the text (alone, after answer/option/choice, or bracketed in a short text)."""
    if text is None:
        return ""
    raw = str(text).strip()
    if not raw:
        return ""
    alone = _ONE_LETTER.fullmatch(raw)
    if alone and _letter_in_range(alone.group(1), n):
        return _letter_in_range(alone.group(1), n)
    keyed = _KEYWORD_LETTER.findall(raw)
    if keyed and _letter_in_range(keyed[-1], n):
        return _letter_in_range(keyed[-1], n)
    if len(raw) <= SHORT_TEXT:
        bracketed = _BRACKET_LETTER.findall(raw)
        if bracketed:
            return _letter_in_range(bracketed[-1], n)
    return ""


def match_by_text(text: Any, choices: list[str]) -> str:
    """The letter of the choice the text states: equal, equal after 'the answer is', contained, or >= 0.9 similar."""
    if text is None or not choices:
        return ""
    norm_text = normalize(text)
    if not norm_text:
        return ""
    norm_choices = [normalize(c) for c in choices]
    if norm_text in norm_choices:
        return chr(65 + norm_choices.index(norm_text))
    cleaned = _ANSWER_PREFIX.sub("", str(text)).strip()
    norm_cleaned = normalize(cleaned)
    if not norm_cleaned:
        return ""
    if norm_cleaned in norm_choices:
        return chr(65 + norm_choices.index(norm_cleaned))
    contained = [i for i, c in enumerate(norm_choices) if c and c in norm_cleaned]
    if len(contained) == 1:
        return chr(65 + contained[0])
    best, best_score = -1, 0.0
    for i, choice in enumerate(choices):
        score = similarity(cleaned, choice)
        if score > best_score:
            best, best_score = i, score
    return chr(65 + best) if best >= 0 and best_score >= TEXT_MATCH else ""


def extract_choice(text: Any, choices: list[str]) -> str:
    """The model's chosen letter: from the answer segment, then the whole text; letters before text matches."""
    n = min(len(choices), 26)
    if n == 0:
        return ""
    for candidate in (answer_segment(text), text):
        letter = extract_letter(candidate, n) or match_by_text(candidate, choices)
        if letter:
            return letter
    return ""


def extract_gold(ground_truth: Any, choices: list[str]) -> str:
    """The gold letter: a letter in the ground truth, else the choice it matches by text."""
    n = min(len(choices), 26)
    if n == 0:
        return ""
    return extract_letter(ground_truth, n) or match_by_text(ground_truth, choices)


def ground_truth(record: dict[str, Any]) -> Any:
    return record.get("ground_truth", record.get("answer", ""))


@dataclass(frozen=True)
class Scored:
    """One scored record: the detail line the official scorer writes, its score and the verdict."""

    record: dict[str, Any]
    score: float
    correct: bool


def score_record(task: str, record: dict[str, Any]) -> Scored:
    """Split ``generate``, extract the answers, score; the record gains ``similarity_score`` (4 places)."""
    record = split_generate(record)
    generated, gold = record.get("generate", ""), ground_truth(record)
    extracted: dict[str, Any] = {}
    if task in WORD_TASKS:
        extracted = {"extracted_gen_word": first_word(generated), "extracted_gt_word": first_word(gold)}
        score = 1.0 if extracted["extracted_gen_word"] == extracted["extracted_gt_word"] else 0.0
    elif task in CHOICE_TASKS:
        choices = record.get("choices", [])
        predicted, expected = extract_choice(generated, choices), extract_gold(gold, choices)
        extracted = {"extracted_gen_choice": predicted, "extracted_gt_choice": expected}
        score = 1.0 if predicted and predicted == expected else similarity(generated, gold)
        score = 1.0 if score >= THRESHOLD else score
    else:
        score = similarity(generated, gold)
    return Scored({**record, **extracted, "similarity_score": round(score, 4)}, score, score >= THRESHOLD)
