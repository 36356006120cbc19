"""Chat tab: a conversation with the chat checkpoint, with the current block denoising in front of you.

While an answer is generated, every solver step's x0 prediction of the current block is decoded alone and
shown as tokens coloured by the decoder's confidence, after the answer so far: live, from the running
sampler (never a replay). Each decoded block extends the answer in the conversation. The conversation's
template, its fitting into the context (oldest turns left out, with a notice) and where an answer ends
are :mod:`workbench.chat`'s, the same rules as ``cola-workbench chat`` and the API. Answers are shown as
``ChatPrompt.answer`` cuts them (decoded without special tokens); preview tokens come rendered by the
workbench (special tokens as markers, ``⟨eos⟩``). **Stop** ends the
answer at the next solver step (what it said stays); **Open in Trajectories** re-runs the last answer
there, from the same token ids, seed and knobs, on the chat checkpoint.
"""
from __future__ import annotations

import html
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import gradio as gr

from cola_core.chat_template import ChatTemplate
from cola_core.generate import GenerationConfig
from cola_core.tokenizer import display_tokens
from workbench import Workbench
from workbench.chat import CHAT_DEFAULTS, AnswerDelta, ChatAnswer, ChatSession, ChatTurn, StepPreview

from . import inputs
from .context import AppContext
from .errors import InputError
from .events import LOCAL_SESSION, Progress, TabComponents, Update, no_progress, on, run_state
from .forms import sampler_knobs
from .handoff import OUTPUTS, VIEW_INPUTS, attach, open_in_trajectories, rerun_form
from .store import session_key, stop_update
from .trajectories import Every

TITLE, TAB_ID = "Chat", "chat"
LIVE_HEIGHT = 150           # px, fixed: the buttons under the live view must not move while an answer streams
LIVE_EVERY_S = 0.1          # step previews are streamed at most this often (a block's first step and every
                            # decoded block go out at once)
CONVERSATION_HEIGHT = 460
CURSOR = "▍"
SEND_INPUTS = ("chat", "message", "system", "steps", "guidance", "max_new_tokens", "seed")
SEND_OUTPUTS = ("conversation", "live", "status", "summary", "message", "chat")
CLEAR_OUTPUTS = ("conversation", "live", "status", "summary")
FINISHED = {"stop": "it ended its turn", "length": "it reached max new tokens", "interrupted": "stopped by you"}


@dataclass
class ChatRun:
    """One browser session's conversation: its chat session, its last answer and the answer in progress."""

    chat: ChatSession
    last: ChatAnswer | None = None
    turn: ChatTurn | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


# -- what the tab shows -------------------------------------------------------------------------------------
def confidence_colour(p: float) -> str:
    """Red (the decoder is unsure) through yellow to green (sure)."""
    return f"hsl({120 * min(max(p, 0.0), 1.0):.0f}, 75%, 82%)"


def token_spans(preview: StepPreview) -> str:
    """The block's predicted tokens as spans coloured by confidence (the prompt's own pinned tail greyed)."""
    spans = []
    for token, p, pinned in zip(preview.tokens, preview.confidence, preview.prompt):
        text = html.escape(token.replace("\n", "⏎"))
        if pinned:
            spans.append(f'<span class="tok pinned" title="prompt token (pinned)" style="color:#888">{text}</span>')
        else:
            spans.append(f'<span class="tok" title="p = {p:.3f}" style="background:{confidence_colour(p)};'
                         f'border-radius:3px;padding:0 1px;color:#111">{text}</span>')
    return "".join(spans)


def live_html(answer: str = "", preview: StepPreview | None = None, note: str = "") -> str:
    """The answer so far, then the current block's x0 prediction at this step (or ``note`` when there is none)."""
    legend = ('<div style="font-size:12px;color:var(--body-text-color-subdued);margin-top:6px">decoder confidence '
              '<span style="display:inline-block;width:120px;height:9px;vertical-align:middle;background:'
              f'linear-gradient(to right,{confidence_colour(0)},{confidence_colour(0.5)},{confidence_colour(1)})">'
              '</span> 0 → 1 · hover a token for its probability</div>')
    if preview is None:
        head = html.escape(note or "While an answer is generated, its current block denoises here, step by step.")
        body = ""
    else:
        head = (f"Block {preview.block + 1} · step {preview.step + 1}/{preview.steps} · t = {preview.t:.0f}: "
                f"the block's x0 prediction, decoded alone")
        body = token_spans(preview)
    return (f'<div id="cola-chat-live-view" style="border:1px solid var(--border-color-primary);border-radius:8px;'
            f'padding:8px 12px;height:{LIVE_HEIGHT}px;box-sizing:border-box;display:flex;flex-direction:column">'
            f'<div style="font-size:12px;color:var(--body-text-color-subdued)">{head}</div>'
            f'<div style="white-space:pre-wrap;line-height:1.9;font-size:16px;flex:1;overflow-y:auto">'
            f'<span style="opacity:.65">'
            f'{html.escape(answer)}</span>{body}</div>{legend}</div>')


