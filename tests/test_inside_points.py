"""Hook points inside the DiT and the VAE: every point has its documented shape and is the real activation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cola_core.dit import RowEmbedding
from cola_core.generate import generate
from cola_core.hook_points import NO_TAP, model_taps
from cola_core.prior_context import bf16_round
from cola_core.sampler import rounds_dit_inputs
from workbench import WorkbenchError
from workbench.inside.names import point_table

PROMPTS = ["the cat sat on", "once upon a time there was a"]
KNOBS = dict(seed=0, steps=3, max_new_tokens=8, stop_at_eos=False)
ONE = ["once upon a time there was a"]


@pytest.fixture(scope="module")
def everything(wb):
    """Every name of a Heun run (two solver stages, a prompt prefix, a commit pass), and the run's names."""
    knobs = dict(KNOBS, solver="heun")
    gens, cache = wb.run_with_cache(PROMPTS, names_filter="**", **knobs)
    run = wb.run_names(PROMPTS, **knobs)
    return gens, cache, run


@pytest.fixture(scope="module")
def one_prompt(wb):
    """Every name of a one-prompt Euler run: its cond rows have no padding, so the whole key history is cached."""
    return wb.run_with_cache(ONE, names_filter="**", **KNOBS)[1]


def test_every_point_is_produced_with_its_shape(everything):
    gens, cache, run = everything
    assert set(cache) == set(run)
    assert {n for n in cache if n.startswith("prefill.")} and {n for n in cache if ".stage.1." in n}
    wrong = {n: (tuple(v.shape), run.shape(n)) for n, v in cache.items() if tuple(v.shape) != run.shape(n)}
    assert not wrong


def test_vae_verbs_produce_every_point_with_its_shape(wb):
    rt, cache = wb.roundtrip_with_cache(PROMPTS)
    width = max(z.shape[0] for z in rt.latents.z) * wb.block_size
    from workbench.inside.names import vae_names
    run = vae_names(wb.model, 2, encode_latents=width, decode_latents=width)
    assert set(cache) == set(run) and all(tuple(v.shape) == run.shape(n) for n, v in cache.items())
    assert rt.texts == wb.decode(wb.encode(PROMPTS, pad_to="longest")).texts


def test_listening_changes_nothing(wb, tiny_model, everything):
    gens, _, _ = everything
    plain = generate(tiny_model, PROMPTS, **dict(KNOBS, solver="heun"))
    assert [g.untrimmed_ids for g in gens] == [g.untrimmed_ids for g in plain]
    traj = wb.trajectory(PROMPTS, **KNOBS)
    _, patterns = wb.run_with_cache(PROMPTS, names_filter=["**.attn.pattern", "block.*.z_final"], **KNOBS)
    assert all(torch.equal(patterns[f"block.{b}.z_final"], traj.z_final[b]) for b in traj.z_final)
    assert model_taps("dit") is NO_TAP   # nothing listens outside a call


def test_dit_residual_stream_rebuilds(wb, everything):
    _, cache, _ = everything
    layers = wb.model.dit_config.num_layers
    for prefix in ("block.1.step.2.dit.cond", "block.0.step.0.stage.1.dit.uncond", "block.0.commit.dit", "prefill.dit"):
        at = lambda i, p: cache[f"{prefix}.layer.{i}.{p}"]   # noqa: E731
        for i in range(layers):
            assert torch.equal(at(i, "resid_mid"), at(i, "attn_out") + at(i, "resid_pre"))
            assert torch.equal(at(i, "resid_post"), at(i, "mlp_out") + at(i, "resid_mid"))
            if i + 1 < layers:
                assert torch.equal(at(i, "resid_post"), at(i + 1, "resid_pre"))
        dit = wb.model.dit
        final = (cache[f"{prefix}.final.{p}"] for p in ("shift", "scale"))
        velocity = dit.head(at(layers - 1, "resid_post"), *final)
        assert torch.equal(velocity, cache[f"{prefix}.velocity"])


