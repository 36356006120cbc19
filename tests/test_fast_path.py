"""The fast DiT path (cola_core.static_prior) against the eager one: same tokens, latents within 1e-5.

On a CPU the fast path runs the code CUDA graphs capture, eagerly: a static KV cache, the modulation
table, prefill/commit fused into the next pass, and (``static_keys``) attention over the whole capacity.
"""
from __future__ import annotations

import pytest
import torch

from cola_core import load_pretrained
from cola_core.attention import KVCache
from cola_core.errors import ColaError
from cola_core.dit import ModulationTable
from cola_core.generate import BlockwiseSampler, GenerationConfig, generate
from cola_core.hook_points import Taps, tapping
from cola_core.static_prior import KEPT, StaticPriorContext, row_count_independent, static_capacity

PROMPTS = ["The river flows slowly", "Water", "She opened the door and"]
CONFIG = GenerationConfig(steps=4, guidance=3.0, max_new_tokens=12, seed=3, stop_at_eos=False)
EVERYTHING = dict(static_keys=True, table=True, fuse=True)   # every fast feature, as on CUDA


def run(model, fast: bool, options: dict | None = None, config: GenerationConfig = CONFIG, prompts=PROMPTS):
    """(untrimmed ids, block latents (n, B, bs, C), velocities (n, 2B, bs, C)) of one sampler run."""
    sampler = BlockwiseSampler(model, prompts, config, fast=fast)
    sampler.prior_options = options or {}
    latents, velocities = [], []
    for event, state in sampler.events():
        if event == "guidance":
            velocities.append(torch.cat([state.v_cond, state.v_uncond]).float())
        elif event == "block_end":
            latents.append(state.z.clone())
    return [g.untrimmed_ids for g in sampler.result()], torch.stack(latents), torch.stack(velocities)


@pytest.fixture(scope="module")
def bf16_model(fixture_dir):
    return load_pretrained(fixture_dir, dtype="bfloat16")


@pytest.mark.parametrize("fixture", ["tiny_model", "patch2_model"])
def test_every_fast_feature_gives_the_eager_tokens(fixture, request):
    model = request.getfixturevalue(fixture)
    ids, latents, velocities = run(model, fast=False)
    fast_ids, fast_latents, fast_velocities = run(model, fast=True, options=EVERYTHING)
    assert fast_ids == ids
    assert (fast_latents - latents).abs().max() < 1e-5      # fp32 GEMMs round by row count (MKL)
    assert (fast_velocities - velocities).abs().max() < 1e-5


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_default_fast_path_is_bit_identical_on_cpu(tiny_model, bf16_model, solver):
    """fp32 keeps the eager row counts; bf16 takes modulations from the table and oneDNN gives the same bits."""
    config = GenerationConfig(**{**CONFIG.__dict__, "solver": solver})
    assert not row_count_independent(tiny_model) and row_count_independent(bf16_model)
    for model in (tiny_model, bf16_model):
        ids, latents, velocities = run(model, fast=False, config=config)
        fast_ids, fast_latents, fast_velocities = run(model, fast=True, config=config)
        assert fast_ids == ids and torch.equal(fast_latents, latents) and torch.equal(fast_velocities, velocities)


def test_generate_is_fast_by_default_and_matches_eager(bf16_model):
    knobs = dict(steps=3, max_new_tokens=8, seed=1, stop_at_eos=False)
    assert [g.text for g in generate(bf16_model, PROMPTS, **knobs)] == \
           [g.text for g in generate(bf16_model, PROMPTS, fast=False, **knobs)]


class Counting(Taps):
    """Counts DiT forwards (the ``velocity`` point of their cond rows, or of the whole call)."""

    def __init__(self):
        super().__init__()
        self.forwards = 0

    def see(self, name, x):
        self.forwards += name.endswith(".velocity") and ".uncond." not in name


def test_a_listener_gets_the_eager_passes(bf16_model):
    """Under a Taps listener nothing is fused or graphed: every prefill and commit is its own tapped forward."""
    ids, latents, _ = run(bf16_model, fast=False)
    counts = []
    for fast, options in ((False, None), (True, EVERYTHING)):
        with tapping(Counting()) as taps:
            fast_ids, fast_latents, _ = run(bf16_model, fast=fast, options=options)
        counts.append(taps.forwards)
        assert fast_ids == ids and torch.equal(fast_latents, latents)
    blocks, steps = latents.shape[0], CONFIG.steps
    assert counts[0] == counts[1] == 1 + blocks * steps + (blocks - 1)   # prefill, steps, commits


