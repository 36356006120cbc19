"""``cola-workbench chat``: a multi-turn chat in the terminal, answers streamed block by block.

Reads one message per line from stdin (a terminal or a pipe); lines starting with ``/`` are commands
(``/help``). Ctrl-C stops the answer being generated (what it said so far stays in the history) and
the chat goes on; Ctrl-D (end of input) or ``/quit`` leaves. ``--prompt`` answers one message and
exits; ``--json`` prints one JSON object per answer. ``--stream-steps N`` shows the current block's
x0 prediction every N solver steps, in place after the answer so far, each token coloured by the
decoder's confidence (on a terminal; with ``--json`` as ``preview`` objects; skipped when stdout is
not a terminal, so piped answers stay clean). Templates, truncation and stops: :mod:`workbench.chat`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from typing import TYPE_CHECKING, TextIO

from cola_core.generate import GenerationConfig

from .common import (UsageError, add_command, add_model_args, add_sampling_args, add_seed_arg, int_in_range,
                     load_workbench, resolve_seed, sampling_knobs)

if TYPE_CHECKING:
    from workbench.chat import ChatAnswer, ChatSession, StepPreview
    from workbench.hooks import Hooks

HELP = ("commands: /reset (forget the history) · /system TEXT (set; /system alone clears it) · /seed N · "
        "/steps N · /guidance X (alone: show the value) · /help · /quit. Start a message with // to send one "
        "that begins with /. Ctrl-C stops an answer; Ctrl-D leaves.")
KNOB_COMMANDS = {"seed": int, "steps": int, "guidance": float}    # /name VALUE -> chat.set(name=type(VALUE))
DIM, RESET, ERASE = "\x1b[2m", "\x1b[0m", "\x1b[K"
CONFIDENCE_COLOURS = ((0.8, "\x1b[32m"), (0.4, "\x1b[33m"), (0.0, "\x1b[31m"))   # green, yellow, red


def register(subparsers) -> None:
    p = add_command(subparsers, "chat", help="chat with a checkpoint in the terminal (multi-turn, streamed)",
                    description="Multi-turn chat: one message per line from stdin, answers streamed per block. "
                                f"{HELP} Templates: the checkpoint's sft_* fields, else the official chat "
                                "CLI's (text, stop ■) when its tokenizer has ■, else a plain User:/Assistant: "
                                "transcript.")
    add_model_args(p, default="pocket-chat (the chat-tuned pocket checkpoint)")
    add_sampling_args(p, max_new_tokens=128)
    add_seed_arg(p, help="noise seed of every answer (block b: seed + 10^7*b)")
    p.add_argument("--system", default=None, help="system message (merged into the first turn, as in SFT)")
    p.add_argument("--context-tokens", type=int_in_range(1), default=None,
                   help="prompt tokens an answer may see; the oldest turns are left out beyond it, with a note "
                        "(none: the model's context)")
    p.add_argument("--stream-steps", type=int_in_range(0), default=0, metavar="N",
                   help="show the current block's x0 preview every N solver steps, in place (0 = off)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="continue a conversation: a .jsonl file holding one {\"messages\": [{role, content}, ...]} "
                        "line, the SFT format (a leading system message is the system message unless --system)")
    p.add_argument("--prompt", default=None, help="answer this one message and exit")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per answer (answer, finish_reason, seed, knobs, token_ids, blocks, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    knobs = sampling_knobs(args)
    GenerationConfig().with_knobs(**knobs)          # bad knobs fail before any weights load
    if args.prompt is not None and not args.prompt.strip():
        raise UsageError("--prompt is empty; type some text")
    from workbench.chat import ChatSession

    system, history = read_history(args.history) if args.history else (None, [])
    chat = ChatSession(load_workbench(args, chat=True), system=args.system or system, history=history,
                       context_tokens=args.context_tokens, knobs=knobs)
    if args.prompt is not None:
        chat.prompt(args.prompt)                   # a message the model cannot take fails before the seed line
    chat.set(seed=resolve_seed(args.seed))
    term = Terminal(sys.stdout, sys.stderr, args.stream_steps, args.json)
    if args.prompt is not None:
        answer = term.answer(chat, args.prompt)
        return 130 if answer.finish_reason == "interrupted" else 0
    return converse(chat, sys.stdin, term)


def read_history(path: str) -> tuple[str | None, list]:
    """(system message, turns) of a --history file: one conversation in the SFT data format, checked as SFT
    checks it (a malformed line is an error naming the file and the line)."""
    from cola_core.training.conversations import read_conversations

    conversations = read_conversations(path)
    if len(conversations) != 1:
        raise UsageError(f"--history {path}: holds {len(conversations)} conversations; give a file with one")
    messages = conversations[0]
    if messages[0][0] == "system":
        return messages[0][1], messages[1:]
    return None, messages


def converse(chat: "ChatSession", lines: TextIO, term: "Terminal", hooks: "Hooks" = None) -> int:
    """The interactive loop: messages and commands until end of input or /quit; 0. A bad message or command
    is one error line, never the end of the chat; ``hooks`` go to every answer's sampler."""
    term.greet(chat)
    while True:
        try:
            line = term.read(lines)
        except KeyboardInterrupt:
            term.note("(Ctrl-D or /quit leaves)")
            continue
        if line is None:
            return 0
        try:
            if line.startswith("/") and not line.startswith("//"):
                if not command(chat, line, term):
                    return 0
            elif line.strip():
                term.answer(chat, line[1:] if line.startswith("//") else line, hooks)
            else:
                term.note("(empty message: type some text, or /help)")
        except ValueError as exc:
            term.error(exc)


