"""Data parallel training: two gloo processes give the single-process loss for the same global batch."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from cola_core.training.checkpoints import latest_state
from cola_core.training.stages import train_vae
from training_utils import make_corpus, vae_config

STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str, corpus: str, tokenizer: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    from pathlib import Path
    try:
        train_vae(vae_config(Path(tmp), Path(corpus), steps=STEPS, num_threads=1, tokenizer=tokenizer))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _first_losses(run_dir) -> dict:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in lines if r["split"] == "train")


@pytest.mark.heavy   # spawns processes / encodes a whole split
def test_two_gloo_ranks_match_one_process(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    single = tmp_path / "single"
    train_vae(vae_config(single, corpus, steps=STEPS, num_threads=1))
    tokenizer = str(single / "vae" / "tokenizer.json")
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp"), str(corpus), tokenizer), nprocs=2, join=True)

    one, two = _first_losses(single / "vae"), _first_losses(tmp_path / "ddp" / "vae")
    for key in ("loss", "recon", "kl", "mask"):
        assert abs(one[key] - two[key]) < 1e-5 * max(1.0, abs(one[key])), key
    a = latest_state(single / "vae").tensors
    b = latest_state(tmp_path / "ddp" / "vae").tensors
    for key in a:
        if key.startswith("model."):
            assert torch.allclose(a[key], b[key], atol=1e-4), key   # summed gradients, same updates
