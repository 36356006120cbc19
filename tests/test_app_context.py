"""App plumbing without a server: the PCA -> UMAP switch, the run store, --share reporting, serve's arguments."""
from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("gradio")

import gradio as gr  # noqa: E402

from apps.gradio_app import context as app_context  # noqa: E402
from apps.gradio_app.app import share_report  # noqa: E402
from apps.gradio_app.store import RunStore, StopFlags  # noqa: E402
from workbench import Workbench  # noqa: E402
from apps.cli import build_parser  # noqa: E402

TEXTS = ["a small animal kept as a pet", "the season between spring and autumn", "to give money for goods",
         "a boat that carries goods across the sea"]


def test_auto_projection_switches_to_umap_once_its_background_fit_is_ready(tiny_model, tmp_path, monkeypatch):
    release = threading.Event()
    fitted = []
    wb = Workbench(tiny_model)
    real = wb.projection

    def fake_projection(texts, method, n_components, **options):
        if method == "umap":                 # stands in for umap-learn: same texts, marked as UMAP
            release.wait(10)
            proj = real(texts, "pca", n_components, **options)
            proj.method = "umap"
            fitted.append(n_components)
            return proj
        return real(texts, method, n_components, **options)

    wb.projection = fake_projection
    monkeypatch.setattr(app_context.importlib.util, "find_spec", lambda name: object())
    proj = app_context.Projections(wb, TEXTS, tmp_path)
    assert proj.umap_state == "fitting" and proj.choices == ["auto", "PCA", "UMAP"]
    assert proj.get("auto", 2)[0].method == "pca"
    chosen, note = proj.get("UMAP", 3)
    assert chosen.method == "pca" and "UMAP is fitting" in note
    assert "auto uses PCA until it is ready" in proj.describe()
    release.set()
    proj.thread.join(10)
    assert proj.umap_state == "ready" and sorted(fitted) == [2, 3]
    assert proj.get("auto", 2)[0].method == "umap" and proj.get("auto", 3)[0].n_components == 3
    assert proj.get("PCA", 2)[0].method == "pca"


def test_pca_only_without_umap_learn(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(app_context.importlib.util, "find_spec", lambda name: None)
    proj = app_context.Projections(Workbench(tiny_model), TEXTS, tmp_path)
    assert proj.umap_state == "not installed" and proj.choices == ["auto", "PCA"]
    assert "PCA only" in proj.describe() and "umap-learn" in proj.describe()
    assert proj.pca.coords.shape[1] == 3 and proj.get("UMAP", 2)[1] == "UMAP is not installed; showing PCA"


def test_run_store_expires_evicts_and_removes_download_folders(tmp_path):
    store = RunStore(ttl_s=0.2, max_entries=2, root=tmp_path)
    first = store.put("latents", 1)
    folder = store.folder(first)
    (folder / "x.json").write_text("{}")
    assert store.get(first, "latents").payload == 1
    with pytest.raises(gr.Error, match="holds a latents result, not a trajectory"):
        store.get(first, "trajectory")
    second, third = store.put("latents", 2), store.put("latents", 3)
    assert len(store) == 2 and not folder.exists()          # the oldest was evicted with its files
    with pytest.raises(gr.Error, match="no latents result"):
        store.get(first, "latents")
    time.sleep(0.25)
    with pytest.raises(gr.Error, match="expired"):
        store.get(third, "latents")
    store.delete(second)
    assert len(store) == 0


def test_stop_flags_are_per_session():
    flags = StopFlags()
    a, b = flags.register("alice", "run-a"), flags.register("bob", "run-b")
    assert flags.stop("alice") == ["run-a"] and a.is_set() and not b.is_set()
    flags.release("alice", a)
    assert flags.stop("alice") == []


def test_share_report_is_honest():
    assert share_report(False, None, None, "http://127.0.0.1:7860/") == ""
    offline = share_report(True, None, None, "http://127.0.0.1:7860/")
    assert "NO PUBLIC LINK" in offline and "http://127.0.0.1:7860/" in offline
    online = share_report(True, "https://abc.gradio.live", None, "http://127.0.0.1:7860/")
    assert "https://abc.gradio.live" in online and "--auth USER:PASS" in online
    assert "--auth" not in share_report(True, "https://abc.gradio.live", ("u", "p"), "http://127.0.0.1:7860/")


def test_serve_arguments():
    args = build_parser().parse_args(["serve", "--checkpoint", "ck", "--share", "--auth", "ana:s3:cret", "--port", "0",
                                      "--device", "cpu", "--dtype", "bfloat16"])
    assert (args.checkpoint, args.share, args.auth, args.port, args.host) == ("ck", True, ("ana", "s3:cret"), 0,
                                                                               "127.0.0.1")
    for bad in (["--auth", "nopassword"], ["--port", "70000"], ["--concurrency", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])
