"""App plumbing without a server: the PCA -> UMAP switch, the run store and disk bounds, --share reporting,
serve's arguments; and (heavy) ``serve`` as a user runs it: one line per bad input, nothing left after Ctrl-C."""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from gradio.utils import get_upload_folder  # noqa: E402

from app_server import FIXTURE, app_context  # noqa: E402
from apps.cli import build_parser  # noqa: E402
from apps.gradio_app import context as app_contexts  # noqa: E402
from apps.gradio_app.app import share_report  # noqa: E402
from apps.gradio_app.disk import sweep_gradio_files  # noqa: E402
from apps.gradio_app.errors import InputError  # noqa: E402
from apps.gradio_app.store import RunStore, StopFlags  # noqa: E402
from workbench import Workbench  # noqa: E402

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
    monkeypatch.setattr(app_contexts.importlib.util, "find_spec", lambda name: object())
    proj = app_contexts.Projections(wb, TEXTS, tmp_path)
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
    monkeypatch.setattr(app_contexts.importlib.util, "find_spec", lambda name: None)
    proj = app_contexts.Projections(Workbench(tiny_model), TEXTS, tmp_path)
    assert proj.umap_state == "not installed" and proj.choices == ["auto", "PCA"]
    assert "PCA only" in proj.describe() and "umap-learn" in proj.describe()
    assert proj.pca.coords.shape[1] == 3 and proj.get("UMAP", 2)[1] == "UMAP is not installed; showing PCA"


def test_run_store_expires_evicts_and_removes_download_folders(tmp_path):
    now = [0.0]
    store = RunStore(tmp_path / "runs", ttl_s=60, max_entries=2, clock=lambda: now[0])
    first = store.put("latents", 1)
    folder = store.folder(first)
    (folder / "x.json").write_text("{}")
    assert store.get(first, "latents").payload == 1
    with pytest.raises(InputError, match="holds a latents result, not a trajectory"):
        store.get(first, "trajectory")
    second, third = store.put("latents", 2), store.put("latents", 3)
    assert len(store) == 2 and not folder.exists()          # the oldest was evicted with its files
    with pytest.raises(InputError, match="no latents result"):
        store.get(first, "latents")
    now[0] = 59.0
    store.get(second, "latents")                           # used: its hour starts again
    now[0] = 61.0
    with pytest.raises(InputError, match="expired"):
        store.get(third, "latents")
    assert len(store) == 1
    store.delete(second)
    assert len(store) == 0


def test_run_store_keeps_its_files_under_the_byte_bound_and_close_removes_everything(tmp_path):
    store = RunStore(tmp_path / "runs", max_bytes=2500)
    runs = []
    for i in range(4):
        runs.append(store.put("diagnostics", i))
        (store.folder(runs[-1]) / "report.html").write_bytes(b"x" * 1000)
        store.sweep()
    assert store.nbytes() == 2000 and len(store) == 2                     # the two newest fit
    assert [p.name for p in sorted((tmp_path / "runs").iterdir())] == sorted(runs[2:])
    store.get(runs[2], "diagnostics")                                     # used: now the newest
    big = store.put("diagnostics", "big")
    (store.folder(big) / "tensors.safetensors").write_bytes(b"x" * 5000)
    store.sweep()
    assert len(store) == 1 and store.get(big, "diagnostics").payload == "big"   # the run in use is never evicted
    store.close()
    assert not (tmp_path / "runs").exists() and len(store) == 0


def test_gradio_files_are_swept_oldest_first_down_to_the_bound(tmp_path):
    files = []
    for i in range(3):
        path = tmp_path / f"upload{i}.txt"
        path.write_bytes(b"x" * 100)
        os.utime(path, (i, i))
        files.append(str(path))
    store_file = tmp_path / "store" / "run.html"
    store_file.parent.mkdir()
    store_file.write_bytes(b"x" * 1000)
    uploads, outputs = set(files), {str(store_file)}
    demo = types.SimpleNamespace(temp_file_sets=[uploads, outputs])
    assert sweep_gradio_files(demo, 150, skip=tmp_path / "store") == 200
    assert uploads == {files[2]} and [Path(f).exists() for f in files] == [False, False, True]
    assert store_file.exists() and outputs == {str(store_file)}           # the run store sweeps its own files


def test_app_files_live_in_gradio_cache_and_close_removes_them(tiny_model, tmp_path):
    ctx = app_context(tmp_path, workbench=Workbench(tiny_model))
    assert ctx.store.root.parent == Path(get_upload_folder())           # downloads are served without a copy
    run = ctx.store.put("latents", None)
    (ctx.store.folder(run) / "a.json").write_text("{}")
    ctx.close()
    assert not ctx.store.root.exists()


def test_stop_flags_are_per_session():
    flags = StopFlags()
    a, b = flags.register("alice", "run-a"), flags.register("bob", "run-b")
    assert flags.stop("alice") == ["run-a"] and a.is_set() and not b.is_set()
    flags.release("alice", a)
    assert flags.stop("alice") == []


def test_stop_and_wait_says_whether_the_work_ended():
    flags = StopFlags()
    assert flags.stop_and_wait("nobody", timeout=0.01) == ([], True)
    ending = flags.register("alice", "run-a")
    worker = threading.Thread(target=lambda: ending.wait(5) and flags.release("alice", ending))   # ends when told
    worker.start()
    assert flags.stop_and_wait("alice", timeout=5) == (["run-a"], True)
    worker.join()
    flags.register("bob", "run-b")                  # never releases: the handler answers "Stopping…" after the wait
    assert flags.stop_and_wait("bob", timeout=0.05) == (["run-b"], False)


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
    assert build_parser().parse_args(["serve", "--max-store-mib", "64"]).max_store_mib == 64
    for bad in (["--auth", "nopassword"], ["--port", "70000"], ["--concurrency", "0"], ["--max-store-mib", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["serve", *bad])


@pytest.mark.heavy
def test_serve_logs_each_bad_input_as_one_line_and_leaves_nothing_after_ctrl_c(tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), GRADIO_TEMP_DIR=str(tmp_path / "gradio"),
               COLA_WORKBENCH_CACHE=str(tmp_path / "cache"), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--checkpoint", str(FIXTURE), "--port", "0",
                             "--no-umap", "--threads", "1"], cwd=root, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True)
    reader.start()
    try:
        banner = lines.get(timeout=120)
        url = re.search(r"at (http://\S+) \(files under (\S+),", banner)
        assert url, banner
        files = Path(url.group(2))
        client = gradio_client.Client(url.group(1), verbose=False)
        knobs = ["a cat", 4, 7.0, 4, 0, "euler", "linear", True, "auto", "2-D"]
        for bad in ({1: 0}, {2: "seven"}):
            with pytest.raises(gradio_client.exceptions.AppError):
                client.predict(*[bad.get(i, v) for i, v in enumerate(knobs)], api_name="/trajectory_generate")
        client.predict(*knobs, api_name="/trajectory_generate")
        assert any(files.rglob("trajectory.html"))
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    reader.join(10)                                                # the whole output, to the end
    output = [banner] + [lines.get_nowait() for _ in range(lines.qsize())]
    text = "".join(output)
    assert "Traceback" not in text and "share=True" not in text
    bad_lines = [line for line in output if "bad input" in line]
    assert [line.split(" ", 1)[1] for line in bad_lines] == [
        "trajectory_generate: bad input: steps must be from 1 to 200, got 0\n",
        "trajectory_generate: bad input: guidance must be a number, got 'seven'\n"]
    assert not files.exists() and not list((tmp_path / "gradio").glob("cola-workbench-*"))
