"""Where the pocket checkpoint (trained by this project on WordNet) ships inside the package."""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError

POCKET_DIR = Path(__file__).resolve().parent / "pocket_checkpoint"


def default_checkpoint() -> Path:
    """The embedded pocket checkpoint's folder, or a clear error if this install lacks it."""
    if not (POCKET_DIR / "cola_dlm").is_dir():
        raise CheckpointError(f"the pocket checkpoint is missing from this install ({POCKET_DIR}); "
                              "pass --checkpoint PATH to a Cola DLM checkpoint folder")
    return POCKET_DIR
