"""The app's handlers as plain functions (no server, no browser): every tab's values against the
workbench called directly, streaming and Stop driven by hooks the test holds, the wiring's contract
(api names, dict updates, one message and one log line per bad input) and the form defaults."""
from __future__ import annotations

import json
import logging
import math
import queue
import re
import threading

import pytest

pytest.importorskip("gradio")

import gradio as gr  # noqa: E402

from app_server import TIMEOUT_S, app_context, hold_at, stop_signal  # noqa: E402
from apps.gradio_app import create_app, diagnostics, guidance, inside, latent_lab, trajectories  # noqa: E402
from apps.gradio_app.events import TabComponents  # noqa: E402
from cola_core.generate import GenerationConfig  # noqa: E402
from workbench import interpolate, invert, regenerate_from  # noqa: E402
from workbench.diagnostics import diagnose  # noqa: E402
from cola_core.sampler import text_sample_id  # noqa: E402

KNOBS = dict(steps=4, guidance=7.0, max_new_tokens=8, seed=3, solver="euler", schedule="linear")
ENDPOINTS = {"trajectory_generate", "trajectory_stop", "trajectory_scrub", "diagnose", "guidance_grid",
             "guidance_stop", "latent_encode", "latent_interpolate", "latent_path", "latent_direction",
             "latent_regenerate", "latent_invert", "inside_run", "inside_stop", "inside_view", "inside_patch",
             "inside_patch_stop", "inside_patch_view", "status", "status_tick", "bench_load", "bench_filter", "bench_page",
             "bench_open", "chat_send", "chat_stop", "chat_clear", "chat_open"}


@pytest.fixture(scope="module")
def ctx(wb, tmp_path_factory):
    context = app_context(tmp_path_factory.mktemp("projections"), workbench=wb)
    yield context
    context.close()


@pytest.fixture(scope="module")
def app(ctx):
    return create_app(ctx)


def generate(ctx, prompt: str, preview: bool = True, session: str = "local", **knobs):
    k = {**KNOBS, **knobs}
    return trajectories.generate(ctx, prompt, k["steps"], k["guidance"], k["max_new_tokens"], k["seed"], k["solver"],
                                 k["schedule"], preview, "auto", "2-D", session=session)


def figure(fig) -> dict:
    data = json.loads(fig.to_json())
    assert isinstance(data["layout"]["height"], int)      # every figure sets its height
    return data


def event_fn(app, api_name: str):
    """The function Gradio calls for ``api_name`` (the handler behind the wiring)."""
    return next(f.fn for f in app.fns.values() if f.api_name == api_name)


# -- the wiring --------------------------------------------------------------------------------------------
def test_every_event_has_its_api_name(app):
    assert {f.api_name for f in app.fns.values() if f.api_name and not f.api_name.startswith("unnamed")} == ENDPOINTS


def test_wired_events_return_updates_by_component_and_bad_input_as_one_logged_line(app, ctx, caplog):
    fn = event_fn(app, "latent_encode")
    update = fn("a cat", "the sea", 0.5, "lerp", None, lambda *a, **k: None)
    assert all(isinstance(c, gr.components.Component) for c in update)     # Gradio's dict-return style
    assert len(update) == 10
    with caplog.at_level(logging.WARNING, logger="apps.gradio_app"):
        with pytest.raises(gr.Error) as err:
            fn("   ", "b", 0.5, "lerp", None, lambda *a, **k: None)
    assert err.value.message == "text A is empty; type some text" and err.value.print_exception is False
    assert [r.getMessage() for r in caplog.records] == ["latent_encode: bad input: text A is empty; type some text"]


def test_forms_start_at_generation_config_defaults(ctx):
    defaults = GenerationConfig()
    with gr.Blocks():
        traj, lab, grid, deep = trajectories.build(ctx), latent_lab.build(ctx), guidance.build(ctx), inside.build(ctx)
    assert (traj.steps.value, traj.guidance.value, traj.max_new_tokens.value) == (
        defaults.steps, defaults.guidance, defaults.max_new_tokens)
    assert (traj.solver.value, traj.schedule.value) == (defaults.solver, defaults.schedule)
    assert (lab.regen_steps.value, lab.regen_guidance.value) == (defaults.steps, defaults.guidance)
    assert (grid.steps.value, grid.max_new_tokens.value, grid.solver.value) == (
        defaults.steps, defaults.max_new_tokens, defaults.solver)
    assert (deep.steps.value, deep.guidance.value, deep.max_new_tokens.value) == (
        defaults.steps, defaults.guidance, defaults.max_new_tokens)
    assert isinstance(traj, TabComponents)


