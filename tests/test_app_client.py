"""The Gradio app driven through gradio_client (heavy: a live server): every endpoint, streaming, Stop.

The app runs on 127.0.0.1 with the tiny random checkpoint; outputs are gibberish but deterministic
given seeds, so each endpoint's values are checked against the workbench API called directly.
Streaming and Stop are driven by hooks the test holds, never by the clock. The handlers themselves
are tested without a server in test_app_handlers.py; bad input, forged files and concurrent clients
are in robustness/test_app_attacks.py.
"""
from __future__ import annotations

import json
import math
import re
import threading
from pathlib import Path

import pytest

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from app_server import TIMEOUT_S, bench_output, hold_at, running_app, stop_signal, wait_for  # noqa: E402
from apps.gradio_app import guidance, handoff  # noqa: E402
from workbench import Workbench, interpolate, invert, regenerate_from  # noqa: E402
from workbench.chat import ChatSession  # noqa: E402
from cola_core.sampler import text_sample_id  # noqa: E402
from workbench.inside import patching_sweep, x0_lens  # noqa: E402
from workbench.diagnostics import diagnose  # noqa: E402

pytestmark = pytest.mark.heavy

KNOBS = dict(steps=4, guidance=7.0, max_new_tokens=8, seed=3, solver="euler", schedule="linear")
ENDPOINTS = {"/trajectory_generate", "/trajectory_stop", "/trajectory_scrub", "/diagnose", "/guidance_grid",
             "/guidance_stop", "/latent_encode", "/latent_interpolate", "/latent_path", "/latent_direction",
             "/latent_regenerate", "/latent_invert", "/inside_run", "/inside_stop", "/inside_view", "/inside_patch",
             "/inside_patch_stop", "/inside_patch_view", "/status", "/status_tick", "/bench_load", "/bench_filter",
             "/bench_page", "/bench_open", "/chat_send", "/chat_stop", "/chat_clear", "/chat_open"}
UPLOAD_CAP = 4096


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory) -> Path:
    """A folder the Bench tab may read, holding a tiny bench run in bench/."""
    root = tmp_path_factory.mktemp("bench_root")
    bench_output(root)
    return root


@pytest.fixture(scope="module")
def app(tmp_path_factory, bench_root):
    with running_app(tmp_path_factory.mktemp("projections"), bench_root=[bench_root],
                     max_upload_bytes=UPLOAD_CAP) as (ctx, url):
        yield ctx, url


@pytest.fixture(scope="module")
def wb(app) -> Workbench:
    return app[0].workbench


def client(app) -> Client:
    return Client(app[1], verbose=False)


def generate(c: Client, prompt: str, preview: bool = True, **knobs):
    k = {**KNOBS, **knobs}
    return c.predict(prompt, k["steps"], k["guidance"], k["max_new_tokens"], k["seed"], k["solver"], k["schedule"],
                     preview, "auto", "2-D", api_name="/trajectory_generate")


def figure(plot_output: dict) -> dict:
    assert plot_output["type"] == "plotly"
    fig = json.loads(plot_output["plot"])
    assert isinstance(fig["layout"]["height"], int)   # every figure sets its height
    return fig


