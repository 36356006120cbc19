"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official ``openai`` client."""
from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import openai
import pytest

from api_test_utils import assert_openai_error, raw, serving, wait_in_flight
from apps.api import GenerationBackend, create_app
from apps.api.backend import sample_id
from cola_core.errors import GenerationError
from cola_core.generate import generate

KEY = "sk-test-0123456789"
MODEL = "cola-dlm"
STEPS = 4
MAX_TOKENS = 12
BODY_CAP = 32 * 1024
TOKENS_CAP = 64


@pytest.fixture(scope="module")
def server(tiny_model):
    app = create_app(tiny_model, api_key=KEY, max_body_bytes=BODY_CAP, max_tokens_cap=TOKENS_CAP,
                     queue_size=64, concurrency=4)
    with serving(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key=KEY, base_url=f"{server}/v1", max_retries=0, timeout=60)


def expected(model, prompts: list[str | list[int]], n: int = 1, seed: int = 7, max_tokens: int = MAX_TOKENS,
             **knobs):
    """What the server must answer (greedy): generate() on rows (prompt x n) with the API's sample ids,
    cut at EOS/im_end."""
    ids_of = [model.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
    rows = [ids for ids in ids_of for _ in range(n)]
    sample_ids = [sample_id(ids, choice) for ids in ids_of for choice in range(n)]
    out = []
    for result in generate(model, rows, steps=STEPS, max_new_tokens=max_tokens, seed=seed, sample_ids=sample_ids,
                           **knobs):
        ids = result.token_ids[:max_tokens]
        cut = next((i for i, t in enumerate(ids) if t in model.tokenizer.stop_ids), len(ids))
        stopped = cut < len(ids) or result.stopped_at_eos
        out.append((model.tokenizer.decode(ids[:cut]), "stop" if stopped else "length", cut))
    return out


def chat_prompt(model, content: str) -> list[int]:
    return GenerationBackend(model).chat_prompt([("user", content)])[0]


# -- happy paths ---------------------------------------------------------------------------------------

def test_health_is_open_and_models_lists_the_served_model(server, client):
    status, _, body = raw(server, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_completion_equals_the_sampler_result(tiny_model, client):
    response = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "The cat sat"}],
                                              max_tokens=MAX_TOKENS, seed=7, temperature=0,
                                              extra_body={"steps": STEPS})
    prompt = chat_prompt(tiny_model, "The cat sat")
    (text, reason, tokens), = expected(tiny_model, [prompt])
    choice, = response.choices
    assert choice.message.role == "assistant" and choice.message.content == text
    assert choice.finish_reason == reason
    assert response.object == "chat.completion" and response.model == MODEL
    assert response.usage.prompt_tokens == len(prompt)
    assert response.usage.completion_tokens == tokens
    assert response.usage.total_tokens == response.usage.prompt_tokens + tokens


def test_streamed_chat_joins_to_the_non_streamed_text(client):
    kwargs = dict(model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "héllo wörld"}],
                  max_tokens=MAX_TOKENS, seed=11, temperature=0.8, extra_body={"steps": STEPS})
    full = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == full.message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.finish_reason
    assert not any(p.endswith("\ufffd") for p in pieces[:-1])       # split characters are held back
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_completions_with_prompt_list_and_n_match_the_sampler(tiny_model, client):
    prompts = ["The cat sat", "A dog"]
    response = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=MAX_TOKENS, seed=5,
                                         temperature=0, extra_body={"steps": STEPS, "guidance_scale": 3.0})
    want = expected(tiny_model, prompts, n=2, seed=5, guidance=3.0)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert [(c.text, c.finish_reason) for c in response.choices] == [(t, r) for t, r, _ in want]
    assert response.choices[0].text != response.choices[1].text      # per-choice sample ids -> distinct noise
    assert response.usage.prompt_tokens == sum(len(tiny_model.tokenizer.encode(p)) for p in prompts)
    assert response.usage.completion_tokens == sum(tokens for _, _, tokens in want)

    streamed = ["", "", "", ""]
    reasons: dict[int, str] = {}
    for chunk in client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=MAX_TOKENS, seed=5,
                                           temperature=0, stream=True,
                                           extra_body={"steps": STEPS, "guidance_scale": 3.0}):
        for c in chunk.choices:
            streamed[c.index] += c.text
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert streamed == [c.text for c in response.choices]
    assert reasons == {c.index: c.finish_reason for c in response.choices}


def test_stream_is_sse_with_one_chunk_per_decoded_block_then_done(server):
    body = json.dumps({"model": MODEL, "prompt": "The cat sat", "max_tokens": MAX_TOKENS, "seed": 7,
                       "steps": STEPS, "stream": True}).encode()
    status, headers, data = raw(server, "POST", "/v1/completions", body,
                                {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in data.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert 1 <= len(chunks) <= MAX_TOKENS // 4 + 1             # the tiny model decodes 4 tokens per block
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_stop_strings_truncate_text_with_finish_reason_stop(tiny_model, client):
    kwargs = dict(model=MODEL, prompt="The cat sat", max_tokens=MAX_TOKENS, seed=7, temperature=0,
                  extra_body={"steps": STEPS})
    full = client.completions.create(**kwargs).choices[0].text
    start = next(i for i in range(1, len(full) - 1) if "\ufffd" not in full[i:i + 2])
    stop = full[start:start + 2]
    cut = full[:full.find(stop)]
    choice = client.completions.create(stop=[stop, "never-seen"], **kwargs).choices[0]
    assert (choice.text, choice.finish_reason) == (cut, "stop")
    streamed = list(client.completions.create(stop=stop, stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut
    assert streamed[-1].choices[0].finish_reason == "stop"


# -- auth and bad input ----------------------------------------------------------------------------------

def test_requests_without_or_with_a_wrong_key_get_401(server):
    body = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 4}).encode()
    status, headers, data = raw(server, "POST", "/v1/completions", body, {"Content-Type": "application/json"})
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert assert_openai_error(data, code="missing_api_key")["type"] == "authentication_error"
    status, _, data = raw(server, "GET", "/v1/models", headers={"Authorization": "Basic abc"})
    assert status == 401
    wrong = openai.OpenAI(api_key="sk-wrong", base_url=f"{server}/v1", max_retries=0)
    for call in (lambda: wrong.models.list(),
                 lambda: wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])):
        with pytest.raises(openai.AuthenticationError) as info:
            call()
        assert info.value.status_code == 401
        assert_openai_error(info.value.response.json(), code="invalid_api_key")