# -- trajectories --------------------------------------------------------------------------------------------
def test_trajectory_matches_workbench_generation_and_scrubs(ctx, wb):
    updates = list(generate(ctx, "a small animal that"))
    first, final = updates[0], updates[-1]
    assert first["status"] == "**Sampling** — starting" and first["run"] == final["run"]
    direct = wb.trajectory(["a small animal that"], preview=True, **KNOBS)
    expected = direct.generations[0]
    summary = final["summary"]
    shown = wb.display(expected.token_ids)                    # markers for special tokens, cut after the first EOS
    assert summary["status"] == "finished" and summary["text"] == shown
    assert summary["token_ids"] == expected.token_ids and final["text"] == "a small animal that" + shown
    monitor = direct.norm_records(wb.data_norm())             # the off-manifold monitor, one bar per block
    assert figure(final["monitor"])["data"][0]["y"] == pytest.approx([r["ratio"] for r in monitor])
    assert [r["norm"] for r in summary["monitor"]] == pytest.approx([r["norm"] for r in monitor])
    assert summary["steps_recorded"] == len(direct.steps) == direct.num_blocks * KNOBS["steps"]
    assert (final["block"].value, final["block"].maximum) == (direct.num_blocks - 1, direct.num_blocks - 1)
    assert (final["step"].value, final["step"].maximum) == (KNOBS["steps"] - 1, KNOBS["steps"] - 1)
    last = direct.steps[-1]
    free = last.t[0] > 0
    assert final["info"]["block"] == last.block and final["info"]["step"] == last.step
    assert math.isclose(final["info"]["v_diff_norm"],
                        float((last.v_cond[0][free] - last.v_uncond[0][free]).norm(dim=-1).mean()), rel_tol=1e-5)
    assert final["step_preview"] == last.preview[0]
    norms = figure(final["norms"])
    assert [t["name"] for t in norms["data"]] == ["|v_cond|", "|v_uncond|", "|v_cond - v_uncond|"]
    assert len(norms["data"][0]["y"]) == len(direct.steps)
    assert sorted(p.rsplit("/", 1)[-1] for p in final["files"]) == [
        "trajectory.csv", "trajectory.html", "trajectory.json", "trajectory_tensors.safetensors"]
    saved = json.loads(open(next(p for p in final["files"] if p.endswith(".json"))).read())
    assert len(saved["rows"]) == len(direct.steps) and saved["raw_text"] == expected.text   # downloads keep it raw
    scrubbed = trajectories.scrub(ctx, final["run"], 0, 1, "PCA", "3-D")
    s = direct.block(0)[1]
    assert (scrubbed["info"]["block"], scrubbed["info"]["step"]) == (0, 1)
    assert math.isclose(scrubbed["info"]["t"], float(s.t[0].max())) and scrubbed["step_preview"] == s.preview[0]
    marked = [t for t in figure(scrubbed["projection"])["data"] if t["name"].startswith("z_t block 0 step 1")]
    assert len(marked) == 1 and marked[0]["type"] == "scatter3d"


def _consume(updates, into: queue.Queue) -> threading.Thread:
    def run():
        for update in updates:
            into.put(update)
        into.put(None)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _drain(received: queue.Queue) -> list:
    out = []
    while not received.empty():
        out.append(received.get_nowait())
    return out


