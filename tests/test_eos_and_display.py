"""One rule for the end of a sample: its first EOS / im_end. Completions, blocks past the end, trajectories
that mark them, and text for people with special tokens as visible markers (never raw)."""
from __future__ import annotations

import pytest
import torch

from cola_core.text_codec import decode_text
from workbench import Trajectory, Workbench, data_norm, display_text, display_tokens
from workbench.monitor import OFF_MANIFOLD_RATIO, norm_records, reference_texts

PROMPTS = ["a small bird that", "the act of", ""]
KNOBS = dict(steps=3, guidance=7.0, max_new_tokens=14, seed=0)


def ending_hook(tok):
    """A per-call ``decoded`` hook: whatever the model draws, sample 0 ends in block 1, sample 1 in block 2 and
    no other sample ever ends."""
    stops, word = torch.tensor(sorted(tok.stop_ids)), tok.encode(" the")[0]

    def end_at(state) -> None:
        ids = state.token_ids.clone()
        ids[torch.isin(ids, stops)] = word
        if state.block in (1, 2) and state.block - 1 < len(ids):
            ids[state.block - 1, -1] = tok.eos_id
        state.token_ids = ids

    return end_at


@pytest.fixture(scope="module")
def pocket_traj(pocket_model):
    return Workbench(pocket_model).trajectory(PROMPTS, sample_ids=[5, 6, 7], preview=True,
                                              hooks={"decoded": ending_hook(pocket_model.tokenizer)}, **KNOBS)


def test_display_text_marks_special_tokens_and_stops_at_eos(tiny_model):
    tok = tiny_model.tokenizer
    word = tok.encode("cat")
    ids = word + [tok.pad_id] + word + [tok.eos_id] + word + [tok.im_end_id]
    shown = display_text(ids, tok)
    assert shown == "cat⟨pad⟩cat⟨eos⟩" and "<|" not in shown
    assert display_text(ids, tok, stop_at_eos=False) == "cat⟨pad⟩cat⟨eos⟩cat⟨im_end⟩"
    assert display_tokens([tok.eos_id, tok.im_start_id, word[0]], tok) == ["⟨eos⟩", "⟨im_start⟩", tok.decode(word[:1])]
    assert display_text([], tok) == ""
    assert "<|endoftext|>" in tok.decode([tok.eos_id])         # the raw form the markers replace
    assert decode_text(tiny_model, word + [tok.eos_id, tok.pad_id]) == "cat⟨eos⟩"   # previews: pad dropped, marked


def test_generation_end_block_and_completion_ids(pocket_traj, pocket_model):
    stops = pocket_model.tokenizer.stop_ids
    ended = 0
    for gen in pocket_traj.generations:
        cut = next((i for i, t in enumerate(gen.token_ids) if t in stops), None)
        assert gen.completion_ids == gen.token_ids[:cut if cut is not None else len(gen.token_ids)]
        assert gen.completion == pocket_model.tokenizer.decode(gen.completion_ids, skip_special_tokens=True)
        if gen.end_block is not None:
            ended += 1
            trim = len(gen.untrimmed_ids) - len(gen.token_ids)
            assert (trim + cut) // (pocket_model.block_size * pocket_model.patch_size) == gen.end_block
    assert ended >= 2   # samples 0 and 1 are made to end (the fixture's hook)


def test_the_end_is_tracked_without_stop_at_eos_too(pocket_model, pocket_traj):
    """stop_at_eos=False (the bench's official protocol) runs every block; the blocks past a sample's first EOS
    are still marked, and the generation still knows where its text ended."""
    run_on = Workbench(pocket_model).trajectory(PROMPTS[:1], sample_ids=[5], stop_at_eos=False,
                                                hooks={"decoded": ending_hook(pocket_model.tokenizer)}, **KNOBS)
    gen, stopped = run_on.generations[0], pocket_traj.generations[0]
    assert gen.end_block == stopped.end_block is not None and not gen.stopped_at_eos
    chunk = pocket_model.block_size * pocket_model.patch_size
    assert gen.completion_ids == stopped.completion_ids and run_on.num_blocks == -(-KNOBS["max_new_tokens"] // chunk)
    assert [bool(run_on.after_eos[b][0]) for b in range(run_on.num_blocks)] == [
        b > gen.end_block for b in range(run_on.num_blocks)]


def test_trajectory_marks_blocks_past_each_samples_end(pocket_traj, tmp_path):
    traj = pocket_traj
    for b in range(traj.num_blocks):
        for i, gen in enumerate(traj.generations):
            past = gen.end_block is not None and b > gen.end_block
            assert bool(traj.after_eos[b][i]) == past
    for state in traj.steps:
        assert torch.equal(state.after_eos, traj.after_eos[state.block])
    assert [g.end_block for g in traj.generations] == [1, 2, None]
    assert traj.after_eos[2].tolist() == [True, False, False] and traj.after_eos[3].tolist() == [True, True, False]
    back = Trajectory.load(traj.save(tmp_path / "traj"))
    assert all(torch.equal(back.after_eos[b], traj.after_eos[b]) for b in traj.after_eos)
    assert all(torch.equal(s.after_eos, traj.after_eos[s.block]) for s in back.steps)
    assert back.generations[0].end_block == traj.generations[0].end_block
    previews = [p for s in traj.steps for p in s.preview]
    assert not any("<|" in p for p in previews) and any("⟨eos⟩" in p for p in previews)


def test_off_manifold_monitor(pocket_traj, pocket_model):
    wb = Workbench(pocket_model)
    reference = data_norm(pocket_model)
    encoded = wb.encode(reference_texts())
    rows = torch.cat([z.reshape(-1, wb.channels)[:len(ids)] for z, ids in zip(encoded.z, encoded.token_ids)])
    assert reference == pytest.approx(float(rows.norm(dim=-1).mean()), rel=1e-5)
    assert wb.data_norm() == reference                                     # cached per checkpoint and corpus
    records = pocket_traj.norm_records(reference)
    assert len(records) == len(PROMPTS) * pocket_traj.num_blocks
    for r in records:
        z = pocket_traj.z_final[r["block"]][r["sample"]]
        assert r["norm"] == pytest.approx(float(z.norm(dim=-1).mean()), rel=1e-6)
        assert r["ratio"] == pytest.approx(r["norm"] / reference) and r["off_manifold"] == (r["ratio"] > 1.5)
        assert r["after_eos"] == bool(pocket_traj.after_eos[r["block"]][r["sample"]])
    # at guidance 7 the pocket leaves the data's norm behind, and the monitor says so
    assert any(r["off_manifold"] for r in records if not r["after_eos"])
    plain = Workbench(pocket_model).trajectory(PROMPTS, sample_ids=[5, 6, 7], **dict(KNOBS, guidance=1.0))
    calm = [r["ratio"] for r in plain.norm_records(reference) if not r["after_eos"]]
    assert sum(calm) / len(calm) < OFF_MANIFOLD_RATIO
    flagged = norm_records([torch.full((1, 2, 4), 2.0)], 2.0)              # rows of norm 4 vs data norm 2
    assert flagged == [{"sample": 0, "block": 0, "norm": 4.0, "ratio": 2.0, "off_manifold": True, "after_eos": False}]
