"""Chat with a checkpoint: a conversation, its template, and answers streamed while they are generated.

The one conversation -> ids path of the chat front-ends (``cola-workbench chat``, the app's Chat tab;
the API renders with the same ``cola_core.chat_template`` rule): :meth:`ChatTemplate.for_model` picks the
template (``sft_*`` fields win, else the official chat CLI's ``text``/``■`` when the tokenizer has ``■``,
else ``plain``), :meth:`ChatTemplate.fit` renders the system message and history within the context
(leaving out the oldest turns, with a notice), and :meth:`ChatPrompt.answer` cuts the generated ids
at the stop token and stop strings.

A :class:`ChatSession` holds the history, the system message, the seed and the sampler knobs;
``session.ask(message)`` returns a :class:`ChatTurn`, which runs the workbench sampler when iterated
and yields :class:`StepPreview` (every ``preview_every`` solver steps: the current block's x0
prediction decoded alone, each token with the decoder's confidence) and :class:`AnswerDelta` (the
new answer text of each decoded block); then ``turn.answer`` is the :class:`ChatAnswer`, already in
the history. ``turn.stop()`` (another thread) or ``turn.interrupt()`` (after a KeyboardInterrupt)
ends an answer early and keeps what was generated.
"""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, field
from typing import Iterator

from cola_core.chat_template import Answer, ChatPrompt, ChatTemplate, Message, check_messages
from cola_core.errors import ConversationError
from cola_core.generate import GenerationConfig
from cola_core.seeds import check_seed
from cola_core.text_codec import greedy_tokens, prompt_token_budget
from cola_core.tokenizer import display_tokens

from .errors import as_workbench_error
from .hooks import Callback, Hooks, hook_pairs
from .session import Workbench
from .trajectory import StepState

CHAT_DEFAULTS = {"max_new_tokens": 128}   # the official chat CLI's answer length; other knobs: GenerationConfig's
SAMPLE_ID = 0                              # every answer's noise: seed + 1000 * 0 + 10^7 * block


@dataclass(frozen=True)
class StepPreview:
    """The current block's x0 prediction at one solver step, decoded alone (no context): one entry per token."""

    block: int
    step: int
    steps: int
    t: float                  # time the step started from (the generated rows')
    tokens: list[str]         # each token's text, special tokens as markers (``⟨eos⟩``)
    token_ids: list[int]
    confidence: list[float]   # the decoder's probability of each token
    prompt: list[bool]        # the token is the prompt's own tail (pinned in the first block), not answer text

    @property
    def text(self) -> str:
        """The generated tokens' text."""
        return "".join(token for token, pinned in zip(self.tokens, self.prompt) if not pinned)


@dataclass(frozen=True)
class AnswerDelta:
    """New answer text after a decoded block (held back: a split character, a tail that may become a stop
    string)."""

    block: int
    text: str


@dataclass
class ChatAnswer:
    """One finished (or interrupted) answer with everything needed to re-run it."""

    message: str                   # the user's message it answers
    text: str
    finish_reason: str             # "stop", "length" or "interrupted"
    token_ids: list[int]           # the answer's ids, cut where the answer ends
    prompt_ids: list[int]          # what the model continued (the rendered conversation)
    blocks: int                    # blocks decoded
    seed: int
    sample_id: int
    knobs: dict
    dropped: int = 0               # oldest messages left out of the prompt to fit the context
    notice: str | None = None

    def to_dict(self) -> dict:
        """JSON-ready, the text under ``answer``."""
        out = asdict(self)
        return {"answer": out.pop("text"), **out}