def messages(chat: ChatSession, pending: str | None = None, partial: str = "") -> list[dict]:
    """The conversation as chat bubbles; with ``pending``, that message and the answer growing under it."""
    out = [{"role": role, "content": content} for role, content in chat.history]
    if pending is not None:
        out += [{"role": "user", "content": pending}, {"role": "assistant", "content": partial + CURSOR}]
    return out


def about(wb: Workbench) -> str:
    """Which checkpoint and template the tab talks to."""
    template, tok = ChatTemplate.for_model(wb.model), wb.tokenizer
    stop = "" if template.stop_token_id is None else f", stop {display_tokens([template.stop_token_id], tok)[0]}"
    rule = {"plain": "a checkpoint without chat training: a plain User:/Assistant: transcript, cut at \\nUser:",
            "text": "User:/Assistant: turns", "chatml": "<|im_start|> turns"}[template.format]
    return (f"**Checkpoint** `{wb.model.source}`  \n**Template** `{template.format}`{html.escape(stop)} "
            f"({html.escape(rule)})  \nEvery answer's noise: seed + 10^7·block (sample id 0).")


def summary(chat: ChatSession, answer: ChatAnswer) -> dict:
    return {**answer.to_dict(), "checkpoint": str(chat.wb.model.source), "template": chat.template.format}


def status_line(answer: ChatAnswer, seconds: float, notes: list[str]) -> str:
    if answer.finish_reason == "interrupted":
        head = (f"**Stopped** after {answer.blocks} block(s); what it said stays in the conversation." if answer.text
                else "**Stopped** before any text; the message was not kept (it is back in the box).")
    else:
        head = (f"**Answered** — {len(answer.token_ids)} token(s) in {answer.blocks} block(s), "
                f"{seconds:.1f} s; {FINISHED[answer.finish_reason]}.")
    return "  \n".join([head, *(f"⚠ {n}" for n in notes)])


# -- handlers ---------------------------------------------------------------------------------------------
def conversation(ctx: AppContext, run_id) -> tuple[str, ChatRun, str | None]:
    """This session's conversation, or a new one (with a note when an old one had expired)."""
    if run_id is not None:
        try:
            return run_id, ctx.store.get(run_id, "chat").payload, None
        except InputError:
            note = "the previous conversation expired; this is a new one"
    else:
        note = None
    run = ChatRun(ChatSession(ctx.chat_workbench))
    return ctx.store.put("chat", run), run, note


def send(ctx: AppContext, run_id, message, system, steps, guidance, max_new_tokens, seed, *,
         session: str = LOCAL_SESSION) -> Iterator[Update]:
    """Answer ``message``: the answer grows in the conversation block by block while the live view shows the
    current block's x0 prediction at every solver step; ends with the answer's record."""
    lim = ctx.limits
    message = inputs.text("message", message, lim)
    system = inputs.text("system message", "" if system is None else system, lim, allow_empty=True)
    knobs = inputs.sampler_knobs(lim, steps, guidance, max_new_tokens, seed)
    run_id, run, expired = conversation(ctx, run_id)
    with run.lock:
        if run.turn is not None:
            raise InputError("an answer is still being generated; wait for it or press Stop")
        run.chat.set_system(system)
        run.chat.set(**knobs)
        turn = run.turn = run.chat.ask(message, preview_every=1)
    key = session_key(session, "chat")
    ctx.stops.register(key, run_id, turn.stopped)
    notes = [n for n in (expired, turn.prompt.notice) if n]
    started, due = time.monotonic(), Every(LIVE_EVERY_S)
    try:
        yield {"conversation": messages(run.chat, message), "live": live_html(note="starting…"), "message": "",
               "status": "  \n".join(["**Answering** …", *(f"⚠ {n}" for n in notes)]), "chat": run_id}
        for event in turn:
            if isinstance(event, AnswerDelta):
                yield {"conversation": messages(run.chat, message, turn.sent), "live": live_html(turn.sent)}
            elif isinstance(event, StepPreview) and (due() or event.step == 0):    # every block shows at once
                yield {"live": live_html(turn.sent, event)}
    finally:
        answer = turn.answer or turn.interrupt()       # an event the UI cancelled ends as interrupted
        with run.lock:
            run.turn, run.last = None, answer
        ctx.stops.release(key, turn.stopped)
    kept = bool(answer.text) or answer.finish_reason != "interrupted"
    yield {"conversation": messages(run.chat), "live": live_html(answer.text, note="answer finished"),
           "status": status_line(answer, time.monotonic() - started, notes), "summary": summary(run.chat, answer),
           "message": "" if kept else message, "chat": run_id}


def stop(ctx: AppContext, *, session: str = LOCAL_SESSION) -> Update:
    """End this session's answer at the sampler's next solver step (what it said so far stays)."""
    return stop_update(ctx.stops, session_key(session, "chat"), "status", "**Stopping** at the next solver step …")


