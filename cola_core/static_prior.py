"""The fast DiT side of a generation call: static shapes, modulations once per time, fused writes, CUDA graphs.

:class:`StaticPriorContext` answers the same three calls as :class:`PriorContext` (``velocities``,
``prefill``, ``commit``) with the same model maths, faster. What it does, and where (defaults):

=====================  ===========================================================  =====================
feature                what                                                         default
=====================  ===========================================================  =====================
static KV cache        ``KVCache.static``: fixed capacity, lengths mirrored on the   always
                       device; the buffers never move
modulation table       AdaLN modulations (a third of the DiT's weights) computed    CUDA, bf16 on a CPU
                       once per distinct time (``dit.ModulationTable``), not per
                       pass: at small batches the weight reads are the cost
fused writes           ``prefill``/``commit`` wait and run inside the next pass     CUDA
                       (one weight read per block fewer)
static keys            every pass attends over the whole capacity, masked: one      CUDA
                       shape per pass kind, no host reads
CUDA graphs            each recurring pass shape (the guided pair ``(2B, bs)``, the  CUDA
                       commit-fused pair ``(2B, 2bs)``) captured once, replayed
                       (off CUDA, ``graphs=True`` replays an :class:`EagerGraph`)
=====================  ===========================================================  =====================

On a CPU the defaults keep results bit-identical to the eager path (fp32: MKL rounds a row by the
row count, so no table there; the fused writes and static keys add masked keys to attention sums,
which moves bf16 results by a last bit). ``static_keys=True, table=True, fuse=True`` runs exactly what
the graphs capture, eagerly (tests: same tokens, latents within 1e-5 in fp32). While a
:class:`~cola_core.hook_points.Taps` listener is active (``cola_core.hook_points.tapping``) every pass is
the eager, unfused one, so every hook point fires with its usual name and shape.

Between calls the model keeps a few of these resources (``ColaModel.runtime``), keyed by batch size,
capacity and the weights' storage: a call checks one out, :meth:`StaticPriorContext.release` empties
its cache and puts it back, so graphs are captured once per shape, not once per call, and two calls
running at once never share one. The per-call state is exactly the KV cache's row lengths (host and
device) and a pending prefill/commit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from .attention import KVCache
from .checkpoint import ColaModel
from .dit import ModulationTable, TableRows
from .hook_points import listening
from .prior_context import PriorContext, bf16_round

MIN_CAPACITY = 64     # static caches hold a power of two >= this many positions, so similar calls share one
KEPT = 2              # resources a model keeps between calls
GRAPH_WARMUP = 2      # eager runs on a side stream before a capture (allocations, library handles)


def row_count_independent(model: ColaModel) -> bool:
    """Whether the model's matrix products give a row the same bits whatever the number of rows.

    The modulation table changes row counts, so it is on by default only where that is invisible or the
    kernels vary anyway: bf16 on a CPU (oneDNN; checked bit for bit on the fixtures and at the release
    size) and CUDA. fp32 on a CPU (MKL) rounds by row count (~1e-6 on the fixture), so there the fast
    path keeps the eager row counts and stays bit-identical to it.
    """
    return not (model.device.type == "cpu" and model.dtype == torch.float32)


def static_capacity(needed: int) -> int:
    """Positions of a static cache for ``needed``: the next power of two, at least ``MIN_CAPACITY``."""
    capacity = MIN_CAPACITY
    while capacity < needed:
        capacity *= 2
    return capacity


@dataclass
class CapturedPass:
    """One pass shape as a CUDA graph: its static inputs, and the output its replays overwrite."""

    graph: "torch.cuda.CUDAGraph | EagerGraph"
    x: torch.Tensor        # (n, Lq, C) latents, model dtype
    index: torch.Tensor    # (n*Lq,) modulation-table slots
    out: torch.Tensor      # (n, Lq, C_out)


@dataclass
class StaticResources:
    """What a static prior keeps between calls of one shape."""

    batch: int
    weights: tuple[int, ...]                  # storage of the DiT's parameters (graphs read them in place)
    cache: KVCache                            # rows [0, B) cond context, [B, 2B) the uncond block
    table: ModulationTable
    graphs: dict[tuple, CapturedPass] = field(default_factory=dict)   # by pass shape
    captures: int = field(default=0)          # how many graphs were captured (diagnostics, tests)


def _weights(model: ColaModel) -> tuple[int, ...]:
    return tuple(p.data_ptr() for p in model.dit.parameters())


def checkout(model: ColaModel, batch: int, capacity: int) -> StaticResources:
    """Resources for a call of ``batch`` samples needing ``capacity`` positions: a kept one that fits
    (smallest capacity first, its cache emptied), else new ones."""
    shelf: list[StaticResources] = model.runtime.setdefault("static_prior", [])
    weights = _weights(model)
    fits = [r for r in list(shelf) if r.batch == batch and r.weights == weights and r.cache.capacity >= capacity]
    for kept in sorted(fits, key=lambda r: r.cache.capacity):
        try:
            shelf.remove(kept)   # another thread may have taken it meanwhile
        except ValueError:
            continue
        kept.table.reset()   # the weights may have changed in place since
        return kept
    return StaticResources(batch=batch, weights=weights,
                           cache=model.dit.new_cache(2 * batch, capacity=static_capacity(capacity)),
                           table=ModulationTable(model.dit, model.compute_dtype, model.device))


def checkin(model: ColaModel, resources: StaticResources) -> None:
    """Keep ``resources``, emptied, for a later call (the most recent ``KEPT`` are kept)."""
    resources.cache.reset()
    shelf: list[StaticResources] = model.runtime.setdefault("static_prior", [])
    shelf.append(resources)
    del shelf[:-KEPT]


class StaticPriorContext(PriorContext):
    """:class:`PriorContext` with static shapes, a modulation table, fused commits and (on CUDA) graphed passes.

    ``capacity``: the most positions any row will hold (prefix + generated blocks). Call :meth:`release`
    when the call is over.

    ``prefill`` and ``commit`` only write the cache, so they wait for the next ``velocities`` call and run
    in its forward: each cond row queries ``[pending rows (t=0) | the block]``, block-causally, so the block
    sees them as it would see them cached and they see nothing of the block; the pending rows' K/V are kept.
    That saves one pass of the weights per block (and the prefill's). While a Taps listener is active nothing
    is deferred or fused, and every pass is the eager one.
    """

    def __init__(self, model: ColaModel, batch: int, capacity: int, round_inputs: bool = True,
                 static_keys: bool | None = None, table: bool | None = None, fuse: bool | None = None,
                 graphs: bool | None = None):
        """``static_keys``: attend over the whole capacity, masked (the shape graphs need; default: on CUDA).
        Off, a pass reads the keys its rows hold (known on the host), which keeps CPU results bit-identical
        to the eager path; on, reduction order inside attention changes by a last bit or so.
        ``table``: take the AdaLN modulations from the per-call table (default: where that changes no bits,
        :func:`row_count_independent`). ``fuse``: run prefill/commit inside the next pass (default: on CUDA;
        on a CPU it saves a pass per block but moves bf16 results by a last bit, attention seeing other
        query counts). ``graphs``: replay recurring passes from captured graphs (default: on CUDA; they need
        the static keys and the table); on a CPU an :class:`EagerGraph` stands in, re-running the captured
        function on the same static buffers."""
        self.model = model
        self.batch = batch
        self.round_inputs = round_inputs
        self.static_keys = model.device.type == "cuda" if static_keys is None else static_keys
        self.use_table = row_count_independent(model) if table is None else table
        self.fuse = model.device.type == "cuda" if fuse is None else fuse
        self.graphs = model.device.type == "cuda" if graphs is None else graphs
        self.resources = checkout(model, batch, capacity)
        self.cache = self.resources.cache
        self.table = self.resources.table
        self.cache.device_offsets(model.device)   # the device mirror exists before any capture
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None   # (B, P, C) fp32 rows at t=0, (B,) lengths
        self.pending_is_commit = False   # a commit's fused pass has one shape every block (graphed); a prefill's not

    def expect(self, times: torch.Tensor) -> None:
        """Fill the modulation table with the call's times (rounded as the DiT sees them) in one batch."""
        if not self.use_table:
            return
        with torch.no_grad(), self.model.autocast:
            times = bf16_round(times) if self.round_inputs else times
            self.table.add(times.float().reshape(-1).tolist() + [0.0])

    def release(self) -> None:
        """Give the resources back to the model for the next call (the cache is emptied then)."""
        if self.resources is not None:
            checkin(self.model, self.resources)
            self.resources = None

    # -- the three calls ---------------------------------------------------------------------------------
    def prefill(self, prefix: torch.Tensor, lengths: torch.Tensor) -> None:
        self._defer(prefix.float(), lengths.cpu(), commit=False)

    def commit(self, z: torch.Tensor) -> None:
        self._defer(z.float(), torch.full((self.batch,), z.shape[1], dtype=torch.long), commit=True)

    def velocities(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if listening():
            self._flush()
            return super().velocities(z, t)
        batch, bs = self.batch, z.shape[1]
        if self.pending is None:
            out = self._pass(torch.cat([z, z]), torch.cat([t, t]), torch.full((2 * batch,), bs), graph=True)
            return out[:batch], out[batch:]
        rows, lengths = self.pending   # cond rows: [pending | block]; uncond rows: [block], padded
        self.pending = None
        width = rows.shape[1] + bs
        at = lengths[:, None] + torch.arange(bs)                                        # (B, bs) block rows
        x = torch.zeros(2 * batch, width, z.shape[2], device=z.device)
        x[:batch, :rows.shape[1]] = rows.to(z.device)
        x[:batch].scatter_(1, at.to(z.device)[..., None].expand(-1, -1, z.shape[2]), z)
        x[batch:, :bs] = z
        times = torch.zeros(2 * batch, width, device=t.device)
        times[:batch].scatter_(1, at.to(t.device), t)
        times[batch:, :bs] = t
        out = self._pass(x, times, torch.cat([lengths + bs, torch.full((batch,), bs)]), graph=self.pending_is_commit)
        self.cache.view(slice(0, batch)).commit(lengths)
        v_cond = out[:batch].gather(1, at.to(out.device)[..., None].expand(-1, -1, out.shape[2]))
        return v_cond, out[batch:, :bs]

    def _defer(self, rows: torch.Tensor, lengths: torch.Tensor, commit: bool) -> None:
        self._flush()
        self.pending, self.pending_is_commit = (rows, lengths), commit
        if listening() or not self.fuse:
            self._flush()

    def _flush(self) -> None:
        """Write a pending prefill or commit on its own (eager, so listeners see it)."""
        if self.pending is not None:
            rows, lengths = self.pending
            self.pending = None
            device = self.model.device
            self._dit(rows.to(device), torch.zeros(rows.shape[:2], device=device), slice(0, self.batch), update=True,
                      lengths=lengths.to(device))

    @torch.no_grad()
    def _pass(self, z: torch.Tensor, t: torch.Tensor, q_lengths: torch.Tensor, graph: bool) -> torch.Tensor:
        """One forward over every cache row: z (2B, L, C) fp32, t (2B, L), q_lengths (2B,) host; lengths unchanged.
        ``graph``: a shape that recurs every block, worth a CUDA graph (when graphs are on)."""
        model, rows = self.model, slice(0, 2 * self.batch)
        x, times = self.inputs(z, t)
        with model.autocast:
            if self.use_table:
                self.table.add(times.reshape(-1).tolist())
            if graph and self.graphs and self.static_keys and self.use_table:
                return self._replay(x, times, q_lengths, rows)
            return model.dit(x, times, q_lengths.to(model.device), cache=self.cache.view(rows),
                             time=self.table.rows(times) if self.use_table else None, static=self.static_keys)

    # -- CUDA graphs -----------------------------------------------------------------------------------
    def _replay(self, x: torch.Tensor, times: torch.Tensor, q_lengths: torch.Tensor, rows: slice) -> torch.Tensor:
        """Run the pass through its graph (captured on first use); a fresh copy of the output."""
        key = (rows.start, rows.stop, tuple(x.shape), x.dtype, tuple(q_lengths.tolist()), self.table.version)
        captured = self.resources.graphs.get(key)
        if captured is None:
            captured = self.resources.graphs[key] = self._capture(x, times, q_lengths, rows)
        captured.x.copy_(x)
        self.table.rows(times, out=captured.index)
        captured.graph.replay()
        return captured.out.clone()

    def _capture(self, x: torch.Tensor, times: torch.Tensor, q_lengths: torch.Tensor, rows: slice) -> CapturedPass:
        """Capture one pass shape (torch.cuda.graph): warm-up on a side stream, then record (own memory pool).

        Inside the graph nothing reads back to the host and nothing allocates outside its pool: the cache
        buffers, the device lengths and the modulation table exist before, and the autocast weight cache
        is off (its copies would be freed after the capture).
        """
        model = self.model
        static_x, static_t = x.clone(), times.clone()
        index = self.table.rows(times).inverse.clone()
        q = q_lengths.to(model.device)
        view, time = self.cache.view(rows), TableRows(self.table, index, times.shape)
        autocast = (torch.autocast("cuda", dtype=model.compute_dtype, cache_enabled=False)
                    if model.compute_dtype != model.dtype else contextlib.nullcontext())

        def run() -> torch.Tensor:
            with autocast:
                return model.dit(static_x, static_t, q, cache=view, time=time, static=True)

        self.resources.captures += 1
        if model.device.type != "cuda":
            graph = EagerGraph(run)
            return CapturedPass(graph, static_x, index, graph.out)
        stream = torch.cuda.Stream(model.device)
        stream.wait_stream(torch.cuda.current_stream(model.device))
        with torch.cuda.stream(stream):
            for _ in range(GRAPH_WARMUP):
                run()
        torch.cuda.current_stream(model.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run()
        return CapturedPass(graph, static_x, index, out)


class EagerGraph:
    """Stands in for ``torch.cuda.CUDAGraph`` off CUDA: :meth:`replay` re-runs the captured function into the
    same output tensor, so a graphed pass's static-buffer plumbing runs, and is tested, on a CPU."""

    def __init__(self, run):
        self.run = run
        self.out = run()

    def replay(self) -> None:
        self.out.copy_(self.run())
