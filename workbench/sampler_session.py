"""A steppable view of cola_core's one sampler loop: hooks, step snapshots, trajectories.

``SamplerSession`` drives :meth:`cola_core.generate.BlockwiseSampler.events` (it never re-implements
the loop), runs the hooks at each event with the loop's state, and turns the events of one solver
step into a :class:`~workbench.trajectory.StepState`. With no hooks it produces exactly what
``cola_core.generate.generate`` produces.
"""
from __future__ import annotations

from typing import Callable, Iterator, Mapping, Sequence

import torch

from cola_core.generate import BlockwiseSampler, Generation, SamplerState
from cola_core.sampler import predicted_clean

from .hooks import HookFn
from .trajectory import StepState, Trajectory


class SamplerSession:
    """One generation run. Iterate it (one :class:`StepState` per solver step), call :meth:`step`,
    or :meth:`result`. Yielded states are snapshots; to steer between steps edit ``session.live``
    (the loop's own state, e.g. ``session.live.z``) before the next ``step()``."""

    def __init__(self, sampler: BlockwiseSampler, hooks: Mapping[str, Sequence[HookFn]] | None = None,
                 preview: bool = False, record: bool = False, keep: Callable[[str], bool] | None = None):
        """``hooks``: hook point -> functions run in order; ``preview`` decodes every step's ``x0_pred``;
        ``record`` keeps every step in ``trajectory``; ``keep`` names extra tensors to keep (``block.{b}.logits``)."""
        self.sampler = sampler
        self.config = sampler.config
        self.hooks = dict(hooks or {})
        self.preview = preview
        self.trajectory = Trajectory(prompts=list(sampler.prepared.texts), sample_ids=list(sampler.sample_ids),
                                     config=dict(self.config.__dict__), fingerprint=sampler.model.fingerprint
                                     ) if record else None
        self.extra: dict[str, torch.Tensor] = {}   # logits kept by run_with_cache when named
        self._keep_logits = keep is not None and any(keep(f"block.{b}.logits") for b in range(self.num_blocks))
        self._events = sampler.events()
        self._pending: StepState | None = None
        self.live: SamplerState | None = None
        self.event: str | None = None
        self.done = False

    @property
    def num_blocks(self) -> int:
        return self.sampler.num_blocks

    # -- driving the loop --------------------------------------------------------------------------
    def step(self) -> StepState | None:
        """Run to the end of the next solver step; None once generation has finished."""
        for event, state in self._events:
            self.event, self.live = event, state
            for fn in self.hooks.get(event, ()):
                fn(state)
            snapshot = self._record(event, state)
            if snapshot is not None:
                return snapshot
        self.done = True
        return None

    def __iter__(self) -> Iterator[StepState]:
        while (state := self.step()) is not None:
            yield state

    def result(self) -> list[Generation]:
        """Finish the run (if needed) and return what ``cola_core.generate.generate`` returns."""
        while self.step() is not None:
            pass
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
        elif event == "decoded":
            if traj is not None:
                traj.token_ids[b] = state.token_ids.clone()
            if self._keep_logits:
                self.extra[f"block.{b}.logits"] = state.logits
        return None