def fails(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(AppError) as err:
        fn(*args, **kwargs)
    assert match in str(err.value), str(err.value)
    return str(err.value)


# -- endpoints ----------------------------------------------------------------------------------------------
def test_every_event_has_an_api_name(app):
    assert set(client(app).view_api(return_format="dict", print_info=False)["named_endpoints"]) == ENDPOINTS


def test_status_reports_checkpoint_device_and_pca_only(app, wb):
    markdown, facts, _, _ = client(app).predict(api_name="/status")
    assert wb.fingerprint[:12] in markdown and "cpu" in markdown
    assert facts["fingerprint"] == wb.fingerprint and facts["device"] == "cpu" and facts["umap"] == "off"
    assert facts["latent_dim"] == wb.channels and facts["block_size"] == wb.block_size


def test_trajectory_matches_workbench_generation_and_scrubs(app, wb):
    c = client(app)
    status, text, info, preview, norms, proj, block, step, files, summary, monitor = generate(c, "a small animal that")
    direct = wb.trajectory(["a small animal that"], preview=True, **KNOBS)
    expected = direct.generations[0]
    assert summary["status"] == "finished" and summary["text"] == wb.display(expected.token_ids)
    assert summary["token_ids"] == expected.token_ids and text == "a small animal that" + summary["text"]
    records = direct.norm_records(wb.data_norm())                 # the off-manifold monitor, per block
    assert figure(monitor)["data"][0]["y"] == pytest.approx([r["ratio"] for r in records])
    assert summary["steps_recorded"] == len(direct.steps) == direct.num_blocks * KNOBS["steps"]
    assert (block["value"], block["maximum"]) == (direct.num_blocks - 1, direct.num_blocks - 1)
    assert (step["value"], step["maximum"]) == (KNOBS["steps"] - 1, KNOBS["steps"] - 1)
    assert "Finished" in status
    # the last step's numbers and preview are the workbench's
    last = direct.steps[-1]
    free = last.t[0] > 0
    diff = (last.v_cond[0][free] - last.v_uncond[0][free]).norm(dim=-1).mean()
    assert info["block"] == last.block and info["step"] == last.step
    assert math.isclose(info["v_diff_norm"], float(diff), rel_tol=1e-5)
    assert preview == last.preview[0]
    norms_fig, proj_fig = figure(norms), figure(proj)
    assert [t["name"] for t in norms_fig["data"]] == ["|v_cond|", "|v_uncond|", "|v_cond - v_uncond|"]
    assert len(norms_fig["data"][0]["y"]) == len(direct.steps)
    backdrop = proj_fig["data"][0]
    assert backdrop["name"] == "corpus latents" and len(backdrop["x"]) == len(app[0].projections.pca.coords)
    assert {f"block {b}" for b in range(direct.num_blocks)} <= {t["name"] for t in proj_fig["data"]}
    # downloads: JSON rows, CSV, HTML, tensors
    assert sorted(p.rsplit("/", 1)[-1] for p in files) == ["trajectory.csv", "trajectory.html", "trajectory.json",
                                                           "trajectory_tensors.safetensors"]
    saved = json.loads(open(next(p for p in files if p.endswith(".json"))).read())
    assert len(saved["rows"]) == len(direct.steps) and saved["raw_text"] == expected.text
    # scrub to block 0, step 1: the numbers, preview and marked points of that step
    info0, preview0, norms0, proj0, monitor0 = c.predict(0, 1, "PCA", "3-D", api_name="/trajectory_scrub")
    assert figure(monitor0)["data"][0]["marker"]["line"]["width"][0] == 3          # block 0 outlined
    s = direct.block(0)[1]
    assert (info0["block"], info0["step"]) == (0, 1) and math.isclose(info0["t"], float(s.t[0].max()))
    assert preview0 == s.preview[0]
    marked = [t for t in figure(proj0)["data"] if t["name"].startswith("z_t block 0 step 1")]
    assert len(marked) == 1 and marked[0]["type"] == "scatter3d"
    # positions past the run are refused
    fails(f"block must be from 0 to {direct.num_blocks - 1}, got 9", c.predict, 9, 0, "auto", "2-D",
          api_name="/trajectory_scrub")


def test_trajectory_streams_while_a_hook_holds_the_sampler(app, wb):
    held, release = threading.Event(), threading.Event()
    with wb.hooks(post_update=hold_at(1, 0, release, held)):
        job = client(app).submit("", 8, 3.0, 12, 1, "euler", "linear", True, "auto", "2-D",
                                 api_name="/trajectory_generate")
        assert held.wait(TIMEOUT_S)
        wait_for(lambda: any(u[0].startswith("**Sampling** — block") for u in job.outputs()), "a streamed update")
        running = [u for u in job.outputs() if u[0].startswith("**Sampling** — block")]
        assert not job.done()                                           # arrived while the sampler is held
        release.set()
        final = job.result(timeout=TIMEOUT_S)
    assert re.match(r"\*\*Sampling\*\* — block 1/\d+, step 1/8", running[0][0])
    assert [u[3] for u in running] == [u[2]["preview"] for u in running]   # live preview of the live step
    assert final[9]["status"] == "finished"
    assert final[9]["text"] == wb.display(wb.generate([""], steps=8, guidance=3.0, max_new_tokens=12,
                                                      seed=1)[0].token_ids)


def test_stop_interrupts_the_sampler(app, wb, monkeypatch):
    c = client(app)
    held, stopped = threading.Event(), stop_signal(app[0], monkeypatch)
    with wb.hooks(post_update=hold_at(0, 1, stopped, held)):
        job = c.submit("stop me", 200, 7.0, 64, 0, "euler", "linear", True, "auto", "2-D",
                       api_name="/trajectory_generate")
        assert held.wait(TIMEOUT_S)
        stopped_view = c.predict("auto", "2-D", api_name="/trajectory_stop")
    summary = stopped_view[9]
    assert stopped_view[0].startswith("**Stopped**") and summary["status"] == "stopped"
    assert summary["steps_recorded"] == 2                       # steps 0 and 1, then the interrupt
    assert job.result(timeout=TIMEOUT_S)[9]["status"] == "stopped"
    assert "Nothing is running" in client(app).predict("auto", "2-D", api_name="/trajectory_stop")[0]


def test_diagnose_matches_workbench_numbers(app, wb, tmp_path):
    texts = ["a small domesticated animal kept as a pet", "the act of moving quickly on foot"]
    out = client(app).predict("\n".join(texts), None, 1, 1, 5, 0, False, 8, api_name="/diagnose")
    summary, scatter, heatmap, fm, bits, table, files, units = out
    diag = diagnose(wb.model, texts, samples=1, fm_draws=1, t_grid=[0, 0.25, 0.5, 0.75, 1.0], seed=0)
    rows = table["data"]
    assert [r[1] for r in rows] == texts
    for row, rec in zip(rows, diag.per_text):
        assert math.isclose(row[3], rec.token_accuracy, abs_tol=1e-4)
        assert math.isclose(row[4], rec.recon_bits_per_token, abs_tol=1e-4)
        assert math.isclose(row[5], rec.kl_bits_per_token, abs_tol=1e-4)
        assert math.isclose(row[7], rec.fm_loss, abs_tol=1e-4)
    assert f"{diag.dataset.elbo_bits_per_token:.3f} bits/token" in summary
    assert f"| informative units (means follow the text) | {diag.dataset.informative_units} / " in summary
    assert figure(units)["data"][0]["y"] == pytest.approx([r.text_variance_ratio for r in diag.per_dimension])
    points = figure(scatter)["data"][0]
    assert points["y"] == pytest.approx([r.recon_bits_per_token for r in diag.per_text], rel=1e-6)
    assert texts[0] in points["text"][0]                       # hover shows the text
    grid = figure(heatmap)["data"][0]
    lat = wb.encode(texts[:1])
    logp = wb.decoder_logits(lat)[0][:len(lat.token_ids[0])].log_softmax(-1)
    nll = [-float(logp[k, i]) / math.log(2) for k, i in enumerate(lat.token_ids[0])]
    assert grid["z"][0][:len(nll)] == pytest.approx(nll, rel=1e-5)
    assert len(figure(fm)["data"][-2]["x"]) == 5               # mean FM loss at each t of the grid
    assert {t["name"] for t in figure(bits)["data"]} >= {"reconstruction (sampled z)", "KL to N(0, I)"}
    assert sorted(p.rsplit(".", 1)[-1] for p in files) == ["csv", "html", "json"]
    saved = json.loads(open(next(p for p in files if p.endswith(".json"))).read())
    assert [r["text"] for r in saved["per_text"]] == texts and len(saved["tokens"]) == 2


def test_diagnose_uploads_and_bad_files(app, tmp_path):
    c = client(app)
    good = tmp_path / "texts.jsonl"
    good.write_text('{"text": "a tool for driving nails"}\n\n"to cut wood into small pieces"\n')
    table = c.predict("", handle_file(str(good)), 1, 1, 3, 0, False, 8, api_name="/diagnose")[5]
    assert [r[1] for r in table["data"]] == ["a tool for driving nails", "to cut wood into small pieces"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{not json\n')
    fails("line 2 is not JSON", c.predict, "", handle_file(str(bad)), 1, 1, 3, 0, False, 8, api_name="/diagnose")
    field = tmp_path / "field.jsonl"
    field.write_text('{"body": "no text field"}\n')
    fails('line 1 needs a "text"', c.predict, "", handle_file(str(field)), 1, 1, 3, 0, False, 8, api_name="/diagnose")
    huge = tmp_path / "huge.txt"
    huge.write_text("a line of text\n" * (UPLOAD_CAP // 10))
    fails("the limit is", c.predict, "", handle_file(str(huge)), 1, 1, 3, 0, False, 8, api_name="/diagnose")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    fails("not UTF-8", c.predict, "", handle_file(str(binary)), 1, 1, 3, 0, False, 8, api_name="/diagnose")
    fails("no texts", c.predict, "  \n ", None, 1, 1, 3, 0, False, 8, api_name="/diagnose")
    fails("posterior samples must be from 1 to 8, got 0", c.predict, "x", None, 0, 1, 3, 0, False, 8,
          api_name="/diagnose")


def test_guidance_grid_runs_the_experiment_runner(app, wb):
    c = client(app)
    status, grid, metrics, gaps, table, files, monitor, population = c.predict(
        "a small animal that", "1, 5", "steps", "2-3", 4, 0, 8, "euler", "off", api_name="/guidance_grid")
    assert status.startswith("**Done**") and "4 cells" in status
    rows = table["data"]
    assert len(rows) == 4
    for prompt, g, steps, seed, text, *_ in rows:
        expected = wb.generate(["a small animal that"], guidance=g, steps=steps, seed=seed, max_new_tokens=8,
                               sample_ids=[text_sample_id("a small animal that")])[0]   # the sweep's rule
        expected = wb.display(expected.completion_ids)
        assert text == expected and seed == 0
        assert expected.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in grid
    assert {(r[1], r[2]) for r in rows} == {(1.0, 2), (1.0, 3), (5.0, 2), (5.0, 3)}
    assert "guidance 1" in grid and "steps 3" in grid
    fig = figure(metrics)
    assert {t["name"] for t in fig["data"]} == {"steps=2", "steps=3"}
    assert len(figure(gaps)["data"]) == 4
    assert sorted(p.rsplit("/", 1)[-1] for p in files) == ["guidance_grid.csv", "guidance_grid.json", "report.html"]
    by_seed = c.predict("a small animal that", "3", "seed", "0, 7", 4, 0, 8, "euler", "off",
                        api_name="/guidance_grid")[4]["data"]
    assert [(r[2], r[3]) for r in by_seed] == [(4, 0), (4, 7)]
    assert population["data"] == [] and "choose Y = seed" in status              # one seed per cell here
    assert figure(monitor)["layout"]["height"] and len(figure(monitor)["data"]) >= 2
    seeds = c.predict("a small animal that", "3", "seed", "0, 7", 4, 0, 8, "euler", "off", api_name="/guidance_grid")
    assert [row[3] for row in seeds[7]["data"]] == [[0, 7]]                      # population across the two seeds
    varied = c.predict("a small animal that", "5", "steps", "4", 4, 0, 8, "euler", "off", 0.7, 0.0, 0.5,
                       api_name="/guidance_grid")[4]["data"][0]              # the variants, appended at the end
    expected = wb.generate(["a small animal that"], guidance=5.0, steps=4, seed=0, max_new_tokens=8,
                           guidance_rescale=0.7, guidance_interval=(0.0, 0.5),
                           sample_ids=[text_sample_id("a small animal that")])[0]
    assert varied[4] == wb.display(expected.completion_ids)


def test_guidance_stop_ends_the_grid_after_the_cell_in_progress(app, monkeypatch):
    c = client(app)
    assert c.predict(api_name="/guidance_stop") == "Nothing is running."
    held, stopped = threading.Event(), stop_signal(app[0], monkeypatch)
    run = guidance.run_experiment

    def run_holding_after_the_first_cell(spec, log, **options):
        def held_log(message):
            held.set()
            assert stopped.wait(TIMEOUT_S)
            log(message)
        return run(spec, log=held_log, **options)
    monkeypatch.setattr(guidance, "run_experiment", run_holding_after_the_first_cell)
    job = c.submit("a small animal that", "1-8", "steps", "40, 80", 4, 0, 32, "euler", "off",
                   api_name="/guidance_grid")
    assert held.wait(TIMEOUT_S)
    assert c.predict(api_name="/guidance_stop") != "Nothing is running."     # it ended: the grid's status says so
    status, grid, _, _, table, files, *_ = job.result(timeout=TIMEOUT_S)
    assert status.startswith("**Stopped** after 1 of 16 cells")
    assert len(table["data"]) == 1 and grid.count("class='gen'") == 1


def test_latent_lab_endpoints_match_the_workbench(app, wb):
    c = client(app)
    a, b = "a small domesticated animal kept as a pet", "the act of moving quickly on foot"
    report, text, tokens, point, path, *choices, files = c.predict(a, b, 0.25, "lerp", api_name="/latent_encode")
    lat = wb.encode([a, b], pad_to="longest")
    decoded = wb.decode(lat)
    assert report["A"]["decoded"] == decoded.texts[0] and report["B"]["decoded"] == decoded.texts[1]
    assert report["blocks"] == lat.n_blocks[0]
    for update in choices:                    # block pickers offer this pair's blocks
        assert [choice[0] for choice in update["choices"]] == [str(i) for i in range(lat.n_blocks[0])]
    assert text == wb.decode(interpolate(lat[0], lat[1], 0.25, "lerp"))[0].text
    assert point["alpha"] == 0.25 and figure(path)["data"][1]["name"] == "A → B path"
    assert sorted(f.rsplit("/", 1)[-1] for f in files) == [
        "interpolation.csv", "interpolation.html", "interpolation.json", "latents_ab.json", "latents_ab.safetensors"]
    sweep = json.loads(open(next(f for f in files if f.endswith("interpolation.json"))).read())
    assert [r["alpha"] for r in sweep["rows"]] == [i / 10 for i in range(11)]
    assert sweep["rows"][0]["text"] == decoded.texts[0] and sweep["rows"][-1]["text"] == decoded.texts[1]
    for alpha, expected in ((0.0, decoded.texts[0]), (1.0, decoded.texts[1])):
        assert c.predict(alpha, "slerp", [], api_name="/latent_interpolate")[0] == expected
    text_b0, _, info = c.predict(0.6, "slerp", ["0"], api_name="/latent_interpolate")
    assert text_b0 == wb.decode(interpolate(lat[0], lat[1], 0.6, "slerp", blocks=[0]))[0].text
    assert info["blocks"] == [0]
    assert figure(c.predict(0.6, "slerp", [], api_name="/latent_path"))["data"][-1]["name"] == "alpha = 0.6"
    edited, dinfo = c.predict("very large\nhuge", "very small\ntiny", "A", 0.0, [], api_name="/latent_direction")
    assert edited == decoded.texts[0] and dinfo["direction_norm"] > 0
    regen_text, rinfo = c.predict("B", 0.5, ["0"], 4, 7.0, 11, api_name="/latent_regenerate")
    direct = regenerate_from(wb, lat[1], strength=0.5, keep_blocks=[0], steps=4, guidance=7.0, seed=11)
    assert regen_text == wb.decode(direct.latents)[0].text and rinfo["t_start"] == direct.t_start
    assert c.predict("A", 0.0, [], 4, 7.0, 0, api_name="/latent_regenerate")[1]["changed_token_fraction"] == 0
    varied = regenerate_from(wb, lat[1], strength=0.5, keep_blocks=[0], steps=4, guidance=7.0, seed=11,
                             guidance_rescale=0.7, guidance_interval=(0.0, 0.5))
    assert c.predict("B", 0.5, ["0"], 4, 7.0, 11, 0.7, 0.0, 0.5, api_name="/latent_regenerate")[0] == \
        wb.decode(varied.latents)[0].text
    inv_text, iinfo, blocks = c.predict("A", 4, "heun", api_name="/latent_invert")     # posterior sample, seed 0
    inv = invert(wb, wb.encode([a], sample=True, seed=0, sample_ids=[0]), steps=4, solver="heun")
    assert iinfo["max_abs_error"] == pytest.approx(inv.max_abs_error[0], rel=1e-6)
    assert iinfo["token_agreement"] == pytest.approx(inv.token_agreement[0])
    assert inv_text == wb.decode(inv.reconstruction)[0].text
    assert figure(blocks)["data"][1]["y"] == pytest.approx(inv.block_error_held[0])
    assert c.predict("A", 4, "heun", 9, api_name="/latent_invert")[1]["latent"] == "posterior sample (seed 9)"


def test_bench_tab_loads_filters_and_re_runs_a_sample_to_the_benchs_tokens(app, bench_root):
    c = client(app)
    folder = bench_root / "bench"
    status, table, plot, task, verdict, choices, page, samples, info, sample = \
        c.predict(str(folder), api_name="/bench_load")
    summary = json.loads((folder / "summary.json").read_text())
    assert [row[0] for row in table["data"]] == list(summary["tasks"]) + ["average"]
    assert figure(plot)["data"][0]["y"][:3] == [r["accuracy"] for r in summary["tasks"].values()]
    assert "protocol **official**" in status and task["value"] == "lambada" and verdict == "wrong"
    squad = [json.loads(line) for line in (folder / "squad.jsonl").read_text().splitlines()]
    page, samples, info, sample = c.predict("squad", "all", api_name="/bench_filter")
    assert [row[0] for row in samples["data"]] == [r["id"] for r in squad] and sample["value"] == squad[0]["id"]
    assert c.predict("squad", "all", 1, api_name="/bench_page")[1] == samples
    stored = {r["id"]: r for r in map(json.loads, (folder / "generations" / "squad.jsonl").read_text().splitlines())}
    outputs = c.predict("squad", squad[1]["id"], api_name="/bench_open")
    opened_status, prompt, *_ = outputs
    run_summary, note = outputs[-2], outputs[17]["value"]      # the run's outputs end with summary, monitor
    assert "Trajectories" in opened_status and prompt == squad[1]["few_shot_prefix"] + squad[1]["prompt"]
    assert run_summary["token_ids"] == stored[squad[1]["id"]]["token_ids"] and run_summary["status"] == "finished"
    assert "reproduces the bench's" in note and "score " in note
    # the Trajectories tab holds the opened run: scrub it
    assert c.predict(0, 1, "PCA", "2-D", api_name="/trajectory_scrub")[0]["step"] == 1
    # the same values through /trajectory_generate give the same tokens
    form = outputs[1:17]        # prompt ... schedule, then sample id ... interval: the Trajectories form's order
    again = c.predict(*form[:7], False, "auto", "2-D", *form[7:], api_name="/trajectory_generate")[9]
    assert again["token_ids"] == run_summary["token_ids"]


def test_bench_bad_input_is_one_message(app, bench_root):
    c = client(app)
    fails("is outside the folders this app may read", c.predict, "/etc", api_name="/bench_load")
    fails("holds no summary.json", c.predict, str(bench_root / "tasks"), api_name="/bench_load")
    fails("no bench result", c.predict, "lambada", "all", api_name="/bench_filter")
    c.predict(str(bench_root / "bench"), api_name="/bench_load")
    fails("no sample with id 'nope' in lambada", c.predict, "lambada", "nope", api_name="/bench_open")
    fails("page must be from 1 to 1, got 5", c.predict, "obqa", "all", 5, api_name="/bench_page")
# -- inside ----------------------------------------------------------------------------------------------------
INSIDE_KNOBS = (4, 7.0, 8, 3)      # steps, guidance, max new tokens, seed


def test_inside_endpoints_match_the_workbench(app, wb):
    c = client(app)
    prompt = "a small animal that"
    status, text, attention, lens, cell, block, step, summary, files = c.predict(
        prompt, *INSIDE_KNOBS, 1, 2, 1, 3, "cond", "this block", "p_final", api_name="/inside_run")
    knobs = dict(steps=4, guidance=7.0, max_new_tokens=8, seed=3)
    assert status.startswith("**Done**") and text == prompt + wb.display(wb.generate(prompt, **knobs)[0].token_ids)
    assert (block["maximum"], block["value"], step["maximum"], step["value"]) == (1, 1, 3, 2)
    name = "block.1.step.2.dit.cond.layer.1.attn.pattern"
    pattern = wb.run_with_cache(prompt, names_filter=name, **knobs)[1][name][0, 3]
    shown = figure(attention)["data"][0]["z"]                   # this block's rows: keys up to its own
    assert [x for row in shown for x in row] == pytest.approx(pattern.flatten().tolist(), abs=1e-6)
    record = next(r for r in x0_lens(wb, prompt, **knobs).records if (r["block"], r["step"], r["layer"]) == (1, 2, 1))
    assert f"{record['text']!r}" in cell and figure(lens)["data"][0]["y"] == ["input", "layer 0", "layer 1"]
    assert summary["blocks"] == 2 and len(files) == 4
    # the selectors re-render from this session's stored run
    attention0, lens0, cell0 = c.predict(0, 0, 0, 0, "uncond", "all blocks", "agreement", api_name="/inside_view")
    assert figure(attention0)["layout"]["title"]["text"].startswith("Attention: layer 0, head 0, uncond pass, step 0")
    assert len(figure(attention0)["data"][0]["z"]) == 2 * wb.block_size and cell0.startswith("block 0, step 0")
    fails("block must be from 0 to 1, got 2", c.predict, 2, 0, 0, 0, "cond", "all blocks", "p_final",
          api_name="/inside_view")
    fails("no model-internals result", client(app).predict, 0, 0, 0, 0, "cond", "all blocks", "p_final",
          api_name="/inside_view")                                        # another session has no run
    assert c.predict(api_name="/inside_stop") == "Nothing is running."
    rescaled = c.predict(prompt, *INSIDE_KNOBS, 0, 0, 0, 0, "cond", "all blocks", "p_final", 0.7, 0.0, 1.0,
                         api_name="/inside_run")[7]               # the variants, appended at the end
    assert rescaled["token_ids"] == wb.generate(prompt, guidance_rescale=0.7, **knobs)[0].token_ids


def test_inside_patching_sweep_and_its_errors(app, wb):
    c = client(app)
    status, heat, records, files = c.predict("the cat sat on", "the dog sat on", *INSIDE_KNOBS, "attn_out", "cond",
                                             "0", "", False, "final_latent_distance", api_name="/inside_patch")
    sweep = patching_sweep(wb, "the dog sat on", "the cat sat on", point="attn_out", group="cond", layers=[0],
                           progress=False, steps=4, guidance=7.0, max_new_tokens=8, seed=3)
    assert status.startswith("**Done** — 2 patched runs")
    assert figure(heat)["data"][0]["z"][0] == pytest.approx([r["final_latent_distance"] for r in sweep.records])
    assert [row[:2] for row in records["data"]] == [[0, 0], [0, 1]] and len(files) == 3
    other = figure(c.predict("target_logprob", api_name="/inside_patch_view"))
    assert other["data"][0]["z"][0] == pytest.approx([r["target_logprob"] for r in sweep.records])
    fails("must fill the same number of context latents", c.predict, "the cat sat on", "a small animal that",
          *INSIDE_KNOBS, "resid_post", "both", "", "", False, "target_logprob", api_name="/inside_patch")
    assert c.predict(api_name="/inside_patch_stop") == "Nothing is running."


def test_inside_stop_ends_the_run(app, wb, monkeypatch):
    c = client(app)
    held, stopped = threading.Event(), stop_signal(app[0], monkeypatch)
    with wb.hooks(post_update=hold_at(1, 0, stopped, held)):
        job = c.submit("stop me", 4, 7.0, 64, 0, 0, 0, 0, 0, "cond", "all blocks", "p_final", api_name="/inside_run")
        assert held.wait(TIMEOUT_S)
        assert c.predict(api_name="/inside_stop") != "Nothing is running."   # it ended: the run's status says so
        status, *_, summary, files = job.result(timeout=TIMEOUT_S)
    assert status.startswith("**Stopped** by the user: showing the 1 finished block(s)")
    assert summary["status"] == "stopped" and summary["blocks"] == 1


# -- chat ------------------------------------------------------------------------------------------------------
def test_chat_answers_go_on_and_reopen_in_trajectories(app, wb):
    c = client(app)
    conversation, live, status, summary, message = c.predict("the cat sat", "Be brief.", 4, 7.0, 8, 3,
                                                             api_name="/chat_send")
    expected = ChatSession(wb, system="Be brief.", seed=3, knobs={"steps": 4, "max_new_tokens": 8})
    first = expected.reply("the cat sat")
    assert summary["answer"] == first.text and summary["token_ids"] == first.token_ids and message == ""
    assert [m["role"] for m in conversation] == ["user", "assistant"] and status.startswith("**Answered**")
    second = c.predict("go on", "Be brief.", 4, 7.0, 8, 3, api_name="/chat_send")[3]       # the session's history
    assert second["prompt_ids"] == expected.prompt("go on").ids and second["answer"] == expected.reply("go on").text
    names = [name for name in handoff.OUTPUTS if name not in ("tabs", "traj_run")]   # a layout and a state: no API
    opened = dict(zip(names, c.predict(True, "auto", "2-D", api_name="/chat_open"), strict=True))
    assert "Trajectories" in opened["status"] and opened["traj_seed"] == 3 and opened["traj_sample_id"] == 0
    assert opened["traj_summary"]["token_ids"][:len(second["token_ids"])] == second["token_ids"]
    assert "reproduces the answer's" in opened["traj_origin"]["value"]
    cleared = c.predict(api_name="/chat_clear")
    assert cleared[0] == [] and cleared[2] == "New conversation."
    fails("message is empty", c.predict, "  ", "", 4, 7.0, 8, 3, api_name="/chat_send")
    fails("no answer to open yet", client(app).predict, True, "auto", "2-D", api_name="/chat_open")


def test_chat_streams_the_denoising_block_and_stops(app, wb, monkeypatch):
    c = client(app)
    held, stopped = threading.Event(), stop_signal(app[0], monkeypatch)
    with wb.hooks(post_update=hold_at(2, 0, stopped, held)):       # held in block 2 until Stop
        job = c.submit("a long story", "", 4, 7.0, 64, 1, api_name="/chat_send")
        assert held.wait(TIMEOUT_S)
        wait_for(lambda: any('class="tok"' in str(out[1]) for out in job.outputs()), "a streamed step preview")
        growing = [out[0][-1]["content"][0]["text"] for out in job.outputs() if isinstance(out[0], list) and out[0]]
        assert growing and growing[-1].endswith("▍")                  # the answer grows while it is generated
        assert c.predict(api_name="/chat_stop") != "Nothing is running."     # it ended: the answer's status says so
        conversation, live, status, summary, message = job.result(timeout=TIMEOUT_S)
    assert summary["finish_reason"] == "interrupted" and summary["blocks"] == 2
    assert status.startswith("**Stopped**") and c.predict(api_name="/chat_stop") == "Nothing is running."
