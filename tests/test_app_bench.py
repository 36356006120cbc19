"""The Bench tab's handlers as plain functions (no server): a tiny bench run on the tiny fixture is loaded,
filtered and paged, and every opened sample's re-run in the Trajectories tab gives exactly the bench's tokens.
Bad folders, formats, ids and values are one-line messages before any model work."""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest

pytest.importorskip("gradio")

import gradio as gr  # noqa: E402

from app_server import BENCH_ITEMS, app_context, bench_output  # noqa: E402
from apps.cli.main import build_parser, main  # noqa: E402
from apps.gradio_app import bench, create_app, trajectories  # noqa: E402
from apps.gradio_app.bench_folder import Sample  # noqa: E402
from cola_core.generate import GenerationConfig  # noqa: E402
from workbench import WorkbenchError  # noqa: E402
from workbench.bench import SUMMARY_FORMAT  # noqa: E402


@pytest.fixture(scope="module")
def root(tiny_model, tmp_path_factory) -> Path:
    """The allowed root: a bench run (official protocol) in bench/, a completion-protocol one in completion/bench."""
    root = tmp_path_factory.mktemp("bench_root")
    bench_output(root, tiny_model)
    bench_output(root / "completion", tiny_model, protocol="completion")
    return root


@pytest.fixture(scope="module")
def ctx(wb, root, tmp_path_factory):
    context = app_context(tmp_path_factory.mktemp("projections"), workbench=wb, bench_root=[root])
    yield context
    context.close()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loaded(ctx, folder: Path) -> dict:
    return bench.load(ctx, str(folder))


def opened(ctx, run_id: str, task: str, sample: str) -> list[dict]:
    return list(bench.open_sample(ctx, run_id, task, sample, True, "auto", "2-D"))


def generations(folder: Path, task: str) -> dict[str, dict]:
    """The bench's stored generations of a task, by the id as the tab shows it."""
    return {str(r["id"]): r for r in jsonl(folder / "generations" / f"{task}.jsonl")}


# -- load, table, plot, filter, pages ------------------------------------------------------------------------
def test_load_shows_the_table_the_plot_and_how_the_run_was_made(ctx, root, wb):
    out = loaded(ctx, root / "bench")
    summary = json.loads((root / "bench" / "summary.json").read_text())
    assert [row[0] for row in out["table"]] == list(BENCH_ITEMS) + ["average"]
    for row, (task, r) in zip(out["table"], summary["tasks"].items()):
        assert row[1:] == [f"{r['accuracy']:.2f}", f"{r['ci95'][0]:.1f}–{r['ci95'][1]:.1f}",
                           f"{r['correct']}/{r['total']}", f"{r['mean_score']:.4f}"]
    figure = json.loads(out["figure"].to_json())
    assert figure["layout"]["height"] == 460 and figure["data"][0]["x"] == list(BENCH_ITEMS) + ["average"]
    assert figure["data"][0]["y"][:3] == [summary["tasks"][t]["accuracy"] for t in BENCH_ITEMS]
    status = out["status"]
    assert "protocol **official**" in status and "2 steps · guidance 3 · 8 new tokens · seed 66" in status
    assert f"`{wb.fingerprint[:12]}`" in status and "⚠" not in status      # made by the app's own checkpoint
    assert out["task"].choices == [(t, t) for t in BENCH_ITEMS] and out["task"].value == "lambada"
    assert out["verdict"] == "wrong" and isinstance(ctx.store.get(out["run"], "bench").payload, bench.BenchFolder)
    assert {str(root / "bench"), str(root / "completion" / "bench")} <= {c[0] for c in out["folder"].choices}


