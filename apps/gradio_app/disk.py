"""Disk bounds while serving: the run store and the files Gradio keeps for this app, swept by size and age.

Download files live in the run store, inside Gradio's cache, so Gradio serves them without a copy;
what Gradio itself keeps for the app is uploads. :class:`Sweeper` applies the run store's bounds
and keeps Gradio's files under ``Limits.max_cache_bytes`` (oldest first) every ``every_s`` seconds;
Gradio's own ``delete_cache`` removes them by age and at shutdown.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import gradio as gr

from .context import AppContext

SWEEP_EVERY_S = 30.0


def gradio_files(demo: gr.Blocks, skip: Path) -> list[tuple[float, int, str]]:
    """(mtime, bytes, path) of the files Gradio created for ``demo`` (uploads, cached outputs), outside ``skip``."""
    out = []
    for files in list(demo.temp_file_sets):
        for path in list(files):
            if Path(path).is_relative_to(skip):
                continue
            try:
                info = os.lstat(path)
            except OSError:
                continue
            out.append((info.st_mtime, info.st_size, path))
    return out


def sweep_gradio_files(demo: gr.Blocks, max_bytes: int, skip: Path) -> int:
    """Delete Gradio's files for ``demo``, oldest first, until they take at most ``max_bytes``; returns bytes freed."""
    files = sorted(gradio_files(demo, skip))
    total, freed = sum(size for _, size, _ in files), 0
    for _, size, path in files:
        if total - freed <= max_bytes:
            break
        try:
            os.remove(path)
        except OSError:
            continue
        freed += size
        for tracked in demo.temp_file_sets:
            tracked.discard(path)
    return freed


class Sweeper:
    """A daemon thread that sweeps the run store and Gradio's files until :meth:`stop`."""

    def __init__(self, demo: gr.Blocks, ctx: AppContext, every_s: float = SWEEP_EVERY_S):
        self.demo, self.ctx, self.every_s = demo, ctx, every_s
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cola-app-sweeper", daemon=True)

    def sweep(self) -> None:
        self.ctx.store.sweep()
        sweep_gradio_files(self.demo, self.ctx.limits.max_cache_bytes, skip=self.ctx.store.root)

    def start(self) -> "Sweeper":
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sweep()