def clear(ctx: AppContext, run_id) -> Update:
    """Start a new conversation (the system message, seed and knobs stay in their boxes)."""
    if run_id is not None:
        run: ChatRun = ctx.store.get(run_id, "chat").payload
        with run.lock:
            if run.turn is not None:
                raise InputError("an answer is being generated; press Stop first")
            run.chat.reset()
            run.last = None
    return {"conversation": [], "live": live_html(), "status": "New conversation.", "summary": None}


def comparison(answer: ChatAnswer, run: dict) -> str:
    """Whether the re-run gave the answer's tokens (it runs on to EOS, so the answer is a prefix of it)."""
    if run["status"] != "finished":
        return "The re-run was stopped before its end; nothing to compare."
    n = len(answer.token_ids)
    if run["token_ids"][:n] == answer.token_ids:
        return f"✓ **The re-run reproduces the answer's {n} tokens exactly.**"
    return f"✗ **The re-run differs from the answer's {n} tokens** (a different checkpoint, device or dtype?)."


def open_answer(ctx: AppContext, run_id, preview, method, dims, *, session: str = LOCAL_SESSION,
                progress: Progress = no_progress) -> Iterator[Update]:
    """Re-run the last answer in the Trajectories tab, on the chat checkpoint from the template's token ids, with
    its seed, sample id and knobs, streamed there; then say whether it reproduced the answer."""
    run: ChatRun = ctx.store.get(run_id, "chat").payload if run_id is not None else None
    if run is None or run.last is None:
        raise InputError("no answer to open yet: send a message first")
    answer, wb = run.last, run.chat.wb
    prompt_text = wb.tokenizer.decode(answer.prompt_ids)
    form = rerun_form(prompt_text, GenerationConfig(**answer.knobs, seed=answer.seed), answer.sample_id)
    note = (f"**Chat answer** re-run on `{wb.model.source}` from the chat template's {len(answer.prompt_ids)} "
            f"prompt token ids, seed {answer.seed}, sample id {answer.sample_id}: “{html.escape(answer.text)}” "
            f"({answer.finish_reason}). The re-run goes on to EOS; the chat cut its answer at the template's stop. "
            f"Generate in this tab runs the form's text on this tab's checkpoint, tokenised anew.")
    yield from open_in_trajectories(ctx, form, (preview, method, dims), "Opened the last answer in the "
                                    "**Trajectories** tab.", note, lambda update: comparison(answer, update["summary"]),
                                    session=session, progress=progress, workbench=wb, prompt_ids=answer.prompt_ids)


# -- layout and events ------------------------------------------------------------------------------------
def build(ctx: AppContext) -> TabComponents:
    """The tab's layout (inside a ``gr.Tab``)."""
    ui = TabComponents()
    ui.chat = run_state(ctx)
    with gr.Row():
        with gr.Column(scale=3, min_width=480):
            ui.conversation = gr.Chatbot(label="Conversation", height=CONVERSATION_HEIGHT, render_markdown=False,
                                         elem_id="cola-chat-conversation")
            ui.live = gr.HTML(live_html(), label="Current block, step by step", elem_id="cola-chat-live")
            ui.message = gr.Textbox(label="Message", placeholder="Type a message; Enter sends", lines=1,
                                    max_lines=6, elem_id="cola-chat-message")
            with gr.Row():
                ui.send = gr.Button("Send", variant="primary")
                ui.stop = gr.Button("Stop", variant="stop")
                ui.clear = gr.Button("New conversation")
                ui.open = gr.Button("Open last answer in Trajectories")
            ui.status = gr.Markdown("Type a message and press **Send**.")
        with gr.Column(scale=1, min_width=300):
            ui.about = gr.Markdown(about(ctx.chat_workbench))
            ui.system = gr.Textbox(label="System message", lines=2,
                                   placeholder="optional; merged into the first turn, as in SFT")
            sampler_knobs(ctx, ui, max_new_tokens=CHAT_DEFAULTS["max_new_tokens"])
            with gr.Accordion("Last answer: record", open=False):
                ui.summary = gr.JSON(label="Answer, finish reason, seed, knobs, token ids")
    return ui


def wire(ctx: AppContext, ui: TabComponents) -> None:
    on(ctx, ui, [ui.send.click, ui.message.submit], send, SEND_INPUTS, SEND_OUTPUTS, api_name="chat_send",
       heavy=True, show_progress="minimal")
    on(ctx, ui, ui.stop.click, stop, (), ("status",), api_name="chat_stop")
    on(ctx, ui, ui.clear.click, clear, ("chat",), CLEAR_OUTPUTS, api_name="chat_clear")


def link(ctx: AppContext, tabs: dict[str, TabComponents], selector: gr.Tabs) -> None:
    """Open in Trajectories: the Trajectories tab's form, view choices and outputs join this tab as ``traj_*``."""
    ui = tabs[TAB_ID]
    target = attach(ui, tabs, selector)
    on(ctx, ui, ui.open.click, open_answer, ("chat", *VIEW_INPUTS), OUTPUTS, api_name="chat_open", heavy=True,
       show_progress="full", show_progress_on=[target.block, target.step])
