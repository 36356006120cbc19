"""The Gradio workbench app: trajectories, diagnostics, guidance lab, latent lab and inside over the workbench API.

Tabs are listed in ``app.TABS``; how a tab is built and wired is in ``events``.

``GRADIO_ANALYTICS_ENABLED`` is switched off before gradio is imported: the app never phones home.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .app import TABS, Server, create_app, launch, share_report  # noqa: E402
from .context import AppContext, Limits  # noqa: E402
from .errors import InputError  # noqa: E402

__all__ = ["AppContext", "InputError", "Limits", "Server", "TABS", "create_app", "launch", "share_report"]
