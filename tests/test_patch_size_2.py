"""Every path that depends on patch_size P, on a random-weight checkpoint with P = 2 and block size 4.

Checked against the spec's numerics (checkpoint-format.md sections 5, 7 and 8) rather than against
our own code: prompt preparation and the context-length rule, encode/decode (patch embedding and
channel-major unpatching), generation, diagnostics and a training step on the 2L layout.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cola_core.config import MAX_POSITIONS
from cola_core.constants import LN2
from cola_core.errors import GenerationError
from cola_core.generate import BlockwiseSampler, GenerationConfig, generate, prepare_prompts
from cola_core.text_codec import block_count, context_latents, encode_tokens, pad_to_blocks
from cola_core.training.objectives import dit_terms, flow_matching_2l
from workbench import Workbench
from workbench.diagnostics import diagnose
from workbench.prior import ConditionalVelocity

P, BS = 2, 4
TEXTS = ["The river flows slowly", "tea", "She opened the door and looked at the garden"]


@pytest.fixture(scope="module")
def wb2(patch2_model):
    return Workbench(patch2_model)


def _official_latents(model, ids: list[int]) -> torch.Tensor:
    """Spec 7 steps 1-2 through the reference's NA entry point: pad to whole blocks, encode, DiT space."""
    padded = ids + [model.tokenizer.pad_id] * (-len(ids) % (BS * P))
    with torch.no_grad():
        means, _ = model.vae.encode([torch.tensor(padded)])
    return model.vae.to_dit_space(means[0])


def test_the_fixture_has_two_tokens_per_latent(patch2_model):
    assert (patch2_model.patch_size, patch2_model.block_size) == (P, BS)
    assert patch2_model.vae_config.scaling_factor != 1.0 and patch2_model.vae_config.shifting_factor != 0.0


