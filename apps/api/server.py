"""OpenAI-compatible HTTP server: ``/health``, ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``.

Each request is admitted into a bounded queue (429 when full) and runs in a pool of ``concurrency``
worker threads with its own sampler; ``stream: true`` sends one server-sent event per decoded block.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Union

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from cola_core import ColaModel
from cola_core.errors import ColaError

from .backend import ChoiceUpdate, GenerationBackend, Job, Run
from .errors import APIError, install_error_handlers
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TOKENS_CAP = 1024
DEFAULT_MAX_TOKENS = 256      # when a request gives no max_tokens (capped by max_tokens_cap)
MAX_ROWS = 16                 # prompts x n sampled in one request
_END = object()               # worker -> event loop: generation finished

Source = Union[ColaModel, GenerationBackend, Callable[[], Union[ColaModel, GenerationBackend]]]


class Admission:
    """At most ``concurrency`` requests run and ``queue_size`` wait; :meth:`try_acquire` refuses the rest."""

    def __init__(self, concurrency: int, queue_size: int):
        self.capacity = concurrency + queue_size
        self.in_flight = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.in_flight >= self.capacity:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1


class BodyLimit:
    """ASGI middleware answering 413 for request bodies over ``max_bytes`` (declared or streamed)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return   # client went away before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            more = message.get("more_body", False)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send) -> None:
        error = APIError(413, f"request body exceeds the server limit of {self.max_bytes} bytes",
                         code="request_too_large")
        await error.response()(scope, receive, send)


def create_app(model_or_loader: Source, api_key: str | None = None, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP, queue_size: int = 16, concurrency: int = 1,
               model_id: str = "cola-dlm") -> FastAPI:
    """The FastAPI app (one server lifetime: its worker pool closes at shutdown).

    ``model_or_loader``: a ColaModel, a GenerationBackend (which brings its own ``model_id``), or a callable
    returning either, called once at startup. ``api_key`` None disables auth (loopback only, see :func:`serve`).
    """
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string, or None to disable authentication")
    for name, value, low in (("max_body_bytes", max_body_bytes, 1), ("max_tokens_cap", max_tokens_cap, 1),
                             ("queue_size", queue_size, 0), ("concurrency", concurrency, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="cola-api")
    admission = Admission(concurrency, queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.backend is None:
            app.state.backend = _as_backend(await asyncio.to_thread(model_or_loader), model_id)
        try:
            yield
        finally:
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="Cola DLM (OpenAI-compatible)", lifespan=lifespan)
    app.state.backend = None if callable(model_or_loader) else _as_backend(model_or_loader, model_id)
    app.state.admission = admission
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    auth = [Depends(_bearer_auth(api_key))]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": app.state.backend.model_id,
                "in_flight": admission.in_flight, "capacity": admission.capacity}

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(app.state.backend)]}

    @app.get("/v1/models/{model}", dependencies=auth)
    async def get_model(model: str) -> dict:
        return _model_card(_backend_for(app, model))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        backend = _backend_for(app, body.model)
        prompt, stops = backend.chat_prompt([(m.role, m.text) for m in body.messages])
        return await respond(request, backend, body, _job(backend, body, [prompt], stops, max_tokens_cap), chat=True)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        backend = _backend_for(app, body.model)
        for name in ("echo", "suffix"):
            if getattr(body, name):
                raise APIError(400, f"{name} is not supported by this server", param=name,
                               code="unsupported_parameter")
        return await respond(request, backend, body, _job(backend, body, body.prompts, (), max_tokens_cap), chat=False)

    async def respond(request: Request, backend: GenerationBackend, body: SamplingFields, job: Job, chat: bool):
        if not admission.try_acquire():
            raise APIError(429, f"the server is busy ({admission.capacity} requests running or queued); retry later",
                           code="queue_full", headers={"Retry-After": "1"})
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        executor.submit(_work, backend, job, cancel, admission,
                        lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        first = await queue.get()
        if isinstance(first, BaseException):
            raise _as_api_error(first)
        shape = _Shape(chat, backend, body.n)
        if body.stream:
            return StreamingResponse(shape.sse(first, queue, cancel, body.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))
        try:
            texts, reasons = [""] * len(first.choices), [None] * len(first.choices)
            async for updates in _drain(queue):
                for update in updates:
                    texts[update.index] += update.text
                    reasons[update.index] = update.finish_reason or reasons[update.index]
        finally:
            cancel.set()
            watcher.cancel()
        return JSONResponse(shape.completion(first, texts, reasons))

    return app


def _as_backend(source: ColaModel | GenerationBackend, model_id: str) -> GenerationBackend:
    if isinstance(source, GenerationBackend):
        return source
    if isinstance(source, ColaModel):
        return GenerationBackend(source, model_id=model_id)
    raise TypeError(f"expected a ColaModel or GenerationBackend (or a loader returning one), got {type(source).__name__}")


def _backend_for(app: FastAPI, model: str) -> GenerationBackend:
    backend = app.state.backend
    if model != backend.model_id:
        raise APIError(404, f"the model {model!r} does not exist; this server serves {backend.model_id!r}",
                       param="model", code="model_not_found")
    return backend


def _model_card(backend: GenerationBackend) -> dict:
    return {"id": backend.model_id, "object": "model", "created": 0, "owned_by": "cola-workbench"}


def _bearer_auth(api_key: str | None) -> Callable:
    """Dependency checking ``Authorization: Bearer <key>`` in constant time (no-op without a key)."""
    expected = api_key.encode() if api_key else None
    challenge = {"WWW-Authenticate": "Bearer"}

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "missing API key: send the header 'Authorization: Bearer <key>'",
                           code="missing_api_key", headers=challenge)
        if not hmac.compare_digest(token.strip().encode(), expected):
            raise APIError(401, "incorrect API key provided", code="invalid_api_key", headers=challenge)

    return check


