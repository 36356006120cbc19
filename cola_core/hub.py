"""Checkpoints named by Hugging Face Hub id: ``OWNER/NAME`` or ``OWNER/NAME@REVISION``.

``resolve_hub_id`` turns such an id into a local snapshot folder: the Hub cache first
(``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``), then a download with huggingface_hub's
progress bar, unless ``HF_HUB_OFFLINE=1``. A local path always wins over an id of the same spelling.
Only the files a checkpoint needs are fetched (``*.json``, ``*.safetensors``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CheckpointError

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
CHECKPOINT_FILES = ["*.json", "*.safetensors"]


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``spec`` is spelled like a Hub id, else None."""
    match = HUB_ID.match(spec)
    return (match["repo"], match["revision"]) if match else None


def _offline() -> bool:
    from huggingface_hub import constants   # noqa: PLC0415 (imported only for Hub ids)
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def resolve_hub_id(spec: str | Path) -> Path:
    """A local checkpoint folder for a path or a Hub id (downloading into the Hub cache if needed)."""
    path = Path(spec).expanduser()
    parsed = None if isinstance(spec, Path) or path.exists() else parse_hub_id(str(spec))
    if parsed is None:
        return path
    from huggingface_hub import constants, snapshot_download   # noqa: PLC0415
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError   # noqa: PLC0415

    repo_id, revision = parsed
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES,
                                      local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    where = f"{spec} is neither a local folder nor in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    if _offline():
        raise CheckpointError(f"{where}, and HF_HUB_OFFLINE is set; download it online first or unset it")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=CHECKPOINT_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{where}, and the Hub could not provide it: {reason}") from None