def command(chat: "ChatSession", line: str, term: "Terminal") -> bool:
    """Run one /command; False to leave."""
    name, _, value = line[1:].partition(" ")
    name, value = name.strip().lower(), value.strip()
    if name in ("quit", "exit"):
        return False
    if name == "reset":
        chat.reset()
        term.note("(history cleared)")
    elif name == "system":
        chat.set_system(value or None)
        term.note(f"(system message: {chat.system})" if chat.system else "(no system message)")
    elif name in KNOB_COMMANDS:
        if value:
            try:
                parsed = KNOB_COMMANDS[name](value)
            except ValueError:
                raise UsageError(f"/{name} needs {'an integer' if KNOB_COMMANDS[name] is int else 'a number'}, "
                                 f"got {value[:40]!r}") from None
            chat.set(**{name: parsed})
        term.note(f"{name}: {chat.seed if name == 'seed' else chat.config.__dict__[name]}")
    elif name == "help":
        term.note(HELP)
    else:
        raise UsageError(f"unknown command /{name[:40]}; /help lists the commands")
    return True


class Terminal:
    """Where a chat is shown: answers on ``out`` (streamed), notes and errors on ``err``; previews in place
    when ``out`` is a terminal, as JSON objects with ``as_json``."""

    def __init__(self, out: TextIO, err: TextIO, stream_steps: int = 0, as_json: bool = False):
        self.out, self.err, self.as_json = out, err, as_json
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.preview_every = stream_steps if (self.tty or as_json) else 0
        self.column = 0           # visible characters on the current line of ``out``
        self.shown = 0            # visible characters of the preview after the answer so far

    # -- input and notes ------------------------------------------------------------------------
    def greet(self, chat: "ChatSession") -> None:
        if self.tty:
            template = chat.template
            self.note(f"Chat with {chat.wb.model.source} ({template.format} template). {HELP}")

    def read(self, lines: TextIO) -> str | None:
        """The next line without its newline (None at end of input); the prompt ``you> `` when a person types."""
        if self.tty and getattr(lines, "isatty", lambda: False)():
            self.out.write("you> ")
            self.out.flush()
        line = lines.readline()
        return None if line == "" else line.rstrip("\r\n")

    def note(self, text: str) -> None:
        self.err.write(f"{text}\n")
        self.err.flush()

    def error(self, exc: Exception) -> None:
        self.note(f"error: {exc}")

    # -- one answer -------------------------------------------------------------------------------
    def answer(self, chat: "ChatSession", message: str, hooks: "Hooks" = None) -> "ChatAnswer":
        """Ask, stream the answer's events, and close its line; Ctrl-C ends the answer, not the chat."""
        from workbench.chat import StepPreview

        turn = chat.ask(message, preview_every=self.preview_every, hooks=hooks)
        if turn.prompt.notice:
            self.note(f"note: {turn.prompt.notice}")
        if self.tty and not self.as_json:
            self._write("assistant> ")
        printed = ""
        try:
            for event in turn:
                if isinstance(event, StepPreview):
                    self.preview(event)
                elif not self.as_json:
                    self._erase()
                    self._write(event.text)
                    printed += event.text
        except KeyboardInterrupt:
            turn.interrupt()
        self.close(turn.answer, printed)
        return turn.answer

    def preview(self, preview: "StepPreview") -> None:
        if self.as_json:
            self._json({"event": "preview", **preview.__dict__})
            return
        self._erase()
        room = shutil.get_terminal_size().columns - self.column - 1
        label = f" [{preview.block}:{preview.step + 1}/{preview.steps}]"
        parts, width = [], len(label)
        for token, confidence, pinned in zip(preview.tokens, preview.confidence, preview.prompt):
            token = token.replace("\n", "⏎")
            if pinned:
                continue
            if width + len(token) > room:
                break
            colour = next(code for low, code in CONFIDENCE_COLOURS if confidence >= low)
            parts.append(f"{colour}{token}{RESET}")
            width += len(token)
        if width > len(label) and room > len(label):
            self.out.write(f"{''.join(parts)}{DIM}{label}{RESET}")
            self.out.flush()
            self.shown = width

    def close(self, answer: "ChatAnswer", printed: str) -> None:
        """The answer's end: the rest of its text and a newline (or its JSON object), then why it ended."""
        if self.as_json:
            self._json({"event": "answer", **answer.to_dict()})
        else:
            self._erase()
            self._write((answer.text[len(printed):] if answer.text.startswith(printed) else "") + "\n")
        if answer.finish_reason == "interrupted":
            self.note("(answer interrupted: what it said so far stays in the history)" if answer.text else
                      "(answer interrupted before any text; the message was not kept)")
        elif answer.finish_reason == "length":
            self.note(f"(answer cut at max_new_tokens={answer.knobs['max_new_tokens']})")
        elif not answer.text:
            self.note("(empty answer: the model ended its turn at once)")

    # -- output -----------------------------------------------------------------------------------
    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        last = text.rsplit("\n", 1)
        self.column = len(last[-1]) if len(last) > 1 else self.column + len(text)

    def _erase(self) -> None:
        """Remove the preview shown after the answer (it never wraps: it is cut to the line's room)."""
        if self.shown:
            self.out.write("\b" * self.shown + ERASE)
            self.shown = 0

    def _json(self, record: dict) -> None:
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()
