"""Trustworthy numbers in the app (issue #10's UI), on the pocket checkpoint (it ends its samples with EOS and
goes off the manifold at high guidance, which the random fixtures never do): special tokens as markers,
texts that end at their EOS, blocks past it marked, token accuracy over exactly what is shown, the
off-manifold flag, guidance variants as knobs (defaults: the official run, bit for bit), population
metrics, informative units and likelihood errors, inversion errors per block."""
from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("gradio")

from app_server import app_context  # noqa: E402
from apps.gradio_app import diagnostics, guidance, inside, latent_lab, monitor, trajectories  # noqa: E402
from cola_core.sampler import text_sample_id  # noqa: E402
from workbench import OFF_MANIFOLD_RATIO, Workbench, regenerate_from  # noqa: E402
from workbench.experiments.metrics import population_metrics  # noqa: E402

PROMPT = "a small animal that"
KNOBS = dict(steps=4, max_new_tokens=4, seed=0, solver="euler", schedule="linear")
ENDS = "a kind of tree"                                        # ends with EOS in block 5 of 8 at these knobs
RUN_ON = dict(KNOBS, guidance=3.0, max_new_tokens=8, stop_at_eos=False)


@pytest.fixture(scope="module")
def wb(pocket_model):
    return Workbench(pocket_model)


@pytest.fixture(scope="module")
def ctx(wb, tmp_path_factory):
    context = app_context(tmp_path_factory.mktemp("projections"), workbench=wb)
    yield context
    context.close()


def run(ctx, prompt=PROMPT, guidance=7.0, stop_at_eos=True, rescale=None, interval=None, **knobs) -> dict:
    """The Trajectories tab's final view; the variant arguments are left out unless given (an older client)."""
    k = {**KNOBS, **knobs}
    variants = () if rescale is None else (rescale, *(interval or (0.0, 1.0)))
    return list(trajectories.generate(ctx, prompt, k["steps"], guidance, k["max_new_tokens"], k["seed"], k["solver"],
                                      k["schedule"], False, "PCA", "2-D", 0, 0.0, 50, 0.9, 1.1, stop_at_eos,
                                      *variants))[-1]


def figure(fig) -> dict:
    data = json.loads(fig.to_json())
    assert isinstance(data["layout"]["height"], int)      # every figure sets its height
    return data


# -- markers, the end of a text, blocks past it ----------------------------------------------------------------
def test_trajectory_text_ends_at_its_eos_marker_and_the_blocks_after_it_are_marked(ctx, wb):
    out = run(ctx, ENDS, **RUN_ON)
    direct = wb.trajectory([ENDS], sample_ids=[0], **RUN_ON)
    gen, steps = direct.generations[0], RUN_ON["steps"]
    assert gen.end_block is not None and gen.end_block < direct.num_blocks - 1, "the pocket ends this text early"
    past = list(range(gen.end_block + 1, direct.num_blocks))
    summary = out["summary"]
    assert out["text"] == ENDS + wb.display(gen.token_ids) and out["text"].endswith("⟨eos⟩")
    assert "<|" not in out["text"] + json.dumps(summary, ensure_ascii=False)
    assert summary["blocks_after_eos"] == past and summary["end_block"] == gen.end_block
    assert f"blocks {past[0]}–{past[-1]} ran on past it" in out["status"]
    assert "after EOS" in out["block"].label
    norms = figure(out["norms"])["layout"]
    band = [s for s in norms["shapes"] if s["type"] == "rect"]
    assert len(band) == 1 and band[0]["x0"] == past[0] * steps - 0.5 and band[0]["x1"] == direct.num_blocks * steps - 0.5
    assert any("after EOS" in a["text"] for a in norms["annotations"])
    names = [t["name"] for t in figure(out["projection"])["data"]]
    assert [n for n in names if n.endswith("(after EOS)")] == [f"block {b} (after EOS)" for b in past]
    bars = figure(out["monitor"])["data"][0]["marker"]["color"]
    assert [c == monitor.PAST_EOS for c in bars] == [b in past for b in range(direct.num_blocks)]
    assert trajectories.scrub(ctx, out["run"], past[0], 0, "PCA", "2-D")["info"]["after_eos"] is True
    assert trajectories.scrub(ctx, out["run"], gen.end_block, 0, "PCA", "2-D")["info"]["after_eos"] is False
    saved = json.loads(open(next(p for p in out["files"] if p.endswith("trajectory.json"))).read())
    assert saved["raw_text"] == gen.text and "<|endoftext|>" in saved["raw_text"]      # downloads keep it raw


def test_latent_lab_round_trip_shows_the_text_and_counts_what_it_shows(ctx, wb):
    a, b = "a small domesticated animal kept as a pet", "a large body of salt water that covers most of the earth"
    out = latent_lab.encode(ctx, a, b, 0.0, "lerp")
    report = out["encoded"]
    assert report["A"]["decoded"] == a and report["B"]["decoded"] == b     # no run-on past A's own length
    assert report["A"]["token_accuracy"] == 1.0 and report["A"]["tokens"] == len(wb.tokenizer.encode(a))
    assert "".join(t for t, _ in out["interp_tokens"]) == a and len(out["interp_tokens"]) == report["A"]["tokens"]


