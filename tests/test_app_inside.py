"""The Inside tab's handlers as plain functions (no server): one cached run against the workbench's own
caches and lens, selectors re-rendering without a model call, the patching sweep against
``patching_sweep``, Stop for both jobs, and bad input as one-line messages."""
from __future__ import annotations

import json
import threading

import pytest

pytest.importorskip("gradio")

from app_server import TIMEOUT_S, app_context, hold_at, stop_signal  # noqa: E402
from apps.gradio_app import inside  # noqa: E402
from apps.gradio_app.errors import InputError  # noqa: E402
from workbench.inside import patching_sweep, x0_lens  # noqa: E402

PROMPT = "a small animal that"            # 10 tokens: 8 context latents, then 2 pinned rows in block 0
KNOBS = dict(steps=4, guidance=7.0, max_new_tokens=8, seed=3)
VIEW = dict(block=1, step=2, layer=1, head=2, group="cond", scope="all blocks", metric="p_final")
CLEAN, CORRUPTED = "the cat sat on", "the dog sat on"


@pytest.fixture(scope="module")
def ctx(wb, tmp_path_factory):
    context = app_context(tmp_path_factory.mktemp("projections"), workbench=wb, backdrop_texts=50)   # no projections
    yield context
    context.close()


def cache_run(ctx, prompt=PROMPT, session="local", progress=None, **changes):
    k, v = {**KNOBS, **changes}, {**VIEW, **changes}
    extras = {"progress": progress} if progress else {}
    return inside.cache_run(ctx, prompt, k["steps"], k["guidance"], k["max_new_tokens"], k["seed"], v["block"],
                            v["step"], v["layer"], v["head"], v["group"], v["scope"], v["metric"], session=session,
                            **extras)


def view(ctx, run_id, **changes):
    v = {**VIEW, **changes}
    return inside.view(ctx, run_id, v["block"], v["step"], v["layer"], v["head"], v["group"], v["scope"], v["metric"])


def patch(ctx, clean=CLEAN, corrupted=CORRUPTED, layers="", blocks="", per_step=False, session="local", **options):
    return inside.patch(ctx, clean, corrupted, KNOBS["steps"], KNOBS["guidance"], KNOBS["max_new_tokens"],
                        KNOBS["seed"], "resid_post", "both", layers, blocks, per_step, "target_logprob",
                        session=session, **options)


def figure(fig) -> dict:
    data = json.loads(fig.to_json())
    assert isinstance(data["layout"]["height"], int)      # every figure sets its height
    return data


def tripwire(*args, **kwargs):
    raise AssertionError("model work")


@pytest.fixture(scope="module")
def stored(ctx):
    return cache_run(ctx)


# -- one run, many views -----------------------------------------------------------------------------------
def test_the_run_caches_what_the_workbench_caches(ctx, wb, stored):
    generated = wb.generate(PROMPT, **KNOBS)[0]
    assert stored["text"] == PROMPT + generated.text
    assert stored["status"].startswith("**Done** — 2 block(s) × 4 steps")
    sliders = stored["block"], stored["step"]
    assert [(s.maximum, s.value) for s in sliders] == [(1, 1), (3, 2)] and all(s.interactive for s in sliders)
    summary = stored["summary"]
    assert (summary["blocks"], summary["context_latents"], summary["block_size"]) == (2, 8, 4)
    assert summary["lens_cells"] == 2 * 4 * (wb.model.dit_config.num_layers + 1)
    _, cache = wb.run_with_cache(PROMPT, names_filter="block.*.step.2.dit.*.layer.1.attn.pattern", **KNOBS)
    z = figure(stored["attention"])["data"][0]["z"]               # every block's rows, key positions 0..15
    assert len(z) == 2 * 4 and len(z[0]) == 8 + 2 * 4
    for b in range(2):
        cond = cache[f"block.{b}.step.2.dit.cond.layer.1.attn.pattern"][0, 2]    # (bs, K = 8 + (b + 1) * 4)
        for r in range(4):
            row = z[b * 4 + r]
            assert row[:12 + 4 * b] == pytest.approx(cond[r].tolist(), abs=1e-6)
            assert row[12 + 4 * b:] == [None] * (4 - 4 * b) and sum(row[:12 + 4 * b]) == pytest.approx(1, abs=1e-5)
    assert sorted(p.rsplit("/", 1)[-1] for p in stored["files"]) == [
        "attention_patterns.safetensors", "inside_lens.csv", "inside_lens.html", "inside_lens.json"]