class ChatTurn:
    """One answer being generated: iterate for events; ``answer`` once it has ended."""

    def __init__(self, chat: "ChatSession", message: str, prompt: ChatPrompt, preview_every: int = 0,
                 hooks: Hooks = None):
        if not isinstance(preview_every, int) or preview_every < 0:
            raise ConversationError(f"preview_every must be an integer >= 0, got {preview_every!r}")
        self.chat, self.message, self.prompt, self.preview_every = chat, message, prompt, preview_every
        self.seed = chat.seed
        self.knobs = {name: value for name, value in asdict(chat.config).items() if name != "seed"}   # every knob
        own = [Callback("pre_model", self._check_stop, "chat_stop"), Callback("decoded", self._on_block, "chat_answer")]
        self.session = chat.wb.sampler([prompt.ids], sample_ids=[SAMPLE_ID], seed=self.seed,
                                       hooks=[*(Callback(e, fn) for e, fn in hook_pairs(hooks)), *own], **self.knobs)
        self._trim = self.session.sampler.prepared.trim[0]
        self._ids: list[int] = []            # the sampler's ids so far, prompt tail included
        self._pending: list[AnswerDelta] = []
        self.stopped = threading.Event()     # set by stop(): the answer ends at the next model call
        self.sent = ""                       # answer text yielded so far
        self.blocks = 0
        self.answer: ChatAnswer | None = None

    def __iter__(self) -> Iterator[StepPreview | AnswerDelta]:
        while (state := self.session.step()) is not None:
            yield from self._flush()
            if self.preview_every and (state.step + 1) % self.preview_every == 0:
                yield self._preview(state)
        self._finish(interrupted=self.stopped.is_set())
        yield from self._flush()

    def stop(self) -> None:
        """Ask the answer to end at the sampler's next model call (thread-safe)."""
        self.stopped.set()

    def interrupt(self) -> ChatAnswer:
        """End the answer now (after a KeyboardInterrupt inside the loop), keeping what was decoded."""
        if self.answer is None:
            self._finish(interrupted=True)
        return self.answer

    # -- hooks and events -------------------------------------------------------------------------
    def _check_stop(self, state) -> None:
        if self.stopped.is_set():
            state.interrupt = True

    def _current(self) -> Answer:
        return self.prompt.answer(self.chat.wb.tokenizer, self._ids[self._trim:], self.knobs["max_new_tokens"])

    def _on_block(self, state) -> None:
        """A decoded block: its answer text becomes a delta; the run ends once the answer has."""
        self._ids.extend(state.token_ids[0].tolist())
        self.blocks += 1
        answer = self._current()
        self._advance(answer.text, self.prompt.settled(answer.text) if answer.finish_reason is None else None)
        if answer.finish_reason is not None:
            state.interrupt = True

    def _advance(self, text: str, end: int | None) -> None:
        """Queue ``text[len(sent):end]`` as a delta when the text still extends what was sent."""
        text = text[:end]
        if len(text) > len(self.sent) and text.startswith(self.sent):
            self._pending.append(AnswerDelta(self.blocks - 1, text[len(self.sent):]))
            self.sent = text

    def _flush(self) -> Iterator[AnswerDelta]:
        while self._pending:
            yield self._pending.pop(0)

    def _preview(self, state: StepState) -> StepPreview:
        ids, probs = greedy_tokens(self.chat.wb.model, state.x0_pred[:1])
        ids, patch = ids[0].tolist(), self.chat.wb.patch_size
        pinned = (state.t[0] == 0).repeat_interleave(patch).tolist()     # prompt rows held at t = 0
        free = ~(state.t[0] == 0)
        t = float(state.t[0][free].max()) if bool(free.any()) else 0.0
        return StepPreview(state.block, state.step, self.session.config.steps, t,
                           display_tokens(ids, self.chat.wb.tokenizer), ids, probs[0].tolist(), pinned)

    def _finish(self, interrupted: bool) -> None:
        answer = self._current()
        reason = answer.finish_reason or ("interrupted" if interrupted else "length")
        self._advance(answer.text, None)
        self.answer = ChatAnswer(self.message, answer.text.strip(), reason, answer.ids, list(self.prompt.ids),
                                 self.blocks, self.seed, SAMPLE_ID, self.knobs, self.prompt.dropped,
                                 self.prompt.notice)
        if self.answer.text or reason != "interrupted":
            self.chat.history += [("user", self.message), ("assistant", self.answer.text)]


@dataclass
class ChatSession:
    """A conversation with one checkpoint: history, system message, seed, knobs and the context budget.

    ``knobs`` are :class:`cola_core.generate.GenerationConfig` fields (steps, guidance, max_new_tokens,
    temperature, ...; ``max_new_tokens`` defaults to 128, the official chat CLI's), ``config`` all of them in
    effect; ``context_tokens`` caps the prompt below the model's own limit (None: the model's).
    """

    wb: Workbench
    system: str | None = None
    seed: int = 0
    context_tokens: int | None = None
    template: ChatTemplate | None = None
    history: list[Message] = field(default_factory=list)
    knobs: dict = field(default_factory=dict)
    config: GenerationConfig = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.template = self.template or ChatTemplate.for_model(self.wb.model)
        self.history = check_messages(self.history) if self.history else []
        if self.context_tokens is not None and (not isinstance(self.context_tokens, int) or self.context_tokens < 1):
            raise ConversationError(f"context_tokens must be an integer >= 1, got {self.context_tokens!r}")
        self.set_system(self.system)
        knobs, self.knobs = self.knobs, {}
        self.set(**{**CHAT_DEFAULTS, **knobs})

    def set(self, **knobs) -> None:
        """Change the seed or sampler knobs for the next answers (checked together; nothing changes on error)."""
        seed = knobs.pop("seed", self.seed)
        with as_workbench_error():
            check_seed(seed)
        for name in ("stop_at_eos", "sample_ids"):
            if name in knobs:
                raise ConversationError(f"{name} is fixed in a chat (answers end at the template's stop)")
        merged = {**self.knobs, **knobs}
        self.config = self.wb.config(seed=seed, **merged)       # raises WorkbenchError naming a bad knob
        self.seed, self.knobs = seed, merged

    def set_system(self, text: str | None) -> None:
        """The system message of the next answers (None or blank: none)."""
        if text is not None and not isinstance(text, str):
            raise ConversationError(f"the system message must be text, got {type(text).__name__}")
        self.system = text.strip() if text and text.strip() else None

    def reset(self) -> None:
        """Forget the history (the system message, seed and knobs stay)."""
        self.history = []

    @property
    def messages(self) -> list[Message]:
        """The conversation so far, the system message first."""
        return ([("system", self.system)] if self.system else []) + list(self.history)

    @property
    def budget(self) -> int:
        """Prompt tokens an answer may continue: the model's context after room for ``max_new_tokens``."""
        room = prompt_token_budget(self.knobs["max_new_tokens"], self.wb.block_size, self.wb.patch_size)
        return min(room, self.context_tokens) if self.context_tokens else room

    def prompt(self, message: str) -> ChatPrompt:
        """The ids that ask for the answer to ``message`` (special-token strings in it stay text)."""
        if not isinstance(message, str):
            raise ConversationError(f"the message must be text, got {type(message).__name__}")
        if not message.strip():
            raise ConversationError("the message is empty; type some text")
        return self.template.fit(self.wb.tokenizer, [*self.messages, ("user", message.strip())], self.budget)

    def ask(self, message: str, preview_every: int = 0, hooks: Hooks = None) -> ChatTurn:
        """Start answering ``message`` (checked, rendered and fitted now; the sampler runs when iterated)."""
        prompt = self.prompt(message)
        return ChatTurn(self, message.strip(), prompt, preview_every, hooks)

    def reply(self, message: str) -> ChatAnswer:
        """Answer ``message`` without streaming."""
        turn = self.ask(message)
        for _ in turn:
            pass
        return turn.answer

