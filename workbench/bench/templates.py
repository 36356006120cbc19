"""The official prompt templates of the 8 benchmark tasks: a fixed few-shot block, then the item.

Every task formats an item the same way it formats its worked examples; a worked example is the
formatted item followed by `` <answer>\\n\\n``. The texts reproduce the release's prompts byte for
byte (``tests/test_bench_tasks.py`` checks all 8 tasks against the shared release files).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Example:
    """One worked example of a few-shot block."""

    question: str
    answer: str
    choices: tuple[str, ...] = ()
    context: str = ""


def choice_lines(choices: list[str] | tuple[str, ...]) -> str:
    """``(A) first`` / ``(B) second`` / ... one per line."""
    return "\n".join(f"({chr(65 + i)}) {choice}" for i, choice in enumerate(choices))


def _question(q: str, context: str, choices) -> str:
    return f"Question: {q}\n{choice_lines(choices)}\nAnswer:"


def _context(q: str, context: str, choices) -> str:
    return f"Context: {q}\n{choice_lines(choices)}\nAnswer:"


def _article(q: str, context: str, choices) -> str:
    return f"Article: {q}\nOptions:\n{choice_lines(choices)}\nAnswer:"


def _story(q: str, context: str, choices) -> str:
    return f"Story: {q}\n{choice_lines(choices)}\nEnd:"


def _reading(q: str, context: str, choices) -> str:
    return f"Context: {context}\nQuestion: {q}\nAnswer:"


def _plain(q: str, context: str, choices) -> str:
    return q


@dataclass(frozen=True)
class Template:
    """How a task turns an item into a prompt: header, worked examples, item format."""

    item: Callable[[str, str, list[str] | tuple[str, ...]], str]
    examples: tuple[Example, ...] = ()
    header: str = ""

    def few_shot(self) -> str:
        """The fixed text before every item."""
        shots = "".join(f"{self.item(e.question, e.context, e.choices)} {e.answer}\n\n" for e in self.examples)
        return self.header + shots

    def prompt(self, question: str, context: str = "", choices: list[str] | tuple[str, ...] = ()) -> str:
        """The full prompt the model sees for one item."""
        return self.few_shot() + self.item(question, context, choices)


TEMPLATES: dict[str, Template] = {
    "lambada": Template(_plain),
    "mmlu": Template(_question, (
        Example("Which gas do plants absorb from the air during photosynthesis?", "Carbon dioxide",
                ("Oxygen", "Carbon dioxide", "Nitrogen", "Hydrogen")),
        Example("A triangle has angles 50 degrees and 60 degrees. What is the third angle?", "70 degrees",
                ("60 degrees", "70 degrees", "80 degrees", "90 degrees")),
    )),
    "obqa": Template(_question, (
        Example("Which tool is best for tightening a screw?", "screwdriver",
                ("spoon", "hammer", "screwdriver", "paintbrush")),
        Example("What do plants absorb from the air during photosynthesis?", "carbon dioxide",
                ("carbon dioxide", "oxygen", "helium", "salt")),
    )),
    "hellaswag": Template(_context, (
        Example("The girl puts the bread into the toaster and pushes the lever down. The bread",
                "starts to toast and turn brown.",
                ("becomes a slice of pizza.", "starts to toast and turn brown.", "disappears immediately.",
                 "turns into a glass of water.")),
        Example("The goalkeeper sees the ball coming towards the net. He dives and", "catches the ball with his hands.",
                ("catches the ball with his hands.", "starts dancing in the field.", "opens a laptop to check email.",
                 "runs away from the stadium.")),
    )),
    "race": Template(_article, (
        Example("Mary went to the store to buy some fruits. She bought five apples and two oranges. She paid 5 "
                "dollars in total. What did Mary buy?", "Apples and oranges",
                ("Bananas", "Apples and oranges", "Grapes", "Watermelon")),
    ), header="Read the following article and answer the question.\n\n"),
    "siqa": Template(_question, (
        Example("Jordan wanted to tell a joke to his friends. What does Jordan need to do before this?",
                "think of a funny story", ("ignore his friends", "think of a funny story", "leave the room")),
        Example("Kai helped his neighbor carry heavy groceries inside. How would the neighbor feel?", "grateful",
                ("angry", "grateful", "scared")),
    )),
    "squad": Template(_reading, (
        Example("In what country is Normandy located?", "France", context=(
            "The Normans (Norman: Nourmands; French: Normands; Latin: Normanni) were the people who in the 10th "
            "and 11th centuries gave their name to Normandy, a region in France. They were descended from Norse "
            "raiders and pirates from Denmark, Iceland and Norway.")),
    )),
    "story_cloze": Template(_story, (
        Example("I wanted to make an omelet. I cracked two eggs into a bowl and whisked them. Then I poured them "
                "into a hot pan.", "I ate a delicious omelet for breakfast.",
                ("I ate a delicious omelet for breakfast.", "I decided to order a pizza instead.")),
        Example("The runner tied his shoes tight. He sprinted as fast as he could during the race. He crossed the "
                "finish line first.", "He won the gold medal.",
                ("He was sad that he lost the race.", "He won the gold medal.")),
    )),
}
