"""Evaluate a chat checkpoint on held-out WordNet words: does it answer, and how close is the answer to the gloss?

Each test conversation's turns before its last answer are the prompt (rendered by the checkpoint's
own chat template), the last answer the reference. Reported: the share of non-empty answers (at least
one word), and the content-word F1 of answers against the reference, next to a baseline that answers
each held-out word with the definition of the most similarly spelled training word.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..chat_template import ChatPrompt, ChatTemplate
from ..checkpoint import ColaModel
from ..generate import BlockwiseSampler, GenerationConfig
from .conversations import read_conversations
from .data import corpus_split_path
from .intervals import check_settings, percentile_interval, ratio_of_sums, resample_indices, wilson_interval
from .text_metrics import words

STOPWORDS = frozenset("a an the of or and to in on for with by as that which is be from at its it".split())
_QUESTION = re.compile(r"^What does '(?P<word>.+)' mean\?$")


@dataclass
class ChatEvalConfig:
    """How many held-out questions, and the sampler (official defaults)."""

    samples: int = 200
    batch_size: int = 64
    seed: int = 0
    resamples: int = 1000              # bootstrap resamples of the questions for the intervals
    level: float = 0.95
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        check_settings(self.resamples, self.level)


def content_f1(answer: str, reference: str) -> float:
    """F1 of the unique content words (lowercase, stopwords left out) of an answer against a reference."""
    got, want = set(words(answer)) - STOPWORDS, set(words(reference)) - STOPWORDS
    shared = len(got & want)
    if not shared:
        return 0.0
    precision, recall = shared / len(got), shared / len(want)
    return 2 * precision * recall / (precision + recall)


def _trigrams(word: str) -> set[str]:
    padded = f"  {word.lower()} "
    return {padded[i:i + 3] for i in range(len(padded) - 2)}


class NearestGloss:
    """The baseline: the definition of the training word sharing the most character trigrams (Jaccard)."""

    def __init__(self, definitions: dict[str, str]):
        self.words = list(definitions)
        self.definitions = definitions
        self.grams = [_trigrams(w) for w in self.words]
        self.index: dict[str, list[int]] = {}
        for i, grams in enumerate(self.grams):
            for gram in grams:
                self.index.setdefault(gram, []).append(i)

    def answer(self, word: str) -> str:
        grams = _trigrams(word)
        shared = Counter(i for gram in grams for i in self.index.get(gram, ()))
        if not shared:
            return ""
        best = max(shared, key=lambda i: (shared[i] / (len(grams) + len(self.grams[i]) - shared[i]), -i))
        return self.definitions[self.words[best]]


def training_definitions(dialogues: str | Path) -> dict[str, str]:
    """word -> definition from the single-turn "What does 'w' mean?" conversations of the train split."""
    out: dict[str, str] = {}
    for conversation in read_conversations(corpus_split_path(dialogues, "train")):
        turns = [m for m in conversation if m[0] != "system"]
        match = _QUESTION.match(turns[0][1]) if len(turns) == 2 else None
        if match:
            out.setdefault(match["word"], turns[1][1])
    return out


def evaluate_chat(model: ColaModel, dialogues: str | Path, config: ChatEvalConfig | None = None) -> dict:
    """Non-empty rate and gloss overlap of answers to held-out questions, with the nearest-gloss baseline."""
    config = config or ChatEvalConfig()
    template = ChatTemplate.for_model(model)
    tests = read_conversations(corpus_split_path(dialogues, "test"))[:config.samples]
    stops = template.stop_ids(model.tokenizer)
    prompts = [ChatPrompt(template.prompt(model.tokenizer, conversation[:-1]), stops, template.stop_strings)
               for conversation in tests]
    gen_cfg = GenerationConfig(**{**asdict(config.generation),
                                  "seed": config.generation.seed if config.generation.seed is not None else config.seed})
    answers: list[str] = []
    for start in range(0, len(prompts), config.batch_size):
        chunk = prompts[start:start + config.batch_size]
        sampler = BlockwiseSampler(model, [prompt.ids for prompt in chunk], gen_cfg,
                                   sample_ids=range(start, start + len(chunk)), eos_ids=sorted(stops))
        for _ in sampler.events():
            pass
        answers.extend(prompt.answer(model.tokenizer, g.token_ids, len(g.token_ids)).text.strip()
                       for prompt, g in zip(chunk, sampler.result()))
    baseline = NearestGloss(training_definitions(dialogues))
    rows = []
    for conversation, answer in zip(tests, answers):
        match = _QUESTION.match(conversation[-2][1])
        word = match["word"] if match else ""
        reference = conversation[-1][1]
        nearest = baseline.answer(word)
        rows.append({"question": conversation[-2][1], "answer": answer, "reference": reference,
                     "baseline": nearest, "f1": content_f1(answer, reference),
                     "baseline_f1": content_f1(nearest, reference)})
    count = max(len(rows), 1)
    results = {"samples": len(rows), "template": template.config_fields(),
               "non_empty": sum(bool(words(r["answer"])) for r in rows) / count,
               "overlap_f1": sum(r["f1"] for r in rows) / count,
               "baseline_overlap_f1": sum(r["baseline_f1"] for r in rows) / count}
    if rows:
        results["interval"] = question_intervals(rows, config.resamples, config.level, config.seed)
    return {**results, "generation": asdict(gen_cfg), "examples": rows, "checkpoint": model.source,
            "fingerprint": model.fingerprint}


def question_intervals(rows: list[dict], resamples: int, level: float, seed: int) -> dict:
    """Intervals over the questions: Wilson for the share of non-empty answers; percentile bootstrap for the
    F1 means, each draw keeping a question's answer and baseline together (the difference is a paired one)."""
    draws, ones = resample_indices(len(rows), resamples, seed), [1.0] * len(rows)
    columns = {"overlap_f1": [r["f1"] for r in rows], "baseline_overlap_f1": [r["baseline_f1"] for r in rows],
               "f1_minus_baseline": [r["f1"] - r["baseline_f1"] for r in rows]}
    return {"method": "Wilson score (non-empty share); percentile bootstrap over the questions, answers and "
                      "baseline paired (F1)", "level": level, "resamples": resamples, "seed": seed,
            "non_empty": list(wilson_interval(sum(bool(words(r["answer"])) for r in rows), len(rows), level)),
            **{name: percentile_interval(ratio_of_sums(values, ones, draws), level)
               for name, values in columns.items()}}


