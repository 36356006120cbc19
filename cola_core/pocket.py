"""Where the pocket checkpoints (trained by this project on WordNet + prose) ship inside the package.

Two are shipped, each selectable by name wherever a checkpoint path is accepted:

* ``pocket`` — the base model, the default of every command;
* ``pocket-chat`` — the same VAE and tokenizer with a chat-tuned DiT (``train sft``, ``text`` format); its
  folder holds only the DiT and a ``shared_parts.json`` pointing at the base's VAE and tokenizer
  (:mod:`cola_core.shared_parts`). Chat front-ends use it when no checkpoint is given.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError
from .hub import resolve_hub_id

PACKAGE_DIR = Path(__file__).resolve().parent
POCKET_DIR = PACKAGE_DIR / "pocket_checkpoint"
POCKET_CHAT_DIR = PACKAGE_DIR / "pocket_chat"
NAMED_CHECKPOINTS = {"pocket": POCKET_DIR, "pocket-chat": POCKET_CHAT_DIR}


def named_checkpoint(name: str) -> Path:
    """The folder of a shipped checkpoint, or a clear error if this install lacks it."""
    folder = NAMED_CHECKPOINTS[name]
    if not (folder / "cola_dlm" / "cola_dit").is_dir():
        raise CheckpointError(f"the {name} checkpoint is missing from this install ({folder}); "
                              "pass --checkpoint PATH to a Cola DLM checkpoint folder")
    return folder


def default_checkpoint() -> Path:
    """The embedded base pocket checkpoint's folder."""
    return named_checkpoint("pocket")


def chat_checkpoint() -> Path:
    """The checkpoint chat front-ends use by default: the chat-tuned pocket."""
    return named_checkpoint("pocket-chat")


def resolve_checkpoint(checkpoint: str | Path | None = None, chat: bool = False) -> Path:
    """Any checkpoint argument as a local folder: None gives the default (``pocket-chat`` for chat front-ends,
    else ``pocket``); an existing path is itself; a shipped name (``pocket``, ``pocket-chat``) its folder; a
    Hugging Face id (``OWNER/NAME[@REVISION]``) its cached or downloaded snapshot."""
    if checkpoint is None:
        return chat_checkpoint() if chat else default_checkpoint()
    if not Path(checkpoint).expanduser().exists() and str(checkpoint) in NAMED_CHECKPOINTS:
        return named_checkpoint(str(checkpoint))
    return resolve_hub_id(checkpoint)