def test_filter_by_verdict_in_item_order_with_the_scorers_answers(ctx, root):
    folder = root / "bench"
    run = loaded(ctx, folder)["run"]
    for task, count in BENCH_ITEMS.items():
        items = jsonl(folder / f"{task}.jsonl")
        every = bench.first_page(ctx, run, task, "all")
        assert [row[0] for row in every["samples"]] == [str(r["id"]) for r in items]   # the task's item order
        assert every["page_info"].startswith(f"**{count}** all of {count} {task} samples · page 1/1")
        for verdict in ("correct", "wrong"):
            records = jsonl(folder / f"{task}_{verdict}.jsonl")
            rows = bench.first_page(ctx, run, task, verdict)["samples"]
            assert [row[0] for row in rows] == [str(r["id"]) for r in records]
            for row, record in zip(rows, records):
                assert row[4] == f"{record['similarity_score']:.4f}" and row[1].endswith(verdict)
                assert row[5].startswith(record["generate"])
    lambada = jsonl(folder / "lambada_wrong.jsonl")[0]
    row = bench.first_page(ctx, run, "lambada", "wrong")["samples"][0]
    assert row[2:4] == [lambada["extracted_gen_word"], lambada["extracted_gt_word"]]
    obqa = jsonl(folder / "obqa.jsonl")
    scored = {r["id"]: r for v in ("correct", "wrong") for r in jsonl(folder / f"obqa_{v}.jsonl")}
    for row, item in zip(bench.first_page(ctx, run, "obqa", "all")["samples"], obqa):
        gold = scored[item["id"]]["extracted_gt_choice"]
        assert row[3] == f"{gold}: {item['choices'][ord(gold) - 65]}"


def test_pages_of_a_long_task(ctx, root, monkeypatch):
    monkeypatch.setattr(bench, "PAGE_SIZE", 2)
    run = loaded(ctx, root / "bench")["run"]
    first = bench.first_page(ctx, run, "obqa", "all")
    assert (first["page"].maximum, first["page"].value, first["page"].interactive) == (2, 1, True)
    second = bench.page(ctx, run, "obqa", "all", 2)
    ids = [str(r["id"]) for r in jsonl(root / "bench" / "obqa.jsonl")]
    assert [r[0] for r in first["samples"]] + [r[0] for r in second["samples"]] == ids
    assert second["sample"].choices == [(i, i) for i in ids[2:]] and second["sample"].value == ids[2]
    assert "page 2/2" in second["page_info"]
    with pytest.raises(WorkbenchError, match="page must be from 1 to 2, got 3"):
        bench.page(ctx, run, "obqa", "all", 3)


# -- open a sample: the Trajectories tab re-runs it exactly -----------------------------------------------------
@pytest.mark.parametrize("task, index", [("squad", 0), ("obqa", 1)])
def test_an_opened_sample_re_runs_to_the_benchs_exact_tokens(ctx, root, wb, task, index):
    folder = root / "bench"
    run = loaded(ctx, folder)["run"]
    item = jsonl(folder / f"{task}.jsonl")[index]
    label = str(item["id"])
    stored = generations(folder, task)[label]
    updates = opened(ctx, run, task, label)
    first, final = updates[0], updates[-1]
    assert [i for i, u in enumerate(updates) if "traj_summary" in u] == [len(updates) - 1]   # one final view
    assert first["tabs"].selected == trajectories.TAB_ID
    noise = zlib.crc32(label.encode()) if isinstance(item["id"], str) else item["id"]      # the official id rule
    form = {k.removeprefix("traj_"): v for k, v in first.items() if k.removeprefix("traj_") in trajectories.FORM}
    assert form == {"prompt": item.get("few_shot_prefix", "") + item["prompt"], "steps": 2, "guidance": 3.0,
                    "max_new_tokens": 8, "seed": 66, "solver": "euler", "schedule": "linear", "sample_id": noise,
                    "temperature": 0.0, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.1, "stop_at_eos": False,
                    "guidance_rescale": 0.0, "interval_lo": 0.0, "interval_hi": 1.0}     # no guidance variant
    assert form["prompt"] == stored["prompt"]
    summary = final["traj_summary"]
    assert summary["status"] == "finished" and summary["token_ids"] == stored["token_ids"]
    assert summary["text"] == stored["text"] and summary["sample_id"] == noise
    assert {k: final[k] for k in first if k.removeprefix("traj_") in trajectories.FORM} == \
        {k: v for k, v in first.items() if k.removeprefix("traj_") in trajectories.FORM}     # the whole picture
    note = final["traj_origin"].value
    assert f"reproduces the bench's {len(stored['token_ids'])} tokens exactly" in note
    scored = next(r for v in ("correct", "wrong") for r in jsonl(folder / f"{task}_{v}.jsonl") if r["id"] == item["id"])
    assert f"score {scored['similarity_score']:.4f}" in note and "Extracted answer **" in note
    # the id-derived sample id is what makes it exact: sample id 0 draws other noise and other tokens
    other = list(trajectories.generate(ctx, **{**form, "sample_id": 0}, preview=False, method="auto", dims="2-D"))
    assert other[-1]["summary"]["token_ids"] != stored["token_ids"]
    # the run is scrubbable in the Trajectories tab like any other
    assert trajectories.scrub(ctx, final["traj_run"], 0, 1, "PCA", "2-D")["info"]["step"] == 1


