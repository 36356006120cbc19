"""OpenAI-compatible Chat Completions / Completions server (FastAPI) with block-wise streaming."""
from .backend import GenerationBackend
from .server import check_bind, create_app, serve

__all__ = ["GenerationBackend", "check_bind", "create_app", "serve"]
