"""Requests batched together (heavy: live uvicorn servers): 16 concurrent mixed requests on the batching server get
exactly the answers each gets alone from a server that gives every request its own sampler (``max_batch=1``)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from api_test_utils import serving, wait_in_flight
from apps.api import GenerationBackend, create_app

pytestmark = pytest.mark.heavy

MODEL = "cola-dlm"
PROMPTS = ["The cat", "A dog is a kind of animal that", "hello there my friend, what", "green", "a sea of light",
           "small house on the", "the tree", "Once upon a time"]


def _request(client: openai.OpenAI, i: int, stream: bool) -> list[tuple[str, str]]:
    """Request ``i`` of a mix: chat or text, n 1 or 2, seeds, guidance, max_tokens 3..26, a stop string, and two
    step counts (requests with other steps run in a batch of their own)."""
    knobs = dict(model=MODEL, max_tokens=3 + 7 * (i % 4), seed=200 + i, temperature=0.0 if i % 3 else 0.8,
                 n=1 + (i % 5 == 0), stop=[" of"] if i % 4 == 1 else None,
                 extra_body={"steps": 4 if i % 6 else 3, "guidance_scale": (3.0, 7.0)[i % 2]})
    if i % 2:
        call = lambda **kw: client.chat.completions.create(   # noqa: E731
            messages=[{"role": "user", "content": PROMPTS[i % 8]}], **kw)
        text = lambda c: (c.delta.content if stream else c.message.content) or ""   # noqa: E731
    else:
        call = lambda **kw: client.completions.create(prompt=PROMPTS[i % 8], **kw)   # noqa: E731
        text = lambda c: c.text or ""   # noqa: E731
    answers = [["", None] for _ in range(knobs["n"])]
    for chunk in call(stream=True, **knobs) if stream else [call(**knobs)]:
        for choice in chunk.choices:
            answers[choice.index][0] += text(choice)
            answers[choice.index][1] = choice.finish_reason or answers[choice.index][1]
    return [tuple(answer) for answer in answers]


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0, timeout=120)


def test_16_concurrent_mixed_requests_equal_each_request_served_alone(pocket_model):
    with serving(create_app(GenerationBackend(pocket_model), max_batch=1, concurrency=1)) as url:
        alone = [_request(_client(url), i, stream=False) for i in range(16)]
    backend = GenerationBackend(pocket_model)
    with serving(create_app(backend, max_batch=16, concurrency=16)) as url:
        client = _client(url)
        with ThreadPoolExecutor(max_workers=16) as pool:
            together = list(pool.map(lambda i: _request(client, i, stream=i % 2 == 0), range(16)))
        wait_in_flight(url, 0)
        engine = backend.service.engine
        assert engine.peak_rows > 4 and engine.rows_stepped > 2 * engine.steps   # requests really shared steps
    assert together == alone
    reasons = {reason for answers in alone for _, reason in answers}
    assert reasons == {"stop", "length"}                                        # some end at EOS/stop, some at max
    assert len({answers for answers in map(tuple, alone)}) == 16
    assert backend.service is None                                              # the server's shutdown closed it