def test_the_completion_protocol_re_runs_with_stop_at_eos(ctx, root):
    folder = root / "completion" / "bench"
    run = loaded(ctx, folder)["run"]
    label = next(iter(generations(folder, "lambada")))
    updates = opened(ctx, run, "lambada", label)
    assert updates[0]["traj_stop_at_eos"] is True
    assert updates[-1]["traj_summary"]["token_ids"][:len(generations(folder, "lambada")[label]["token_ids"])] == \
        generations(folder, "lambada")[label]["token_ids"]
    assert "reproduces the bench's" in updates[-1]["traj_origin"].value


def test_another_checkpoint_or_device_is_said_plainly(ctx, root, tmp_path_factory):
    folder = root / "other_checkpoint"
    shutil.copytree(root / "bench", folder)
    meta = json.loads((folder / "bench.json").read_text())
    meta["checkpoint"] = {"fingerprint": "f" * 64, "source": "ByteDance-Seed/Cola-DLM"}
    meta["device"], meta["dtype"] = "cuda", "bfloat16"
    (folder / "bench.json").write_text(json.dumps(meta))
    records = jsonl(folder / "generations" / "lambada.jsonl")
    records[0]["token_ids"] = records[0]["token_ids"][:2] + [-1] * (len(records[0]["token_ids"]) - 2)
    (folder / "generations" / "lambada.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = loaded(ctx, folder)
    assert "⚠ made by checkpoint ByteDance\\-Seed/Cola\\-DLM (fingerprint `ffffffffffff`)" in out["status"]
    assert "opening a sample re-runs it on a different model, so its tokens will differ" in out["status"]
    assert "made on cuda / bfloat16, this app runs on cpu / float32" in out["status"]
    updates = list(bench.open_sample(ctx, out["run"], "lambada", str(records[0]["id"]), False, "auto", "2-D"))
    assert "different model" in updates[0]["traj_origin"].value
    note = updates[-1]["traj_origin"].value
    assert "✗ **The re-run differs from the bench's tokens from token 2 on**" in note and "re-run's text: " in note


def test_a_folder_scored_without_a_run_opens_with_the_official_knobs(ctx, root):
    folder = root / "scored_only"
    folder.mkdir()
    for task in BENCH_ITEMS:
        shutil.copy(root / "tasks" / f"{task}.jsonl", folder / f"{task}.jsonl")   # the release's own outputs
    assert main(["bench", "score", str(folder)]) == 0
    out = loaded(ctx, folder)
    assert "no bench.json" in out["status"] and "protocol **unknown**" in out["status"]
    run = out["run"]
    updates = bench.open_sample(ctx, run, "squad", "56be4db0acb8001400a502ec", False, "auto", "2-D")
    first = next(updates)
    updates.close()
    official = GenerationConfig()
    assert (first["traj_steps"], first["traj_guidance"], first["traj_max_new_tokens"], first["traj_seed"]) == (
        official.steps, official.guidance, official.max_new_tokens, 66)
    assert first["traj_sample_id"] == 3949553719 and first["traj_stop_at_eos"] is False


# -- the Trajectories tab's new fields -----------------------------------------------------------------------------
def test_trajectories_takes_a_sample_id_and_the_token_sampling_knobs(ctx, wb):
    knobs = dict(steps=3, guidance=2.0, max_new_tokens=8, seed=5, solver="heun", schedule="linear")
    sampling = dict(temperature=0.7, top_k=20, top_p=0.8, repetition_penalty=1.3, stop_at_eos=False)
    final = list(trajectories.generate(ctx, "a small animal that", **knobs, preview=False, method="auto", dims="2-D",
                                       sample_id=123, **sampling))[-1]
    expected = wb.generate(["a small animal that"], sample_ids=[123], **knobs, **sampling)[0]
    assert final["summary"]["token_ids"] == expected.token_ids and final["summary"]["sample_id"] == 123
    assert final["summary"]["knobs"] == {**knobs, **sampling, "guidance_rescale": 0.0, "guidance_interval": None}
    with gr.Blocks():
        ui = trajectories.build(ctx)
    defaults = GenerationConfig()
    assert (ui.sample_id.value, ui.temperature.value, ui.top_k.value, ui.top_p.value, ui.repetition_penalty.value,
            ui.stop_at_eos.value) == (0, defaults.temperature, defaults.top_k, defaults.top_p,
                                      defaults.repetition_penalty, defaults.stop_at_eos)
    assert ui.origin.visible is False


def test_the_app_wires_the_bench_events_and_switches_tabs(ctx):
    app = create_app(ctx)
    names = {f.api_name for f in app.fns.values()}
    assert {"bench_load", "bench_filter", "bench_page", "bench_open"} <= names
    opening = next(f for f in app.fns.values() if f.api_name == "bench_open")
    assert any(type(block).__name__ == "Tabs" for block in opening.outputs)


def test_special_tokens_in_bench_outputs_show_as_markers(ctx, root, monkeypatch):
    """The release's outputs run on past <|endoftext|> (the official protocol scores the untrimmed text): the tab
    shows each special token as its marker and cuts nothing."""
    monkeypatch.setattr(Sample, "generated", property(lambda self: " Paris<|endoftext|> and on<|pad|>"))
    monkeypatch.setattr(Sample, "answers", lambda self: ("Paris<|im_end|>", "Paris"))
    out = loaded(ctx, root / "bench")
    row = out["samples"][0]
    assert (row[2], row[5]) == ("Paris⟨im_end⟩", " Paris⟨eos⟩ and on⟨pad⟩")
    first = next(bench.open_sample(ctx, out["run"], "lambada", row[0], False, "auto", "2-D"))
    note = first["traj_origin"].value
    assert "<|" not in note and "Paris⟨eos⟩ and on⟨pad⟩" in note


def test_serve_takes_bench_roots():
    assert build_parser().parse_args(["serve", "--bench-root", "a", "--bench-root", "b"]).bench_root == ["a", "b"]
    assert main(["serve", "--bench-root", "/no/such/folder", "--checkpoint", "tests/fixtures/visible_a"]) == 2


# -- bad input: one line, before any model work ------------------------------------------------------------------
@pytest.fixture(scope="module")
def broken(root) -> dict[str, Path]:
    """Folders under the allowed root that are not (usable) bench outputs."""
    made = {}
    for name in ("empty", "run_only", "v2", "not_json", "foreign", "bad_task", "bad_run", "escape", "mismatch",
                 "bad_config"):
        made[name] = root / "broken" / name
        made[name].mkdir(parents=True, exist_ok=True)
    good = json.loads((root / "bench" / "summary.json").read_text())
    shutil.copy(root / "bench" / "bench.json", made["run_only"] / "bench.json")
    (made["v2"] / "summary.json").write_text(json.dumps({**good, "format": "cola-workbench/bench-summary@2"}))
    (made["not_json"] / "summary.json").write_text("{not json")
    (made["foreign"] / "summary.json").write_text(json.dumps({"accuracy": 50}))
    (made["bad_task"] / "summary.json").write_text(json.dumps({**good, "tasks": {"../../etc/passwd": {}}}))
    (made["bad_run"] / "summary.json").write_text(json.dumps(good))
    (made["bad_run"] / "bench.json").write_text(json.dumps({"format": "cola-workbench/bench-run@7"}))
    (made["escape"] / "summary.json").symlink_to("/etc/passwd")
    shutil.copytree(root / "bench", made["mismatch"], dirs_exist_ok=True)
    (made["mismatch"] / "obqa_wrong.jsonl").write_text("")
    (made["mismatch"] / "obqa_correct.jsonl").write_text((root / "bench" / "lambada_wrong.jsonl").read_text())
    (made["bad_config"] / "summary.json").write_text(json.dumps(good))
    meta = json.loads((root / "bench" / "bench.json").read_text())
    (made["bad_config"] / "bench.json").write_text(json.dumps({**meta, "config": {**meta["config"], "steps": 0}}))
    return made


LOAD_CASES = [
    ("", "bench folder is empty"), (None, "bench folder is empty"), (7, "bench folder is empty"),
    ("/etc", "is outside the folders this app may read"), ("x\0y", "is not a usable path"),
    ("{root}/../../../etc", "is outside the folders this app may read"),
    ("{root}/no/such", "does not exist"), ("{root}/tasks/lambada.jsonl", "does not exist (or is not a folder)"),
    ("{root}/broken/empty", "holds no summary.json: not a bench output folder"),
    ("{root}/broken/run_only", "holds no summary.json: a bench run that has not been scored yet"),
    ("{root}/broken/v2", "summary.json has format 'cola-workbench/bench-summary@2'; this app reads " + SUMMARY_FORMAT),
    ("{root}/broken/not_json", "summary.json is not JSON"),
    ("{root}/broken/foreign", "summary.json is not a bench summary"),
    ("{root}/broken/bad_task", "summary.json: unknown task '../../etc/passwd'"),
    ("{root}/broken/bad_run", "bench.json has format 'cola-workbench/bench-run@7'"),
    ("{root}/broken/escape", "summary.json of this folder is not a regular file inside it"),
    ("{root}/broken/bad_config", "bench.json: steps must be an integer >= 1, got 0"),
]


@pytest.mark.parametrize("folder, message", LOAD_CASES, ids=[c[1][:40] for c in LOAD_CASES])
def test_bad_folders_are_one_line(ctx, root, broken, folder, message):
    with pytest.raises(WorkbenchError) as err:
        bench.load(ctx, folder.format(root=root) if isinstance(folder, str) else folder)
    text = str(err.value)
    assert message in text and "\n" not in text and len(text) < 400, text
    assert "root:" not in text        # nothing of /etc/passwd is echoed


def test_a_link_out_of_the_root_is_refused(ctx, root, tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(root / "bench", outside)
    (root / "link_out").symlink_to(outside)
    with pytest.raises(WorkbenchError, match="is outside the folders this app may read"):
        bench.load(ctx, str(root / "link_out"))


def _tripwire(*args, **kwargs):
    raise AssertionError("model work before the input was checked")


@pytest.mark.parametrize("task, sample, verdict, message", [
    ("lambada", "424242", "all", "no sample with id '424242' in lambada"),
    ("lambada", "", "all", "sample id is empty"),
    ("lambada", None, "all", "sample id is empty"),
    ("race", "1", "all", "task must be one of lambada, obqa, squad, got 'race'"),
    ("lambada", "1", "maybe", "samples must be one of wrong, correct, all"),
])
def test_bad_samples_and_filters_are_one_line_before_model_work(ctx, root, monkeypatch, task, sample, verdict, message):
    run = loaded(ctx, root / "bench")["run"]
    monkeypatch.setattr(ctx.workbench, "sampler", _tripwire)
    with pytest.raises(WorkbenchError) as err:
        if verdict == "all":
            next(bench.open_sample(ctx, run, task, sample, True, "auto", "2-D"))
        else:
            bench.first_page(ctx, run, task, verdict)
    assert message in str(err.value), str(err.value)


def test_mismatched_detail_files_and_expired_runs_are_one_line(ctx, root, broken):
    run = loaded(ctx, broken["mismatch"])["run"]
    with pytest.raises(WorkbenchError, match="obqa_correct.jsonl / obqa_wrong.jsonl do not match obqa.jsonl"):
        bench.first_page(ctx, run, "obqa", "all")
    for stale in (None, "not-a-run", loaded(ctx, root / "bench")["run"][::-1]):
        with pytest.raises(WorkbenchError, match="no bench result"):
            bench.page(ctx, stale, "obqa", "all", 1)
