"""The Gradio app's attack table (issue #14): bad values per endpoint, forged file references, path-like
upload names, forged run ids, 8 concurrent clients.

Handler cases run in process (fast): every bad value is refused with a one-line message naming the
field, before any model work (every model-touching call is replaced by a tripwire) and without
storing a run. Live-app cases (heavy) send the same kinds of values through HTTP: Gradio's own file
checks, upload names, and clients whose results must equal sequential runs.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gradio")

from gradio.utils import get_upload_folder  # noqa: E402

from app_server import app_context, running_app  # noqa: E402
from apps.gradio_app import chat, diagnostics, guidance, inside, latent_lab, trajectories  # noqa: E402
from workbench import WorkbenchError  # noqa: E402

UPLOAD_CAP = 4096
RUN, PAIR = "<trajectory run id>", "<latents run id>"     # replaced by the ids of stored runs
INSIDE, PATCHING = "<model-internals run id>", "<patching run id>"
CHAT, CHAT_CLEARED = "<chat run id>", "<chat run id to clear>"
VARIANTS = dict(guidance_rescale=0.0, interval_lo=0.0, interval_hi=1.0)    # off: the official CFG combine
TRAJECTORY = dict(prompt="a cat", steps=4, guidance=7.0, max_new_tokens=8, seed=0, solver="euler", schedule="linear",
                  preview=True, method="auto", dims="2-D", sample_id=0, temperature=0.0, top_k=50, top_p=0.9,
                  repetition_penalty=1.1, stop_at_eos=True, **VARIANTS)
SCRUB = dict(run_id=RUN, block=0, step=0, method="auto", dims="2-D")
DIAGNOSE = dict(texts="a cat", upload=None, samples=1, draws=1, t_points=3, seed=0, likelihood=False, ode_steps=8)
GRID = dict(prompts="a cat", guidance="1, 7", axis="steps", ys="4", steps=4, seed=0, max_new_tokens=8, solver="euler",
            semantic="off", **VARIANTS)
ENCODE = dict(text_a="a cat", text_b="the sea", alpha=0.5, method="lerp")
POINT = dict(run_id=PAIR, alpha=0.5, method="slerp", blocks=[])
DIRECTION = dict(run_id=PAIR, positive="big", negative="small", source="A", strength=1.0, blocks=[])
REGENERATE = dict(run_id=PAIR, source="A", strength=0.5, keep=[], steps=4, guidance=7.0, seed=0, **VARIANTS)
INVERT = dict(run_id=PAIR, source="A", steps=4, solver="heun", seed=0)
INSIDE_RUN = dict(prompt="a cat", steps=4, guidance=7.0, max_new_tokens=8, seed=0, block=0, step=0, layer=0, head=0,
                  group="cond", scope="all blocks", metric="p_final", **VARIANTS)
INSIDE_VIEW = dict(run_id=INSIDE, block=0, step=0, layer=0, head=0, group="cond", scope="all blocks", metric="p_final")
PATCH = dict(clean="the cat sat on", corrupted="the dog sat on", steps=4, guidance=7.0, max_new_tokens=8, seed=0,
             point="resid_post", group="both", layers="", blocks="", per_step=False, metric="target_logprob",
             **VARIANTS)
CHAT_SEND = dict(run_id=None, message="hi", system="", steps=4, guidance=7.0, max_new_tokens=8, seed=0)
CHAT_OPEN = dict(run_id=CHAT, preview=True, method="auto", dims="2-D")
HANDLERS = {"trajectory_generate": (trajectories.generate, TRAJECTORY), "trajectory_scrub": (trajectories.scrub, SCRUB),
            "trajectory_stop": (trajectories.stop, dict(method="auto", dims="2-D")),
            "diagnose": (diagnostics.diagnose, DIAGNOSE), "guidance_grid": (guidance.run_grid, GRID),
            "latent_encode": (latent_lab.encode, ENCODE), "latent_interpolate": (latent_lab.interpolate_point, POINT),
            "latent_path": (latent_lab.interpolate_path, POINT), "latent_direction": (latent_lab.direction, DIRECTION),
            "latent_regenerate": (latent_lab.regenerate, REGENERATE), "latent_invert": (latent_lab.inversion, INVERT),
            "inside_run": (inside.cache_run, INSIDE_RUN), "inside_view": (inside.view, INSIDE_VIEW),
            "inside_patch": (inside.patch, PATCH),
            "inside_patch_view": (inside.patch_view, dict(patch_id=PATCHING, metric="final_latent_distance")),
            "chat_send": (chat.send, CHAT_SEND), "chat_clear": (chat.clear, dict(run_id=CHAT_CLEARED)),
            "chat_open": (chat.open_answer, CHAT_OPEN)}


@dataclass(frozen=True)
class Case:
    endpoint: str
    change: dict          # inputs that differ from the endpoint's good values
    message: str          # a part of the message the user gets

    def __str__(self) -> str:
        return f"{self.endpoint}-{'-'.join(f'{k}={str(v)[:20]}' for k, v in self.change.items())}"


def files(tmp: Path) -> dict[str, str]:
    """Uploads a client could point the diagnostics tab at (by name)."""
    made = {"folder": tmp / "folder.txt", "missing": tmp / "missing.txt", "exe": tmp / "tool.exe",
            "big": tmp / "big.txt", "binary": tmp / "binary.txt", "not json": tmp / "bad.jsonl",
            "no text": tmp / "field.jsonl", "many": tmp / "many.txt", "long": tmp / "long.txt"}
    made["folder"].mkdir()
    made["exe"].write_text("a cat\n")
    made["big"].write_text("a line of text\n" * (UPLOAD_CAP // 10))
    made["binary"].write_bytes(b"\xff\xfe\x00bad")
    made["not json"].write_text('{"text": "fine"}\n{not json\n')
    made["no text"].write_text('{"body": "no text field"}\n')
    made["many"].write_text("t\n" * 201)
    made["long"].write_text("x" * 2001 + "\n")
    return {name: str(path) for name, path in made.items()} | {"device": "/dev/zero"}


UPLOAD = "<upload:{}>"
CASES = [
    # trajectories: every knob, wrong types, out of range, non-finite, huge
    *[Case("trajectory_generate", change, message) for change, message in [
        ({"steps": 0}, "steps must be from 1 to 200, got 0"), ({"steps": 10**9}, "steps must be from 1 to 200"),
        ({"steps": 2.5}, "steps must be a whole number, got 2.5"), ({"steps": None}, "steps is missing"),
        ({"steps": True}, "steps must be a whole number, got True"),
        ({"steps": "four"}, "steps must be a whole number"),
        ({"guidance": "seven"}, "guidance must be a number, got 'seven'"),
        ({"guidance": float("nan")}, "guidance must be from 0 to 30, got nan"),
        ({"guidance": float("inf")}, "guidance must be from 0 to 30"), ({"guidance": -1}, "guidance must be from 0"),
        ({"guidance": [7]}, "guidance must be a number"), ({"max_new_tokens": 0}, "max new tokens must be from 1"),
        ({"max_new_tokens": 10**6}, "max new tokens must be from 1 to 512"), ({"seed": -1}, "seed must be from 0"),
        ({"seed": 2**53}, "seed must be from 0 to 9007199254740991"), ({"seed": 1e300}, "seed must be from 0"),
        ({"solver": "rk99"}, "solver must be one of euler, heun, midpoint"), ({"schedule": None}, "schedule must be"),
        ({"solver": "e" * 10**5}, "solver must be one of"), ({"preview": "yes"}, "preview must be true or false"),
        ({"method": "tsne"}, "projection must be one of auto, PCA, UMAP"), ({"dims": "4-D"}, "view must be one of"),
        ({"prompt": 123}, "prompt must be text"), ({"prompt": ["a"]}, "prompt must be text"),
        ({"prompt": "x" * 32_001}, "prompt has 32001 characters; at most 32000"),
        ({"sample_id": -1}, "sample id must be from 0"), ({"sample_id": 2**53}, "sample id must be from 0 to"),
        ({"temperature": float("nan")}, "temperature must be from 0 to 10"), ({"top_k": 2.5}, "top k must be a whole"),
        ({"top_p": 0}, "top p must be above 0 and at most 1, got 0"), ({"top_p": 1.5}, "top p must be from 0 to 1"),
        ({"repetition_penalty": 0.0}, "repetition penalty must be above 0"),
        ({"stop_at_eos": "yes"}, "stop at EOS must be true or false"),
        ({"guidance_rescale": 1.5}, "CFG-rescale must be from 0 to 1, got 1.5"),
        ({"guidance_rescale": "strong"}, "CFG-rescale must be a number"),
        ({"interval_hi": float("nan")}, "guide up to t/T must be from 0 to 1"),
        ({"interval_lo": -0.1}, "guide from t/T must be from 0 to 1"),
        ({"interval_lo": 0.8, "interval_hi": 0.2}, "the guidance interval is empty: from t/T = 0.8 is above")]],
    *[Case("trajectory_scrub", change, message) for change, message in [
        ({"run_id": None}, "no trajectory result"), ({"run_id": ""}, "no trajectory result"),
        ({"run_id": "../../etc/passwd"}, "no trajectory result"), ({"run_id": 12345}, "no trajectory result"),
        ({"run_id": {"id": 1}}, "no trajectory result"), ({"run_id": PAIR}, "holds a latents result, not a trajectory"),
        ({"block": -1}, "block must be from 0"), ({"block": 99}, "block must be from 0"),
        ({"step": "x"}, "step must be a whole number"), ({"step": 4}, "step must be from 0 to 3"),
        ({"dims": None}, "view must be one of")]],
    Case("trajectory_stop", {"method": 0}, "projection must be one of"),
    # diagnostics: texts and uploads
    *[Case("diagnose", change, message) for change, message in [
        ({"texts": "  \n "}, "no texts: type one text per line"), ({"texts": None}, "no texts"),
        ({"texts": 5}, "texts must be text"), ({"texts": "t\n" * 201}, "texts has 201 lines; at most 200"),
        ({"texts": "x" * 500_000}, "at most 200 lines of 2000"), ({"texts": "x" * 2001}, "line 1: 2001 characters"),
        ({"upload": UPLOAD.format("folder")}, "the upload is not a regular file"),
        ({"upload": UPLOAD.format("device")}, "the upload is not a regular file"),
        ({"upload": UPLOAD.format("missing")}, "the uploaded file is gone"),
        ({"upload": UPLOAD.format("store")}, "the upload is not an uploaded file"),
        ({"upload": 7}, "the upload must be a file"),
        ({"upload": UPLOAD.format("exe")}, "unsupported file type .exe"),
        ({"upload": UPLOAD.format("big")}, "is 6.0 KiB; the limit is 4.0 KiB"),
        ({"upload": UPLOAD.format("binary")}, "not UTF-8 text (byte 0"),
        ({"upload": UPLOAD.format("not json")}, "line 2 is not JSON"),
        ({"upload": UPLOAD.format("no text")}, 'line 1 needs a "text" string field'),
        ({"upload": UPLOAD.format("many")}, "202 texts; at most 200"),
        ({"upload": UPLOAD.format("long")}, "text 2 has 2001 characters"),
        ({"samples": 0}, "posterior samples must be from 1 to 8"), ({"t_points": 1}, "points on the t grid"),
        ({"seed": "abc"}, "seed must be a whole number"), ({"likelihood": "true"}, "must be true or false"),
        ({"ode_steps": 33}, "ODE steps must be from 1 to 32")]],
    # guidance lab: sweep values and grid size
    *[Case("guidance_grid", change, message) for change, message in [
        ({"prompts": "\n"}, "prompts are empty"), ({"prompts": "p\n" * 17}, "prompts has 17 lines; at most 16"),
        ({"guidance": "1-x"}, "cannot read '1-x'"), ({"guidance": "-1"}, "cannot read '-1'"),
        ({"guidance": "1e9"}, "1000000000.0 is outside 0 to 30"), ({"guidance": ""}, "guidance values is empty"),
        ({"guidance": "1," * 600}, "at most 1000"), ({"guidance": "0-30 (+0.001)"}, "at most 10000"),
        ({"guidance": "1-9", "axis": "seed", "ys": "0-9"}, "= 90 cells; at most 64"),
        ({"ys": "0, 4"}, "outside 1 to 200"), ({"axis": "temperature"}, "Y axis must be one of steps, seed"),
        ({"semantic": "on"}, "semantic similarity must be one of"), ({"solver": "heun2"}, "solver must be one of"),
        ({"max_new_tokens": 10**9}, "max new tokens must be from 1"), ({"seed": -3}, "seed must be from 0"),
        ({"guidance_rescale": -0.1}, "CFG-rescale must be from 0 to 1"),
        ({"interval_lo": 1.0, "interval_hi": 0.5}, "the guidance interval is empty")]],
    # latent lab
    *[Case("latent_encode", change, message) for change, message in [
        ({"text_a": "   "}, "text A is empty"), ({"text_b": None}, "text B must be text"),
        ({"alpha": 2}, "alpha must be from 0 to 1, got 2"), ({"method": "nearest"}, "method must be one of lerp")]],
    *[Case("latent_interpolate", change, message) for change, message in [
        ({"run_id": "f" * 32}, "no latents result"), ({"run_id": RUN}, "holds a trajectory result, not a latents"),
        ({"alpha": float("nan")}, "alpha must be from 0 to 1"), ({"blocks": "0"}, "must be a list of block indices"),
        ({"blocks": ["99"]}, "block 99 does not exist"), ({"blocks": [True]}, "True is not a block index"),
        ({"blocks": ["-1"]}, "'-1' is not a block index"), ({"blocks": ["9" * 5000]}, "is not a block index")]],
    Case("latent_path", {"method": ["lerp"]}, "method must be one of lerp, slerp"),
    *[Case("latent_direction", change, message) for change, message in [
        ({"positive": ""}, "at least one positive and one negative"), ({"strength": 11}, "strength must be from -10"),
        ({"source": "C"}, "source must be one of A, B")]],
    *[Case("latent_regenerate", change, message) for change, message in [
        ({"strength": 2.0}, "strength must be from 0 to 1"), ({"keep": ["7"]}, "block 7 does not exist"),
        ({"steps": 0}, "steps must be from 1"), ({"seed": -5}, "seed must be from 0"),
        ({"guidance_rescale": 2}, "CFG-rescale must be from 0 to 1"), ({"interval_hi": "x"}, "guide up to t/T")]],
    *[Case("latent_invert", change, message) for change, message in [
        ({"steps": 0}, "ODE steps must be from 1"), ({"solver": "rk4"}, "solver must be one of euler, heun"),
        ({"seed": -1}, "posterior sample seed must be from 0")]],
    # inside: the run's knobs and selectors, the stored run's ranges, the sweep's prompt pair and cells
    *[Case("inside_run", change, message) for change, message in [
        ({"prompt": 5}, "prompt must be text"), ({"prompt": "x" * 2001}, "prompt has 2001 characters; at most 2000"),
        ({"steps": 0}, "steps must be from 1 to 200"), ({"max_new_tokens": 10**6}, "max new tokens must be from 1"),
        ({"seed": -1}, "seed must be from 0"), ({"block": -1}, "block must be from 0"),
        ({"layer": 99}, "layer must be from 0 to 1, got 99"), ({"head": 4}, "head must be from 0 to 3, got 4"),
        ({"group": "both"}, "pass must be one of cond, uncond"), ({"scope": 3}, "rows must be one of"),
        ({"metric": "entropy"}, "x0-lens colour must be one of"),
        ({"interval_lo": 2}, "guide from t/T must be from 0 to 1"), ({"guidance_rescale": [0.5]}, "CFG-rescale")]],
    *[Case("inside_view", change, message) for change, message in [
        ({"run_id": None}, "no model-internals result"), ({"run_id": "../x"}, "no model-internals result"),
        ({"run_id": RUN}, "holds a trajectory result, not a model-internals result"),
        ({"block": 2}, "block must be from 0 to 1, got 2"), ({"step": 4}, "step must be from 0 to 3, got 4"),
        ({"head": 1.5}, "head must be a whole number"), ({"group": None}, "pass must be one of")]],
    *[Case("inside_patch", change, message) for change, message in [
        ({"clean": ""}, "clean prompt is empty"), ({"corrupted": ["x"]}, "corrupted prompt must be text"),
        ({"corrupted": "a small animal that"}, "must fill the same number of context latents"),
        ({"layers": "x"}, "cannot read 'x'"), ({"layers": "0-9"}, "layers: 2 is outside 0 to 1"),
        ({"blocks": "5"}, "blocks: 5 is outside 0 to 1"), ({"point": "resid"}, "patched point must be one of"),
        ({"group": "*"}, "patched pass must be one of both, cond, uncond"),
        ({"per_step": "yes"}, "one cell per step must be true or false"), ({"metric": "kl"}, "heatmap must be one of"),
        ({"max_new_tokens": 512, "steps": 200, "per_step": True}, "cells; at most 512"),
        ({"guidance_rescale": None}, "CFG-rescale must be a number"),
        ({"interval_lo": 0.6, "interval_hi": 0.4}, "the guidance interval is empty")]],
    *[Case("inside_patch_view", change, message) for change, message in [
        ({"patch_id": None}, "no patching result"), ({"patch_id": INSIDE}, "holds a model-internals result"),
        ({"metric": 1}, "heatmap must be one of")]],
    # chat: the message, the system message, the knobs, forged conversations
    *[Case("chat_send", change, message) for change, message in [
        ({"message": "  \n"}, "message is empty"), ({"message": None}, "message must be text"),
        ({"message": ["hi"]}, "message must be text"), ({"message": "x" * 2001}, "message has 2001 characters"),
        ({"system": 5}, "system message must be text"), ({"system": "x" * 2001}, "system message has 2001 characters"),
        ({"steps": 0}, "steps must be from 1 to 200"), ({"guidance": float("nan")}, "guidance must be from 0 to 30"),
        ({"max_new_tokens": 10**6}, "max new tokens must be from 1 to 512"), ({"seed": 2**53}, "seed must be from 0"),
        ({"run_id": CHAT, "steps": "x"}, "steps must be a whole number")]],
    *[Case("chat_clear", change, message) for change, message in [
        ({"run_id": "../../etc/passwd"}, "no chat result"), ({"run_id": 12345}, "no chat result"),
        ({"run_id": PAIR}, "holds a latents result, not a chat result")]],
    *[Case("chat_open", change, message) for change, message in [
        ({"run_id": None}, "no answer to open yet"), ({"run_id": "f" * 32}, "no chat result"),
        ({"run_id": RUN}, "holds a trajectory result, not a chat result"), ({"dims": "4-D"}, "view must be one of")]],
]


class ModelTouched(AssertionError):
    """Raised by the tripwires: a handler reached model work before refusing its input."""


def tripwire(*args, **kwargs):
    raise ModelTouched("model work before the input was checked")


@pytest.fixture(scope="module")
def stored(wb, tmp_path_factory):
    """An app context with one stored trajectory run and one stored latents pair."""
    ctx = app_context(tmp_path_factory.mktemp("projections"), workbench=wb, max_upload_bytes=UPLOAD_CAP)
    run = list(trajectories.generate(ctx, **TRAJECTORY))[-1]["run"]
    pair = latent_lab.encode(ctx, **ENCODE)["pair"]
    internals, patching = inside.cache_run(ctx, **INSIDE_RUN)["run"], inside.patch(ctx, **PATCH)["patch"]
    talk, cleared = (list(chat.send(ctx, **CHAT_SEND))[-1]["chat"] for _ in range(2))
    store_file = ctx.store.folder(pair) / "results.jsonl"
    store_file.write_text('{"text": "a stored run\'s record"}\n')
    uploads = files(tmp_path_factory.mktemp("uploads")) | {"store": str(store_file)}
    yield ctx, {RUN: run, PAIR: pair, INSIDE: internals, PATCHING: patching, CHAT: talk, CHAT_CLEARED: cleared}, uploads
    ctx.close()


def resolve(value: Any, ids: dict, uploads: dict) -> Any:
    if isinstance(value, str) and value in ids:
        return ids[value]
    if isinstance(value, str) and value.startswith("<upload:"):
        return uploads[value[len("<upload:"):-1]]
    return value


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_value_is_refused_before_any_model_work(case, stored, monkeypatch):
    ctx, ids, uploads = stored
    for name in ("sampler", "encode", "decode", "decoder_logits", "diagnose", "generate", "run_names",
                 "run_with_cache"):
        monkeypatch.setattr(ctx.workbench, name, tripwire)
    for module, name in ((latent_lab, "regenerate_from"), (latent_lab, "invert"), (latent_lab, "attribute_direction"),
                         (guidance, "run_experiment"), (inside, "patching_sweep"), (inside, "x0_lens")):
        monkeypatch.setattr(module, name, tripwire)
    handler, good = HANDLERS[case.endpoint]
    values = {name: resolve(value, ids, uploads) for name, value in {**good, **case.change}.items()}
    runs = len(ctx.store)
    with pytest.raises(ValueError) as err:
        out = handler(ctx, **values)
        if not isinstance(out, dict):     # a streaming handler checks its inputs before the first update
            next(out)
    message = str(err.value)
    assert isinstance(err.value, WorkbenchError) and case.message in message, message
    assert "\n" not in message and len(message) < 300
    assert len(ctx.store) == runs


@pytest.mark.parametrize("endpoint", sorted(HANDLERS))
def test_the_good_values_pass(endpoint, stored):
    ctx, ids, uploads = stored
    handler, good = HANDLERS[endpoint]
    out = handler(ctx, **{name: resolve(value, ids, uploads) for name, value in good.items()})
    updates = [out] if isinstance(out, dict) else list(out)
    assert updates and all(isinstance(u, dict) for u in updates)


# -- a live app ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("projections"), max_upload_bytes=UPLOAD_CAP) as (ctx, url):
        yield ctx, url


def call(url: str, api_name: str, data: list) -> tuple[str, Any]:
    """One event over Gradio's HTTP API (no client library in between): (SSE event, its data)."""
    import httpx

    event_id = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=60).json()["event_id"]
    lines = httpx.get(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=120).text.strip().splitlines()
    return lines[-2].removeprefix("event: "), json.loads(lines[-1].removeprefix("data: "))


