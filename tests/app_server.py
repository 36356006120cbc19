"""The Gradio workbench app for tests: an app context on the tiny random checkpoint (PCA only), and
the app launched on 127.0.0.1."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"


def app_context(cache_dir: Path, workbench=None, **limits):
    """An AppContext on the tiny fixture (or ``workbench``), PCA only; ``limits`` override Limits fields."""
    from apps.gradio_app import AppContext, Limits

    return AppContext.create(FIXTURE, cache_dir=cache_dir, umap=False, concurrency=2, workbench=workbench,
                             limits=Limits(**limits) if limits else None)


@contextmanager
def running_app(cache_dir: Path, **limits):
    """Yield ``(ctx, url)`` for the app launched with ``prevent_thread_lock=True``; close it (and its files) after."""
    from apps.gradio_app import create_app, launch

    ctx = app_context(cache_dir, **limits)
    server = launch(create_app(ctx), ctx, host="127.0.0.1", port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield ctx, server.local_url
    finally:
        server.close()