def _job(backend: GenerationBackend, body: SamplingFields, prompts: list[str | list[int]], stops: tuple[str, ...],
         max_tokens_cap: int) -> Job:
    """Validate a request's knobs into a Job: one row per (prompt, choice), rows of a prompt adjacent."""
    if body.logprobs:
        raise APIError(400, "logprobs are not supported by this server", param="logprobs",
                       code="unsupported_parameter")
    rows = [prompt for prompt in prompts for _ in range(body.n)]
    if len(rows) > MAX_ROWS:
        raise APIError(400, f"n x number of prompts must be <= {MAX_ROWS}, got {len(rows)}", param="n",
                       code="too_many_choices")
    limit = body.token_limit
    if limit is not None and limit > max_tokens_cap:
        param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
        raise APIError(400, f"{param} must be <= {max_tokens_cap} on this server, got {limit}", param=param,
                       code="max_tokens_too_large")
    max_tokens = limit if limit is not None else min(DEFAULT_MAX_TOKENS, max_tokens_cap)
    knobs = {"steps": body.steps, "guidance": body.guidance_scale, "temperature": body.temperature,
             "top_p": body.top_p, "top_k": body.top_k, "repetition_penalty": body.repetition_penalty,
             "seed": body.seed, "guidance_rescale": body.guidance_rescale, "guidance_interval": body.guidance_interval}
    try:
        config = backend.defaults.with_knobs(max_new_tokens=max_tokens, **{k: v for k, v in knobs.items() if v is not None})
    except ColaError as exc:
        raise APIError(400, str(exc), code="invalid_value") from None
    return Job(rows, config, max_tokens, tuple(stops) + tuple(body.stop))


def _work(backend: GenerationBackend, job: Job, cancel: threading.Event, admission: Admission,
          put: Callable[[Any], None]) -> None:
    """Worker thread: open the run, pass it and every block's updates to the event loop, then the outcome."""
    outcome: Any = _END
    try:
        run = backend.open(job)
        put(run)
        for updates in run.updates(cancel):
            put(updates)
    except Exception as exc:   # reported to the client by the event loop
        outcome = exc
    finally:
        admission.release()   # before the last message, so a client's next request finds the slot free
        put(outcome)


async def _cancel_on_disconnect(request: Request, cancel: threading.Event, poll_s: float = 0.1) -> None:
    """Set ``cancel`` once the client hangs up, so a non-streaming request stops at its next block."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(poll_s)


async def _drain(queue: asyncio.Queue) -> AsyncIterator[list[ChoiceUpdate]]:
    while (item := await queue.get()) is not _END:
        if isinstance(item, BaseException):
            raise _as_api_error(item)
        yield item


def _as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ColaError):
        return APIError(400, str(exc), code="invalid_request")
    return APIError(500, f"generation failed: {type(exc).__name__}", code="internal_error")


class _Shape:
    """Chat vs text completion: ids, object names, choice layout, usage."""

    def __init__(self, chat: bool, backend: GenerationBackend, n: int):
        self.chat, self.n = chat, n
        self.meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                     "model": backend.model_id, "system_fingerprint": f"fp_{backend.fingerprint}"}

    def choice(self, index: int, text: str, finish_reason: str | None, chunk: bool) -> dict:
        if not self.chat:
            return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
        key, payload = ("delta", {"content": text} if text else {}) if chunk else \
            ("message", {"role": "assistant", "content": text})
        return {"index": index, key: payload, "finish_reason": finish_reason, "logprobs": None}

    def usage(self, run: Run) -> dict:
        prompt = sum(run.prompt_tokens[::self.n])   # each prompt counted once, not once per choice
        completion = sum(choice.tokens for choice in run.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, run: Run, texts: list[str], reasons: list[str | None]) -> dict:
        choices = [self.choice(i, text, reason, chunk=False) for i, (text, reason) in enumerate(zip(texts, reasons))]
        return {**self.meta, "object": "chat.completion" if self.chat else "text_completion", "choices": choices,
                "usage": self.usage(run)}

    def chunk(self, choices: list[dict], **extra: Any) -> str:
        body = {**self.meta, "object": "chat.completion.chunk" if self.chat else "text_completion",
                "choices": choices, **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    async def sse(self, run: Run, queue: asyncio.Queue, cancel: threading.Event,
                  include_usage: bool) -> AsyncIterator[str]:
        """Role chunk (chat), one chunk per decoded block with text, usage (if asked), ``[DONE]``."""
        try:
            try:
                if self.chat:
                    yield self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                       "finish_reason": None, "logprobs": None} for i in range(len(run.choices))])
                async for updates in _drain(queue):
                    if updates:
                        yield self.chunk([self.choice(u.index, u.text, u.finish_reason, chunk=True) for u in updates])
                if include_usage:
                    yield self.chunk([], usage=self.usage(run))
            except Exception as exc:   # headers are sent: report in-band, as OpenAI does
                yield f"data: {json.dumps(_as_api_error(exc).body())}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to expose the server beyond this machine without an API key."""
    if not api_key and not is_loopback(host):
        raise ValueError(f"refusing to listen on non-loopback host {host!r} without an API key; pass --api-key KEY "
                         "(or set COLA_API_KEY), or bind to 127.0.0.1")


def serve(model_or_loader: Source, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          log_level: str = "info", **limits: int) -> None:
    """Check the bind address, then run the app under uvicorn until interrupted."""
    import uvicorn

    check_bind(host, api_key)
    uvicorn.run(create_app(model_or_loader, api_key, **limits), host=host, port=port, log_level=log_level)
