"""The README's API examples, exactly as printed there, answer with words on the default install (the API serves
pocket-chat without --checkpoint) and on the base pocket checkpoint (a checkpoint without chat training: the plain
template), in process."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import openai
import pytest
from fastapi.testclient import TestClient

from apps.api import create_app
from cola_core import load_pretrained
from cola_core.pocket import resolve_checkpoint

README = Path(__file__).resolve().parents[1] / "README.md"


def api_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## OpenAI-compatible API"):text.index("### Limits and errors")]


def curl_body() -> dict:
    """The JSON body of the README's curl chat example."""
    block = re.search(r"```bash\n(curl [^`]*?/v1/chat/completions.*?)```", api_section(), re.S).group(1)
    words = shlex.split(block.replace("\\\n", " "))
    return json.loads(words[words.index("-d") + 1])


def python_example() -> str:
    return re.search(r"```python\n(from openai import OpenAI.*?)```", api_section(), re.S).group(1)


@pytest.fixture(scope="module", params=[None, "pocket"], ids=["default-pocket-chat", "pocket-plain-template"])
def http(request):
    model = load_pretrained(resolve_checkpoint(request.param, chat=True))
    with TestClient(create_app(model)) as client:
        yield client


def test_the_curl_chat_example_streams_a_non_empty_answer(http):
    body = curl_body()
    assert body["stream"] is True and body["messages"][-1]["role"] == "user"
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert re.search(r"[A-Za-z]{2,}", content), content


def test_the_openai_client_example_answers(http, monkeypatch, capsys):
    real = openai.OpenAI
    monkeypatch.setattr(openai, "OpenAI", lambda base_url, api_key: real(
        base_url=base_url.replace("http://127.0.0.1:8000", "http://testserver"), api_key=api_key, http_client=http,
        max_retries=0))
    scope: dict = {}
    exec(compile(python_example(), "README.md", "exec"), scope)
    reply = scope["reply"]
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert re.search(r"[A-Za-z]{2,}", reply.choices[0].message.content), reply.choices[0].message.content
    assert capsys.readouterr().out.startswith(reply.choices[0].message.content)


def test_the_api_command_serves_pocket_chat_without_a_checkpoint(monkeypatch):
    import apps.api
    from apps.cli.main import main

    served = {}
    monkeypatch.setattr(apps.api, "serve", lambda model, **options: served.update(model=model, **options))
    assert main(["api"]) == 0
    assert served["model"].source == str(resolve_checkpoint("pocket-chat")) and served["model_id"] == "cola-dlm"
    assert main(["api", "--checkpoint", "pocket"]) == 0 and served["model"].source == str(resolve_checkpoint("pocket"))