def file_data(path: str) -> dict:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def diagnose_data(upload: Any) -> list:
    return ["", upload, 1, 1, 3, 0, False, 8]


LIVE_CASES = [
    ("trajectory_generate", [*TRAJECTORY.values()][:1] + [0] + [*TRAJECTORY.values()][2:], "steps must be from 1"),
    ("trajectory_generate", [*TRAJECTORY.values()][:2] + ["seven"] + [*TRAJECTORY.values()][3:],
     "guidance must be a number, got 'seven'"),
    ("trajectory_scrub", [0, 0, "auto", "2-D"], "no trajectory result"),
    ("diagnose", ["x", None, 0, 1, 3, 0, False, 8], "posterior samples must be from 1 to 8"),
    ("guidance_grid", ["p", "1-9", "seed", "0-9", 4, 0, 8, "euler", "off", *VARIANTS.values()], "at most 64"),
    ("latent_encode", ["   ", "b", 0.5, "lerp"], "text A is empty"),
    ("latent_interpolate", [0.5, "lerp", []], "no latents result"),
    ("latent_invert", ["A", 4, "heun", 0], "no latents result"),     # raw HTTP sends every input
    ("inside_view", [0, 0, 0, 0, "cond", "all blocks", "p_final"], "no model-internals result"),
    ("inside_patch", [*PATCH.values()][:1] + ["a small animal that"] + [*PATCH.values()][2:],
     "same number of context latents"),
    ("chat_send", ["   ", "", 4, 7.0, 8, 0], "message is empty"),
    ("chat_open", [True, "auto", "2-D"], "no answer to open yet"),
]


