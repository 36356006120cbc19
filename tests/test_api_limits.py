"""Resource bounds: the body cap reads no more than it must, and tokenising runs in a worker, after admission."""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient

from apps.api import GenerationBackend, create_app
from apps.api.errors import APIError
from apps.api.limits import BodyLimit, WorkerPool

CAP = 10_000


def _body(*chunks: bytes, last: bool = False) -> list[dict]:
    """ASGI body messages; the client never finishes unless ``last``."""
    return [{"type": "http.request", "body": chunk, "more_body": not (last and i == len(chunks) - 1)}
            for i, chunk in enumerate(chunks)]


def _drive(headers: list, messages: list[dict]) -> tuple[int, list[dict], list[dict]]:
    """Run the middleware (cap CAP) on one request; (bytes pulled from the client, messages sent back,
    messages the app received)."""
    pulled, sent, seen = [0], [], []
    stream = iter(messages)

    async def receive() -> dict:
        message = next(stream, {"type": "http.disconnect"})
        pulled[0] += len(message.get("body", b""))
        return message

    async def send(message: dict) -> None:
        sent.append(message)

    async def app(scope, receive, send) -> None:
        seen.append(await receive())

    asyncio.run(BodyLimit(app, CAP)({"type": "http", "headers": headers}, receive, send))
    return pulled[0], sent, seen


def _status(sent: list[dict]) -> int | None:
    return next((m["status"] for m in sent if m["type"] == "http.response.start"), None)


def test_a_streamed_body_is_refused_at_the_chunk_that_crosses_the_cap():
    pulled, sent, seen = _drive([], _body(*[b"x" * 3000] * 100))     # 300 kB offered, never ending
    assert _status(sent) == 413 and seen == []
    assert pulled == 12_000        # 3 chunks held (9 kB <= cap); the 4th is received, not kept, and nothing more
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


def test_a_declared_oversized_body_is_refused_before_reading_any_of_it():
    pulled, sent, _ = _drive([(b"content-length", b"10000001")], _body(*[b"x" * 3000] * 10))
    assert _status(sent) == 413 and pulled == 0


def test_a_body_within_the_cap_reaches_the_app_whole():
    _, sent, seen = _drive([], _body(b"ab" * 2000, b"c" * 6000, last=True))
    assert sent == [] and seen == [{"type": "http.request", "body": b"ab" * 2000 + b"c" * 6000, "more_body": False}]


def test_a_full_pool_refuses_with_429():
    pool = WorkerPool(workers=1, queue_size=1, name="test")
    pool.acquire()
    pool.acquire()
    with pytest.raises(APIError) as info:
        pool.acquire()
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "1"}
    pool.release()
    pool.acquire()
    pool.shutdown()


@dataclass
class ThreadRecordingBackend(GenerationBackend):
    """Records the thread that renders and tokenises each chat prompt."""

    threads: list = field(default_factory=list)

    def chat_prompt(self, messages, max_new_tokens):
        self.threads.append(threading.current_thread().name)
        return super().chat_prompt(messages, max_new_tokens)


def test_chat_prompts_are_tokenised_in_a_worker_thread_not_on_the_event_loop(tiny_model):
    backend = ThreadRecordingBackend(tiny_model)
    with TestClient(create_app(backend)) as client:
        response = client.post("/v1/chat/completions", json={"model": "cola-dlm", "max_tokens": 4, "steps": 2,
                                                              "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200
    assert len(backend.threads) == 1 and backend.threads[0].startswith("cola-api")


def test_a_long_chat_answers_with_a_notice_of_what_it_left_out(tiny_model):
    long = "the cat sat on the mat " * 1200
    messages = [{"role": "user", "content": long}, {"role": "assistant", "content": long},
                {"role": "user", "content": "Hi"}]
    body = {"model": "cola-dlm", "max_tokens": 4, "steps": 1, "seed": 0, "messages": messages}
    with TestClient(create_app(tiny_model)) as client:
        answer = client.post("/v1/chat/completions", json=body).json()
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            first = json.loads(next(line for line in response.iter_lines() if line.startswith("data: {"))[6:])
        short = client.post("/v1/chat/completions", json={**body, "messages": messages[2:]}).json()
    assert "its 2 oldest message(s) were left out" in answer["notice"] and first["notice"] == answer["notice"]
    assert answer["choices"][0]["message"]["content"] == short["choices"][0]["message"]["content"]
    assert "notice" not in short and answer["usage"]["prompt_tokens"] == short["usage"]["prompt_tokens"]
