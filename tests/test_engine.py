"""The batching engine and its service: a row's tokens are the same request's alone, bit for bit, whether it
joins a running batch mid-run, leaves early (EOS, max tokens, cancelled) or shares the batch with other knobs."""
from __future__ import annotations

import threading

import pytest
import torch

from cola_core.attention import KVCache, stack_rows
from cola_core.engine import BatchFailure, Engine, arrivals, batch_key
from cola_core.errors import ColaError
from cola_core.generate import BlockwiseSampler, GenerationConfig, generate
from workbench.serving import GenerationService, Solo

PROMPTS = ["The cat", "A dog is a kind of animal that", "", "hello there my friend, what", "green", "a sea of",
           "small house", "the tree runs over into light"]


def _config(i: int, **knobs) -> GenerationConfig:
    """Per-row knobs that share a batch: seed, guidance, max_new_tokens."""
    return GenerationConfig(**{"steps": 4, "seed": 10 + i, "guidance": (3.0, 7.0)[i % 2],
                               "max_new_tokens": 3 + 5 * (i % 4), **knobs})


def _alone(model, i: int, config: GenerationConfig):
    return generate(model, [PROMPTS[i]], config, sample_ids=[i])[0]


def _serve(model, requests, max_rows: int, per_step: int = 1) -> tuple[Engine, dict]:
    """Run ``requests`` [(i, config)] through an engine, ``per_step`` arriving before each step; rows by i."""
    engine, rows, pending = Engine(model, max_rows), {}, list(requests)
    while pending or not engine.idle:
        for i, config in pending[:per_step]:
            new = arrivals(BlockwiseSampler(model, [PROMPTS[i]], config, sample_ids=[i]))
            rows[i] = new.rows[0]
            engine.add(new)
        del pending[:per_step]
        engine.step()
    return engine, rows


def _same(model, row, alone) -> bool:
    got = row.result(model.tokenizer)
    return (got.untrimmed_ids, got.completion_ids, got.end_block, got.stopped_at_eos) == \
        (alone.untrimmed_ids, alone.completion_ids, alone.end_block, alone.stopped_at_eos)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_rows_joining_mid_run_and_leaving_early_equal_each_request_alone(pocket_model, temperature):
    requests = [(i, _config(i, temperature=temperature)) for i in range(len(PROMPTS))]
    engine, rows = _serve(pocket_model, requests, max_rows=4)
    alone = {i: _alone(pocket_model, i, config) for i, config in requests}
    assert all(_same(pocket_model, rows[i], alone[i]) for i in rows)
    assert any(a.stopped_at_eos for a in alone.values())                       # some leave at EOS ...
    assert any(not a.stopped_at_eos for a in alone.values())                   # ... others at their last block
    assert 1 < engine.peak_rows <= 4 and engine.rows_stepped > engine.steps    # rows really shared steps


def test_a_row_without_eos_runs_its_own_block_count_next_to_longer_rows(tiny_model):
    requests = [(i, _config(i)) for i in range(4)]
    engine, rows = _serve(tiny_model, requests, max_rows=8, per_step=2)
    for i, config in requests:
        alone = _alone(tiny_model, i, config)
        per_block = tiny_model.block_size * tiny_model.patch_size
        assert _same(tiny_model, rows[i], alone) and len(rows[i].blocks) == len(alone.untrimmed_ids) // per_block


@pytest.mark.parametrize("knobs", [dict(solver="heun"), dict(solver="midpoint", schedule="shifted"),
                                   dict(guidance_rescale=0.7, guidance_interval=(0.2, 0.8)),
                                   dict(temperature=1.2, top_k=5, top_p=0.8, repetition_penalty=1.5),
                                   dict(noise_device="cpu", stop_at_eos=False)])
def test_every_sampler_knob_gives_the_tokens_of_the_request_alone(pocket_model, knobs):
    requests = [(i, _config(i, max_new_tokens=4 + 2 * i, **knobs)) for i in range(3)]   # rows overlap
    _, rows = _serve(pocket_model, requests, max_rows=4)
    assert all(_same(pocket_model, rows[i], _alone(pocket_model, i, config)) for i, config in requests)


def test_knobs_that_cannot_share_a_step_run_in_batches_of_their_own(pocket_model):
    requests = [(i, _config(i, steps=4 if i % 3 else 2, solver="euler" if i % 2 else "heun")) for i in range(6)]
    keys = {batch_key(config) for _, config in requests}
    engine = Engine(pocket_model, 16)
    rows = {}
    for i, config in requests:
        new = arrivals(BlockwiseSampler(pocket_model, [PROMPTS[i]], config, sample_ids=[i]))
        rows[i] = new.rows[0]
        engine.add(new)
    engine.step()
    assert len(engine.batches) == len(keys) == 4
    while not engine.idle:
        engine.step()
    assert all(_same(pocket_model, rows[i], _alone(pocket_model, i, config)) for i, config in requests)


def test_removed_rows_leave_and_the_others_are_unchanged(pocket_model):
    config = GenerationConfig(steps=4, seed=1, max_new_tokens=20, stop_at_eos=False)
    engine = Engine(pocket_model, 2)
    batch = [arrivals(BlockwiseSampler(pocket_model, [PROMPTS[i]], config, sample_ids=[i])) for i in range(3)]
    for new in batch:
        engine.add(new)
    engine.step()                                      # rows 0 and 1 joined; row 2 waits for room
    assert [len(new.rows[0].blocks) for new in batch] == [1, 1, 0]
    engine.remove(batch[0].rows + batch[2].rows)       # one in flight, one never started
    while not engine.idle:
        engine.step()
    assert [len(new.rows[0].blocks) for new in batch] == [1, 10, 0]
    assert _same(pocket_model, batch[1].rows[0], _alone(pocket_model, 1, config))