def test_latent_lab_shows_special_tokens_as_markers_and_its_accuracy_counts_them(ctx, wb):
    a = "a small bird<|endoftext|> that sings"
    out = latent_lab.encode(ctx, a, "the act of", 0.0, "lerp")
    tokens, report = [t for t, _ in out["interp_tokens"]], out["encoded"]["A"]
    source = latent_lab.display_tokens(wb.tokenizer.encode(a), wb.tokenizer)
    assert "⟨eos⟩" in tokens and "⟨eos⟩" in report["decoded"] and "<|" not in report["decoded"] + "".join(tokens)
    assert report["decoded"].split("⟨eos⟩", 1)[1].endswith("sings")   # a decoded latent shows every slot, past eos
    assert len(tokens) == report["tokens"] == len(source)
    assert report["token_accuracy"] == sum(x == y for x, y in zip(tokens, source)) / len(source)


# -- the off-manifold monitor ---------------------------------------------------------------------------------
def test_an_off_manifold_run_shows_the_flag_and_a_calm_one_does_not(ctx, wb):
    flagged, calm = run(ctx, guidance=7.0), run(ctx, guidance=1.0)
    records = wb.trajectory([PROMPT], sample_ids=[0], guidance=7.0, **KNOBS).norm_records(wb.data_norm())
    off = [r["block"] for r in records if r["off_manifold"]]
    assert off, "the pocket leaves the manifold at guidance 7"
    assert f"⚠ **Off-manifold**: block{'s' if len(off) > 1 else ''} {', '.join(map(str, off))} reach" in \
        flagged["status"]
    shown = figure(flagged["monitor"])
    assert shown["data"][0]["y"] == pytest.approx([r["ratio"] for r in records])
    assert [c == monitor.OFF for c in shown["data"][0]["marker"]["color"]] == [r["off_manifold"] for r in records]
    assert shown["layout"]["title"]["text"].startswith("⚠ Off-manifold")
    assert any(s["y0"] == OFF_MANIFOLD_RATIO for s in shown["layout"]["shapes"])   # the threshold line
    assert "Off-manifold" not in calm["status"] and monitor.OFF not in figure(calm["monitor"])["data"][0]["marker"][
        "color"]


def test_guidance_lab_flags_cells_and_shows_population_metrics_across_seeds(ctx, wb):
    out = guidance.run_grid(ctx, PROMPT, "1, 7", "seed", "0, 1", 4, 0, 4, "euler", "off")
    records = guidance.read_jsonl(ctx.store.folder(out["run"]) / "run" / "results.jsonl")
    flagged = [r for r in records if r["off_manifold"]]
    assert flagged and all(r["guidance"] == 7.0 for r in flagged), "the pocket leaves the manifold at guidance 7"
    assert out["grid"].count("⚠ off-manifold") == len(flagged) and "<|" not in out["grid"]
    assert f"{len(flagged)} of 4 generations have a block above 1.5×" in out["status"]
    assert [row[-1] for row in out["records"]] == [r["off_manifold"] for r in records]
    curves = figure(out["monitor"])
    assert curves["layout"]["title"]["text"].startswith("⚠ Off-manifold")
    for g in (1.0, 7.0):
        row = next(p for p in out["population"] if p[1] == g)
        expected = population_metrics([r["text"] for r in records if r["guidance"] == g])
        assert row[0] == PROMPT and row[3] == [0, 1] and row[6] == pytest.approx(expected["self_bleu"], abs=1e-4)
        assert row[5] == pytest.approx(expected["distinct_2_pooled"], abs=1e-4)
    assert "self_bleu (across seeds)" in [a["text"] for a in figure(out["metrics"])["layout"]["annotations"]]


# -- guidance variants: knobs that change the run; their defaults leave it the official one ---------------------
def test_trajectory_variants_change_the_run_and_their_defaults_leave_it_identical(ctx, wb):
    plain = run(ctx)
    assert run(ctx, rescale=0.0, interval=(0.0, 1.0))["summary"]["monitor"] == plain["summary"]["monitor"]
    for rescale, interval in ((0.7, None), (0.0, (0.0, 0.5))):
        varied = run(ctx, rescale=rescale, interval=interval)["summary"]
        direct = wb.trajectory([PROMPT], sample_ids=[0], guidance=7.0, guidance_rescale=rescale,
                               guidance_interval=interval, **KNOBS)
        assert varied["token_ids"] == direct.generations[0].token_ids
        assert varied["knobs"]["guidance_rescale"] == rescale and varied["knobs"]["guidance_interval"] == interval
        assert [r["norm"] for r in varied["monitor"]] == pytest.approx(
            [r["norm"] for r in direct.norm_records(wb.data_norm())])
        assert [r["norm"] for r in varied["monitor"]] != pytest.approx([r["norm"] for r in plain["summary"]["monitor"]])
    with pytest.raises(ValueError, match="the guidance interval is empty"):
        run(ctx, rescale=0.0, interval=(0.8, 0.2))