def test_dit_layer_points_are_the_real_activations(wb, everything):
    _, cache, _ = everything
    dit, eps = wb.model.dit, wb.model.dit_config.norm_eps
    prefix, i = "block.1.step.1.dit.cond", 1
    at = lambda p: cache[f"{prefix}.layer.{i}.{p}"]   # noqa: E731
    block = dit.blocks[i]
    t = cache["block.1.step.1.t"]                     # a Heun run: the DiT sees fp32 times (rounds_dit_inputs)
    emb = RowEmbedding.of(dit.emb_in, (bf16_round(t).float() if rounds_dit_inputs("heun") else t), torch.float32)
    shift, scale = emb.project(block.ada.msa_in).chunk(2, dim=-1)
    assert torch.allclose(at("ada.shift_msa"), shift) and torch.allclose(at("ada.scale_msa"), scale)
    assert torch.allclose(at("ada.gate_mlp"), emb.project(block.ada.mlp_out))
    layer_norm = lambda x: F.layer_norm(x, x.shape[-1:], eps=eps)   # noqa: E731
    assert torch.equal(at("attn_in"), layer_norm(at("resid_pre")) * (1 + at("ada.scale_msa")) + at("ada.shift_msa"))
    assert torch.equal(at("mlp_in"), layer_norm(at("resid_mid")) * (1 + at("ada.scale_mlp")) + at("ada.shift_mlp"))
    z = at("attn.z")
    heads = z.transpose(1, 2).reshape(*z.shape[:1], z.shape[2], -1)
    assert torch.allclose(at("attn_out"), at("ada.gate_msa") * block.msa.proj_out(heads), atol=1e-6)
    assert torch.allclose(at("mlp.hidden"), F.gelu(block.mlp.proj_in(at("mlp_in")), approximate="tanh"), atol=1e-6)
    assert torch.allclose(at("mlp_out"), at("ada.gate_mlp") * block.mlp.proj_out(at("mlp.hidden")), atol=1e-6)


def test_cond_and_uncond_are_the_sampler_velocities(everything):
    _, cache, _ = everything
    for step in ("block.0.step.0", "block.1.step.2", "block.1.step.2.stage.1"):
        assert torch.equal(cache[f"{step}.dit.cond.velocity"], cache[f"{step}.v_cond"])
        assert torch.equal(cache[f"{step}.dit.uncond.velocity"], cache[f"{step}.v_uncond"])
        assert not torch.equal(cache[f"{step}.v_cond"], cache[f"{step}.v_uncond"])


def test_dit_attention_pattern_over_the_cached_history(wb, one_prompt):
    """Block 1's cond queries attend to the prefill, block 0's commit and themselves: pattern =
    softmax(q K^T / sqrt(hd)) over exactly those keys, and z = pattern @ V."""
    cache, hd = one_prompt, wb.model.dit_config.head_dim
    for i in range(wb.model.dit_config.num_layers):
        parts = ["prefill.dit", "block.0.commit.dit", "block.1.step.1.dit.cond"]
        keys = torch.cat([cache[f"{p}.layer.{i}.attn.k"] for p in parts], dim=2)
        values = torch.cat([cache[f"{p}.layer.{i}.attn.v"] for p in parts], dim=2)
        q = cache[f"block.1.step.1.dit.cond.layer.{i}.attn.q"]
        pattern = cache[f"block.1.step.1.dit.cond.layer.{i}.attn.pattern"]
        assert pattern.shape[-1] == keys.shape[2]
        assert torch.allclose(pattern, (q @ keys.transpose(-1, -2) / hd ** 0.5).softmax(-1), atol=1e-6)
        assert torch.allclose(cache[f"block.1.step.1.dit.cond.layer.{i}.attn.z"], pattern @ values, atol=1e-5)
        # the uncond pass sees the block alone: every key past it is masked
        bs = wb.block_size
        alone = cache[f"block.1.step.1.dit.uncond.layer.{i}.attn.pattern"]
        assert torch.equal(alone[..., bs:], torch.zeros_like(alone[..., bs:]))
        q_u, k_u = (cache[f"block.1.step.1.dit.uncond.layer.{i}.attn.{x}"] for x in "qk")
        assert torch.allclose(alone[..., :bs], (q_u @ k_u.transpose(-1, -2) / hd ** 0.5).softmax(-1), atol=1e-6)


