"""vLLM-style tokenizer routes, as lm-evaluation-harness's remote tokenizer uses them."""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from apps.api import create_app
from cola_core.config import MAX_POSITIONS


@pytest.fixture(scope="module")
def client(tiny_model):
    with TestClient(create_app(tiny_model)) as client:
        yield client


def test_tokenizer_info_names_the_special_tokens_and_the_context(client, tiny_model):
    info = client.get("/tokenizer_info").json()
    tok = tiny_model.tokenizer
    assert info["eos_token"] == "<|endoftext|>" == tok.id_to_token(tok.eos_id)
    assert info["pad_token"] == tok.id_to_token(tok.pad_id) and info["bos_token"] is None
    assert info["vocab_size"] == tok.vocab_size
    assert info["model_max_length"] == MAX_POSITIONS * tiny_model.patch_size
    assert info["chat_template"] is None


def test_tokenize_and_detokenize_round_trip(client, tiny_model):
    text = "The cat sat — 日本"
    out = client.post("/tokenize", json={"prompt": text}).json()
    assert out["tokens"] == tiny_model.tokenizer.encode(text) and out["count"] == len(out["tokens"])
    assert out["max_model_len"] == MAX_POSITIONS * tiny_model.patch_size
    assert client.post("/detokenize", json={"tokens": out["tokens"]}).json() == {"prompt": text}


def test_the_eos_string_tokenises_to_the_eos_id_as_the_harness_expects(client, tiny_model):
    """The harness takes eos_token_id = tokenize(eos_token, add_special_tokens=False)[0]."""
    out = client.post("/tokenize", json={"prompt": "<|endoftext|>", "add_special_tokens": False}).json()
    assert out["tokens"] == [tiny_model.tokenizer.eos_id]


def test_tokenize_accepts_the_served_model_name(client):
    assert client.post("/tokenize", json={"model": "cola-dlm", "prompt": "x"}).status_code == 200