def test_trajectory_streams_while_a_hook_holds_the_sampler(ctx, wb):
    """Updates arrive while the sampler is held mid-run by a hook the test controls (no clock involved)."""
    held, release = threading.Event(), threading.Event()
    received: queue.Queue = queue.Queue()
    with wb.hooks(post_update=hold_at(1, 0, release, held)):
        thread = _consume(generate(ctx, "", steps=8, guidance=3.0, max_new_tokens=12, seed=1), received)
        assert held.wait(TIMEOUT_S)
        while_held = _drain(received)
        release.set()
        thread.join(TIMEOUT_S)
    finished = _drain(received)
    assert finished[-1] is None and finished[-2]["summary"]["status"] == "finished"
    sampling = [u for u in while_held if u["status"].startswith("**Sampling** — block")]
    assert sampling and None not in while_held and not any("summary" in u for u in while_held)
    assert re.match(r"\*\*Sampling\*\* — block 1/\d+, step 1/8", sampling[0]["status"])   # the first step, at once
    assert all(u["step_preview"] == u["info"]["preview"] for u in sampling)     # the live step's preview
    assert "norms" in sampling[0] and "projection" in sampling[0]
    assert finished[-2]["summary"]["text"] == wb.generate([""], steps=8, guidance=3.0, max_new_tokens=12,
                                                          seed=1)[0].text


def test_stop_interrupts_only_its_own_session(ctx, wb, monkeypatch):
    held, stopped = threading.Event(), stop_signal(ctx, monkeypatch)
    received: queue.Queue = queue.Queue()
    with wb.hooks(post_update=hold_at(0, 1, stopped, held)):   # held after step 1 until Stop set alice's flag
        thread = _consume(generate(ctx, "stop me", session="alice", steps=50, max_new_tokens=16), received)
        assert held.wait(TIMEOUT_S)
        assert trajectories.stop(ctx, "auto", "2-D", session="bob") == {"status": "Nothing is running."}
        result = trajectories.stop(ctx, "auto", "2-D", session="alice")
        thread.join(TIMEOUT_S)
    assert result["status"].startswith("**Stopped**") and result["summary"]["status"] == "stopped"
    assert result["summary"]["steps_recorded"] == 2                    # steps 0 and 1, then the interrupt
    final = [u for u in _drain(received) if u is not None][-1]
    assert final["summary"]["status"] == "stopped" and final["summary"]["steps_recorded"] == 2


# -- diagnostics, guidance lab, latent lab ---------------------------------------------------------------
def test_diagnose_matches_workbench_numbers(ctx, wb, tmp_path):
    texts = ["a small domesticated animal kept as a pet", "the act of moving quickly on foot"]
    upload = tmp_path / "more.jsonl"
    upload.write_text('{"text": "a tool for driving nails"}\n\n"to cut wood into small pieces"\n')
    out = diagnostics.diagnose(ctx, "\n".join(texts), str(upload), 1, 1, 5, 0, False, 8)
    texts += ["a tool for driving nails", "to cut wood into small pieces"]
    diag = diagnose(wb.model, texts, samples=1, fm_draws=1, t_grid=[0, 0.25, 0.5, 0.75, 1.0], seed=0)
    assert [r[1] for r in out["table"]] == texts
    for row, rec in zip(out["table"], diag.per_text):
        assert math.isclose(row[3], rec.token_accuracy, abs_tol=1e-4)
        assert math.isclose(row[4], rec.recon_bits_per_token, abs_tol=1e-4)
        assert math.isclose(row[7], rec.fm_loss, abs_tol=1e-4)
    assert f"{diag.dataset.elbo_bits_per_token:.3f} bits/token" in out["summary"]
    grid = figure(out["heatmap"])["data"][0]
    lat = wb.encode(texts[:1])
    logp = wb.decoder_logits(lat)[0][:len(lat.token_ids[0])].log_softmax(-1)
    assert grid["z"][0][:len(lat.token_ids[0])] == pytest.approx(
        [-float(logp[k, i]) / math.log(2) for k, i in enumerate(lat.token_ids[0])], rel=1e-5)
    assert sorted(p.rsplit(".", 1)[-1] for p in out["files"]) == ["csv", "html", "json"]


