"""OpenAI-compatible HTTP server: ``/health``, ``/v1/models``, ``/v1/chat/completions``, ``/v1/completions``,
plus vLLM's tokenizer routes (``/tokenizer_info``, ``/tokenize``, ``/detokenize``).

A request is validated on the event loop with checks linear in its (capped) body, then admitted into a
bounded queue (429 when full) and tokenised in a pool of ``concurrency`` worker threads; its rows are generated
in the shared batch of up to ``max_batch`` rows (or, with ``max_batch=1``, by a sampler of its own in the
worker); ``stream: true`` sends one server-sent event per decoded block.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Union

from fastapi import Depends, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from cola_core import ColaModel
from cola_core.errors import ColaError

from .backend import Chat, ChoiceUpdate, GenerationBackend, Job, Prompt, Run
from .errors import APIError, brief, install_error_handlers
from .limits import BodyLimit, WorkerPool
from .prompt_checks import check_prompts
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from .tokenizer_routes import tokenizer_router

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_TOKENS_CAP = 1024
DEFAULT_MAX_TOKENS = 256      # when a request gives no max_tokens (capped by max_tokens_cap)
MAX_ROWS = 16                 # prompts x n sampled in one request
_END = object()               # worker -> event loop: generation finished

Source = Union[ColaModel, GenerationBackend, Callable[[], Union[ColaModel, GenerationBackend]]]


def create_app(model_or_loader: Source, api_key: str | None = None, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP, queue_size: int = 16, concurrency: int = 16,
               max_batch: int = 16, model_id: str = "cola-dlm") -> FastAPI:
    """The FastAPI app (one server lifetime: its worker pools and batching service close at shutdown).

    ``concurrency`` requests are served at once (the rest wait in a queue of ``queue_size``, then 429). With
    ``max_batch`` > 1 their rows (prompts x n) are sampled together in one batch of up to that many rows
    (``workbench.serving``): a request joins at the next block boundary and leaves when it ends, and its answer
    is the one it gets alone. ``max_batch=1`` gives every request its own sampler (the earlier mode).

    ``model_or_loader``: a ColaModel, a GenerationBackend (which brings its own ``model_id``), or a callable
    returning either, called once at startup. ``api_key`` None disables auth (loopback only, see :func:`serve`);
    with a key, every route but ``/health`` needs it, ``/docs`` and ``/openapi.json`` included.
    """
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string, or None to disable authentication")
    for name, value, low in (("max_body_bytes", max_body_bytes, 1), ("max_tokens_cap", max_tokens_cap, 1),
                             ("queue_size", queue_size, 0), ("concurrency", concurrency, 1),
                             ("max_batch", max_batch, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    generation = WorkerPool(concurrency, queue_size, "cola-api")
    tokenizing = WorkerPool(1, queue_size, "cola-api-tokenize")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if app.state.backend is None:
            app.state.backend = _as_backend(await asyncio.to_thread(model_or_loader), model_id)
        if max_batch > 1:
            app.state.backend.start_batching(max_batch)
        try:
            yield
        finally:
            generation.shutdown()
            tokenizing.shutdown()
            app.state.backend.stop_batching()

    app = FastAPI(title="Cola DLM (OpenAI-compatible)", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.backend = None if callable(model_or_loader) else _as_backend(model_or_loader, model_id)
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    auth = [Depends(_bearer_auth(api_key))]

    def backend_for(model: str | None) -> GenerationBackend:
        """The served backend; 404 when the request names another model (None: any)."""
        backend = app.state.backend
        if model is not None and model != backend.model_id:
            raise APIError(404, f"the model {brief(model)} does not exist; this server serves {backend.model_id!r}",
                           param="model", code="model_not_found")
        return backend

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": app.state.backend.model_id,
                "in_flight": generation.in_flight, "capacity": generation.capacity}

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=auth, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict:
        return {"object": "list", "data": [_model_card(app.state.backend)]}

    @app.get("/v1/models/{model}", dependencies=auth)
    async def get_model(model: str) -> dict:
        return _model_card(backend_for(model))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        backend = backend_for(body.model)
        chat = Chat(tuple((m.role, m.text) for m in body.messages))
        return await respond(request, backend, body, _job(backend, body, [chat], "messages", max_tokens_cap), chat=True)

    @app.post("/v1/completions", dependencies=auth)
    async def completions(body: CompletionRequest, request: Request):
        backend = backend_for(body.model)
        job = _job(backend, body, body.prompts, "prompt", max_tokens_cap)   # logprobs first: say why
        for name in ("echo", "suffix"):
            if getattr(body, name):
                raise APIError(400, f"{name} is not supported by this server", param=name,
                               code="unsupported_parameter")
        return await respond(request, backend, body, job, chat=False)

    app.include_router(tokenizer_router(backend_for, auth, tokenizing))

    async def respond(request: Request, backend: GenerationBackend, body: SamplingFields, job: Job, chat: bool):
        """Take a slot, start the worker, answer with one JSON body or a stream of blocks."""
        generation.acquire()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        generation.executor.submit(_work, backend, job, cancel, generation,
                                   lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        watcher = asyncio.create_task(_cancel_on_disconnect(request, cancel))   # also while queued
        try:
            first = await queue.get()
            if isinstance(first, BaseException):
                raise _as_api_error(first)
            shape = _Shape(chat, backend, first.notices)
            if not body.stream:
                return JSONResponse(shape.completion(first, *await _collect(queue, len(first.choices))))
        finally:
            watcher.cancel()
            if not body.stream:
                cancel.set()
        return StreamingResponse(shape.sse(first, queue, cancel, body.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


def _as_backend(source: ColaModel | GenerationBackend, model_id: str) -> GenerationBackend:
    if isinstance(source, GenerationBackend):
        return source
    if isinstance(source, ColaModel):
        return GenerationBackend(source, model_id=model_id)
    raise TypeError("expected a ColaModel or GenerationBackend (or a loader returning one), "
                    f"got {type(source).__name__}")


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


def _job(backend: GenerationBackend, body: SamplingFields, prompts: list[Prompt], prompt_param: str,
         max_tokens_cap: int) -> Job:
    """Validate a request's knobs and prompts into a Job (cheap checks only: nothing is tokenised here)."""
    if body.logprobs:
        raise APIError(400, "logprobs are not supported: Cola DLM is a latent diffusion model and has no token "
                            "log-probabilities", param="logprobs", code="unsupported_parameter")
    if len(prompts) * body.n > MAX_ROWS:
        raise APIError(400, f"n x number of prompts must be <= {MAX_ROWS}, got {len(prompts) * body.n}", param="n",
                       code="too_many_choices")
    check_prompts(backend, prompts, prompt_param)
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
    return Job(list(prompts), config, max_tokens, tuple(body.stop), n=body.n)


