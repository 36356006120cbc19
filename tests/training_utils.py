"""Helpers for the training tests: a tiny synthetic corpus and tiny stage configs that train in seconds."""
from __future__ import annotations

import random
from pathlib import Path

from cola_core.training.config import config_from_dict
from cola_core.training.corpus import write_jsonl

SUBJECTS = ["the cat", "a dog", "the old man", "a small bird", "the child", "my friend"]
VERBS = ["sees", "likes", "finds", "eats", "follows", "wants"]
OBJECTS = ["the ball", "some bread", "a red apple", "the river", "an old book", "the garden"]

TINY_VAE_MODEL = {"dim": 32, "ffn_dim": 64, "num_heads": 2, "encoder_num_blocks": 1, "decoder_num_blocks": 1,
                  "latent_dim": 4, "block_size": 4}
TINY_DIT_MODEL = {"txt_dim": 32, "emb_dim": 32, "heads": 2, "head_dim": 16, "num_layers": 1, "rope_dim": 8}


def make_corpus(folder: Path, n_train: int = 240) -> Path:
    """Deterministic subject-verb-object sentences split into train/val/test JSONL."""
    rng = random.Random(0)
    texts = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}" for _ in range(n_train + 64)]
    write_jsonl(folder / "train.jsonl", texts[:n_train])
    write_jsonl(folder / "val.jsonl", texts[n_train:n_train + 32])
    write_jsonl(folder / "test.jsonl", texts[n_train + 32:])
    return folder


def vae_config(tmp: Path, corpus: Path, **overrides):
    raw = {"corpus": str(corpus), "run_dir": str(tmp / "vae"), "out_dir": str(tmp / "vae" / "model"),
           "vocab_size": 300, "max_tokens": 16, "steps": 12, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2,
           "val_every": 0, "val_batches": 2, "save_every": 0, "log_every": 1, "stats_batches": 2, "device": "cpu",
           "decoder_noise": 0.2, "model": dict(TINY_VAE_MODEL)}
    raw.update(overrides)
    return config_from_dict("vae", raw, source="test")


def dit_config(tmp: Path, corpus: Path, vae_dir: Path, **overrides):
    raw = {"corpus": str(corpus), "vae": str(vae_dir), "run_dir": str(tmp / "dit"), "out_dir": str(tmp / "final"),
           "max_tokens": 16, "steps": 12, "batch_size": 16, "lr": 3e-3, "warmup_steps": 2, "val_every": 0,
           "val_batches": 2, "save_every": 0, "log_every": 1, "device": "cpu", "prompt_block_prob": 0.3,
           "model": dict(TINY_DIT_MODEL)}
    raw.update(overrides)
    return config_from_dict("dit", raw, source="test")