def test_uncond_rows_see_their_own_block_only(ctx, wb, stored):
    out = view(ctx, stored["run"], group="uncond", scope="this block", block=1, step=3, layer=0, head=1)
    _, cache = wb.run_with_cache(PROMPT, names_filter="block.1.step.3.dit.uncond.layer.0.attn.pattern", **KNOBS)
    pattern = cache["block.1.step.3.dit.uncond.layer.0.attn.pattern"][0, 1]      # keys: the block's rows, padding
    assert pattern[:, 4:].abs().max() == 0
    data = figure(out["attention"])
    for r, row in enumerate(data["data"][0]["z"]):
        assert row[:12] == [None] * 12 and row[12:] == pytest.approx(pattern[r, :4].tolist(), abs=1e-6)
    assert data["layout"]["title"]["text"].startswith("Attention: layer 0, head 1, uncond pass, step 3")


def test_positions_are_labelled_by_kind(ctx, wb, stored):
    data = figure(view(ctx, stored["run"], scope="this block", block=0)["attention"])
    ids = wb.tokenizer.encode(PROMPT)
    keys = data["layout"]["xaxis"]["ticktext"]
    assert keys[0] == f"0 {wb.tokenizer.decode(ids[:1])!r}" and keys[8] == f"8 {wb.tokenizer.decode(ids[8:9])!r}"
    assert [a["text"] for a in data["layout"]["annotations"]] == ["prompt", "block 0 (current)"]
    hover = data["data"][0]["text"]
    assert "(prompt, pinned)" in hover[0][0] and "(prompt)" in hover[0][0] and "(block 0)" in hover[2][11]
    every = figure(view(ctx, stored["run"], block=1)["attention"])
    assert [a["text"] for a in every["layout"]["annotations"]] == ["prompt", "block 0", "block 1 (current)"]
    assert every["layout"]["shapes"][-1]["y0"] == 3.5        # the chosen block's rows are outlined


def test_the_x0_lens_is_the_workbenchs(ctx, wb, stored):
    lens = x0_lens(wb, PROMPT, **KNOBS)
    record = next(r for r in lens.records if (r["block"], r["step"], r["layer"]) == (1, 2, 1))
    assert stored["cell"].startswith(f"block 1, step 2 (t = {record['t']:.0f}), residual after layer 1: "
                                     f"{record['text']!r}") and f"p_final {record['p_final']:.3f}" in stored["cell"]
    heatmap = figure(stored["lens"])["data"][0]
    assert heatmap["y"] == ["input", "layer 0", "layer 1"] and len(heatmap["x"]) == 4
    rows = [r for r in lens.records if r["block"] == 1]
    assert heatmap["z"][2][2] == pytest.approx(next(r["p_final"] for r in rows if (r["layer"], r["step"]) == (1, 2)))
    assert heatmap["text"][0][0] == next(r["text"] for r in rows if (r["layer"], r["step"]) == (-1, 0))
    other = figure(view(ctx, stored["run"], metric="agreement")["lens"])["data"][0]
    assert other["z"][2][2] == pytest.approx(next(r["agreement"] for r in rows if (r["layer"], r["step"]) == (1, 2)))


def test_selectors_re_render_without_the_model(ctx, stored, monkeypatch):
    for name in ("sampler", "run_with_cache", "run_names", "generate", "decode", "encode"):
        monkeypatch.setattr(ctx.workbench, name, tripwire)
    monkeypatch.setattr(inside, "x0_lens", tripwire)
    for changes in (dict(block=0, step=0), dict(layer=0, head=3), dict(group="uncond"), dict(scope="this block")):
        out = view(ctx, stored["run"], **changes)
        assert set(out) == {"attention", "lens", "cell"}


def test_progress_counts_the_solver_steps(ctx):
    seen = []
    cache_run(ctx, progress=lambda value, desc=None: seen.append(value))
    steps = [v for v in seen if isinstance(v, tuple)]
    assert steps[0] == (0, 8) and steps[-1] == (8, 8) and len(steps) == 9


@pytest.mark.parametrize("changes, message", [
    (dict(block=2), "block must be from 0 to 1, got 2"), (dict(step=4), "step must be from 0 to 3, got 4"),
    (dict(layer=2), "layer must be from 0 to 1, got 2"), (dict(head=4), "head must be from 0 to 3, got 4"),
    (dict(group="both"), "pass must be one of cond, uncond"), (dict(scope=None), "rows must be one of"),
    (dict(metric="p_top"), "x0-lens colour must be one of p_final"),
])
def test_selectors_out_of_range_for_the_stored_run(ctx, stored, changes, message):
    with pytest.raises(InputError, match=message):
        view(ctx, stored["run"], **changes)


