"""Document start: texts a DiT is trained to start after, put before every text prompt so its first block is guided."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from cola_core import load_pretrained
from cola_core.checkpoint import DOCUMENT_START_KEY
from cola_core.errors import CheckpointError, ConfigError
from cola_core.generate import BlockwiseSampler, GenerationConfig, generate
from cola_core.training.data import TokenDataset
from training_utils import dit_config


def with_document_start(model, ids):
    """A shallow copy of ``model`` whose DiT config carries ``ids`` as its document start."""
    out = copy.copy(model)
    out.dit_config = copy.deepcopy(model.dit_config)
    out.dit_config.extra[DOCUMENT_START_KEY] = ids
    return out


def test_precede_puts_the_start_before_a_fixed_share_of_rows(tiny_model):
    texts = [f"text number {i}" for i in range(400)]
    data = TokenDataset(texts, tiny_model.tokenizer, 8, 4, 1)
    plain = [list(row) for row in data.rows]
    data.precede([7, 8], 0.5, seed=3)
    started = [row[:2] == [7, 8] and row[2:] == old[:6] for row, old in zip(data.rows, plain)]
    untouched = [row == old for row, old in zip(data.rows, plain)]
    assert all(a != b for a, b in zip(started, untouched))                  # each row one or the other
    assert 150 < sum(started) < 250 and all(len(row) <= 8 for row in data.rows)   # about half, cut to max_tokens
    again = TokenDataset(texts, tiny_model.tokenizer, 8, 4, 1)
    again.precede([7, 8], 0.5, seed=3)
    assert again.rows == data.rows                                         # a fixed share: the same rows every run


def test_document_start_config_fields_go_together(tmp_path):
    vae = tmp_path / "vae"
    with pytest.raises(ConfigError, match="'document_start' and 'document_start_share' .* go together"):
        dit_config(tmp_path, tmp_path, vae, document_start="\n\n")
    with pytest.raises(ConfigError, match="go together"):
        dit_config(tmp_path, tmp_path, vae, document_start="\n\n", document_start_share=1.5)
    with pytest.raises(ConfigError, match="'document_start' trains a new DiT"):
        dit_config(tmp_path, tmp_path, None, document_start="\n\n", document_start_share=0.5, vae="",
                   init_from="pocket", model={})


def test_text_prompts_start_after_the_document_start_and_ids_stay_as_given(tiny_model):
    block = tiny_model.block_size * tiny_model.patch_size
    start = tiny_model.tokenizer.encode("the river flows")[:1] * block
    model = with_document_start(tiny_model, start)
    config = GenerationConfig(steps=2, max_new_tokens=4, seed=0)
    for prompt in ("", "the river"):
        text_run = generate(model, [prompt], config)[0]
        ids_run = generate(tiny_model, [start + tiny_model.tokenizer.encode(prompt)], config)[0]
        assert text_run.completion_ids == ids_run.completion_ids and text_run.prompt == prompt
    sampler = BlockwiseSampler(model, [""], config)
    assert sampler.prepared.prefix.shape[1] == tiny_model.block_size          # an unprompted sample has a prefix
    raw = BlockwiseSampler(model, [[5, 6]], config)                           # token ids are used as given
    assert raw.prepared.prefix.shape[1] == 0


@pytest.mark.parametrize("ids", [[1, 2, 3], "abc", [1.5] * 4, [10 ** 9] * 4])
def test_a_malformed_document_start_is_a_clear_error_at_load(ckpt, ids):
    config = ckpt / "cola_dlm" / "cola_dit" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), DOCUMENT_START_KEY: ids}))
    with pytest.raises(CheckpointError, match="config.json: 'document_start_ids' must be a list of token ids"):
        load_pretrained(ckpt)


def test_the_release_has_no_document_start(tiny_model):
    assert tiny_model.document_start_ids == []
    assert tiny_model.prompt_ids("the river") == tiny_model.tokenizer.encode("the river")
    assert torch.equal(torch.tensor(tiny_model.prompt_ids("")), torch.tensor([], dtype=torch.long))
