"""vLLM-style tokenizer routes: ``GET /tokenizer_info``, ``POST /tokenize``, ``POST /detokenize``.

lm-evaluation-harness's ``local-completions`` looks for them to tokenise on the server (its default
``tokenizer_backend="auto"``). Tokenising runs in its own one-thread pool, so it never waits behind a
generation and never blocks the event loop.
"""
from __future__ import annotations

from typing import Callable

from fastapi import APIRouter

from .backend import GenerationBackend
from .limits import WorkerPool
from .prompt_checks import check_text_length, check_token_ids
from .schemas import DetokenizeRequest, TokenizeRequest


def tokenizer_router(backend_for: Callable[[str | None], GenerationBackend], dependencies: list,
                     pool: WorkerPool) -> APIRouter:
    """The three routes; ``backend_for(model)`` resolves the served model (404 for another name)."""
    router = APIRouter(dependencies=dependencies)

    @router.get("/tokenizer_info")
    async def tokenizer_info() -> dict:
        backend = backend_for(None)
        tok = backend.tokenizer
        return {"tokenizer_class": type(tok).__name__, "vocab_size": tok.vocab_size,
                "model_max_length": backend.max_prompt_tokens, "bos_token": None,
                "eos_token": tok.id_to_token(tok.eos_id), "pad_token": tok.id_to_token(tok.pad_id),
                "unk_token": None, "chat_template": None}

    @router.post("/tokenize")
    async def tokenize(body: TokenizeRequest) -> dict:
        backend = backend_for(body.model)
        check_text_length(backend, len(body.prompt), "prompt")
        ids = await pool.call(_encode, backend, body.prompt, body.add_special_tokens)
        return {"count": len(ids), "max_model_len": backend.max_prompt_tokens, "tokens": ids, "token_strs": None}

    @router.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> dict:
        backend = backend_for(body.model)
        check_token_ids(backend, body.tokens, "tokens")
        return {"prompt": await pool.call(backend.tokenizer.decode, body.tokens)}

    return router


def _encode(backend: GenerationBackend, text: str, add_special_tokens: bool) -> list[int]:
    """Ids of ``text``; special-token strings in it become their ids, as with vLLM's /tokenize."""
    if add_special_tokens:
        return backend.tokenizer.encode(text)
    return backend.tokenizer.backend.encode(text, add_special_tokens=False).ids