def test_a_request_larger_than_max_rows_runs_when_the_engine_is_empty(tiny_model):
    config = GenerationConfig(steps=2, seed=0, max_new_tokens=4)
    engine = Engine(tiny_model, 2)
    engine.add(arrivals(BlockwiseSampler(tiny_model, PROMPTS[:3], config)))
    assert len(engine.step()) == 3
    with pytest.raises(ColaError, match="max_rows"):
        Engine(tiny_model, 0)


def test_a_failed_step_drops_its_batch_and_says_which_rows(tiny_model, monkeypatch):
    engine = Engine(tiny_model, 4)
    engine.add(arrivals(BlockwiseSampler(tiny_model, PROMPTS[:2], GenerationConfig(steps=1, seed=0))))
    engine._admit()
    batch = next(iter(engine.batches.values()))
    monkeypatch.setattr(batch, "step", lambda: (_ for _ in ()).throw(RuntimeError("device fell over")))
    with pytest.raises(BatchFailure) as info:
        engine.step()
    assert len(info.value.rows) == 2 and isinstance(info.value.__cause__, RuntimeError) and engine.idle


def test_stack_rows_keeps_each_rows_history_and_length():
    a, b = KVCache(2, 1), KVCache(1, 1)
    a._k[0], a._v[0] = torch.arange(2 * 3 * 4.0).view(2, 1, 3, 4), -torch.arange(2 * 3 * 4.0).view(2, 1, 3, 4)
    b._k[0], b._v[0] = torch.ones(1, 1, 5, 4), torch.zeros(1, 1, 5, 4)
    a.lengths, b.lengths = torch.tensor([3, 1]), torch.tensor([5])
    out = stack_rows([(a, [1]), (b, [0])], empty=2)
    assert out.lengths.tolist() == [1, 5, 0, 0] and out.capacity >= 5
    assert torch.equal(out._k[0][0, :, :3], a._k[0][1]) and torch.equal(out._v[0][1, :, :5], b._v[0][0])
    assert not out._k[0][2:].any()
    with pytest.raises(ColaError, match="static"):
        stack_rows([(KVCache.static(1, 1, 8), [0])])


# -- the service: a thread that owns the engine --------------------------------------------------------------------

def _read(source, cancel=None) -> list[dict]:
    return list(source.blocks(cancel))


def test_service_tickets_read_the_blocks_of_their_sampler_alone(pocket_model):
    service = GenerationService(pocket_model, max_rows=8)
    try:
        configs = [_config(i) for i in range(4)]
        tickets = [service.ticket(BlockwiseSampler(pocket_model, [PROMPTS[i], PROMPTS[i + 4]], configs[i],
                                                   sample_ids=[i, i + 4])) for i in range(4)]
        results: list = [None] * 4
        threads = [threading.Thread(target=lambda k=k: results.__setitem__(k, _read(tickets[k]))) for k in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        for i, got in enumerate(results):
            solo = _read(Solo(BlockwiseSampler(pocket_model, [PROMPTS[i], PROMPTS[i + 4]], configs[i],
                                               sample_ids=[i, i + 4])))
            for row in (0, 1):   # a solo batch keeps running a row that ended until both did: compare up to its end
                mine = [block[row] for block in got if row in block]
                assert mine == [block[row] for block in solo][:len(mine)]
        assert service.engine.peak_rows > 2
    finally:
        service.close()


def test_a_closed_or_cancelled_ticket_leaves_the_batch(tiny_model):
    service = GenerationService(tiny_model, max_rows=4)
    try:
        config = GenerationConfig(steps=2, seed=0, max_new_tokens=40)
        cancel = threading.Event()
        cancel.set()
        ticket = service.ticket(BlockwiseSampler(tiny_model, ["The cat"], config))
        assert _read(ticket, cancel) == [] and not ticket.rows            # never joined
        ticket = service.ticket(BlockwiseSampler(tiny_model, ["The cat"], config))
        blocks = ticket.blocks()
        next(blocks)
        blocks.close()                                                     # the reader stopped
        row = ticket.rows[0]
        for _ in range(200):
            if service.engine.idle:
                break
            threading.Event().wait(0.01)
        assert service.engine.idle and row.block < row.num_blocks
    finally:
        service.close()
    with pytest.raises(ColaError, match="closed"):
        _read(service.ticket(BlockwiseSampler(tiny_model, ["The cat"], GenerationConfig(steps=1))))


def test_a_failed_batch_step_reaches_its_tickets_reader(tiny_model, monkeypatch):
    service = GenerationService(tiny_model, max_rows=4)
    try:
        def broken(self):
            raise RuntimeError("device fell over")
        monkeypatch.setattr("cola_core.engine.Batch.step", broken)
        with pytest.raises(RuntimeError, match="fell over"):
            _read(service.ticket(BlockwiseSampler(tiny_model, ["The cat"], GenerationConfig(steps=1, seed=0))))
        assert service.engine.idle
    finally:
        service.close()


def test_a_failure_outside_a_batch_step_ends_every_request_in_flight(tiny_model, monkeypatch):
    service = GenerationService(tiny_model, max_rows=4)
    try:
        monkeypatch.setattr("cola_core.engine.stack_rows", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
        with pytest.raises(MemoryError):
            _read(service.ticket(BlockwiseSampler(tiny_model, ["The cat"], GenerationConfig(steps=1, seed=0))))
        assert service.engine.idle and service.alive
    finally:
        service.close()
    assert not service.alive
