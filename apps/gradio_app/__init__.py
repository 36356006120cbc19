"""The Gradio workbench app: trajectories, diagnostics, guidance lab and latent lab over the workbench API.

``GRADIO_ANALYTICS_ENABLED`` is switched off before gradio is imported: the app never phones home.
"""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from .app import create_app, launch, share_report  # noqa: E402
from .context import AppContext, Limits  # noqa: E402

__all__ = ["AppContext", "Limits", "create_app", "launch", "share_report"]
