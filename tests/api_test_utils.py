"""Helpers for the API tests: a live uvicorn server in a thread, raw HTTP requests, OpenAI error checks, a
backend that records the jobs it opens."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import uvicorn

from apps.api import GenerationBackend


@contextmanager
def serving(app):
    """Run ``app`` under uvicorn in a background thread on a free loopback port; yield the base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
        chunked: bool = False) -> tuple[int, dict, bytes]:
    """A plain HTTP request (no client conveniences): status, lower-cased headers, body."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, body=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]) if chunked
                     else body, headers=headers or {}, encode_chunked=chunked)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def assert_openai_error(body: bytes | dict, param: str | None = None, code: str | None = None) -> dict:
    """The body is exactly an OpenAI error object (with ``param`` / ``code`` when given); returns it."""
    error = (json.loads(body) if isinstance(body, bytes) else body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


def wait_in_flight(url: str, count: int) -> None:
    """Poll /health until ``count`` generation requests hold a slot."""
    deadline = time.monotonic() + 30
    while json.loads(raw(url, "GET", "/health")[2])["in_flight"] != count:
        assert time.monotonic() < deadline, f"never reached {count} requests in flight"
        time.sleep(0.01)


DOS_STOPS = ["ab" * 125_000] * 4   # issue #14: four ~250k-character stop strings (with n = 8, max_tokens 1024)


@dataclass
class RecordingBackend(GenerationBackend):
    """Records every job it opens (what reached tokenising and generation)."""

    opened: list = field(default_factory=list)

    def open(self, job):
        self.opened.append(job)
        return super().open(job)