def format_chat_table(results: dict) -> str:
    """The headline numbers as a Markdown table."""
    return "\n".join([
        "| metric | value |", "|---|---|",
        f"| held-out questions | {results['samples']} |",
        f"| non-empty answers | {results['non_empty']:.1%} |",
        f"| content-word F1 vs the true gloss | {results['overlap_f1']:.3f} |",
        f"| same, nearest-training-gloss baseline | {results['baseline_overlap_f1']:.3f} |",
        *([] if "interval" not in results else ["", question_interval_line(results)]),
    ])


def question_interval_line(results: dict) -> str:
    """The line under the chat table: each interval of ``results["interval"]``."""
    ci = results["interval"]
    return (f"{ci['level']:.0%} intervals over the {results['samples']} questions (Wilson; bootstrap with "
            f"{ci['resamples']} resamples for F1): non-empty {ci['non_empty'][0]:.1%} to {ci['non_empty'][1]:.1%}; "
            f"F1 {ci['overlap_f1'][0]:.3f} to {ci['overlap_f1'][1]:.3f}; "
            f"baseline {ci['baseline_overlap_f1'][0]:.3f} to {ci['baseline_overlap_f1'][1]:.3f}; "
            f"F1 minus baseline {ci['f1_minus_baseline'][0]:.3f} to {ci['f1_minus_baseline'][1]:.3f}")
