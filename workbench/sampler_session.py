"""A steppable view of cola_core's one sampler loop: hooks, step snapshots, trajectories.

``SamplerSession`` drives :meth:`cola_core.generate.BlockwiseSampler.events` (it never re-implements
the loop), runs the hooks at each event with the loop's state, and turns the events of one solver
step into a :class:`~workbench.trajectory.StepState`. With no hooks it produces exactly what
``cola_core.generate.generate`` produces.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

from cola_core.generate import BlockwiseSampler, Generation, SamplerState
from cola_core.hook_points import tapping
from cola_core.sampler import predicted_clean

from .hooks import HookFn
from .inside.cache import ActivationCache, CallTaps
from .trajectory import StepState, Trajectory


class SamplerSession:
    """One generation run. Iterate it (one :class:`StepState` per solver step), call :meth:`step`,
    or :meth:`result`. Yielded states are snapshots; to steer between steps edit ``session.live``
    (the loop's own state, e.g. ``session.live.z``) before the next ``step()``."""

    def __init__(self, sampler: BlockwiseSampler, hooks: Mapping[str, Sequence[HookFn]] | None = None,
                 preview: bool = False, record: bool = False, taps: CallTaps | None = None):
        """``hooks``: hook point -> functions run in order; ``preview`` decodes every step's ``x0_pred``;
        ``record`` keeps every step in ``trajectory``; ``taps`` records and patches named tensors (after the
        hooks of each event, and inside the models) for ``run_with_cache``."""
        self.sampler = sampler
        self.config = sampler.config
        self.hooks = dict(hooks or {})
        self.preview = preview
        self.trajectory = Trajectory(prompts=list(sampler.prepared.texts), sample_ids=list(sampler.sample_ids),
                                     config=dict(self.config.__dict__), fingerprint=sampler.model.fingerprint
                                     ) if record else None
        self.taps = taps
        self._events = sampler.events()
        self._pending: StepState | None = None
        self.live: SamplerState | None = None
        self.event: str | None = None
        self.done = False

    @property
    def num_blocks(self) -> int:
        return self.sampler.num_blocks

    @property
    def cache(self) -> ActivationCache | None:
        """Tensors recorded so far by name (with ``names_filter``), None when the session caches nothing."""
        return None if self.taps is None else self.taps.cache

    # -- driving the loop --------------------------------------------------------------------------
    def step(self) -> StepState | None:
        """Run to the end of the next solver step; None once generation has finished."""
        return self._run(stop_at_step=True)

    def _run(self, stop_at_step: bool) -> StepState | None:
        """Drive the loop: hooks, then taps, at each event; step snapshots only when a step or trajectory needs them."""
        snapshots = stop_at_step or self.trajectory is not None
        while (item := self._next()) is not None:
            event, state = item
            self.event, self.live = event, state
            for fn in self.hooks.get(event, ()):
                fn(state)
            if self.taps is not None:
                self.taps.on_event(event, state)
            snapshot = self._record(event, state) if snapshots else None
            if snapshot is not None and stop_at_step:
                return snapshot
        self.done = True
        return None

    def _next(self) -> tuple[str, SamplerState] | None:
        """Resume the loop to its next event; its model calls run under the taps (hooks and previews do not)."""
        with tapping(self.taps) if self.taps is not None else contextlib.nullcontext():
            return next(self._events, None)

    def __iter__(self) -> Iterator[StepState]:
        while (state := self.step()) is not None:
            yield state

    def result(self) -> list[Generation]:
        """Finish the run (if needed) and return what ``cola_core.generate.generate`` returns."""
        self._run(stop_at_step=False)
        generations = self.sampler.result()
        if self.trajectory is not None:
            self.trajectory.generations = generations
        return generations

    # -- snapshots ---------------------------------------------------------------------------------
    def _record(self, event: str, state: SamplerState) -> StepState | None:
        traj, b = self.trajectory, state.block
        if event == "pre_model":
            if state.stage == 0:
                self._pending = StepState(block=b, step=state.step, t=state.t, t_next=state.t_next, dt=state.dt,
                                          guidance=state.guidance, z=state.z.clone(), v_cond=None,
                                          v_uncond=None, v_guided=None, x0_pred=None, after_eos=state.ended)
            else:
                self._pending.stages.append({"t": state.t, "z": state.z.clone()})
        elif event == "guided":
            velocities = {"v_cond": state.v_cond, "v_uncond": state.v_uncond, "v_guided": state.v_guided}
            if state.stage == 0:
                p = self._pending
                p.v_cond, p.v_uncond, p.v_guided = velocities.values()
                p.guidance = state.guidance.clone()
                p.x0_pred = predicted_clean(p.z, state.v_guided.float(), p.t, state.T)
            else:
                self._pending.stages[-1].update(velocities)
        elif event == "post_update":
            snapshot, self._pending = self._pending, None
            snapshot.z_next = state.z.clone()
            if self.preview:
                snapshot.preview = state.decode_preview(snapshot.x0_pred)
            if traj is not None:
                traj.steps.append(snapshot)
            return snapshot
        elif traj is not None and event == "block_start":
            traj.z_init[b] = state.z.clone()
            traj.after_eos[b] = state.ended
        elif traj is not None and event == "block_end":
            traj.z_final[b] = state.z.clone()
        elif traj is not None and event == "decoded":
            traj.token_ids[b] = state.token_ids.clone()
        return None
