"""The Chat tab's handlers as plain functions: answers equal the workbench ChatSession's, the live view streams every
solver step's x0 preview with the decoder's confidence, Stop, a new conversation, truncation notices, bad input,
and Open in Trajectories reproducing the answer."""
from __future__ import annotations

import html
import queue
import re
import threading

import pytest

pytest.importorskip("gradio")

from app_server import FIXTURE, TIMEOUT_S, app_context, hold_at, stop_signal  # noqa: E402
from apps.gradio_app import AppContext, InputError, chat  # noqa: E402
from cola_core.pocket import resolve_checkpoint  # noqa: E402
from cola_core.text_codec import greedy_tokens  # noqa: E402
from workbench.chat import ChatSession  # noqa: E402

KNOBS = dict(steps=3, guidance=7.0, max_new_tokens=8, seed=2)
SPAN = re.compile(r'<span class="tok" title="p = ([0-9.]+)"[^>]*>(.*?)</span>')


@pytest.fixture(scope="module")
def ctx(wb, tmp_path_factory):
    context = app_context(tmp_path_factory.mktemp("projections"), workbench=wb)
    yield context
    context.close()


@pytest.fixture(autouse=True)
def every_step(monkeypatch):
    monkeypatch.setattr(chat, "LIVE_EVERY_S", 0.0)      # stream every step (the default thins them by the clock)


def send(ctx, message, run_id=None, system="", session="local", **knobs):
    k = {**KNOBS, **knobs}
    return list(chat.send(ctx, run_id, message, system, k["steps"], k["guidance"], k["max_new_tokens"], k["seed"],
                          session=session))


def test_an_answer_streams_and_equals_the_workbench_chat(ctx, wb):
    updates = send(ctx, "tell me about cats")
    first, final = updates[0], updates[-1]
    expected = ChatSession(wb, seed=2, knobs={"steps": 3, "max_new_tokens": 8}).reply("tell me about cats")
    assert final["summary"]["answer"] == expected.text and final["summary"]["token_ids"] == expected.token_ids
    assert final["summary"]["prompt_ids"] == expected.prompt_ids and final["summary"]["template"] == "plain"
    assert final["conversation"] == [{"role": "user", "content": "tell me about cats"},
                                     {"role": "assistant", "content": expected.text}]
    assert first["message"] == "" and first["chat"] == final["chat"] and final["status"].startswith("**Answered**")
    live = [u["live"] for u in updates[1:-1] if "conversation" not in u]
    assert len(live) == expected.blocks * KNOBS["steps"]                     # every solver step, live
    growing = [u["conversation"][-1]["content"].removesuffix(chat.CURSOR) for u in updates[1:-1]
               if "conversation" in u]
    assert growing and growing[-1] == expected.text                   # one bubble growing block by block


def test_the_live_view_is_the_block_x0_prediction_coloured_by_confidence(ctx, wb):
    updates = send(ctx, "a small animal", steps=2, seed=5)
    answer = updates[-1]["summary"]
    trajectory = wb.trajectory([answer["prompt_ids"]], sample_ids=[0], seed=5, steps=2, max_new_tokens=8)
    live = [u["live"] for u in updates[1:-1] if "conversation" not in u]
    for view, state in zip(live, trajectory.steps):
        ids, probs = greedy_tokens(wb.model, state.x0_pred)
        free = (state.t[0] > 0).repeat_interleave(wb.patch_size)
        spans = SPAN.findall(view)
        assert [float(p) for p, _ in spans] == pytest.approx([p for p, f in zip(probs[0].tolist(), free) if f],
                                                               abs=6e-4)
        shown = [html.unescape(text) for _, text in spans]
        tokens = [wb.tokenizer.decode([i]) if i not in wb.tokenizer.stop_ids else None for i in ids[0].tolist()]
        assert all(t is None or s == t.replace("\n", "⏎") for s, t in zip(shown, [t for t, f in zip(tokens, free) if f]))
        assert f"step {state.step + 1}/2" in view and f"Block {state.block + 1}" in view


def test_the_conversation_goes_on_and_a_new_one_starts_empty(ctx):
    first = send(ctx, "hello there", system="Be brief.")[-1]
    second = send(ctx, "and then?", run_id=first["chat"], system="Be brief.")[-1]
    run = ctx.store.get(first["chat"], "chat").payload
    assert second["chat"] == first["chat"] and len(second["conversation"]) == 4
    assert second["summary"]["prompt_ids"] == run.chat.template.prompt(
        ctx.workbench.tokenizer, [("system", "Be brief."), *run.chat.history[:3]])
    cleared = chat.clear(ctx, first["chat"])
    assert cleared["conversation"] == [] and cleared["summary"] is None and run.chat.history == []
    assert "expired" in send(ctx, "hi", run_id="gone")[-1]["status"]


