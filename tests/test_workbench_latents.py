"""Workbench encode/decode, the Latents type and latent algebra on the tiny fixture checkpoint."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from cola_core.config import MAX_POSITIONS
from workbench.session import token_accuracy
from workbench import (Latents, WorkbenchError, analogy, apply_direction, attribute_direction,
                       block_noise, combine, interpolate, mean_latent, noise_to, replace_blocks, slerp, splice)

TEXTS = ["the cat sat on the mat and looked around", "a dog"]



@pytest.fixture(scope="module")
def lat(wb):
    return wb.encode(TEXTS)


def test_encode_shapes_alignment_and_posterior(wb, lat):
    bs, chunk = wb.block_size, wb.block_size * wb.patch_size
    ids = wb.tokenizer.encode_batch(TEXTS)
    assert lat.texts == TEXTS and lat.token_ids == ids and lat.fingerprint == wb.fingerprint
    for i, row in enumerate(ids):
        n = math.ceil(len(row) / chunk)
        assert lat.z[i].shape == (n, bs, wb.channels) == lat.mean[i].shape == lat.std[i].shape
        flat = lat.alignment[i].reshape(-1)
        assert flat[:len(row)].tolist() == list(range(len(row)))
        assert (flat[len(row):] == -1).all()
        assert lat.padding(i).sum() == n * bs - math.ceil(len(row) / wb.patch_size)
        assert torch.allclose(lat.z[i], wb.model.vae.to_dit_space(lat.mean[i]))
        assert (lat.std[i] > 0).all()
    # batching never changes a text's encoding
    alone = wb.encode(TEXTS[1])
    assert torch.allclose(alone.z[0], lat.z[1], atol=1e-5)


def test_pad_to_keeps_real_blocks(wb, lat):
    padded = wb.encode(TEXTS, pad_to="longest")
    assert padded.n_blocks == [lat.n_blocks[0]] * 2
    assert torch.allclose(padded.z[1][:lat.n_blocks[1]], lat.z[1], atol=1e-5)
    assert wb.encode(TEXTS[1], pad_to=3).n_blocks == [3]
    with pytest.raises(WorkbenchError, match="pad_to"):
        wb.encode(TEXTS, pad_to=1)


def test_sampled_encoding_is_seeded_and_near_the_mean(wb, lat):
    a, b = wb.encode(TEXTS, sample=True, seed=1), wb.encode(TEXTS, sample=True, seed=1)
    assert torch.equal(a.z[0], b.z[0]) and not torch.equal(a.z[0], lat.z[0])
    bound = 6 * lat.std[0].max() * abs(wb.model.vae_config.scaling_factor)
    assert (a.z[0] - lat.z[0]).abs().max() < bound


def test_sampled_encoding_does_not_depend_on_the_other_texts(wb):
    text = "The river flows slowly"
    alone = wb.encode([text], sample=True, seed=3)
    batches = [wb.encode([text, "tea"], sample=True, seed=3).z[0],
               wb.encode([text, "a much longer neighbour that needs several more blocks than the text itself does"],
                         sample=True, seed=3).z[0],
               wb.encode(["tea", "cat", text], sample=True, seed=3, sample_ids=[1, 2, 0]).z[2]]
    assert all(torch.equal(z, alone.z[0]) for z in batches)
    # the posterior noise of block k is the official per-sample draw for (seed, sample id, k)
    mean, std = alone.mean[0], alone.std[0]
    eps = block_noise(mean.shape[0], wb.block_size, wb.channels, seed=3, sample_id=0)
    assert torch.equal(alone.z[0], wb.model.vae.to_dit_space(mean + std * eps))
    assert not torch.equal(wb.encode([text], sample=True, seed=3, sample_ids=[1]).z[0], alone.z[0])
    with pytest.raises(WorkbenchError, match="2 sample ids for 1 texts"):
        wb.encode([text], sample=True, seed=3, sample_ids=[0, 1])


def test_decode_probabilities_and_entropy(wb, lat):
    decoded = wb.decode(lat, all_slots=True)
    logits = wb.decoder_logits(lat)
    vocab = logits[0].shape[-1]
    for d, lg, z in zip(decoded.items, logits, lat.z):
        assert len(d.token_ids) == z.shape[0] * z.shape[1] * wb.patch_size
        assert d.token_ids == lg.argmax(-1).tolist()
        assert torch.allclose(d.probs, lg.softmax(-1).max(-1).values, atol=1e-6)
        assert (d.entropy_bits >= -1e-6).all() and (d.entropy_bits <= math.log2(vocab) + 1e-4).all()
        # probability of the argmax is at least 1/V and at least 2^-entropy (min-entropy <= entropy)
        assert (d.probs >= 2.0 ** -d.entropy_bits - 1e-5).all()


def test_roundtrip_accuracy_matches_decoded_tokens(wb):
    rt = wb.roundtrip(TEXTS)
    for ids, d, acc in zip(rt.latents.token_ids, rt.decoded.items, rt.token_accuracy):
        assert acc == pytest.approx(sum(a == b for a, b in zip(ids, d.token_ids)) / len(ids))


def test_decoding_stops_at_the_encoded_length_and_accuracy_counts_what_is_shown(wb, monkeypatch):
    """A text padded to a longer neighbour's length decodes exactly its own tokens: the slots after them
    only encode padding (the latent lab showed "...kept as a petquitquitquit" with accuracy 1.0)."""
    lat = wb.encode(TEXTS, pad_to="longest")
    short = lat[1]
    n_tokens = len(short.token_ids[0])
    assert short.z[0].shape[0] * wb.block_size > n_tokens          # there are padding slots
    decoded = wb.decode(short)[0]
    assert len(decoded.token_ids) == len(decoded.probs) == len(decoded.entropy_bits) == n_tokens
    every = wb.decode(short, all_slots=True)[0]
    assert len(every.token_ids) == short.z[0].shape[0] * wb.block_size and every.token_ids[:n_tokens] == decoded.token_ids
    # what the text shows is what the accuracy counts: a decoder that reproduces every real token and
    # writes a word into every padding slot shows exactly the source text with accuracy 1
    vocab, pad_word = wb.model.vae_config.vocab_size, wb.tokenizer.encode("quit")[0]

    def perfect_then_quit(z, lengths, **kw):
        ids = torch.full((z.shape[0], z.shape[1]), pad_word)
        for b, row in enumerate(lat.token_ids[1:2] * z.shape[0]):
            ids[b, :len(row)] = torch.tensor(row)
        return 50.0 * torch.nn.functional.one_hot(ids, vocab).float()

    monkeypatch.setattr(wb.model.vae, "decode_latents", perfect_then_quit)
    rt_text = wb.decode(short)[0].text
    assert rt_text == wb.tokenizer.decode(short.token_ids[0])
    assert token_accuracy(short, wb.decode(short)) == [1.0]
    every = wb.decode(short, all_slots=True)[0].text
    assert every.startswith(rt_text) and len(every) > len(rt_text)     # the padding slots hold words


def test_latents_save_load_roundtrip(tmp_path, lat):
    lat.save(tmp_path / "lat")
    back = Latents.load(tmp_path / "lat.json")
    assert back.texts == lat.texts and back.token_ids == lat.token_ids and back.fingerprint == lat.fingerprint
    for key in ("z", "alignment", "mean", "std"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(back, key), getattr(lat, key)))
    edited = apply_direction(lat, torch.ones(lat.channels), 0.5)
    edited.save(tmp_path / "edited")
    again = Latents.load(tmp_path / "edited")
    assert again.mean is None and again.ops == edited.ops and torch.equal(again.z[0], edited.z[0])


def test_indexing(lat):
    one = lat[1]
    assert len(one) == 1 and one.texts == [TEXTS[1]] and torch.equal(one.z[0], lat.z[1])
    assert len(lat[0:2]) == 2


# -- algebra --------------------------------------------------------------------------------------
def test_interpolation_endpoints_and_midpoint(lat):
    a, b = lat[0], lat[1]
    n = min(a.n_blocks[0], b.n_blocks[0])   # documented rule: truncate to the shorter
    for method in ("lerp", "slerp"):
        assert torch.allclose(interpolate(a, b, 0.0, method).z[0], a.z[0][:n], atol=1e-5)
        assert torch.allclose(interpolate(a, b, 1.0, method).z[0], b.z[0][:n], atol=1e-5)
    mid = interpolate(a, b, 0.5).z[0]
    assert torch.allclose(mid, (a.z[0][:n] + b.z[0][:n]) / 2, atol=1e-6)


def test_slerp_preserves_norm_and_angle():
    torch.manual_seed(0)
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    y = y / y.norm(dim=-1, keepdim=True) * x.norm(dim=-1, keepdim=True)
    for alpha in (0.25, 0.5, 0.9):
        s = slerp(x, y, alpha)
        assert torch.allclose(s.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
        ang = lambda u, v: torch.acos((u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1)))  # noqa: E731
        assert torch.allclose(ang(x, s), alpha * ang(x, y), atol=1e-4)
    assert torch.allclose(slerp(x, x, 0.3), x)   # parallel rows fall back to lerp


def test_encoder_latents_share_one_norm_so_slerp_keeps_it(wb):
    lat = wb.encode(["one two three four five six seven", "zebra"], pad_to="longest")
    norms = torch.cat([z.norm(dim=-1).reshape(-1) for z in lat.z])
    assert torch.allclose(norms, norms[0].expand_as(norms), rtol=1e-3)
    mid = interpolate(lat[0], lat[1], 0.5, "slerp").z[0]
    assert torch.allclose(mid.norm(dim=-1), norms[0].expand(mid.shape[:2]), rtol=1e-3)


def test_interpolation_blocks_and_lengths(wb):
    lat = wb.encode(TEXTS, pad_to="longest")
    a, b = lat[0], lat[1]
    out = interpolate(a, b, 1.0, blocks=[1]).z[0]
    assert torch.equal(out[0], a.z[0][0]) and torch.allclose(out[1], b.z[0][1])
    short = interpolate(wb.encode(TEXTS[0]), wb.encode(TEXTS[1]), 0.5)
    assert short.n_blocks == [wb.encode(TEXTS[1]).n_blocks[0]]
    assert short.alignment[0].shape[0] == short.z[0].shape[0] * short.z[0].shape[1]
    with pytest.raises(WorkbenchError, match="method"):
        interpolate(a, b, 0.5, method="cubic")
    with pytest.raises(WorkbenchError, match="out of range"):
        interpolate(a, b, 0.5, blocks=[99])


def test_arithmetic_and_analogy(lat):
    a, b = lat[0], lat[0]
    c = apply_direction(lat[0], torch.arange(lat.channels, dtype=torch.float32), 1.0)
    assert torch.allclose(analogy(a, b, c).z[0], c.z[0])
    assert torch.allclose((a - b + c).z[0], c.z[0])
    assert torch.allclose((0.5 * a).z[0], a.z[0] / 2)
    assert torch.allclose(combine((2.0, a), (-1.0, a)).z[0], a.z[0])
    assert (a + b).ops[-1].startswith("combine") and (a + b).texts == [None]
    # a batch of one broadcasts over a batch
    both = lat[0:1] + lat
    assert len(both) == 2


def test_direction_identity_sign_and_blocks(wb, lat):
    d = attribute_direction(wb, ["cats cats cats"], ["dogs dogs dogs"])
    assert d.shape == (wb.channels,)
    expected = mean_latent(wb.encode(["cats cats cats"])) - mean_latent(wb.encode(["dogs dogs dogs"]))
    assert torch.allclose(d, expected)
    assert all(torch.equal(x, y) for x, y in zip(apply_direction(lat, d, 0.0).z, lat.z))
    moved = apply_direction(lat, d, 2.0, blocks=[0])
    assert torch.allclose(moved.z[0][0] - lat.z[0][0], (2.0 * d).expand(wb.block_size, -1), atol=1e-6)
    assert torch.equal(moved.z[0][1:], lat.z[0][1:])
    with pytest.raises(WorkbenchError, match="direction"):
        apply_direction(lat, torch.ones(3), 1.0)


def test_splice_and_replace(wb):
    lat = wb.encode(TEXTS, pad_to="longest")
    out = splice(lat[0], lat[1], blocks=[0], source_blocks=[2]).z[0]
    assert torch.equal(out[0], lat.z[1][2]) and torch.equal(out[1:], lat.z[0][1:])
    zero = replace_blocks(lat, [-1], torch.zeros(wb.block_size, wb.channels))
    assert all((z[-1] == 0).all() and torch.equal(z[:-1], src[:-1]) for z, src in zip(zero.z, lat.z))
    with pytest.raises(WorkbenchError, match="source blocks"):
        splice(lat[0], lat[1], blocks=[0, 1], source_blocks=[0])
    with pytest.raises(WorkbenchError, match="shaped"):
        replace_blocks(lat, [0], torch.zeros(3, 3))


def test_noise_to(lat):
    assert all(torch.equal(a, b) for a, b in zip(noise_to(lat, 0.0, seed=1).z, lat.z))
    pure = noise_to(lat, 1000.0, seed=7, sample_ids=[4, 5])
    z = lat.z[1]
    assert torch.equal(pure.z[1], block_noise(z.shape[0], z.shape[1], z.shape[2], 7, 5))
    half = noise_to(lat, 250.0, seed=7, sample_ids=[4, 5])
    assert torch.allclose(half.z[1], 0.75 * z + 0.25 * pure.z[1], atol=1e-6)
    with pytest.raises(WorkbenchError, match=r"t must be in \[0"):
        noise_to(lat, 1001.0)


# -- bad input ------------------------------------------------------------------------------------
def test_bad_texts(wb):
    with pytest.raises(WorkbenchError, match="text 1 is empty"):
        wb.encode(["fine", "  "])
    with pytest.raises(WorkbenchError, match="no texts"):
        wb.encode([])
    with pytest.raises(WorkbenchError, match="not a string"):
        wb.encode([3])
    long_text = "a b " * (MAX_POSITIONS * wb.patch_size)
    with pytest.raises(WorkbenchError, match="too long"):
        wb.encode(long_text)


def test_bad_latents(wb, lat):
    with pytest.raises(WorkbenchError, match="another checkpoint"):
        wb.decode(dataclasses.replace(lat, fingerprint="0" * 64))
    wrong = dataclasses.replace(lat, z=[torch.zeros(2, wb.block_size + 1, wb.channels)] * 2)
    with pytest.raises(WorkbenchError, match="shaped"):
        wb.decode(wrong)
    nan = dataclasses.replace(lat, z=[z.clone() for z in lat.z])
    nan.z[1][0, 0, 0] = float("nan")
    with pytest.raises(WorkbenchError, match="text 1 contain NaN"):
        wb.decode(nan)
    with pytest.raises(WorkbenchError, match="non-finite"):
        apply_direction(lat, torch.full((wb.channels,), float("inf")), 1.0)
    with pytest.raises(WorkbenchError, match="different checkpoints"):
        interpolate(lat, dataclasses.replace(lat, fingerprint="x"), 0.5)