def test_vae_points_are_the_real_activations(wb):
    vae, cfg = wb.model.vae, wb.model.vae_config
    lat, cache = wb.encode_with_cache(ONE)
    assert torch.equal(cache["encode.mean"][0].view(lat.mean[0].shape), lat.mean[0])
    assert torch.allclose((0.5 * cache["encode.logvar"][0]).exp().view(lat.std[0].shape), lat.std[0])
    ids = torch.tensor([lat.token_ids[0] + [wb.tokenizer.pad_id] * (lat.alignment[0].numel() - len(lat.token_ids[0]))])
    assert torch.equal(cache["encode.embed"], vae.encoder.wte(ids))
    decoded, dcache = wb.decode_with_cache(lat)
    assert torch.equal(dcache["decode.logits"][0], wb.decoder_logits(lat)[0])
    for c, stack, n in ((cache, "encode", cfg.encoder_num_blocks), (dcache, "decode", cfg.decoder_num_blocks)):
        blocks = getattr(vae, f"{stack}r").blocks
        for i in range(n):
            at = lambda p: c[f"{stack}.layer.{i}.{p}"]   # noqa: E731
            assert torch.equal(at("norm_attn"), blocks[i].norm_attn(at("resid_pre")))
            assert torch.equal(at("resid_mid"), at("norm_attn") + at("attn_out"))   # post-norm (the release layout)
            assert torch.equal(at("resid_post"), at("resid_mid") + at("mlp_out"))
            z = at("attn.z")
            heads = z.transpose(1, 2).reshape(z.shape[0], z.shape[2], -1)
            assert torch.allclose(at("attn_out"), blocks[i].attn_out_proj(heads), atol=1e-6)
            assert torch.allclose(at("mlp_out"), blocks[i].norm_ffn(blocks[i].ffn_out(at("mlp.hidden"))), atol=1e-6)
            if i + 1 < n:
                assert torch.equal(at("resid_post"), c[f"{stack}.layer.{i + 1}.resid_pre"])
            q, k, v = at("attn.q"), at("attn.k"), at("attn.v")
            k, v = k.expand(-1, q.shape[1], -1, -1), v.expand(-1, q.shape[1], -1, -1)
            blk = torch.arange(q.shape[2]) // wb.block_size
            mask = torch.zeros(blk.shape * 2).masked_fill(blk[None, :] > blk[:, None], torch.finfo(q.dtype).min)
            pattern = (q @ k.transpose(-1, -2) / cfg.head_dim ** 0.5 + mask).softmax(-1)
            assert torch.allclose(at("attn.pattern"), pattern, atol=1e-6)
            assert torch.allclose(at("attn.z"), pattern @ v, atol=1e-5)
    last = dcache[f"decode.layer.{cfg.decoder_num_blocks - 1}.resid_post"]
    assert torch.equal(vae.decoder_head(last), dcache["decode.logits"])
    assert torch.equal(vae.decoder.final_layer(vae.decoder.final_norm(dcache["decode.unpatched"])),
                       dcache["decode.logits"])


def test_generation_decode_points(wb, one_prompt):
    assert torch.equal(one_prompt["block.1.decode.logits"], one_prompt["block.1.logits"])
    assert one_prompt["prefill.decode.logits"].shape[1] == one_prompt["prefill.decode.unpatched"].shape[1]


