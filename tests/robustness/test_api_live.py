"""Live-server attack cases (heavy: uvicorn on 127.0.0.1): oversized bodies through a real socket, the DoS
request of issue #14 next to another client, connections kept after bad input, disconnects (streaming or
not), a full queue, generation failures, and 32 concurrent clients answered as if sequential."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import openai
import pytest

from api_test_utils import DOS_STOPS, assert_openai_error, raw, serving, wait_in_flight
from apps.api import GenerationBackend, create_app
from cola_core.errors import GenerationError

pytestmark = pytest.mark.heavy

KEY = "sk-live-0123456789"
MODEL = "cola-dlm"
STEPS = 4
BODY_CAP = 32 * 1024
JSON_HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tiny_model):
    app = create_app(tiny_model, api_key=KEY, max_body_bytes=BODY_CAP, max_tokens_cap=64, queue_size=64,
                     concurrency=4)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=KEY, base_url=f"{server}/v1", max_retries=0, timeout=60)


# -- bodies and bad input through a real socket ----------------------------------------------------------------------

def test_bodies_over_the_cap_get_413_declared_or_chunked(server, client):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * BODY_CAP}])
    assert info.value.status_code == 413
    assert_openai_error(info.value.response.json(), code="request_too_large")
    body = json.dumps({"model": MODEL, "prompt": "x" * BODY_CAP}).encode()
    status, _, data = raw(server, "POST", "/v1/completions", body, JSON_HEADERS, chunked=True)
    assert status == 413
    assert_openai_error(data, code="request_too_large")


def test_invalid_unicode_is_a_400_on_a_connection_that_stays_open(server):
    host, port = server.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "a\ud800b"}]}).encode(), JSON_HEADERS)
        response = conn.getresponse()
        assert_openai_error(response.read(), param="messages.0.content", code="invalid_unicode")
        assert response.status == 400 and not response.will_close
        sock = conn.sock
        conn.request("POST", "/v1/completions", json.dumps(
            {"model": MODEL, "prompt": "The cat", "max_tokens": 4, "steps": STEPS}).encode(), JSON_HEADERS)
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["choices"]
        assert conn.sock is sock                           # the same keep-alive connection served both
    finally:
        conn.close()


# -- the bounded queue, the DoS request, disconnects -----------------------------------------------------------------

@dataclass
class GatedBackend(GenerationBackend):
    """Generation waits at a gate, so the test controls how many requests are in flight; records its jobs."""

    gate: threading.Event = field(default_factory=threading.Event)
    opened: list = field(default_factory=list)

    def open(self, job):
        self.opened.append(job)
        assert self.gate.wait(timeout=30), "test gate never opened"
        return super().open(job)


def test_full_queue_answers_429_and_frees_up(tiny_model):
    backend = GatedBackend(tiny_model)
    app = create_app(backend, concurrency=1, queue_size=1)
    kwargs = dict(model=MODEL, prompt="The cat sat", max_tokens=8, seed=1, extra_body={"steps": STEPS})
    with serving(app) as url:
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0, timeout=60)
        with ThreadPoolExecutor(max_workers=2) as pool:
            running = pool.submit(client.completions.create, **kwargs)
            wait_in_flight(url, 1)
            queued = pool.submit(client.completions.create, stream=True, **kwargs)
            wait_in_flight(url, 2)
            with pytest.raises(openai.RateLimitError) as info:
                client.completions.create(**kwargs)
            assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "1"
            assert_openai_error(info.value.response.json(), code="queue_full")["type"] == "rate_limit_error"
            backend.gate.set()
            first = running.result(timeout=60).choices[0].text
            streamed = "".join(c.choices[0].text for c in queued.result(timeout=60) if c.choices)
        assert first == streamed == client.completions.create(**kwargs).choices[0].text
        wait_in_flight(url, 0)


def test_a_client_that_hangs_up_while_queued_is_never_started(tiny_model):
    backend = GatedBackend(tiny_model)
    request = dict(model=MODEL, prompt="The cat sat", max_tokens=8, seed=1, extra_body={"steps": STEPS})
    with serving(create_app(backend, concurrency=1, queue_size=1)) as url:
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0, timeout=60)
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(client.completions.create, **request)
            wait_in_flight(url, 1)
            with posted(url, {"model": MODEL, "prompt": "A dog", "max_tokens": 8}):
                wait_in_flight(url, 2)
            time.sleep(1.0)                                # the server polls for hang-ups every 0.1 s
            backend.gate.set()
            assert running.result(timeout=60).choices[0].finish_reason
        wait_in_flight(url, 0)
    assert [job.prompts for job in backend.opened] == [["The cat sat"]]   # the queued request never opened


class WrappedRun:
    """A backend run with its ``updates`` replaced; every other attribute is the wrapped run's."""

    def __init__(self, run):
        self.run = run

    def __getattr__(self, name: str):
        return getattr(self.run, name)


class SlowRun(WrappedRun):
    """A run that takes 0.2 s per block and records each block it produced."""

    def __init__(self, run, produced: list):
        super().__init__(run)
        self.produced = produced

    def updates(self, cancel=None):
        for updates in self.run.updates(cancel):
            self.produced.append(updates)
            time.sleep(0.2)
            yield updates


@dataclass
class SlowBackend(GenerationBackend):
    produced: list = field(default_factory=list)

    def open(self, job):
        return SlowRun(super().open(job), self.produced)

    def blocks_of_a_full_run(self, url: str) -> int:
        """Blocks produced for SLOW_REQUEST answered in full (then forgotten)."""
        status, _, _ = raw(url, "POST", "/v1/completions", json.dumps(SLOW_REQUEST).encode(),
                           {"Content-Type": "application/json"})
        full, self.produced[:] = len(self.produced), []
        assert status == 200 and full >= 8
        return full


