"""Resource bounds of the server: request bodies (:class:`BodyLimit`) and worker threads with a bounded
queue (:class:`WorkerPool`). Work that can cost real CPU or memory (tokenising, generating) runs only in
such a pool, after the request took a slot."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from .errors import APIError

T = TypeVar("T")


class WorkerPool:
    """``workers`` threads; at most ``workers + queue_size`` requests hold a slot, the rest get 429."""

    def __init__(self, workers: int, queue_size: int, name: str):
        self.capacity = workers + queue_size
        self.in_flight = 0
        self.executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Take a slot, or raise the 429 for a full queue."""
        with self._lock:
            if self.in_flight < self.capacity:
                self.in_flight += 1
                return
        raise APIError(429, f"the server is busy ({self.capacity} requests running or queued); retry later",
                       code="queue_full", headers={"Retry-After": "1"})

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1

    async def call(self, fn: Callable[..., T], *args) -> T:
        """Run ``fn(*args)`` in a worker under a slot (429 when none is free)."""
        self.acquire()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)
        finally:
            self.release()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


class BodyLimit:
    """ASGI middleware answering 413 for request bodies over ``max_bytes``.

    A declared ``Content-Length`` over the cap is refused before any of the body is read; a streamed
    (chunked) body is refused at the chunk that would take it over the cap, so no more than ``max_bytes``
    are ever held. An accepted body is collected into one buffer and handed on as one message.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return   # client went away before sending its body
            chunk = message.get("body", b"")
            if len(body) + len(chunk) > self.max_bytes:
                del body
                return await self._reject(scope, receive, send)
            body += chunk
            more = message.get("more_body", False)
        pending: list[dict] = [{"type": "http.request", "body": bytes(body), "more_body": False}]
        del body

        async def replay() -> dict:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send) -> None:
        error = APIError(413, f"request body exceeds the server limit of {self.max_bytes} bytes",
                         code="request_too_large")
        await error.response()(scope, receive, send)