def test_guidance_lab_variants_reach_the_sweep(ctx, wb):
    args = (PROMPT, "7", "steps", "4", 4, 0, 4, "euler", "off")
    plain = guidance.run_grid(ctx, *args)["records"]
    assert guidance.run_grid(ctx, *args, 0.0, 0.0, 1.0)["records"] == plain
    rescaled = guidance.run_grid(ctx, *args, 0.7, 0.0, 0.5)["records"]
    expected = wb.generate([PROMPT], guidance=7.0, steps=4, seed=0, max_new_tokens=4, guidance_rescale=0.7,
                           guidance_interval=(0.0, 0.5), sample_ids=[text_sample_id(PROMPT)])[0]
    assert rescaled[0][4] == wb.display(expected.completion_ids)
    assert rescaled[0][-2] != plain[0][-2]                  # the norm ratio moved


def test_latent_lab_regeneration_and_inside_take_the_variants(ctx, wb):
    pair = latent_lab.encode(ctx, "a small domesticated animal kept as a pet", "the act of", 0.5, "lerp")["pair"]
    latents = ctx.store.get(pair, "latents").payload.source("A")
    options = dict(strength=1.0, keep_blocks=[0], steps=4, guidance=7.0, seed=3)
    base = regenerate_from(wb, latents, **options)
    varied = regenerate_from(wb, latents, **options, guidance_rescale=0.7, guidance_interval=(0.2, 1.0))
    assert not varied.latents.z[0].equal(base.latents.z[0])
    assert latent_lab.regenerate(ctx, pair, "A", 1.0, ["0"], 4, 7.0, 3, 0.0, 0.0, 1.0)["regen_text"] == \
        wb.decode(base.latents)[0].text
    assert latent_lab.regenerate(ctx, pair, "A", 1.0, ["0"], 4, 7.0, 3, 0.7, 0.2, 1.0)["regen_text"] == \
        wb.decode(varied.latents)[0].text
    view = (0, 0, 0, 0, "cond", "all blocks", "p_final")
    stored = inside.cache_run(ctx, PROMPT, 4, 7.0, 4, 0, *view, 0.7, 0.0, 0.5)
    expected = wb.generate([PROMPT], steps=4, guidance=7.0, max_new_tokens=4, seed=0, guidance_rescale=0.7,
                           guidance_interval=(0.0, 0.5))[0]
    assert stored["summary"]["token_ids"] == expected.token_ids and stored["summary"]["knobs"]["guidance_rescale"] == 0.7
    assert inside.cache_run(ctx, PROMPT, 4, 7.0, 4, 0, *view)["summary"]["token_ids"] == wb.generate(
        [PROMPT], steps=4, guidance=7.0, max_new_tokens=4, seed=0)[0].token_ids


# -- diagnostics and inversion --------------------------------------------------------------------------------
def test_diagnostics_show_informative_units_and_the_likelihood_with_its_errors(ctx, wb):
    texts = ["a small domesticated animal kept as a pet", "a kind of tree"]
    out = diagnostics.diagnose(ctx, "\n".join(texts), None, 1, 1, 2, 0, True, 2)
    diag = ctx.store.get(out["run"], "diagnostics").payload["diagnosis"]          # the workbench's numbers
    assert diag.settings["likelihood_options"] == {"steps": 2, "solver": "rk4"}
    d = diag.dataset
    assert f"| informative units (means follow the text) | {d.informative_units} / {d.latent_dim} |" in out["summary"]
    assert (f"| prior log-likelihood (posterior draws) | {d.prior_bits_per_dim:.3f} ± {d.prior_stderr_bits_per_dim:.3f}"
            f" bits/dim") in out["summary"]
    assert f"ODE error ≈ {d.prior_ode_error_bits_per_dim:.3f}" in out["summary"]
    assert math.isfinite(d.prior_ode_error_bits_per_dim) and d.prior_ode_error_bits_per_dim > 0
    bars = figure(out["units"])
    assert bars["data"][0]["y"] == pytest.approx([r.text_variance_ratio for r in diag.per_dimension])
    assert f"{d.informative_units} / {d.latent_dim}" in bars["layout"]["title"]["text"]
    columns = diagnostics.TABLE_COLUMNS
    for row, rec in zip(out["table"], diag.per_text):
        assert row[columns.index("prior_ode_error_nats")] == pytest.approx(rec.prior_ode_error_nats, abs=1e-4)


def test_diagnostics_heatmap_shows_special_tokens_as_markers(ctx):
    out = diagnostics.diagnose(ctx, "a small bird<|endoftext|> that sings", None, 1, 1, 2, 0, False, 1)
    hover = json.dumps(figure(out["heatmap"])["data"][0]["text"], ensure_ascii=False)
    assert "⟨eos⟩" in hover and "<|" not in hover
