"""Training objectives: the 2L flow-matching loss against the golden fixture, masks, latent scaling."""
from __future__ import annotations

import pytest
import torch

from cola_core.attention import pad_rows
from cola_core.text_codec import TokenBatch
from cola_core.training import objectives
from cola_core.training.objectives import (crop_starts, cut_prefixes, dit_terms, flow_matching_2l, prompt_block_clean,
                                          set_latent_scaling, swap_latents, vae_terms, word_start_ids)
from cola_core.two_l import two_l_layout
from cola_core.training.trainer import lr_factor

GOLDEN_LENGTHS = [8, 12]   # latents per sample in the fixture's 2L training call


def _two_l_rows(n: int, n_max: int) -> list[int]:
    """Rows of one sample's [clean | noisy] in our padded layout (clean half padded to n_max)."""
    return list(range(n)) + list(range(n_max, n_max + n))


def test_two_l_mask_matches_golden(golden):
    _, allowed = two_l_layout(torch.tensor(GOLDEN_LENGTHS), max(GOLDEN_LENGTHS), block_size=4)
    mask = golden["dit.train2l.mask_fp32"].bool()
    start = 0
    for b, n in enumerate(GOLDEN_LENGTHS):
        rows = _two_l_rows(n, max(GOLDEN_LENGTHS))
        assert torch.equal(allowed[b][rows][:, rows], mask[start:start + 2 * n, start:start + 2 * n])
        start += 2 * n
    assert not allowed[0, 8:12].any() and not allowed[0, :, 8:12].any()   # padding is invisible


def test_flow_matching_loss_matches_golden(tiny_model, golden, golden_meta):
    z0, _ = pad_rows(golden["dit.train2l.z0"], GOLDEN_LENGTHS)
    z1, _ = pad_rows(golden["dit.train2l.z1"], GOLDEN_LENGTHS)
    with torch.no_grad():
        terms = flow_matching_2l(tiny_model.dit, z0, z1, golden["dit.train2l.t"], torch.tensor(GOLDEN_LENGTHS))
    loss = terms["fm"][0] / terms["fm"][1]
    assert float(loss) == pytest.approx(golden_meta["train2l_fm_loss_fp32"], rel=1e-4)
    assert int(terms["fm"][1]) == sum(GOLDEN_LENGTHS)


def test_first_block_weight_scales_only_each_rows_first_block(tiny_model, golden, monkeypatch):
    """``first_block_weight`` w: the first block's latents weigh w, the others 1; w = 1 is the golden loss."""
    z0, _ = pad_rows(golden["dit.train2l.z0"], GOLDEN_LENGTHS)
    z1, _ = pad_rows(golden["dit.train2l.z1"], GOLDEN_LENGTHS)
    seen = []
    monkeypatch.setattr(objectives, "velocity_terms", lambda v, target, weight: seen.append(weight) or {})
    lengths = torch.tensor(GOLDEN_LENGTHS)
    with torch.no_grad():
        flow_matching_2l(tiny_model.dit, z0, z1, golden["dit.train2l.t"], lengths)
        flow_matching_2l(tiny_model.dit, z0, z1, golden["dit.train2l.t"], lengths, first_block_weight=3.0)
    plain, weighted = seen
    block = tiny_model.dit.config.block_size
    assert torch.equal(weighted[:, :block], 3.0 * plain[:, :block])
    assert torch.equal(weighted[:, block:], plain[:, block:]) and float(plain[:, :block].min()) == 1.0


def test_prompt_block_latents_get_no_loss(tiny_model, golden):
    z0, _ = pad_rows(golden["dit.train2l.z0"], GOLDEN_LENGTHS)
    z1, _ = pad_rows(golden["dit.train2l.z1"], GOLDEN_LENGTHS)
    clean = torch.zeros(2, 12, dtype=torch.bool)
    clean[0, :3] = True
    terms = flow_matching_2l(tiny_model.dit, z0, z1, golden["dit.train2l.t"], torch.tensor(GOLDEN_LENGTHS), clean)
    assert int(terms["fm"][1]) == sum(GOLDEN_LENGTHS) - 3