def _work(backend: GenerationBackend, job: Job, cancel: threading.Event, pool: WorkerPool,
          put: Callable[[Any], None]) -> None:
    """Worker thread: open the run (tokenising happens here), pass it and every block's updates to the event
    loop, then the outcome. A request cancelled while it waited for the worker is not opened at all."""
    outcome: Any = _END
    try:
        if cancel.is_set():
            raise APIError(400, "the client closed the request before it started", code="request_cancelled")
        run = backend.open(job)
        put(run)
        for updates in run.updates(cancel):
            put(updates)
    except Exception as exc:   # reported to the client by the event loop
        outcome = exc
    finally:
        pool.release()   # before the last message, so a client's next request finds the slot free
        put(outcome)


async def _cancel_on_disconnect(request: Request, cancel: threading.Event, poll_s: float = 0.1) -> None:
    """Set ``cancel`` once the client hangs up, so a non-streaming request stops at its next block."""
    while not cancel.is_set():
        if await request.is_disconnected():
            cancel.set()
            return
        await asyncio.sleep(poll_s)


async def _collect(queue: asyncio.Queue, choices: int) -> tuple[list[str], list[str | None]]:
    """Every choice's joined text and finish reason, once the run ends."""
    texts, reasons = [""] * choices, [None] * choices
    async for updates in _drain(queue):
        for update in updates:
            texts[update.index] += update.text
            reasons[update.index] = update.finish_reason or reasons[update.index]
    return texts, reasons


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

    def __init__(self, chat: bool, backend: GenerationBackend, notices: list[str]):
        self.chat = chat
        self.meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", "created": int(time.time()),
                     "model": backend.model_id, "system_fingerprint": f"fp_{backend.fingerprint}"}
        self.notice = {"notice": " ".join(notices)} if notices else {}   # e.g. chat turns left out (a Cola extra)

    def choice(self, index: int, text: str, finish_reason: str | None, chunk: bool) -> dict:
        if not self.chat:
            return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
        key, payload = ("delta", {"content": text} if text else {}) if chunk else \
            ("message", {"role": "assistant", "content": text})
        return {"index": index, key: payload, "finish_reason": finish_reason, "logprobs": None}

    def usage(self, run: Run) -> dict:
        prompt = sum(run.prompt_tokens)   # each prompt counted once, not once per choice
        completion = sum(choice.tokens for choice in run.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def completion(self, run: Run, texts: list[str], reasons: list[str | None]) -> dict:
        choices = [self.choice(i, text, reason, chunk=False) for i, (text, reason) in enumerate(zip(texts, reasons))]
        return {**self.meta, "object": "chat.completion" if self.chat else "text_completion", "choices": choices,
                "usage": self.usage(run), **self.notice}

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
                                       "finish_reason": None, "logprobs": None} for i in range(len(run.choices))],
                                     **self.notice)
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
