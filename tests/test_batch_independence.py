"""A record is a function of (checkpoint, text or prompt, knobs, seed, sample id) only: for every experiment
kind, and for the workbench verbs behind them, an item alone and the same item among other neighbours give
the same record."""
from __future__ import annotations

import math

import pytest

from workbench import Workbench
from workbench.diagnostics import diagnose
from workbench.experiments import run

GENERATION = {"steps": [2], "seed": [3, 4], "max_new_tokens": 10, "semantic": "off"}
PLACE = ("item", "item_index", "prompt_index", "index", "pair")   # where the item sits, not what it is


def close(x, y, rel: float) -> bool:
    """Equal, with floats (also inside lists) up to ``rel`` (NaN equals NaN)."""
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(close(u, v, rel) for u, v in zip(x, y))
    if isinstance(x, float) and isinstance(y, float):
        return (math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, rel=rel, abs=1e-6 if rel else 0)
    return x == y


def same(a: dict, b: dict, rel: float = 1e-4) -> None:
    """Records equal field by field; floats up to the rounding of batched kernels (texts, ids, flags exactly);
    ``rel=0``: bit for bit. After a whole trajectory that rounding reaches 2e-5 relative on some CPUs (BLAS
    blocks a batch of 3 rows differently from 1); a leak between rows moves numbers by far more."""
    assert set(a) == set(b)
    for key in set(a) - set(PLACE):
        assert close(a[key], b[key], rel), (key, a[key], b[key])


def records_of(result, prompt: str, key: str = "prompt") -> list[dict]:
    return [r for r in result.records if r[key] == prompt]


@pytest.mark.parametrize("kind", ["guidance_sweep", "trajectory"])
def test_generation_kinds_alone_and_among_neighbours(pocket_model, tmp_path, kind):
    prompt = "a small bird that"
    spec = {"kind": kind, "guidance": [5.0], **GENERATION}
    if kind == "trajectory":
        spec.update(guidance=5.0, steps=2, seed=[3], preview=True)
        del spec["semantic"]
    alone = run({**spec, "prompts": [prompt]}, tmp_path / "alone", model=pocket_model)
    among = run({**spec, "prompts": ["the act of", prompt, ""]}, tmp_path / "among", model=pocket_model)
    # Texts and ids are exact; latent norms after several guided blocks carry the batched kernels' rounding
    # amplified block by block (up to 9e-4 relative on one CPU), far below what a leak between rows moves.
    for a, b in zip(records_of(alone, prompt), records_of(among, prompt), strict=True):
        assert a["sample_id"] == b["sample_id"]
        same(a, b, rel=5e-3)
        assert "<|endoftext|>" not in a["text"]
    for a, b in zip(alone.summary, [r for r in among.summary if r["prompt"] == prompt], strict=True):
        same(a, b, rel=5e-3)   # population metrics across seeds


def test_interpolation_kind_alone_and_among_neighbours(tiny_model, tmp_path):
    pair = ["The cat sat on the mat.", "A river ran across the hill"]
    spec = {"kind": "interpolation", "alphas": [0.0, 0.4, 1.0], "method": ["slerp"], "semantic": "off"}
    alone = run({**spec, "pairs": [pair]}, tmp_path / "alone", model=tiny_model).records
    among = run({**spec, "pairs": [["tea", "a much longer text of many words to pad"], pair]}, tmp_path / "among",
                model=tiny_model).records
    for a, b in zip(alone, [r for r in among if r["start"] == pair[0]]):
        same(a, b, rel=0)


def test_recon_vs_prior_kind_alone_and_among_neighbours(tiny_model, tmp_path):
    text = "A river ran across the hill"
    spec = {"kind": "recon_vs_prior", "t_grid": [0.3, 0.8], "samples": 2, "batch_size": 2, "likelihood": True,
            "likelihood_solver": "rk4", "likelihood_steps": 2, "probes": 2}
    alone = run({**spec, "texts": [text]}, tmp_path / "alone", model=tiny_model).records
    among = run({**spec, "texts": ["tea", text, "The cat sat on the mat and looked at the sun."]}, tmp_path / "among",
                model=tiny_model).records
    same(alone[0], records_of_text(among, text), rel=0)   # texts are batched only with texts of their own length


def records_of_text(records: list[dict], text: str) -> dict:
    return next(r for r in records if r["text"] == text)


def test_diagnose_and_sampled_encoding_alone_and_among_neighbours(tiny_model):
    wb = Workbench(tiny_model)
    text = "A river ran across the hill"
    alone = diagnose(tiny_model, [text], t_grid=[0.5], samples=2).records()["per_text"][0]
    among = diagnose(tiny_model, ["tea", "the sun", text], t_grid=[0.5], samples=2, batch_size=2)
    same(alone, among.records()["per_text"][2], rel=0)
    z = wb.encode([text], sample=True, seed=4, sample_ids=[9]).z[0]
    assert (wb.encode(["x y z", text], sample=True, seed=4, sample_ids=[1, 9]).z[1] == z).all()
