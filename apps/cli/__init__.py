"""The ``cola-workbench`` command line: a front-end over ``workbench`` like the app and the API."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