def test_prompt_block_clean_keeps_a_noisy_tail():
    gen = torch.Generator().manual_seed(0)
    clean = prompt_block_clean(n=16, block_size=4, batch=64, prob=1.0, gen=gen).view(64, 4, 4)
    assert clean[..., 0].all() and not clean[..., 3].any()          # k in [1, bs-1]
    assert (clean.int().diff(dim=-1) <= 0).all()                      # clean rows are a block prefix


def test_set_latent_scaling_keeps_reconstruction(tiny_model):
    vae = tiny_model.vae
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    old = (vae.config.scaling_factor, vae.config.shifting_factor)
    ids = torch.randint(5, 100, (2, 8))
    lengths = torch.tensor([8, 8])
    try:
        with torch.no_grad():
            post = vae.encode_ids(ids, lengths)
            before = vae.decode_latents(vae.to_dit_space(post.mean), lengths)
            set_latent_scaling(vae, shift=0.3, scale=0.7)
            after = vae.decode_latents(vae.to_dit_space(post.mean), lengths)
        assert vae.config.scaling_factor == 0.7 and vae.config.shifting_factor == 0.3
        assert torch.allclose(before, after, atol=1e-4)
    finally:
        vae.load_state_dict(state)
        vae.config.scaling_factor, vae.config.shifting_factor = old


def test_cut_prefixes_pads_like_a_prompt():
    ids = torch.tensor([[10, 11, 12, 13, 14, 1, 0, 0]])
    batch = TokenBatch(ids, torch.tensor([8]), ids != 0, patch_size=1)
    cut = cut_prefixes(batch, 1.0, torch.Generator().manual_seed(3), pad_id=0, chunk=4)
    keep = int(cut.real.sum())
    assert 1 <= keep <= 5
    assert cut.ids[0, :keep].tolist() == ids[0, :keep].tolist() and (cut.ids[0, keep:] == 0).all()
    assert int(cut.lengths[0]) == keep + (-keep) % 4


def test_crop_starts_keeps_a_suffix_from_a_word_initial_block():
    """Row 0 (blocks of 2: [9 10] [11 12] [13 1]) may start at block 1 only (11 begins a word, 13 does not);
    row 1 has no later word-initial block and stays whole; probability 0 returns the batch untouched."""
    ids = torch.tensor([[9, 10, 11, 12, 13, 1], [11, 1, 0, 0, 0, 0]])
    batch = TokenBatch(ids, torch.tensor([6, 2]), ids != 0, patch_size=1)
    word_start = torch.zeros(20, dtype=torch.bool)
    word_start[[9, 11]] = True
    gen = torch.Generator().manual_seed(0)
    assert crop_starts(batch, 0.0, gen, pad_id=0, chunk=2, word_start=word_start) is batch
    crop = crop_starts(batch, 1.0, gen, pad_id=0, chunk=2, word_start=word_start)
    assert crop.ids.tolist() == [[11, 12, 13, 1, 0, 0], [11, 1, 0, 0, 0, 0]]
    assert crop.lengths.tolist() == [4, 2] and crop.real.sum(1).tolist() == [4, 2]


def test_crop_starts_draws_every_allowed_block_and_only_those():
    """Blocks 1 (11) and 2 (9) begin words: about half the rows are cropped, to either block about equally."""
    ids = torch.tensor([[9, 10, 11, 12, 9, 1, 0, 0]] * 400)
    batch = TokenBatch(ids, torch.tensor([6] * 400), ids != 0, patch_size=1)
    word_start = torch.zeros(20, dtype=torch.bool)
    word_start[[9, 11]] = True
    crop = crop_starts(batch, 0.5, torch.Generator().manual_seed(1), pad_id=0, chunk=2, word_start=word_start)
    kept = {n: crop.ids[crop.lengths == n] for n in (6, 4, 2)}
    assert sum(len(rows) for rows in kept.values()) == 400 and 150 < len(kept[6]) < 250
    assert 50 < len(kept[4]) < 150 and 50 < len(kept[2]) < 150
    assert (kept[4][:, :4] == torch.tensor([11, 12, 9, 1])).all() and (kept[2][:, :2] == torch.tensor([9, 1])).all()