def test_bad_runs_are_refused_before_the_model(ctx, monkeypatch):
    with pytest.raises(InputError, match="no model-internals result for this session"):
        view(ctx, None)
    monkeypatch.setattr(ctx.workbench, "sampler", tripwire)
    with pytest.raises(InputError, match="prompt has 2001 characters; at most 2000"):
        cache_run(ctx, "x" * 2001)
    with pytest.raises(InputError, match="head must be from 0 to 3"):
        cache_run(ctx, head=9)
    monkeypatch.setattr(inside, "MAX_RUN_BYTES", 50_000)
    with pytest.raises(InputError, match=r"would cache 109.4 KiB .* \(2 blocks × 4 steps\); at most 48.8 KiB"):
        cache_run(ctx)


def test_stop_ends_the_run_after_the_step_in_progress(ctx, wb, monkeypatch):
    held, stopped = threading.Event(), stop_signal(ctx, monkeypatch)
    result = {}
    with wb.hooks(post_update=hold_at(1, 0, stopped, held)):   # block 0 done, held in block 1 until Stop
        thread = threading.Thread(target=lambda: result.update(cache_run(ctx, session="alice", max_new_tokens=16)))
        thread.start()
        assert held.wait(TIMEOUT_S)
        assert inside.stop(ctx, session="bob") == {"status": "Nothing is running."}
        assert inside.stop(ctx, session="alice") == {}     # the run ended within the wait: its own status says so
        thread.join(TIMEOUT_S)
    assert result["status"] == "**Stopped** by the user: showing the 1 finished block(s)."
    assert result["summary"]["status"] == "stopped" and result["block"].maximum == 1 and not result["block"].interactive
    assert result["cell"].startswith("block 0, step 2") and inside.stop(ctx, session="alice")["status"] == \
        "Nothing is running."


# -- the patching sweep --------------------------------------------------------------------------------------
def test_the_patching_heatmap_is_patching_sweeps(ctx, wb):
    out = patch(ctx, layers="1", blocks="0-1")
    sweep = patching_sweep(wb, CORRUPTED, CLEAN, point="resid_post", layers=[1], progress=False, **KNOBS)
    assert out["patch_records"] == [[r["layer"], r["block"], r["step"], round(r["target_logprob"], 4),
                                     round(r["final_latent_distance"], 4)] for r in sweep.records]
    assert out["patch_status"].startswith("**Done** — 2 patched runs")
    heat = figure(out["patching"])
    assert heat["data"][0]["y"] == ["layer 1"] and heat["data"][0]["x"] == ["block 0", "block 1"]
    assert f"corrupted {sweep.baseline['target']['target_logprob']:.3g}" in heat["layout"]["title"]["text"]
    other = figure(inside.patch_view(ctx, out["patch"], "final_latent_distance")["patching"])
    assert other["data"][0]["z"][0] == pytest.approx([r["final_latent_distance"] for r in sweep.records])
    assert sorted(p.rsplit("/", 1)[-1] for p in out["patch_files"]) == ["patching.csv", "patching.html",
                                                                       "patching.json"]


def test_stop_ends_the_sweep_between_cells(ctx):
    def progress(value, desc=None):        # Stop arrives while the second cell is about to start
        if value == (1, 4):
            assert inside.patch_stop(ctx, session="carol")["patch_status"].startswith("Stopping")
    out = patch(ctx, session="carol", progress=progress)
    assert out["patch_status"].startswith("**Stopped** after 1 of 4 cells.") and len(out["patch_records"]) == 1
    assert inside.patch_stop(ctx, session="carol") == {"patch_status": "Nothing is running."}


@pytest.mark.parametrize("changes, message", [
    (dict(corrupted="a small animal that"), "must fill the same number of context latents (patching copies each "
                                            "position into the same position of the other run): the clean prompt has "
                                            "7 tokens (4 latents), the corrupted one 10 (8)"),
    (dict(layers="0-5"), "layers: 2 is outside 0 to 1"), (dict(blocks="2"), "blocks: 2 is outside 0 to 1"),
    (dict(per_step=True), "the sweep has 2 layers × 2 blocks × 4 steps = 16 cells; at most 8"),
    (dict(clean="  "), "clean prompt is empty"), (dict(corrupted=None), "corrupted prompt must be text"),
])
def test_bad_sweeps_are_refused_before_the_model(ctx, monkeypatch, changes, message):
    monkeypatch.setattr(inside, "patching_sweep", tripwire)
    monkeypatch.setattr(inside, "MAX_PATCH_CELLS", 8)
    with pytest.raises(InputError) as err:
        patch(ctx, **changes)
    assert message in str(err.value) and "\n" not in str(err.value)
