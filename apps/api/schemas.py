"""Request bodies of the OpenAI-compatible routes (responses are plain dicts built in ``server``).

Standard OpenAI fields keep their OpenAI meaning; ``steps``, ``guidance_scale``, ``guidance_rescale``,
``guidance_interval``, ``top_k`` and ``repetition_penalty`` are Cola extras (send them with the client's
``extra_body``). Unknown fields are ignored, as OpenAI-compatible servers commonly do. Every string must be
valid Unicode (no lone surrogates, which JSON's ``\\ud800`` escapes can smuggle in).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from cola_core.seeds import MAX_SEED

MAX_N = 8                 # choices per prompt
MAX_STOPS = 16            # stop strings per request (lm-evaluation-harness tasks send up to 6)
MAX_STOP_CHARS = 256      # characters per stop string
MAX_STEPS = 256           # flow-matching steps per block


def _valid_unicode(value: Any) -> Any:
    """Refuse strings that cannot be encoded as UTF-8 (lone surrogates)."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PydanticCustomError(
                "invalid_unicode", "text is not valid Unicode: lone surrogate U+{code} at character {position}",
                {"code": f"{ord(value[exc.start]):04X}", "position": exc.start}) from None
    return value


Text = Annotated[str, BeforeValidator(_valid_unicode)]
TokenId = Annotated[int, Field(ge=0, strict=True)]


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(type(token) is int for token in value)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="ignore")

    model: Text = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: Text | list[Text] | None = Field(default=None, validate_default=True)
    stream: bool = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)   # cola_core's one seed rule
    logprobs: bool | int | None = None
    user: Text | None = None
    # Cola extras
    steps: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    guidance_rescale: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)   # CFG-rescale phi
    guidance_interval: tuple[float, float] | None = None   # guide only for t/T in [lo, hi] (checked by the knobs)
    top_k: int | None = Field(default=None, ge=0)
    repetition_penalty: float | None = Field(default=None, gt=0, le=10, allow_inf_nan=False)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOPS:
            raise PydanticCustomError("too_many_stop_strings", "at most {limit} stop strings are allowed, got {count}",
                                      {"limit": MAX_STOPS, "count": len(stops)})
        for index, stop in enumerate(stops):
            if not stop or len(stop) > MAX_STOP_CHARS:
                raise PydanticCustomError("invalid_stop_string",
                                          "stop string {index} has {length} characters; allowed: 1 to {limit}",
                                          {"index": index, "length": len(stop), "limit": MAX_STOP_CHARS})
        return stops

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    """``prompt``: a text, a list of texts, a list of token ids, or a list of token-id lists (as OpenAI)."""

    prompt: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    echo: bool = False
    suffix: Text | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise PydanticCustomError("empty_prompt_list", "prompt list must not be empty")
        if isinstance(value, str) or _is_token_ids(value) or (
                isinstance(value, list) and (all(isinstance(p, str) for p in value)
                                             or all(_is_token_ids(p) for p in value))):
            return value
        raise PydanticCustomError("invalid_prompt", "prompt must be a string, a list of strings, a list of token ids "
                                                    "(integers), or a list of token-id lists")

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text or a token-id list."""
        if isinstance(self.prompt, str) or _is_token_ids(self.prompt):
            return [self.prompt]
        return list(self.prompt)

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens


class TokenizeRequest(BaseModel):
    """vLLM's ``POST /tokenize`` for a text prompt."""

    model_config = ConfigDict(extra="ignore")

    model: Text | None = None
    prompt: Text
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    """vLLM's ``POST /detokenize``."""

    model_config = ConfigDict(extra="ignore")

    model: Text | None = None
    tokens: list[TokenId]