def test_dit_terms_train_on_the_cropped_rows(tiny_model):
    """The loss counts the latents of the cropped rows: cropping is drawn first from the step's generator."""
    tokenizer, block = tiny_model.tokenizer, tiny_model.dit.config.block_size
    rows = [tokenizer.encode(" the river flows into the sea and the sea is wide") + [tokenizer.eos_id]] * 8
    from cola_core.text_codec import pad_to_blocks
    batch = pad_to_blocks(rows, tokenizer.pad_id, block, tiny_model.vae.config.patch_size)
    word_start = word_start_ids(tokenizer)
    knobs = dict(t_sampling="uniform", t_loc=0.0, t_scale=1.0, prompt_block_prob=0.0, posterior_mean=True)
    with torch.no_grad():
        plain = dit_terms(tiny_model.dit, tiny_model.vae, batch, torch.Generator().manual_seed(2), slice(None), **knobs)
        cropped = dit_terms(tiny_model.dit, tiny_model.vae, batch, torch.Generator().manual_seed(2), slice(None),
                            crop_start_prob=1.0, word_start=word_start, pad_id=tokenizer.pad_id, **knobs)
    expected = crop_starts(batch, 1.0, torch.Generator().manual_seed(2), tokenizer.pad_id,
                           block * tiny_model.vae.config.patch_size, word_start)
    assert int(plain["fm"][1]) == int(batch.latent_lengths.sum())
    assert int(cropped["fm"][1]) == int(expected.latent_lengths.sum()) < int(plain["fm"][1])


def test_word_start_ids_marks_space_letter_tokens(tiny_model):
    tokenizer = tiny_model.tokenizer
    marks = word_start_ids(tokenizer)
    assert marks.shape == (tokenizer.vocab_size,)
    for token in tokenizer.encode(" the river flows")[:1] + tokenizer.encode(" river")[:1]:
        assert marks[token]
    assert not marks[tokenizer.eos_id] and not marks[tokenizer.pad_id]


def _decoder_input_of(vae, monkeypatch):
    """A function running :func:`vae_terms` on a fixed batch with the given knobs -> the decoder's input (B, n, C)."""
    ids = torch.tensor([[10, 11, 12, 13, 14, 0, 511, 511], [20, 21, 22, 23, 24, 25, 26, 0]] * 8)
    batch = TokenBatch(ids, torch.tensor([8] * 16), ids != 511, patch_size=1)
    seen = []
    decode = vae.decode_latents
    monkeypatch.setattr(vae, "decode_latents", lambda z, lengths: seen.append(z) or decode(z, lengths))

    def decoder_input(noise: float = 0.0, **knobs) -> torch.Tensor:
        with torch.no_grad():
            vae_terms(vae, batch, torch.Generator().manual_seed(0), slice(None), pad_id=511, prefix_prob=0.0,
                      mask_prob=0.0, mask_seq_prob=0.0, decoder_noise=noise, **knobs)
        return seen[-1]
    return decoder_input


def _rows_changed(z: torch.Tensor, clean: torch.Tensor) -> int:
    return int(((z - clean).abs().flatten(1).amax(-1) > 1e-4).sum())


def test_decoder_noise_reaches_only_the_chosen_share_of_rows(tiny_model, monkeypatch):
    """``decoder_noise_prob`` 0 is exactly no noise (same random stream for the other draws); 0.5 noises some
    rows and leaves the others exact; the default 1 draws nothing extra, so existing recipes keep their stream."""
    decoder_input = _decoder_input_of(tiny_model.vae, monkeypatch)
    clean = decoder_input()
    rows = len(clean)
    assert torch.equal(decoder_input(50.0, decoder_noise_prob=0.0), clean)
    assert torch.equal(decoder_input(50.0), decoder_input(50.0, decoder_noise_prob=1.0))
    assert 0 < _rows_changed(decoder_input(50.0, decoder_noise_prob=0.5), clean) < rows
    assert _rows_changed(decoder_input(50.0), clean) == rows


