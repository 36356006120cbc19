"""The OpenAI-compatible server, live on 127.0.0.1, driven by the official ``openai`` client."""
from __future__ import annotations

import json

import openai
import pytest

from api_test_utils import assert_openai_error, raw, serving
from apps.api import GenerationBackend, create_app
from apps.api.backend import sample_id
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
    return GenerationBackend(model).chat_prompt([("user", content)], MAX_TOKENS).ids


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
    assert choice.message.role == "assistant" and choice.message.content == text.lstrip()   # a chat answer
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


def test_a_loader_is_called_once_at_startup(tiny_model):
    calls = []
    app = create_app(lambda: calls.append(1) or tiny_model, model_id="tiny")
    with serving(app) as url:
        client = openai.OpenAI(api_key="unused", base_url=f"{url}/v1", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        assert client.completions.create(model="tiny", prompt="A", max_tokens=4, seed=0).choices[0].finish_reason
    assert calls == [1]


@pytest.mark.parametrize("kwargs, message", [({"api_key": ""}, "api_key"), ({"concurrency": 0}, "concurrency"),
                                             ({"queue_size": -1}, "queue_size"), ({"max_batch": 0}, "max_batch"),
                                             ({"max_tokens_cap": 0}, "max_tokens_cap")])
def test_bad_server_settings_are_refused(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_app(tiny_model, **kwargs)


def test_the_server_batches_while_it_runs_unless_max_batch_is_1(tiny_model):
    body = json.dumps({"model": MODEL, "prompt": ["The cat sat", "A"], "n": 2, "max_tokens": 8, "seed": 5,
                       "steps": STEPS}).encode()
    answers = []
    for max_batch in (16, 1):
        backend = GenerationBackend(tiny_model)
        with serving(create_app(backend, max_batch=max_batch)) as url:
            assert (backend.service is not None) == (max_batch > 1)
            status, _, data = raw(url, "POST", "/v1/completions", body, {"Content-Type": "application/json"})
            assert status == 200
            answers.append([(c["text"], c["finish_reason"]) for c in json.loads(data)["choices"]])
        assert backend.service is None                        # shutdown closed the service
    assert answers[0] == answers[1] and len(answers[0]) == 4