def test_calls_reuse_and_empty_the_kept_resources(bf16_model):
    """A second call (other prompts, then the first again) reuses the kept cache and table, emptied."""
    first = run(bf16_model, fast=True, options=EVERYTHING)
    run(bf16_model, fast=True, options=EVERYTHING, prompts=["a b c d e f g h i j k l m n o p q r s t u v"])
    again = run(bf16_model, fast=True, options=EVERYTHING)
    assert again[0] == first[0] and torch.equal(again[1], first[1])
    shelf = bf16_model.runtime["static_prior"]
    assert 1 <= len(shelf) <= KEPT and all(r.cache.lengths.sum() == 0 for r in shelf)


def test_workbench_sessions_with_hooks_or_taps_run_eagerly(wb):
    assert wb._session(PROMPTS, None, None, dict(steps=2)).sampler.fast
    assert not wb._session(PROMPTS, None, {"guided": lambda state: None}, dict(steps=2)).sampler.fast
    assert not wb._session(PROMPTS, None, None, dict(steps=2), keep=lambda run: set()).sampler.fast


def test_static_cache_is_fixed_and_resets(tiny_model):
    cache = KVCache.static(rows=2, num_layers=1, capacity=8)
    k = torch.zeros(2, 1, 4, 2)
    view = cache.view()
    keys, _ = view.write(0, k, k, torch.arange(4).expand(2, -1), key_len=8)
    assert keys.shape == (2, 1, 8, 2)
    view.commit(torch.tensor([4, 2]))
    assert cache.lengths.tolist() == [4, 2] and cache.device_offsets(torch.device("cpu")).tolist() == [4, 2]
    with pytest.raises(ColaError, match="holds 8 positions"):
        view.write(0, k, k, torch.arange(4).expand(2, -1) + 8, key_len=12)
    cache.reset()
    assert cache.lengths.tolist() == [0, 0] and cache.device_lengths.tolist() == [0, 0]
    assert static_capacity(1) == 64 and static_capacity(65) == 128


def test_modulation_table_grows_and_keeps_its_rows(tiny_model):
    dit = tiny_model.dit
    table = ModulationTable(dit, torch.float32, torch.device("cpu"), slots=2)
    table.add([1000.0, 0.0])
    before = {m: out[:2].clone() for m, out in table.outputs.items()}
    version = table.version
    table.add([500.0, 250.0, 0.0])
    assert table.version == version + 1 and len(table.slot) == 4
    assert all(torch.equal(table.outputs[m][:2], before[m]) for m in before)
    t = torch.tensor([[500.0, 0.0]])
    rows = table.rows(t)
    module = dit.modulations()[0]
    expected = module(dit.emb_in(torch.tensor([500.0, 0.0]), torch.float32))
    assert torch.allclose(rows.project(module)[0], expected, atol=1e-6)


def test_static_prior_releases_once(bf16_model):
    prior = StaticPriorContext(bf16_model, batch=1, capacity=8)
    prior.release()
    prior.release()
    assert prior.resources is None


def test_the_bench_generates_through_the_fast_path(tiny_model, monkeypatch):
    """``bench run`` (the model card's evaluation) takes the fast path; its summary reports samples/s."""
    from pathlib import Path

    import cola_core.generate as generation
    from workbench.bench import BenchConfig, generate_records, load_items
    built = []

    class Counted(StaticPriorContext):
        def __init__(self, *args, **kwargs):
            built.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(generation, "StaticPriorContext", Counted)
    tasks = Path(__file__).parent / "fixtures" / "cola-eval-release"
    items = load_items(tasks / "siqa.jsonl", "siqa", max_samples=2)
    records = generate_records(tiny_model, items, BenchConfig(steps=2, max_new_tokens=4))
    assert built == [2] and len(records) == 2


def test_graphed_passes_replay_static_buffers(tiny_model):
    """The graph plumbing (static inputs, table slots, output copies, one capture per recurring shape, kept
    across calls) with EagerGraph standing in for CUDA graphs: the same numbers as the ungraphed fast path."""
    plain = run(tiny_model, fast=True, options=EVERYTHING)
    model_runtime = tiny_model.runtime.setdefault("static_prior", [])
    model_runtime.clear()
    graphed = run(tiny_model, fast=True, options={**EVERYTHING, "graphs": True})
    assert graphed[0] == plain[0] and torch.equal(graphed[1], plain[1]) and torch.equal(graphed[2], plain[2])
    (kept,) = tiny_model.runtime["static_prior"]
    assert kept.captures == 2 and len(kept.graphs) == 2   # the guided pair, and the pair fused with a commit
    again = run(tiny_model, fast=True, options={**EVERYTHING, "graphs": True})
    assert again[0] == plain[0] and kept.captures == 2
