"""Serving generations to concurrent callers: one thread owns a batching engine, callers stream their blocks.

:class:`GenerationService` runs :class:`cola_core.engine.Engine` in a thread of its own: a caller hands it a
built :class:`~cola_core.generate.BlockwiseSampler` (prompts checked, tokenised, encoded) and reads the
request's decoded blocks from a :class:`Ticket`; the request's rows join the running batch at its next block
boundary and leave at their own end, or when the ticket is closed (a client that hung up). Requests whose knobs
cannot share a batch step run in batches of their own, in turn. :class:`Solo` gives the same reading interface
over a sampler run alone (a server's one-sampler-per-request mode). Either way a row's tokens are those of the
same request served alone (``cola_core.engine``).
"""
from __future__ import annotations

import queue
import threading
from typing import Iterator, Protocol

from cola_core.engine import Arrivals, BatchFailure, Engine, Row, arrivals
from cola_core.errors import ColaError
from cola_core.generate import BlockwiseSampler, SamplerState

POLL_S = 0.05          # how often a waiting reader looks at its cancel event
_END = object()        # service -> ticket: every row of the request has left

Block = dict[int, list[int]]   # row index in the request -> the ids it decoded in this block


class Blocks(Protocol):
    """A request's decoded blocks, read once (in the caller's thread)."""

    def blocks(self, cancel: threading.Event | None = None) -> Iterator[Block]:
        """One dict per decoded block; stops early once ``cancel`` is set."""

    def close(self) -> None:
        """No more blocks are wanted: the request's rows stop at the next block boundary."""


class Solo:
    """A sampler run alone, in the reader's thread (the one-request-per-worker mode)."""

    def __init__(self, sampler: BlockwiseSampler):
        self.sampler = sampler
        self._state: SamplerState | None = None

    def blocks(self, cancel: threading.Event | None = None) -> Iterator[Block]:
        for event, state in self.sampler.events():
            if cancel is not None and cancel.is_set():
                return
            if event == "decoded":
                self._state = state
                yield dict(enumerate(state.token_ids.tolist()))

    def close(self) -> None:
        if self._state is not None:
            self._state.interrupt = True   # the loop returns when resumed


class Ticket:
    """A request in a :class:`GenerationService`: its rows join when :meth:`blocks` is first read."""

    def __init__(self, service: "GenerationService", sampler: BlockwiseSampler):
        self.service = service
        self.sampler = sampler
        self.rows: list[Row] = []
        self.closed = False
        self._queue: queue.Queue = queue.Queue()

    def blocks(self, cancel: threading.Event | None = None) -> Iterator[Block]:
        """Prefill the request's prompts (in this thread), hand its rows to the service, then yield each block
        the service decodes for them."""
        if cancel is not None and cancel.is_set():
            return
        try:
            self.service._submit(self, arrivals(self.sampler))
            while not self.closed:
                if cancel is not None and cancel.is_set():
                    return
                try:
                    item = self._queue.get(timeout=POLL_S)
                except queue.Empty:
                    if not self.service.alive:
                        raise ColaError("the generation service stopped") from None
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self.closed = True

    def _put(self, item: object) -> None:
        self._queue.put(item)


class GenerationService:
    """A thread that owns an :class:`Engine` over ``model`` and serves :class:`Ticket` s (``max_rows``: rows
    sampled together at most)."""

    def __init__(self, model, max_rows: int = 16):
        self.engine = Engine(model, max_rows)
        self._lock = threading.Condition()
        self._incoming: list[tuple[Ticket, Arrivals]] = []
        self._tickets: list[Ticket] = []     # in the engine (service thread only)
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name="cola-generation-service", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Whether the service thread runs."""
        return self._thread.is_alive()

    def ticket(self, sampler: BlockwiseSampler) -> Ticket:
        """A request to serve; nothing runs until its blocks are read."""
        return Ticket(self, sampler)

    def close(self) -> None:
        """Stop the thread; requests still in it end with an error."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=30)

    def _submit(self, ticket: Ticket, new: Arrivals) -> None:
        ticket.rows = new.rows
        with self._lock:
            if self._closed:
                raise ColaError("the generation service is closed")
            self._incoming.append((ticket, new))
            self._lock.notify()

    # -- the service thread ------------------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            with self._lock:
                while not self._incoming and not self._tickets and not self._closed:
                    self._lock.wait()
                if self._closed:
                    break
                incoming, self._incoming = self._incoming, []
            for ticket, new in incoming:
                self.engine.add(new)
                self._tickets.append(ticket)
            self._drop_closed()
            if self.engine.idle:
                continue
            try:
                self._dispatch(self.engine.step())
            except BatchFailure as failure:
                self._fail({id(row) for row in failure.rows}, failure.__cause__ or failure)
            except Exception as exc:   # outside a batch step (regrouping caches): nothing in flight is sound
                self.engine.clear()
                self._fail(set(), exc)
        self._fail(None, ColaError("the generation service closed"))

    def _drop_closed(self) -> None:
        """Rows of closed tickets (their readers left) leave the engine."""
        closed = [ticket for ticket in self._tickets if ticket.closed]
        if closed:
            self.engine.remove([row for ticket in closed for row in ticket.rows])
            self._tickets = [ticket for ticket in self._tickets if not ticket.closed]

    def _dispatch(self, stepped: list[Row]) -> None:
        """Each ticket's new block to its reader; a ticket whose rows all ended gets the end marker."""
        stepped_ids = {id(row) for row in stepped}
        for ticket in list(self._tickets):
            block = {i: row.blocks[-1].tolist() for i, row in enumerate(ticket.rows) if id(row) in stepped_ids}
            if block:
                ticket._put(block)
            if all(row.done for row in ticket.rows):
                ticket._put(_END)
                self._tickets.remove(ticket)

    def _fail(self, row_ids: set[int] | None, exc: BaseException) -> None:
        """Tickets with rows in ``row_ids`` end with ``exc``; an empty set: every ticket in the engine; None: those
        not yet in it too."""
        hit = [ticket for ticket in self._tickets
               if not row_ids or any(id(row) in row_ids for row in ticket.rows)]
        if row_ids is None:
            with self._lock:
                hit += [ticket for ticket, _ in self._incoming]
                self._incoming = []
        for ticket in hit:
            ticket._put(exc)
        self._tickets = [ticket for ticket in self._tickets if ticket not in hit]