@pytest.mark.parametrize("extra, error, param", [
    ({"temperature": -1}, openai.BadRequestError, "temperature"),
    ({"top_p": 0}, openai.BadRequestError, "top_p"),
    ({"n": 100}, openai.BadRequestError, "n"),
    ({"stop": [f"s{i}" for i in range(17)]}, openai.BadRequestError, "stop"),
    ({"extra_body": {"steps": 0}}, openai.BadRequestError, "steps"),
    ({"extra_body": {"guidance_scale": "high"}}, openai.BadRequestError, "guidance_scale"),
    ({"max_tokens": TOKENS_CAP + 1}, openai.BadRequestError, "max_tokens"),
    ({"max_tokens": 0}, openai.BadRequestError, "max_tokens"),
    ({"logprobs": True}, openai.BadRequestError, "logprobs"),
    ({"model": "gpt-4o"}, openai.NotFoundError, "model"),
])
def test_bad_parameters_get_openai_errors(client, extra, error, param):
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, **extra}
    with pytest.raises(error) as info:
        client.chat.completions.create(**kwargs)
    assert_openai_error(info.value.response.json(), param=param)


def test_bad_message_and_prompt_shapes_name_the_field(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "x"}])
    assert_openai_error(info.value.response.json(), param="messages.0.role")
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[])
    assert_openai_error(info.value.response.json(), param="messages")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=[1, "two"])
    assert_openai_error(info.value.response.json(), param="prompt", code="invalid_prompt")
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="x", echo=True)
    assert_openai_error(info.value.response.json(), param="echo", code="unsupported_parameter")


def test_unparseable_json_is_400(server):
    status, _, data = raw(server, "POST", "/v1/completions", b"{not json",
                          {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert status == 400
    assert_openai_error(data, code="json_invalid")


def test_bodies_over_the_cap_get_413_declared_or_chunked(server, client):
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x" * BODY_CAP}])
    assert info.value.status_code == 413
    assert_openai_error(info.value.response.json(), code="request_too_large")
    body = json.dumps({"model": MODEL, "prompt": "x" * BODY_CAP}).encode()
    status, _, data = raw(server, "POST", "/v1/completions", body,
                          {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}, chunked=True)
    assert status == 413
    assert_openai_error(data, code="request_too_large")


def test_unknown_routes_get_404_json(server):
    for method, path, headers in (("GET", "/v1/engines", {"Authorization": f"Bearer {KEY}"}),
                                  ("POST", "/nope", {})):
        status, headers_out, data = raw(server, method, path, b"{}" if method == "POST" else None, headers)
        assert status == 404 and headers_out["content-type"] == "application/json"
        assert assert_openai_error(data, code="unknown_url")["type"] == "not_found_error"


def test_a_loader_is_called_once_at_startup(tiny_model):
    calls = []
    app = create_app(lambda: calls.append(1) or tiny_model, model_id="tiny")
    with serving(app) as url:
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        assert client.completions.create(model="tiny", prompt="A", max_tokens=4, seed=0).choices[0].finish_reason
    assert calls == [1]


@pytest.mark.parametrize("kwargs, message", [({"api_key": ""}, "api_key"), ({"concurrency": 0}, "concurrency"),
                                             ({"queue_size": -1}, "queue_size"),
                                             ({"max_tokens_cap": 0}, "max_tokens_cap")])
def test_bad_server_settings_are_refused(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_app(tiny_model, **kwargs)


# -- the bounded queue -----------------------------------------------------------------------------------

@dataclass
class GatedBackend(GenerationBackend):
    """Generation waits at a gate, so the test controls how many requests are in flight."""

    gate: threading.Event = field(default_factory=threading.Event)

    def open(self, job):
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


class SlowRun:
    """A run that takes 0.2 s per block and records each block it produced."""

    def __init__(self, run, produced: list):
        self.run, self.choices, self.prompt_tokens, self.produced = run, run.choices, run.prompt_tokens, produced

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


def test_a_client_that_hangs_up_stops_its_non_streaming_request(tiny_model):
    backend = SlowBackend(tiny_model)
    request = {"model": MODEL, "prompt": "The cat sat", "max_tokens": 48, "seed": 1, "steps": STEPS}
    with serving(create_app(backend)) as url:
        status, _, _ = raw(url, "POST", "/v1/completions", json.dumps(request).encode(),
                           {"Content-Type": "application/json"})
        full, backend.produced[:] = len(backend.produced), []
        assert status == 200 and full >= 8
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps(request).encode()
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            wait_in_flight(url, 1)
            time.sleep(0.3)
        wait_in_flight(url, 0)
    assert 1 <= len(backend.produced) < full // 2


class BrokenRun:
    """A run whose model breaks after the first block."""

    def __init__(self, run):
        self.run, self.choices, self.prompt_tokens = run, run.choices, run.prompt_tokens

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
