"""``shared_parts.json``: a checkpoint folder borrows its DiT, VAE or tokenizer from another folder.

A chat-tuned checkpoint that keeps the base's VAE and tokenizer ships only its DiT plus this pointer
(symlinks do not survive wheels and sdists)::

    {"vae_from": "../pocket_checkpoint/cola_dlm/cola_vae", "tokenizer_from": "../pocket_checkpoint/tokenizer.json"}

Keys are ``dit_from`` / ``vae_from`` (a model folder holding ``config.json``) and ``tokenizer_from`` (a
``tokenizer.json`` file); a relative path is read from the pointer's folder. A pointer names the part
itself, never another checkpoint, so pointers are not followed further and cannot form a loop. The
folder must not also hold a part it borrows.
"""
from __future__ import annotations

from pathlib import Path

from .errors import CheckpointError
from .files import read_json_object

POINTER_FILE = "shared_parts.json"
POINTER_KEYS = {"dit_from": "dit", "vae_from": "vae", "tokenizer_from": "tokenizer"}
OWN_PARTS = {"dit": ("cola_dlm/cola_dit", "cola_dit"), "vae": ("cola_dlm/cola_vae", "cola_vae"),
             "tokenizer": ("tokenizer.json", "cola_dlm/tokenizer.json")}


def shared_parts(root: Path) -> dict[str, Path]:
    """Part name (``dit``, ``vae``, ``tokenizer``) -> the borrowed path, from ``root/shared_parts.json``
    (empty without one); a bad pointer is a CheckpointError naming the file and key."""
    pointer = root / POINTER_FILE
    if not pointer.exists():
        return {}
    entries = read_json_object(pointer, CheckpointError, "shared-parts pointer")
    unknown = sorted(set(entries) - set(POINTER_KEYS))
    if unknown:
        raise CheckpointError(f"{pointer}: unknown key(s) {', '.join(map(repr, unknown))}; "
                              f"known: {', '.join(POINTER_KEYS)}")
    parts = {}
    for key, value in entries.items():
        if not isinstance(value, str) or not value.strip():
            raise CheckpointError(f"{pointer}: {key!r} must be a path (relative to {root}), got {value!r}")
        part = POINTER_KEYS[key]
        parts[part] = _borrowed(pointer, key, part, root / Path(value).expanduser())
        local = [root / own for own in OWN_PARTS[part] if (root / own).exists()]
        if local:
            raise CheckpointError(f"{pointer}: {key!r} borrows the {part} but {local[0]} exists too; "
                                  "keep one of them")
    return parts


def _borrowed(pointer: Path, key: str, part: str, target: Path) -> Path:
    """The pointed-to part, checked to be what ``key`` needs."""
    if not target.exists():
        raise CheckpointError(f"{pointer}: {key!r} points to {target}, which does not exist")
    if part == "tokenizer":
        if not target.is_file():
            raise CheckpointError(f"{pointer}: {key!r} must name a tokenizer.json file, got the folder {target}")
        return target
    if not (target / "config.json").is_file():
        raise CheckpointError(f"{pointer}: {key!r} must name a model folder holding config.json (such as "
                              f"OTHER/cola_dlm/cola_{part}), got {target}")
    return target
