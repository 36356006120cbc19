"""How the app shows model text: every generated or decoded text on screen is rendered here from token ids.

The renderer is the workbench's (``workbench.display_text``): special tokens are never shown raw but as
visible markers (``<|endoftext|>`` shows as ``⟨eos⟩``), and a generation's text ends at its first EOS /
im_end, whose marker says why it ended. Downloads and JSON records keep the raw ids and texts. Texts
the workbench decodes for people come rendered the same way (``Workbench.decode(...).text``: every slot
of the encoded text; step previews; x0-lens cells). Texts the app only has as strings (a bench folder's
outputs) go through :func:`display_string`.
"""
from __future__ import annotations

from cola_core.tokenizer import ColaTokenizer, special_markers
from workbench import display_text, display_tokens   # the renderer: ids -> text (cut at EOS) / one string per token

__all__ = ["display_text", "display_tokens", "display_string"]


def display_string(text: str, tokenizer: ColaTokenizer) -> str:
    """A model text the app holds only as a string (a bench output file): each special token spelled out in it
    shown as its marker. Nothing is cut: the bench scored the whole text."""
    for token_id, marker in special_markers(tokenizer).items():
        raw = tokenizer.id_to_token(token_id)
        if raw:
            text = text.replace(raw, marker)
    return text