@pytest.mark.heavy
@pytest.mark.parametrize("api_name, data, message", LIVE_CASES, ids=[f"{c[0]}-{c[2][:24]}" for c in LIVE_CASES])
def test_bad_values_through_http_get_one_message(live, api_name, data, message):
    event, answer = call(live[1], api_name, data)
    assert event == "error" and message in answer["error"]


@pytest.mark.heavy
@pytest.mark.parametrize("path", ["/etc/passwd", f"{get_upload_folder()}/../../etc/passwd", "relative.txt",
                                  "http://127.0.0.1:1/x.txt"])
def test_forged_file_references_are_refused(live, path):
    event, answer = call(live[1], "diagnose", diagnose_data(file_data(path)))
    assert event == "error" and "root:" not in json.dumps(answer)


@pytest.mark.heavy
def test_a_forged_reference_into_the_run_store_is_refused(live):
    ctx, url = live
    run = ctx.store.put("latents", None)
    private = ctx.store.folder(run) / "results.jsonl"
    private.write_text('{"text": "someone else\'s record"}\n')
    event, answer = call(url, "diagnose", diagnose_data(file_data(str(private))))
    assert event == "error" and answer["error"] == "the upload is not an uploaded file"


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["../../../../tmp/cola-attack.txt", "..\\..\\cola-attack.txt", "/tmp/cola-attack.txt",
                                  "a/../../cola-attack.txt", ".txt"])