# -- the length rules -----------------------------------------------------------------------------
def test_length_rules_follow_the_spec_formulas():
    for n in range(64):
        assert block_count(n, BS, P) == math.ceil(n / (BS * P))
        assert context_latents(n, BS, P) == BS * (math.ceil(n / P) // BS)   # spec 7 step 4: s = bs*floor(n1/bs)
    # where a tokens-only rule, n // (bs*P) blocks, falls one block short
    assert [context_latents(n, BS, P) for n in (7, 15, 23)] == [4, 8, 12]


@pytest.mark.parametrize("n", [1, 5, 7, 8, 15, 23])
def test_prompt_preparation_follows_the_spec(patch2_model, n):
    ids = list(range(10, 10 + n))
    prep = prepare_prompts(patch2_model, [patch2_model.tokenizer.decode(ids)], [ids])
    n1 = math.ceil(n / P)                               # latents holding a prompt token (label 1)
    s = BS * (n1 // BS)
    z = _official_latents(patch2_model, ids)
    assert prep.prefix_lengths.tolist() == [s]
    assert torch.allclose(prep.prefix[0, :s], z[:s], atol=1e-5)
    assert prep.pinned[0].tolist() == [i < n1 - s for i in range(BS)]
    assert prep.trim == [n - s * P if n1 % BS else 0]   # prompt tokens in tokens [s*P, s*P + bs*P)
    if n1 % BS:
        assert torch.allclose(prep.clean_window[0], z[s:s + BS], atol=1e-5)


def test_generation_respects_the_context_rule_at_7_15_23_tokens(patch2_model):
    prompts = [list(range(10, 10 + n)) for n in (7, 15, 23)]
    config = GenerationConfig(steps=2, guidance=3.0, max_new_tokens=8, seed=0, stop_at_eos=False)
    sampler = BlockwiseSampler(patch2_model, prompts, config)
    assert sampler.prepared.prefix_lengths.tolist() == [4, 8, 12]
    assert not sampler.prepared.pinned.any() and sampler.prepared.trim == [0, 0, 0]
    first = next(state for event, state in sampler.events() if event == "guidance")
    # the conditional pass sees exactly the prompt's whole blocks as context: query them by hand
    prefix = sampler.prepared.prefix
    for b, s in enumerate([4, 8, 12]):
        x = torch.cat([prefix[b, :s], first.z[b]])[None].to(torch.bfloat16).float()
        t = torch.cat([torch.zeros(s), first.t[b].to(torch.bfloat16).float()])[None]
        with torch.no_grad():
            ref = patch2_model.dit(x, t, torch.tensor([s + BS]))[0, -BS:]
        assert torch.allclose(first.v_cond[b], ref, atol=1e-5), b
    results = BlockwiseSampler(patch2_model, prompts, config)
    for _ in results.events():
        pass
    assert [len(r.untrimmed_ids) for r in results.result()] == [BS * P] * 3   # one block of bs*P tokens


def test_context_length_counts_latents_not_tokens(patch2_model):
    n = 2 * MAX_POSITIONS - 1   # fills MAX_POSITIONS latents, so one more block does not fit
    assert context_latents(n, BS, P) + BS > MAX_POSITIONS >= (n // (BS * P) + 1) * BS
    with pytest.raises(GenerationError, match=f"prompt 0 is too long: {n} tokens plus max_new_tokens=8 need "
                                              f"{MAX_POSITIONS + BS} latent positions"):
        BlockwiseSampler(patch2_model, [[10] * n], GenerationConfig(max_new_tokens=8))


def test_generation_trims_the_re_decoded_prompt_tail(patch2_model, wb2):
    ids = list(range(10, 15))                              # 5 tokens -> 3 latents, all in the first block
    config = dict(steps=3, guidance=2.0, max_new_tokens=16, seed=1, stop_at_eos=False)
    (out,) = generate(patch2_model, [ids], **config)
    assert len(out.untrimmed_ids) == 2 * BS * P and out.token_ids == out.untrimmed_ids[5:]
    text = patch2_model.tokenizer.decode(ids)
    hooked = wb2.sampler(text, **config)
    assert len(list(hooked)) == 2 * config["steps"]
    assert [g.untrimmed_ids for g in hooked.result()] == [g.untrimmed_ids for g in generate(patch2_model, text, **config)]


# -- encode / decode -------------------------------------------------------------------------------
def test_encode_matches_the_reference_entry_point(patch2_model, wb2):
    lat = wb2.encode(TEXTS)
    for i, ids in enumerate(lat.token_ids):
        nb = math.ceil(len(ids) / (BS * P))
        assert lat.z[i].shape == (nb, BS, patch2_model.vae_config.latent_dim)
        assert torch.allclose(lat.z[i].flatten(0, 1), _official_latents(patch2_model, ids), atol=1e-5)
        cfg = patch2_model.vae_config
        assert torch.allclose(lat.z[i], (lat.mean[i] - cfg.shifting_factor) * cfg.scaling_factor)
        slots = lat.alignment[i]                          # latent j holds tokens 2j and 2j + 1
        assert slots.shape == (nb * BS, P)
        assert slots.flatten().tolist() == [k if k < len(ids) else -1 for k in range(nb * BS * P)]


def test_patch_embedding_is_the_spec_linear_map(patch2_model):
    """Conv1d(kernel=stride=P) == a Linear on the token-major concat of P embeddings, W_lin[o, p*D + c] = W[o, c, p]."""
    enc = patch2_model.vae.encoder
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, 16, 17]])
    seen = {}
    handle = enc.patch_embedder.register_forward_hook(lambda m, i, out: seen.update(out=out.transpose(1, 2)))
    with torch.no_grad():
        patch2_model.vae.encode_ids(ids, torch.tensor([8]))
        handle.remove()
        w = enc.patch_embedder.weight                    # (D, D, P)
        w_lin = w.permute(0, 2, 1).reshape(w.shape[0], -1)
        expected = enc.wte(ids).view(1, 4, -1) @ w_lin.T + enc.patch_embedder.bias
    assert torch.allclose(seen["out"], expected, atol=1e-5)


