"""Server-side run store: tensors and results live here, keyed by an unguessable run id.

``gr.State`` only ever holds run ids. Entries expire ``ttl_s`` seconds after their last use and the
oldest are evicted beyond ``max_entries``, so a long-running server does not grow without bound.
Stop flags are kept per browser/client session so a Stop click reaches that session's running sampler.
"""
from __future__ import annotations

import shutil
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr


@dataclass
class Entry:
    """One run: what kind it is, its payload (tensors, records) and its download folder."""

    kind: str
    payload: Any
    folder: Path | None = None
    touched: float = field(default_factory=time.monotonic)


class RunStore:
    """Thread-safe id -> :class:`Entry` map with a time-to-live and an entry cap."""

    def __init__(self, ttl_s: float = 3600.0, max_entries: int = 256, root: Path | None = None):
        self.ttl_s, self.max_entries, self.root = ttl_s, max_entries, root
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, kind: str, payload: Any) -> str:
        """Store a payload; returns its new run id."""
        run_id = uuid.uuid4().hex
        with self._lock:
            self._expire()
            self._entries[run_id] = Entry(kind, payload)
            while len(self._entries) > self.max_entries:
                self._drop(next(iter(self._entries)))
        return run_id

    def get(self, run_id: str | None, kind: str) -> Entry:
        """The entry of ``run_id`` (refreshing its time-to-live), or a gr.Error telling the user what to do."""
        with self._lock:
            self._expire()
            entry = self._entries.get(run_id or "")
            if entry is None:
                raise gr.Error(f"no {kind} result for this session (it expired or was never made); run it first")
            if entry.kind != kind:
                raise gr.Error(f"run {run_id[:8]} holds a {entry.kind} result, not a {kind} result")
            entry.touched = time.monotonic()
            self._entries.move_to_end(run_id)
            return entry

    def folder(self, run_id: str) -> Path:
        """A private folder for the run's downloadable files (removed with the entry)."""
        with self._lock:
            entry = self._entries[run_id]
            if entry.folder is None:
                if self.root is None:
                    raise RuntimeError("RunStore has no root folder for downloads")
                entry.folder = self.root / run_id
                entry.folder.mkdir(parents=True, exist_ok=True)
            return entry.folder

    def delete(self, run_id: str | None) -> None:
        """Forget a run (gr.State's delete_callback calls this when a session's state expires)."""
        with self._lock:
            if run_id in self._entries:
                self._drop(run_id)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def _expire(self) -> None:
        now = time.monotonic()
        for run_id in [k for k, e in self._entries.items() if now - e.touched > self.ttl_s]:
            self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        entry = self._entries.pop(run_id)
        if entry.folder is not None:
            shutil.rmtree(entry.folder, ignore_errors=True)


class StopFlags:
    """Per-session stop events: a Stop click sets every flag its session's running work registered."""

    def __init__(self) -> None:
        self._flags: dict[str, dict[threading.Event, str]] = {}
        self._lock = threading.Lock()

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

    def stop(self, session: str) -> list[str]:
        """Set the session's flags; returns the run ids that were told to stop (oldest first)."""
        with self._lock:
            flags = dict(self._flags.get(session, {}))
        for flag in flags:
            flag.set()
        return list(flags.values())


def session_key(request: gr.Request | None, scope: str) -> str:
    """Stop-flag key: the browser/client session plus the tab, so Stop in one tab leaves the others running."""
    return f"{request.session_hash if request is not None else 'anonymous'}:{scope}"