def test_filters_record_only_what_they_name(wb):
    gens, cache = wb.run_with_cache(PROMPTS, names_filter=["block.1.step.*.dit.*.layer.0.attn_out", "block.0.logits"],
                                    to="cpu", **KNOBS)
    assert set(cache) == {f"block.1.step.{s}.dit.{g}.layer.0.attn_out" for s in range(3) for g in ("cond", "uncond")} \
        | {"block.0.logits"}
    assert all(v.device.type == "cpu" for v in cache.values())
    assert cache.fingerprint == wb.fingerprint and cache.run["prompts"] == PROMPTS
    _, one = wb.run_with_cache(PROMPTS, names_filter=lambda n: n.endswith("layer.1.resid_mid") and "commit" in n,
                               **KNOBS)
    assert set(one) == {"block.0.commit.dit.layer.1.resid_mid"}
    _, seg = wb.run_with_cache(PROMPTS, names_filter="block.0.step.0.dit.cond.layer.0.resid_*", **KNOBS)
    assert sorted(n.rsplit(".", 1)[1] for n in seg) == ["resid_mid", "resid_post", "resid_pre"]


@pytest.mark.parametrize("names_filter, message", [
    ("block.0.step.0.dit.cond.layer.1.resid_pots", "did you mean 'resid_post'"),
    ("block.0.step.0.dit.cond.layer.9.resid_post", "'9' is not one of 0-1"),
    ("block.0.step.0.dit.cnd.layer.0.resid_post", "did you mean 'cond'"),
    ("**.atn.pattern", "did you mean 'attn'"),
    ("block.7.z_final", "'7' is not one of 0-1"),
    ("block.0.step.0", "a prefix of names, not a name"),
    (["block.0.z_final", "decode.logits"], "'decode.logits'"),
    (lambda name: False, "accepts no name"),
    (["block.0.z_final", 3], "must be dotted names or globs"),
])
def test_bad_filters_are_named_before_the_run(wb, names_filter, message):
    with pytest.raises(WorkbenchError, match=message):
        wb.run_with_cache(PROMPTS, names_filter=names_filter, **KNOBS)


def test_bad_vae_filters_and_devices(wb):
    with pytest.raises(WorkbenchError, match="'resid_pots' appears in no name of this VAE run; did you mean"):
        wb.encode_with_cache(ONE, names_filter="encode.layer.0.resid_pots")
    with pytest.raises(WorkbenchError, match="decode"):
        wb.encode_with_cache(ONE, names_filter="decode.logits")
    with pytest.raises(WorkbenchError, match="cannot move cached tensors to 'nope'"):
        wb.run_with_cache(PROMPTS, names_filter="block.0.z_final", to="nope", **KNOBS)


def test_readme_lists_every_point():
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert point_table() in readme


def test_a_stepped_session_caches_as_it_goes(wb, one_prompt):
    session = wb.sampler(ONE, names_filter="block.*.step.*.dit.cond.layer.1.attn.pattern", **KNOBS)
    session.step()
    assert set(session.cache) == {"block.0.step.0.dit.cond.layer.1.attn.pattern"}
    session.step()
    assert len(session.cache) == 2
    session.result()
    assert torch.equal(session.cache["block.1.step.2.dit.cond.layer.1.attn.pattern"],
                       one_prompt["block.1.step.2.dit.cond.layer.1.attn.pattern"])
    assert wb.sampler(ONE, **KNOBS).cache is None


def test_cache_stack_and_attention_figure(wb, one_prompt):
    from workbench.inside import attention_figure
    names, stacked = one_prompt.stack("block.1.step.*.dit.cond.layer.0.resid_post")
    assert names == [f"block.1.step.{s}.dit.cond.layer.0.resid_post" for s in range(3)]
    assert torch.equal(stacked[2], one_prompt[names[2]])
    with pytest.raises(WorkbenchError, match="cannot stack"):
        one_prompt.stack(["block.1.step.0.dit.cond.layer.0.resid_post", "block.1.step.0.v_cond"])
    fig = attention_figure(one_prompt["block.1.step.0.dit.cond.layer.0.attn.pattern"], height=250)
    assert fig.layout.height == 250 and len(fig.data) == wb.model.dit_config.heads
    with pytest.raises(WorkbenchError, match="is \\(B, H, L, K\\)"):
        attention_figure(one_prompt["block.1.step.0.v_cond"])
