"""Careful file access: read only regular files, write atomically with the user's usual file mode."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .errors import ColaError


def require_regular_file(path: Path, error: type[ColaError], what: str = "file") -> Path:
    """``path`` if it is (or a symlink resolving to) a regular file; else ``error`` saying what it is.

    Symlinks are followed (a Hugging Face cache snapshot is all symlinks), but a dangling link, a
    loop, a folder or a device/FIFO (which would hang or never end) is refused before any read.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        kind = "a dangling symlink" if os.path.islink(path) else "missing"
        raise error(f"{path}: {what} is {kind}") from None
    except OSError as exc:
        raise error(f"{path}: {what} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise error(f"{path}: {what} is {kind}")
    return path


def read_json_object(path: Path, error: type[ColaError], what: str = "file") -> dict[str, Any]:
    """Parse a JSON file that must hold an object; any problem is ``error`` naming the file."""
    require_regular_file(path, error, what)
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}: {what} is not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{path}: {what} nests too deeply to be valid") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {what} must hold a JSON object, not a {type(data).__name__}")
    return data


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 minus the process umask (usually 0o644)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_path(path: Path) -> None:
    """Flush a file's or folder's contents to disk (so a rename after it survives a power cut)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a sibling temporary file and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
