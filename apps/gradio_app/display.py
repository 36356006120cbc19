"""How the app shows model text: every generated or decoded text on screen passes through here.

Downloads and JSON records keep the raw text; what a person reads goes through :func:`display_text`,
so rendering special tokens as markers (the workbench's renderer) is a change to this one function.
"""
from __future__ import annotations


def display_text(text: str) -> str:
    """Generated or decoded text as the UI shows it (today: verbatim)."""
    return text
