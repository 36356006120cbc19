"""The Gradio workbench app for tests: an app context on the tiny random checkpoint (PCA only), the
app launched on 127.0.0.1, and the events tests hold the sampler with (no test waits on the clock)."""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"
RELEASE = Path(__file__).parent / "fixtures" / "cola-eval-release"
TIMEOUT_S = 60      # a bound on waiting for an event the test controls, never a speed requirement
BENCH_ITEMS = {"lambada": 3, "obqa": 4, "squad": 2}    # the first items of release files: int ids, choices, string ids


def bench_output(root: Path, model=None, protocol: str = "official") -> Path:
    """A tiny ``bench run`` on the tiny fixture (2 steps, guidance 3, 8 new tokens) into ``root/bench``, its task
    files (the first lines of some release files) in ``root/tasks``; returns the output folder."""
    from cola_core import load_pretrained
    from workbench.bench import BenchConfig, run_bench

    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    for task, n in BENCH_ITEMS.items():
        lines = (RELEASE / f"{task}.jsonl").read_text().splitlines(keepends=True)[:n]
        (tasks / f"{task}.jsonl").write_text("".join(lines))
    config = BenchConfig(steps=2, guidance=3.0, max_new_tokens=8, protocol=protocol)
    return run_bench(tasks, root / "bench", config, batch_size=3, model=model or load_pretrained(FIXTURE),
                     progress=False).path


def app_context(cache_dir: Path, workbench=None, bench_root=(), checkpoint=FIXTURE, chat_checkpoint=None, **limits):
    """An AppContext on the tiny fixture (or ``checkpoint``, or ``workbench``), PCA only; ``limits`` override Limits
    fields; ``bench_root``: folders the Bench tab may read besides ./runs and ./artifacts; ``chat_checkpoint``: the
    Chat tab's (None: the app's own)."""
    from apps.gradio_app import AppContext, Limits

    return AppContext.create(checkpoint, cache_dir=cache_dir, umap=False, concurrency=2, workbench=workbench,
                             limits=Limits(**limits) if limits else None, bench_root=bench_root,
                             chat_checkpoint=chat_checkpoint)


@contextmanager
def running_app(cache_dir: Path, bench_root=(), checkpoint=FIXTURE, chat_checkpoint=None, **limits):
    """Yield ``(ctx, url)`` for the app launched with ``prevent_thread_lock=True``; close it (and its files) after."""
    from apps.gradio_app import create_app, launch

    ctx = app_context(cache_dir, bench_root=bench_root, checkpoint=checkpoint, chat_checkpoint=chat_checkpoint,
                      **limits)
    server = launch(create_app(ctx), ctx, host="127.0.0.1", port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield ctx, server.local_url
    finally:
        server.close()


def hold_at(block: int, step: int, release: threading.Event, held: threading.Event | None = None) -> Callable:
    """A post_update hook that holds the sampler after (block, step) until ``release`` is set."""
    def hold(state) -> None:
        if (state.block, state.step) == (block, step):
            if held is not None:
                held.set()
            assert release.wait(TIMEOUT_S)
    return hold


def stop_signal(ctx, monkeypatch) -> threading.Event:
    """An event set once a Stop (handler or click) has set some running work's stop flag."""
    stopped, stop = threading.Event(), ctx.stops.stop

    def stop_and_tell(session: str) -> list[str]:
        names = stop(session)
        if names:
            stopped.set()
        return names
    monkeypatch.setattr(ctx.stops, "stop", stop_and_tell)
    return stopped


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds (bounded by TIMEOUT_S; the test's own events make it hold)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen"
        time.sleep(0.02)