SLOW_REQUEST = {"model": MODEL, "prompt": "The cat sat", "max_tokens": 48, "seed": 1, "steps": STEPS}


@contextmanager
def posted(url: str, request: dict) -> Iterator[socket.socket]:
    """A raw connection that sent ``request`` to /v1/completions; leaving the block hangs up."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(request).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        yield sock


def test_a_client_that_hangs_up_stops_its_non_streaming_request(tiny_model):
    backend = SlowBackend(tiny_model)
    with serving(create_app(backend)) as url:
        full = backend.blocks_of_a_full_run(url)
        with posted(url, SLOW_REQUEST):
            wait_in_flight(url, 1)
            time.sleep(0.3)
        wait_in_flight(url, 0)
    assert 1 <= len(backend.produced) < full // 2


def test_the_dos_request_is_refused_while_the_only_worker_serves_another_client(tiny_model):
    """Issue #14: four ~250k-character stops, n = 8, max_tokens 1024. It is refused by validation, without a
    queue slot (the queue has none left) and without reaching the model; the other client is served as alone."""
    backend = GatedBackend(tiny_model)
    app = create_app(backend, api_key=KEY, concurrency=1, queue_size=0)      # default caps: 1 MiB, 1024 tokens
    normal = dict(model=MODEL, prompt="The cat sat", max_tokens=12, seed=3, temperature=0, extra_body={"steps": STEPS})
    attack = json.dumps({"model": MODEL, "prompt": "The cat sat", "n": 8, "max_tokens": 1024, "seed": 3,
                         "stop": DOS_STOPS}).encode()
    with serving(app) as url:
        client = openai.OpenAI(api_key=KEY, base_url=f"{url}/v1", max_retries=0, timeout=60)
        with ThreadPoolExecutor(max_workers=1) as pool:
            other = pool.submit(client.completions.create, **normal)
            wait_in_flight(url, 1)                         # the only worker is busy with the other client
            status, _, data = raw(url, "POST", "/v1/completions", attack, JSON_HEADERS)
            assert status == 400
            assert_openai_error(data, param="stop", code="invalid_stop_string")
            assert len(backend.opened) == 1                # only the other client's job reached the model
            backend.gate.set()
            served = other.result(timeout=60).choices[0]
        alone = client.completions.create(**normal).choices[0]
        assert (served.text, served.finish_reason) == (alone.text, alone.finish_reason)


def test_a_client_that_hangs_up_mid_stream_stops_its_generation(tiny_model):
    backend = SlowBackend(tiny_model)
    with serving(create_app(backend)) as url:
        full = backend.blocks_of_a_full_run(url)
        with posted(url, {**SLOW_REQUEST, "stream": True}) as sock:
            received = b""
            while b"data: " not in received:                # the first block's event arrived
                received += sock.recv(65536)
        wait_in_flight(url, 0)
    assert 1 <= len(backend.produced) < full // 2


class BrokenRun(WrappedRun):
    """A run whose model breaks after the first block."""

    def updates(self, cancel=None):
        yield next(self.run.updates(cancel))
        raise RuntimeError("device fell over")


@dataclass
class FaultyBackend(GenerationBackend):
    def open(self, job):
        if job.prompts[0] == "reject":
            raise GenerationError("prompt plus max_new_tokens needs too many latent positions")
        return BrokenRun(super().open(job))


def test_generation_failures_become_openai_errors(tiny_model):
    with serving(create_app(FaultyBackend(tiny_model))) as url:
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        kwargs = dict(model=MODEL, max_tokens=8, seed=0, extra_body={"steps": STEPS})
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(prompt="reject", **kwargs)
        assert "latent positions" in assert_openai_error(info.value.response.json())["message"]
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(prompt="The cat", **kwargs)
        assert assert_openai_error(info.value.response.json(), code="internal_error")["type"] == "server_error"
        body = json.dumps({"prompt": "The cat", "stream": True, "model": MODEL, "max_tokens": 8}).encode()
        status, _, data = raw(url, "POST", "/v1/completions", body, {"Content-Type": "application/json"})
        events = [e.removeprefix("data: ") for e in data.decode().split("\n\n") if e]
        assert status == 200 and events[-1] == "[DONE]"
        assert_openai_error(json.loads(events[-2]), code="internal_error")   # reported in-band after the headers


# -- bounded load: concurrency never changes a seeded answer ------------------------------------------------

def _request(client, i: int, stream: bool) -> list[str]:
    knobs = dict(model=MODEL, max_tokens=8, seed=100 + i % 8, temperature=0.0 if i % 2 else 0.9,
                 n=1 + i % 3 // 2, extra_body={"steps": STEPS})
    if i % 4 < 2:
        kind, call = "chat", lambda **kw: client.chat.completions.create(
            messages=[{"role": "user", "content": f"Tell me about item {i % 5}"}], **kw)
    else:
        kind, call = "text", lambda **kw: client.completions.create(prompt=f"Item {i % 5} is", **kw)
    read = (lambda c: c.delta.content or "") if kind == "chat" else (lambda c: c.text)
    if not stream:
        return [c.message.content if kind == "chat" else c.text for c in call(**knobs).choices]
    texts = [""] * knobs["n"]
    for chunk in call(stream=True, **knobs):
        for c in chunk.choices:
            texts[c.index] += read(c)
    return texts


def test_32_concurrent_seeded_requests_equal_the_sequential_results(client):
    sequential = [_request(client, i, stream=False) for i in range(32)]
    with ThreadPoolExecutor(max_workers=32) as pool:
        concurrent = list(pool.map(lambda i: _request(client, i, stream=i % 3 == 0), range(32)))
    assert concurrent == sequential
    assert len({tuple(texts) for texts in sequential}) > 8        # the requests really differ