def test_guidance_grid_runs_the_experiment_runner(ctx, wb):
    out = guidance.run_grid(ctx, "a small animal that", "1, 5", "steps", "2-3", 4, 0, 8, "euler", "off")
    assert out["status"].startswith("**Done**") and "4 cells" in out["status"]
    assert {(r[1], r[2]) for r in out["records"]} == {(1.0, 2), (1.0, 3), (5.0, 2), (5.0, 3)}
    for _, g, steps, seed, text, *_ in out["records"]:
        expected = wb.generate(["a small animal that"], guidance=g, steps=steps, seed=seed, max_new_tokens=8,
                               sample_ids=[text_sample_id("a small animal that")])[0]   # the sweep's sample-id rule
        assert text == expected.completion
    assert {t["name"] for t in figure(out["metrics"])["data"]} == {"steps=2", "steps=3"}
    assert sorted(p.rsplit("/", 1)[-1] for p in out["files"]) == ["guidance_grid.csv", "guidance_grid.json",
                                                                  "report.html"]
    assert guidance.stop(ctx) == {"status": "Nothing is running."}


def test_latent_lab_matches_the_workbench(ctx, wb):
    a, b = "a small domesticated animal kept as a pet", "the act of moving quickly on foot"
    out = latent_lab.encode(ctx, a, b, 0.25, "lerp")
    lat = wb.encode([a, b], pad_to="longest")
    decoded = wb.decode(lat)
    assert (out["encoded"]["A"]["decoded"], out["encoded"]["B"]["decoded"]) == tuple(decoded.texts)
    assert out["blocks"].choices == [(str(i), str(i)) for i in range(lat.n_blocks[0])]
    assert out["interp_text"] == wb.decode(interpolate(lat[0], lat[1], 0.25, "lerp"))[0].text
    pair = out["pair"]
    point = latent_lab.interpolate_point(ctx, pair, 0.6, "slerp", ["0"])
    assert point["interp_text"] == wb.decode(interpolate(lat[0], lat[1], 0.6, "slerp", blocks=[0]))[0].text
    assert point["interp_info"]["blocks"] == [0]
    assert figure(latent_lab.interpolate_path(ctx, pair, 0.6, "slerp", [])["path"])["data"][-1]["name"] == \
        "alpha = 0.6"
    assert latent_lab.direction(ctx, pair, "huge", "tiny", "A", 0.0, [])["dir_text"] == decoded.texts[0]
    regen = latent_lab.regenerate(ctx, pair, "B", 0.5, ["0"], 4, 7.0, 11)
    direct = regenerate_from(wb, lat[1], strength=0.5, keep_blocks=[0], steps=4, guidance=7.0, seed=11)
    assert regen["regen_text"] == wb.decode(direct.latents)[0].text and regen["regen_info"]["t_start"] == \
        direct.t_start
    inv = latent_lab.inversion(ctx, pair, "A", 4, "heun", 5)
    sample = wb.encode([a], sample=True, seed=5, sample_ids=[0])      # A's own blocks; the DiT trained on samples
    direct = invert(wb, sample, steps=4, solver="heun")
    assert inv["inv_info"]["max_abs_error"] == pytest.approx(direct.max_abs_error[0], rel=1e-6)
    assert inv["inv_info"]["latent"] == "posterior sample (seed 5)"
    bars = figure(inv["inv_blocks"])["data"]
    assert bars[0]["y"] == pytest.approx(direct.block_error[0]) and bars[1]["y"] == pytest.approx(
        direct.block_error_held[0])
    assert inv["inv_info"]["relative_error_held"] == pytest.approx(direct.relative_error_held[0])


@pytest.mark.parametrize("module, shown", [
    (trajectories, lambda ctx: list(generate(ctx, "x", max_new_tokens=2))[-1]["text"]),
    (trajectories, lambda ctx: list(generate(ctx, "x", max_new_tokens=2))[-1]["summary"]["text"]),
    (guidance, lambda ctx: guidance.run_grid(ctx, "x", "1", "steps", "2", 2, 0, 2, "euler", "off")["records"][0][4]),
    (guidance, lambda ctx: guidance.run_grid(ctx, "x", "1", "steps", "2", 2, 0, 2, "euler", "off")["grid"]),
    (inside, lambda ctx: inside.cache_run(ctx, "x", 2, 7.0, 2, 0, 0, 0, 0, 0, "cond", "all blocks", "p_final")["text"]),
])
def test_shown_text_goes_through_the_one_display_helper(ctx, monkeypatch, module, shown):
    monkeypatch.setattr(module, "display_text", lambda ids, tokenizer, stop_at_eos=True: f"[[{len(ids)}]]")
    assert re.search(r"\[\[\d+]]", shown(ctx))
