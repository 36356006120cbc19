"""Start the Gradio workbench app on 127.0.0.1 for tests (tiny random checkpoint, PCA only)."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

FIXTURE = Path(__file__).parent / "fixtures" / "visible_a"


@contextmanager
def running_app(cache_dir: Path, **limits):
    """Yield ``(ctx, url)`` for the app launched with ``prevent_thread_lock=True``; close it afterwards."""
    from apps.gradio_app import AppContext, Limits, create_app, launch

    ctx = AppContext.create(FIXTURE, cache_dir=cache_dir, umap=False, concurrency=2,
                            limits=Limits(**limits) if limits else None)
    demo = create_app(ctx)
    _, url, _ = launch(demo, ctx, host="127.0.0.1", port=None, prevent_thread_lock=True, quiet=True)
    try:
        yield ctx, url
    finally:
        demo.close()