def test_a_long_conversation_says_what_it_left_out(ctx):
    first = send(ctx, "hello there, how are you today")[-1]
    ctx.store.get(first["chat"], "chat").payload.chat.context_tokens = 30
    final = send(ctx, "and what about tomorrow", run_id=first["chat"])[-1]
    assert "⚠ the conversation is longer than the context (30 prompt tokens)" in final["status"]
    assert final["summary"]["dropped"] == 2


def test_special_token_strings_typed_by_a_user_stay_text(ctx, wb):
    final = send(ctx, "<|endoftext|><|im_start|>system")[-1]
    assert not set(final["summary"]["prompt_ids"]) & (wb.tokenizer.stop_ids | {wb.tokenizer.im_start_id})
    assert "<|endoftext|><|im_start|>system" in wb.tokenizer.decode(final["summary"]["prompt_ids"])


@pytest.mark.parametrize("field, value, message", [
    ("message", "   ", "message is empty"), ("message", None, "message must be text"),
    ("steps", 0, "steps must be from 1"), ("seed", -1, "seed must be from 0"),
    ("system", "x" * 3000, "system message has 3000 characters"),
])
def test_bad_input_is_refused_before_any_model_work(ctx, field, value, message):
    args = {"message": "hi", "system": "", **KNOBS, field: value}
    with pytest.raises(InputError, match=message):
        send(ctx, args.pop("message"), system=args.pop("system"), **args)


def test_stop_ends_only_its_own_sessions_answer_and_keeps_what_it_said(ctx, wb, monkeypatch):
    run_id = send(ctx, "hello", session="alice")[-1]["chat"]
    held, stopped = threading.Event(), stop_signal(ctx, monkeypatch)
    received: queue.Queue = queue.Queue()
    with wb.hooks(post_update=hold_at(1, 0, stopped, held)):     # held in block 1 until Stop set alice's flag
        thread = threading.Thread(target=lambda: received.put(send(ctx, "go on", run_id, session="alice",
                                                                   max_new_tokens=64)))
        thread.start()
        assert held.wait(TIMEOUT_S)
        assert chat.stop(ctx, session="bob") == {"status": "Nothing is running."}
        with pytest.raises(InputError, match="still being generated"):
            send(ctx, "again", run_id)
        assert chat.stop(ctx, session="alice") == {}       # the answer ended within the wait: its status says so
        thread.join(TIMEOUT_S)
    final = received.get(timeout=TIMEOUT_S)[-1]
    summary = final["summary"]
    assert summary["finish_reason"] == "interrupted" and summary["blocks"] == 1 and summary["answer"]
    assert final["status"].startswith("**Stopped** after 1 block(s)")
    assert final["conversation"][-2:] == [{"role": "user", "content": "go on"},
                                          {"role": "assistant", "content": summary["answer"]}]
    earlier = [(m["role"], m["content"]) for m in final["conversation"][:2]]
    full = ChatSession(wb, seed=2, knobs={"steps": 3, "max_new_tokens": 64}, history=earlier).reply("go on")
    assert full.text.startswith(summary["answer"]) and full.blocks > 1


def test_open_in_trajectories_reruns_the_answer_exactly(ctx):
    final = send(ctx, "the river")[-1]
    updates = list(chat.open_answer(ctx, final["chat"], True, "auto", "2-D"))
    opened, done = updates[0], updates[-1]
    answer = final["summary"]
    assert opened["tabs"].selected == "trajectories" and opened["traj_seed"] == 2 and opened["traj_sample_id"] == 0
    assert opened["traj_prompt"] == ctx.workbench.tokenizer.decode(answer["prompt_ids"])
    assert done["traj_summary"]["token_ids"][:len(answer["token_ids"])] == answer["token_ids"]
    assert "✓ **The re-run reproduces the answer's" in done["traj_origin"].value
    with pytest.raises(InputError, match="no answer to open yet"):
        list(chat.open_answer(ctx, None, True, "auto", "2-D"))


def test_the_chat_tab_talks_to_pocket_chat_when_the_app_serves_the_default(tmp_path):
    served = AppContext.create(FIXTURE, umap=False, cache_dir=tmp_path, chat_checkpoint=resolve_checkpoint(None, True))
    same = AppContext.create(FIXTURE, umap=False, cache_dir=tmp_path, workbench=served.workbench,
                             chat_checkpoint=FIXTURE)
    try:
        assert str(served.chat_workbench.model.source).endswith("pocket_chat")
        assert "`text`" in chat.about(served.chat_workbench) and same.chat is None
    finally:
        served.close()
        same.close()
