"""``cola-workbench chat`` in process: commands, streaming, in-place previews, Ctrl-C, --prompt, --json, bad input."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from apps.cli.commands.chat import Terminal, converse
from apps.cli.main import main
from workbench.chat import ChatSession

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"
KNOBS = {"steps": 2, "max_new_tokens": 8}
FLAGS = ["--checkpoint", str(FIXTURE), "--steps", "2", "--max-new-tokens", "8", "--seed", "4"]


class TTY(io.StringIO):
    """A terminal: what the chat writes, read back as a person would see it (see :func:`screen`)."""

    def isatty(self) -> bool:
        return True


def screen(raw: str) -> str:
    """What a terminal shows after ``raw``: backspaces move left, ESC[K erases to the end of the line, colours
    are invisible."""
    lines, line, col = [], [], 0
    for token in re.findall(r"\x1b\[[0-9;]*[A-Za-z]|.", raw, flags=re.S):
        if token == "\n":
            lines.append("".join(line))
            line, col = [], 0
        elif token == "\b":
            col = max(col - 1, 0)
        elif token == "\x1b[K":
            del line[col:]
        elif not token.startswith("\x1b"):
            line[col:col + 1] = [token]
            col += 1
    return "\n".join([*lines, "".join(line)])


def run_chat(wb, text: str, out=None, hooks=None, **options) -> tuple[ChatSession, str, str, int]:
    chat = ChatSession(wb, seed=options.pop("seed", 4), knobs={**KNOBS, **options.pop("knobs", {})}, **options)
    out, err = out or io.StringIO(), io.StringIO()
    code = converse(chat, io.StringIO(text), Terminal(out, err, stream_steps=1 if isinstance(out, TTY) else 0),
                    hooks=hooks)
    return chat, out.getvalue(), err.getvalue(), code


def expected_answer(wb, history, message, seed=4, system=None, **knobs) -> str:
    return ChatSession(wb, system=system, seed=seed, knobs={**KNOBS, **knobs}, history=history).reply(message).text


def test_messages_and_commands(wb):
    script = ("/system Be brief.\nthe cat sat\n/seed 5\n/steps 3\n/guidance 2.5\n/steps\n/bogus\n\n/steps x\n"
              "/steps 0\n//slash text\n/reset\nthe dog\n")
    chat, out, err, code = run_chat(wb, script)
    assert code == 0                                                   # end of input ends the chat
    first = ChatSession(wb, system="Be brief.", seed=4, knobs=KNOBS).reply("the cat sat")
    second = expected_answer(wb, [("user", "the cat sat"), ("assistant", first.text)], "/slash text", seed=5,
                             system="Be brief.", steps=3, guidance=2.5)
    third = expected_answer(wb, [], "the dog", seed=5, system="Be brief.", steps=3, guidance=2.5)
    assert out == f"{first.text}\n{second}\n{third}\n"
    assert chat.history[0] == ("user", "the dog") and chat.system == "Be brief."
    assert (chat.seed, chat.config.steps, chat.config.guidance) == (5, 3, 2.5)
    for line in ("(system message: Be brief.)", "seed: 5", "steps: 3", "guidance: 2.5",
                 "error: unknown command /bogus; /help lists the commands", "(empty message: type some text",
                 "error: /steps needs an integer, got 'x'", "error: steps must be an integer >= 1, got 0",
                 "(history cleared)"):
        assert line in err
    _, _, err, code = run_chat(wb, "/quit\nnot read\n")
    assert code == 0 and "not read" not in err


def test_ctrl_c_interrupts_the_answer_not_the_chat(wb):
    fired = []

    def ctrl_c(state):
        if state.block == 1 and not fired:
            fired.append(True)
            raise KeyboardInterrupt

    chat, out, err, code = run_chat(wb, "the cat sat\nthe dog\n", hooks={"pre_model": ctrl_c})
    assert code == 0 and fired
    partial = chat.history[1][1] if chat.history[0] == ("user", "the cat sat") else ""
    assert expected_answer(wb, [], "the cat sat").startswith(partial) and "(answer interrupted" in err
    assert out.endswith(f"{chat.history[-1][1]}\n") and chat.history[-2] == ("user", "the dog")   # chat went on


def test_ctrl_c_at_the_prompt_keeps_the_chat_and_end_of_input_leaves(wb):
    class Keys(io.StringIO):
        pressed = False

        def readline(self, *args):
            if not self.pressed:
                self.pressed = True
                raise KeyboardInterrupt
            return super().readline(*args)

    chat, err = ChatSession(wb, seed=4, knobs=KNOBS), io.StringIO()
    assert converse(chat, Keys("the cat sat\n"), Terminal(io.StringIO(), err)) == 0
    assert "(Ctrl-D or /quit leaves)" in err.getvalue() and chat.history[0] == ("user", "the cat sat")


def test_stream_steps_show_previews_in_place_on_a_terminal(wb):
    tty = TTY()
    chat, raw, err, _ = run_chat(wb, "the cat sat\n", out=tty)
    answer = chat.history[-1][1]
    assert screen(raw) == f"assistant> {answer}\n"                    # every preview was erased
    assert raw.count("\b") > 0 and raw.count("\x1b[K") >= 4 and "[0:1/2]" in raw and "[1:2/2]" in raw
    assert "\x1b[32m" in raw or "\x1b[33m" in raw or "\x1b[31m" in raw    # tokens coloured by confidence
    _, piped, _, _ = run_chat(wb, "the cat sat\n", out=io.StringIO())
    assert piped == f"{answer}\n"                                      # not a terminal: no previews, no prefix


def test_a_long_chat_says_what_it_left_out(wb):
    _, _, err, _ = run_chat(wb, "hello there, how are you\nI am fine, thanks\nand you\n", context_tokens=30)
    assert "note: the conversation is longer than the context (30 prompt tokens)" in err


def test_prompt_and_json_for_scripts(capsys):
    assert main(["chat", *FLAGS, "--prompt", "<|endoftext|> hi", "--json", "--stream-steps", "1"]) == 0
    out, err = capsys.readouterr()
    records = [json.loads(line) for line in out.splitlines()]
    previews, (answer,) = records[:-1], records[-1:]
    assert {r["event"] for r in previews} == {"preview"} and answer["event"] == "answer"
    assert len(previews) == 2 * answer["blocks"]
    assert answer["seed"] == 4 and answer["knobs"]["steps"] == 2 and answer["sample_id"] == 0
    assert set(answer) >= {"answer", "finish_reason", "token_ids", "prompt_ids", "blocks", "notice"}
    assert 0 not in answer["prompt_ids"]                             # the typed <|endoftext|> stayed text
    assert err.startswith("seed: 4")
    assert main(["chat", *FLAGS, "--prompt", "<|endoftext|> hi"]) == 0
    assert capsys.readouterr().out == f"{answer['answer']}\n"


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "  "], "--prompt is empty"),
    (["--prompt", "hi", "--steps", "0"], "steps must be an integer >= 1"),
    (["--prompt", "word " * 50, "--context-tokens", "10"], "the last message is too long"),
    (["--prompt", "hi", "--checkpoint", "/nonexistent/ckpt"], "nonexistent"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    assert main(["chat", *FLAGS, *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_history_file_is_continued_and_a_malformed_one_names_its_line(wb, tmp_path, capsys):
    good = tmp_path / "chat.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "hello"},
                                             {"role": "assistant", "content": "hi there"}]}) + "\n")
    assert main(["chat", *FLAGS, "--history", str(good), "--prompt", "and then?", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    expected = ChatSession(wb, system="Be brief.", history=[("user", "hello"), ("assistant", "hi there")],
                           seed=4, knobs=KNOBS).prompt("and then?")
    assert answer["prompt_ids"] == expected.ids
    for line, message in [({"messages": [{"content": "hi"}]}, "line 2: message 0: missing \"role\""),
                          ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
                           "line 2: message 1: empty assistant turn"),
                          ({"messages": [{"role": "user", "content": 5}]}, 'line 2: message 0: "content" must be a'),
                          ("not json", "line 2: malformed JSON")]:
        bad = tmp_path / "bad.jsonl"
        bad.write_text(good.read_text() + (line if isinstance(line, str) else json.dumps(line)) + "\n")
        assert main(["chat", *FLAGS, "--history", str(bad), "--prompt", "hi"]) == 2
        err = capsys.readouterr().err.strip()
        assert f"{bad}, {message}" in err and len(err.splitlines()) == 1, err
    two = tmp_path / "two.jsonl"
    two.write_text(good.read_text() * 2)
    assert main(["chat", *FLAGS, "--history", str(two), "--prompt", "hi"]) == 2
    assert "holds 2 conversations" in capsys.readouterr().err


def test_the_default_chat_answers_in_words(capsys):
    """The issue's check: `cola-workbench chat --prompt "What does 'river' mean?"` on the default install."""
    assert main(["chat", "--prompt", "What does 'river' mean?", "--seed", "0", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert re.search(r"[a-z]{3,}", answer["answer"]) and answer["finish_reason"] == "stop"