def test_swap_latents_replaces_chosen_real_positions_by_real_latents():
    z = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)         # row 0: 0..3, row 1: 4..7
    lengths = torch.tensor([3, 2])                                            # real: 0, 1, 2 and 4, 5
    swap = torch.tensor([[True, False, False, True], [False, True, False, False]])
    source = torch.tensor([[0.99, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])      # pool [0, 1, 2, 4, 5]: last, first
    out = swap_latents(z, lengths, swap, source)
    assert out[..., 0].tolist() == [[5, 1, 2, 3], [4, 0, 6, 7]]               # padding (row 0, pos 3) never swapped


def test_decoder_swap_changes_only_its_share_of_latents(tiny_model, monkeypatch):
    """``decoder_swap`` 0 draws nothing (the stream stays); a share of 0.25 swaps about a quarter of the latents."""
    decoder_input = _decoder_input_of(tiny_model.vae, monkeypatch)
    clean = decoder_input()
    assert torch.equal(decoder_input(decoder_swap=0.0), clean)
    changed = float(((decoder_input(decoder_swap=0.25) - clean).abs().amax(-1) > 1e-6).float().mean())
    assert 0.1 < changed < 0.3
    assert torch.equal(decoder_input(decoder_swap=0.25), decoder_input(decoder_swap=0.25, decoder_swap_prob=1.0))
    assert torch.equal(decoder_input(decoder_swap=0.9, decoder_swap_prob=0.0), clean)
    assert 0 < _rows_changed(decoder_input(decoder_swap=0.9, decoder_swap_prob=0.5), clean) < len(clean)


def test_decoder_swap_noised_swaps_only_in_noised_rows_before_the_noise(tiny_model, monkeypatch):
    """``decoder_swap_noised``: rows without noise stay exact; noised rows equal the plain noise run plus swaps
    made before the noise (so a swapped-in latent carries its new row's noise, not its old row's)."""
    decoder_input = _decoder_input_of(tiny_model.vae, monkeypatch)
    clean = decoder_input()
    noised = decoder_input(1.0, decoder_noise_prob=0.5)
    both = decoder_input(1.0, decoder_noise_prob=0.5, decoder_swap=0.9, decoder_swap_noised=True)
    quiet = [r for r in range(len(clean)) if torch.equal(noised[r], clean[r])]
    assert 0 < len(quiet) < len(clean)
    for r in range(len(clean)):
        assert torch.equal(both[r], clean[r]) == (r in quiet), r
    loud = [r for r in range(len(clean)) if r not in quiet]
    underneath = (both - (noised - clean))[loud]                   # the swapped latents before the row's noise
    pool = clean.reshape(-1, clean.shape[-1])                         # every clean latent of the batch
    nearest = torch.cdist(underneath.reshape(-1, clean.shape[-1]), pool,
                          compute_mode="donot_use_mm_for_euclid_dist").amin(-1)
    assert float(nearest.max()) < 1e-4                              # each one is some real latent, un-noised
    assert not torch.equal(underneath, clean[loud])


def test_decoder_prior_rows_decode_the_priors_one_step_estimate(tiny_model, monkeypatch):
    """Rows picked by ``prior_prob`` decode z_t - t v of the frozen DiT; at t = 0 that is the clean latent, a
    share 0 changes nothing, and the other draws keep their stream."""
    decoder_input = _decoder_input_of(tiny_model.vae, monkeypatch)
    clean = decoder_input()
    assert torch.equal(decoder_input(prior=tiny_model.dit, prior_prob=0.0, prior_t_max=0.5), clean)
    assert torch.allclose(decoder_input(prior=tiny_model.dit, prior_prob=1.0, prior_t_max=0.0), clean, atol=1e-6)
    assert 0 < _rows_changed(decoder_input(prior=tiny_model.dit, prior_prob=0.5, prior_t_max=0.8), clean) < len(clean)


def test_lr_schedule_warms_up_then_decays_to_floor():
    values = [lr_factor(s, warmup=10, total=100, min_ratio=0.1) for s in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[10:], values[11:]))
    assert values[100] == pytest.approx(0.1)
