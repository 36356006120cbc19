"""Server-side run store: tensors and results live here, keyed by an unguessable run id.

``gr.State`` only ever holds run ids. The store is bounded three ways, oldest first: an entry
expires ``ttl_s`` seconds after its last use, at most ``max_entries`` are kept, and the download
folders together stay under ``max_bytes`` (the entry in use is never evicted). :meth:`sweep`
applies the bounds; it runs on every store call and periodically from the server. :meth:`close`
removes the whole folder. Stop flags are kept per browser/client session so a Stop click reaches
that session's running work.
"""
from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .errors import InputError


@dataclass
class Entry:
    """One run: what kind it is, its payload (tensors, records) and its download folder."""

    kind: str
    payload: Any
    touched: float                 # the store's clock at the last use
    folder: Path | None = None


def folder_bytes(folder: Path | None) -> int:
    """Bytes of the regular files under ``folder`` (0 when it does not exist)."""
    if folder is None or not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


class RunStore:
    """Thread-safe id -> :class:`Entry` map over a private folder, bounded by age, count and bytes."""

    def __init__(self, root: Path, ttl_s: float = 3600.0, max_entries: int = 256, max_bytes: int = 1 << 30,
                 clock: Callable[[], float] = time.monotonic):
        self.root, self.ttl_s, self.max_entries, self.max_bytes = Path(root), ttl_s, max_entries, max_bytes
        self.clock = clock
        self.root.mkdir(parents=True, exist_ok=True)
        self._entries: OrderedDict[str, Entry] = OrderedDict()   # least recently used first
        self._lock = threading.Lock()

    def put(self, kind: str, payload: Any) -> str:
        """Store a payload; returns its new run id."""
        run_id = uuid.uuid4().hex
        with self._lock:
            self._entries[run_id] = Entry(kind, payload, self.clock())
            self._sweep()
        return run_id

    def get(self, run_id: Any, kind: str) -> Entry:
        """The entry of ``run_id`` (refreshing its time-to-live), or an InputError telling the user what to do."""
        with self._lock:
            self._sweep()
            entry = self._entries.get(run_id) if isinstance(run_id, str) else None
            if entry is None:
                raise InputError(f"no {kind} result for this session (it expired or was never made); run it first")
            if entry.kind != kind:
                raise InputError(f"run {run_id[:8]} holds a {entry.kind} result, not a {kind} result")
            entry.touched = self.clock()
            self._entries.move_to_end(run_id)
            return entry

    def folder(self, run_id: str) -> Path:
        """A private folder for the run's downloadable files (removed with the entry)."""
        with self._lock:
            entry = self._entries.get(run_id)
            if entry is None:
                raise InputError("this run was dropped to keep the store within its bounds; run it again")
            if entry.folder is None:
                entry.folder = self.root / run_id
                entry.folder.mkdir(parents=True, exist_ok=True)
            return entry.folder

    def delete(self, run_id: Any) -> None:
        """Forget a run (gr.State's delete_callback calls this when a session's state expires)."""
        with self._lock:
            if isinstance(run_id, str) and run_id in self._entries:
                self._drop(run_id)

    def sweep(self) -> None:
        """Drop expired runs, then the oldest beyond the entry and byte bounds."""
        with self._lock:
            self._sweep()

    def nbytes(self) -> int:
        """Bytes held in download folders."""
        with self._lock:
            return sum(folder_bytes(e.folder) for e in self._entries.values())

    def close(self) -> None:
        """Forget every run and remove the store's folder (server shutdown)."""
        with self._lock:
            self._entries.clear()
            shutil.rmtree(self.root, ignore_errors=True)

    def __len__(self) -> int:
        with self._lock:
            self._sweep()
            return len(self._entries)

    def _sweep(self) -> None:
        now = self.clock()
        for run_id in [k for k, e in self._entries.items() if now - e.touched > self.ttl_s]:
            self._drop(run_id)
        while len(self._entries) > self.max_entries:
            self._drop(next(iter(self._entries)))
        sizes = {k: folder_bytes(e.folder) for k, e in self._entries.items()}
        total = sum(sizes.values())
        for run_id in list(self._entries)[:-1]:        # oldest first; the newest stays
            if total <= self.max_bytes:
                break
            total -= sizes[run_id]
            self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        entry = self._entries.pop(run_id)
        if entry.folder is not None:
            shutil.rmtree(entry.folder, ignore_errors=True)


STOP_WAIT_S = 5.0     # a Stop handler waits this long for the work to end before answering "Stopping…"


class StopFlags:
    """Per-session stop events: a Stop click sets every flag its session's running work registered."""

    def __init__(self) -> None:
        self._flags: dict[str, dict[threading.Event, str]] = {}
        self._lock = threading.Lock()
        self._released = threading.Condition(self._lock)

    def register(self, session: str, run_id: str, flag: threading.Event | None = None) -> threading.Event:
        """Register ``flag`` (default: a new one) for ``run_id`` started by ``session``."""
        flag = flag or threading.Event()
        with self._lock:
            self._flags.setdefault(session, {})[flag] = run_id
        return flag

    def release(self, session: str, flag: threading.Event) -> None:
        with self._lock:
            flags = self._flags.get(session)
            if flags is not None:
                flags.pop(flag, None)
                if not flags:
                    del self._flags[session]
            self._released.notify_all()

    def stop(self, session: str) -> list[str]:
        """Set the session's flags; returns the run ids that were told to stop (oldest first)."""
        with self._lock:
            flags = dict(self._flags.get(session, {}))
        for flag in flags:
            flag.set()
        return list(flags.values())

    def stop_and_wait(self, session: str, timeout: float) -> tuple[list[str], bool]:
        """Stop the session's work and wait up to ``timeout`` s for it to release its flags; returns the run ids
        told to stop and whether they all ended. A Stop handler that waits never overwrites the run's own final
        status with a stale "Stopping…" that arrives after it."""
        names = self.stop(session)
        with self._released:
            told = set(self._flags.get(session, {}))
            ended = self._released.wait_for(lambda: told.isdisjoint(self._flags.get(session, {})), timeout)
        return names, ended


def stop_update(stops: StopFlags, key: str, output: str, stopping: str) -> dict[str, str]:
    """A Stop handler's update of ``output``: "Nothing is running.", ``stopping`` while the work still runs
    after STOP_WAIT_S, or nothing once it has ended (its own final status says how it ended)."""
    names, ended = stops.stop_and_wait(key, STOP_WAIT_S)
    if not names:
        return {output: "Nothing is running."}
    return {} if ended else {output: stopping}


def session_key(session: str, scope: str) -> str:
    """Stop-flag key: the browser/client session plus the tab, so Stop in one tab leaves the others running."""
    return f"{session}:{scope}"
