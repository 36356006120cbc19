"""A steppable view of cola_core's one sampler loop: hooks, step snapshots, trajectories.

``SamplerSession`` drives :meth:`cola_core.generate.BlockwiseSampler.events` (it never re-implements
the loop), runs the registered hooks at each event, and turns the events of one solver step into a
:class:`~workbench.trajectory.StepState`. With no hooks it produces exactly what
``cola_core.generate.generate`` produces.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import torch

from cola_core.generate import BlockwiseSampler, Generation, GenerationConfig, SamplerState
from cola_core.sampler import guided_velocity, predicted_clean

from .hooks import HookFn
from .trajectory import StepState, Trajectory

if TYPE_CHECKING:
    from .session import Workbench


class SamplerSession:
    """One generation run. Iterate it (one :class:`StepState` per solver step), call :meth:`step`,
    or :meth:`result`. Yielded states are snapshots; to steer between steps edit ``session.live``
    (the loop's own state, e.g. ``session.live.z``) before the next ``step()``."""

    def __init__(self, wb: "Workbench", prompts: Sequence[str], config: GenerationConfig,
                 sample_ids: Sequence[int] | None, hooks: dict[str, list[HookFn]], preview: bool = False,
                 record: bool = False, keep: Callable[[str], bool] | None = None):
        self.wb = wb
        self.sampler = BlockwiseSampler(wb.model, prompts, config, sample_ids)
        self.config = self.sampler.config
        self.hooks = hooks
        self.preview = preview
        self.trajectory = Trajectory(prompts=list(prompts), sample_ids=list(self.sampler.sample_ids),
                                     config=dict(self.config.__dict__), fingerprint=wb.model.fingerprint
                                     ) if record else None
        self.extra: dict[str, torch.Tensor] = {}   # logits kept by run_with_cache when named
        self._keep_logits = keep is not None and any(keep(f"block.{b}.logits") for b in range(self.num_blocks))
        self._events = self.sampler.events()
        self._pending: StepState | None = None
        self.live: SamplerState | None = None
        self.event: str | None = None
        self.done = False

    @property
    def num_blocks(self) -> int:
        return self.sampler.num_blocks

    def free_rows(self, state: SamplerState) -> torch.Tensor:
        """(B, bs) bool: rows being generated (False for prompt rows pinned in block 0)."""
        pinned = self.sampler.prepared.pinned.to(state.z.device)
        return ~pinned if state.block == 0 else torch.ones_like(pinned)

    # -- driving the loop --------------------------------------------------------------------------
    def step(self) -> StepState | None:
        """Run to the end of the next solver step; None once generation has finished."""
        for event, state in self._events:
            self.event, self.live = event, state
            self._run_hooks(event, state)
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

    def _run_hooks(self, event: str, state: SamplerState) -> None:
        fns = self.hooks.get(event)
        if not fns:
            return
        if event != "guidance":
            for fn in fns:
                fn(state, self)
            return
        before = (state.guidance.clone(), state.v_cond, state.v_uncond, state.v_guided)
        for fn in fns:
            fn(state, self)
        # A hook that changed the scale or a velocity but not v_guided gets v_guided recombined.
        changed = (not torch.equal(state.guidance, before[0]) or state.v_cond is not before[1]
                   or state.v_uncond is not before[2])
        if changed and state.v_guided is before[3]:
            scale = state.guidance.to(state.v_cond.dtype)[:, None, None]
            state.v_guided = guided_velocity(state.v_cond, state.v_uncond, scale)

    # -- snapshots ---------------------------------------------------------------------------------
    def _record(self, event: str, state: SamplerState) -> StepState | None:
        traj, b = self.trajectory, state.block
        if event == "pre_model":
            if state.stage == 0:
                self._pending = StepState(block=b, step=state.step, t=state.t, t_next=state.t_next, dt=state.dt,
                                          guidance=state.guidance, z=state.z.clone(), v_cond=None,
                                          v_uncond=None, v_guided=None, x0_pred=None)
            else:
                self._pending.stages.append({"t": state.t, "z": state.z.clone()})
        elif event == "guidance":
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
                snapshot.preview = self.wb.greedy_texts(snapshot.x0_pred)
            if traj is not None:
                traj.steps.append(snapshot)
            return snapshot
        elif traj is not None and event == "block_start":
            traj.z_init[b] = state.z.clone()
        elif traj is not None and event == "block_end":
            traj.z_final[b] = state.z.clone()
        elif event == "decoded":
            if traj is not None:
                traj.token_ids[b] = state.token_ids.clone()
            if self._keep_logits:
                self.extra[f"block.{b}.logits"] = state.logits
        return None