def test_path_like_upload_names_stay_in_the_upload_folder(live, name):
    import httpx

    before = set(Path("/tmp").glob("cola-attack*"))
    response = httpx.post(f"{live[1]}gradio_api/upload", files=[("files", (name, b"a tool for driving nails\n",
                                                                             "text/plain"))], timeout=60)
    [stored] = response.json()
    folder = Path(get_upload_folder()).resolve()
    assert Path(stored).resolve().is_relative_to(folder) and Path(stored).resolve().parent.parent == folder
    assert set(Path("/tmp").glob("cola-attack*")) == before
    event, answer = call(live[1], "diagnose", diagnose_data(file_data(stored)))
    if Path(stored).suffix == ".txt":
        assert event == "complete" and answer[5]["data"][0][1] == "a tool for driving nails"
    else:
        assert event == "error" and "unsupported file type" in answer["error"]


def _session(url: str, i: int) -> tuple:
    """One user's work: a seeded generation, then encode + interpolate two texts of their own."""
    from gradio_client import Client

    c = Client(url, verbose=False, download_files=False)
    summary = c.predict(f"prompt {i}", 3 + i % 3, 2.0 + i, 12, 100 + i, "euler", "linear", False, "PCA", "2-D",
                        api_name="/trajectory_generate")[9]
    c.predict(f"first text {i}", f"second text number {i}", 0.5, "lerp", api_name="/latent_encode")
    text, _, point = c.predict(0.3 + i / 20, "slerp", [], api_name="/latent_interpolate")
    return summary["text"], summary["token_ids"], summary["final_v_diff_norm"], text, point["distance_to_A"]


@pytest.mark.heavy
def test_eight_concurrent_clients_get_their_sequential_results(live):
    url = live[1]
    sequential = [_session(url, i) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda i: _session(url, i), range(8), timeout=120))
    assert concurrent == sequential
    assert len({s[0] for s in sequential}) == 8    # the sessions really differ
    assert os.path.isdir(live[0].store.root)        # and the server is still serving from its store
