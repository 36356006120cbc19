"""Cheap prompt checks run on the event loop before a request takes a queue slot: each is linear in the
request body, so no request reaches tokenising or generating with ids the model does not have or with a
text that surely exceeds the model's context."""
from __future__ import annotations

from .backend import Chat, GenerationBackend, Prompt
from .errors import APIError


def check_token_ids(backend: GenerationBackend, ids: list[int], param: str) -> None:
    """400 naming ``param`` when an id is outside the vocabulary."""
    vocab = backend.tokenizer.vocab_size
    bad = next((i for i, token in enumerate(ids) if token >= vocab), None)
    if bad is not None:
        raise APIError(400, f"{param}: token id {ids[bad]} at position {bad} is outside the vocabulary "
                            f"[0, {vocab})", param=param, code="invalid_token_id")


def check_text_length(backend: GenerationBackend, chars: int, param: str) -> None:
    """400 naming ``param`` when a text of ``chars`` characters surely has more tokens than the model holds."""
    if backend.max_prompt_chars is not None and chars > backend.max_prompt_chars:
        raise APIError(400, f"{param}: {chars} characters, surely more than the model's {backend.max_prompt_tokens} "
                            f"tokens", param=param, code="prompt_too_long")


def check_prompts(backend: GenerationBackend, prompts: list[Prompt], param: str) -> None:
    """Every prompt of a request: token ids in the vocabulary and not too many, texts not surely too long."""
    for prompt in prompts:
        if isinstance(prompt, Chat):     # older messages are left out when the chat is long; the newest must fit
            check_text_length(backend, max(len(content) for _, content in prompt.messages), param)
        elif isinstance(prompt, str):
            check_text_length(backend, len(prompt), param)
        elif len(prompt) > backend.max_prompt_tokens:
            raise APIError(400, f"{param}: {len(prompt)} tokens, more than the model's {backend.max_prompt_tokens}",
                           param=param, code="prompt_too_long")
        else:
            check_token_ids(backend, prompt, param)