def test_decoder_unpatches_channel_major(patch2_model, wb2):
    """Spec 5: output channel c*P + p of unpatch_layer becomes token p, channel c."""
    lat = wb2.encode(TEXTS[:1])
    dec = patch2_model.vae.decoder
    seen = {}
    handle = dec.unpatch_layer.register_forward_hook(lambda m, i, out: seen.update(out=out))
    logits = wb2.decoder_logits(lat)[0]
    handle.remove()
    u = seen["out"][0]                                      # (n, P*D)
    tokens = u.view(u.shape[0], -1, P).transpose(1, 2).reshape(-1, u.shape[1] // P)   # (n*P, D)
    with torch.no_grad():
        expected = dec.final_layer(dec.final_norm(tokens))
    assert logits.shape == (lat.n_blocks[0] * BS * P, patch2_model.vae_config.vocab_size)
    assert torch.allclose(logits, expected, atol=1e-5)
    decoded = wb2.decode(lat, all_slots=True)[0]
    assert decoded.token_ids == logits.argmax(-1).tolist() and len(decoded.token_ids) == lat.n_blocks[0] * BS * P
    shown = wb2.decode(lat)[0]                               # the text's own tokens: P per latent, padding cut
    assert shown.token_ids == decoded.token_ids[:len(lat.token_ids[0])]


# -- diagnostics -----------------------------------------------------------------------------------
def test_diagnostics_count_tokens_and_latents_and_score_by_hand(patch2_model):
    diag = diagnose(patch2_model, TEXTS, prior=False)
    pad = patch2_model.tokenizer.pad_id
    for rec, text in zip(diag.per_text, TEXTS):
        ids = patch2_model.tokenizer.encode(text)
        nb = math.ceil(len(ids) / (BS * P))
        assert (rec.tokens, rec.latents, rec.blocks) == (len(ids), nb * BS, nb)
        padded = torch.tensor(ids + [pad] * (nb * BS * P - len(ids)))
        z = _official_latents(patch2_model, ids)[None]
        with torch.no_grad():
            logits = patch2_model.vae.decode_latents(z, torch.tensor([nb * BS]))[0]
        nll = F.cross_entropy(logits, padded, reduction="none")[:len(ids)]
        assert rec.recon_bits_per_token == pytest.approx(float(nll.mean()) / LN2, rel=1e-4)
        assert rec.token_accuracy == pytest.approx(float((logits.argmax(-1)[:len(ids)] == padded[:len(ids)]).float().mean()))


def test_2l_velocity_equals_cached_block_queries(patch2_model):
    tokens = pad_to_blocks(patch2_model.tokenizer.encode_batch(TEXTS), patch2_model.tokenizer.pad_id, BS, P)
    z0 = patch2_model.vae.to_dit_space(encode_tokens(patch2_model, tokens).mean)
    lengths = tokens.latent_lengths
    zt = 0.6 * z0 + 0.4 * torch.randn(z0.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = ConditionalVelocity(patch2_model, z0, lengths)(zt, torch.full((len(TEXTS),), 0.4))
        for b, n in enumerate(lengths.tolist()):
            for k in range(n // BS):
                x = torch.cat([z0[b, :k * BS], zt[b, k * BS:(k + 1) * BS]])[None]
                t = torch.cat([torch.zeros(k * BS), torch.full((BS,), 400.0)])[None]
                ref = patch2_model.dit(x, t, torch.tensor([(k + 1) * BS]))[0, -BS:]
                assert torch.allclose(v[b, k * BS:(k + 1) * BS], ref, atol=2e-5), (b, k)


# -- a training step -------------------------------------------------------------------------------
def test_training_step_loss_matches_a_hand_computation(patch2_model):
    tok = patch2_model.tokenizer
    tokens = pad_to_blocks([ids + [tok.eos_id] for ids in tok.encode_batch(TEXTS)], tok.pad_id, BS, P)
    lengths = tokens.latent_lengths
    z0 = patch2_model.vae.to_dit_space(encode_tokens(patch2_model, tokens).mean)
    gen = torch.Generator().manual_seed(0)
    z1, t = torch.randn(z0.shape, generator=gen), torch.rand(len(TEXTS), generator=gen)
    terms = flow_matching_2l(patch2_model.dit, z0, z1, t, lengths)
    hand, count = 0.0, 0
    with torch.no_grad():
        for b, n in enumerate(lengths.tolist()):
            zt = (1 - t[b]) * z0[b] + t[b] * z1[b]
            tT = (t[b] * 1000.0).to(torch.bfloat16).float()          # the DiT sees t*T rounded to bf16
            for k in range(n // BS):
                x = torch.cat([z0[b, :k * BS], zt[k * BS:(k + 1) * BS]])[None]
                times = torch.cat([torch.zeros(k * BS), tT.expand(BS)])[None]
                v = patch2_model.dit(x, times, torch.tensor([(k + 1) * BS]))[0, -BS:]
                hand += float((v - (z1[b] - z0[b])[k * BS:(k + 1) * BS]).pow(2).mean(-1).sum())
                count += BS
    assert int(terms["fm"][1]) == count == int(lengths.sum())
    loss = terms["fm"][0] / terms["fm"][1]
    assert float(loss.detach()) == pytest.approx(hand / count, rel=1e-4)
    loss.backward()                                                   # a step trains the DiT
    grads = [p.grad for p in patch2_model.dit.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    patch2_model.dit.zero_grad(set_to_none=True)
    step = dit_terms(patch2_model.dit, patch2_model.vae, tokens, torch.Generator().manual_seed(1), slice(None),
                     t_sampling="logit_normal", t_loc=1.0, t_scale=1.0, prompt_block_prob=0.0, posterior_mean=True)
    assert int(step["fm"][1]) == int(lengths.sum())                 # n = L / P latents per row
