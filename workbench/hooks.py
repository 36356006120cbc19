"""Hook points on the sampler loop, per-call and scoped registration, and ready-made callbacks.

A hook is ``fn(state)``: ``state`` is the loop's live :class:`cola_core.generate.SamplerState`, which
carries everything a hook needs (block, step and ``steps``, ``t``/``dt``, ``z``, the velocities, the
``free`` row mask, ``decode_preview``). Replace its tensors (``z``, ``guidance``, ``v_cond``,
``v_uncond``, ``v_guided``, ``token_ids``) rather than editing them in place — step snapshots keep
references — or set ``interrupt = True`` to stop.

Hook points (the events of cola_core's one sampler loop, in order):

===============  ====================================================================
block_start      new block: ``z`` is its initial noise (pinned prompt rows already set)
pre_model        before each model evaluation (per solver stage): steer ``z``, set ``guidance``
guidance         after the cond/uncond passes, before the loop combines them: edit ``v_cond``,
                 ``v_uncond`` or ``guidance`` and ``v_guided`` follows
guided           after the combine: edit ``v_guided`` itself
post_update      after each solver step: ``z`` is the latent at ``t_next``
block_end        the block's final latent, before decoding
decoded          ``logits`` and chosen ``token_ids`` of the block (edit them here)
===============  ====================================================================

Pass hooks per call (``wb.generate(prompts, hooks=[guidance_ramp(1, 7)])`` or
``hooks={"post_update": fn}``) or register them for a scope (``with wb.hooks(...)``). A run with
hooks (or a cache/patch listener) makes its model calls eagerly; one without takes cola_core's fast
path (``cola_core.static_prior``: static KV cache, CUDA graphs), with the same tokens.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import torch

from cola_core.generate import EVENTS, SamplerState

from .errors import WorkbenchError

HOOK_POINTS = EVENTS
HookFn = Callable[[SamplerState], None]


@dataclass(frozen=True)
class Callback:
    """A hook function bound to its hook point (what the ready-made callbacks return)."""

    event: str
    fn: HookFn
    name: str = "callback"

    def __call__(self, state: SamplerState) -> None:
        self.fn(state)


Hooks = Callback | Iterable[Callback] | Mapping[str, HookFn | Sequence[HookFn]] | None


def check_hook(event: str, fn: object) -> None:
    """Raise WorkbenchError for an unknown hook point or a function that is not callable."""
    if event not in HOOK_POINTS:
        raise WorkbenchError(f"unknown hook point {event!r}; valid hook points: {', '.join(HOOK_POINTS)}")
    if not callable(fn):
        raise WorkbenchError(f"hook for {event!r} is not callable: {fn!r}")


def hook_pairs(hooks: Hooks) -> list[tuple[str, HookFn]]:
    """(hook point, fn) in order from Callbacks or a ``{hook point: fn or [fns]}`` mapping, all checked."""
    if hooks is None:
        return []
    if isinstance(hooks, Mapping):
        pairs = [(event, fn) for event, fns in hooks.items()
                 for fn in (fns if isinstance(fns, (list, tuple)) else [fns])]
    else:
        items = [hooks] if isinstance(hooks, Callback) or callable(hooks) else hooks
        if not isinstance(items, Iterable) or not all(isinstance(cb, Callback) for cb in items):
            raise WorkbenchError(f"hooks must be Callback objects (from workbench.hooks) or a {{hook point: fn}} "
                                 f"mapping, e.g. hooks={{'guidance': fn}}; got {hooks!r}")
        pairs = [(cb.event, cb) for cb in items]
    for event, fn in pairs:
        check_hook(event, fn)
    return pairs


@dataclass(frozen=True)
class HookHandle:
    """Returned by :meth:`HookRegistry.add`; ``remove()`` takes exactly that registration away."""

    registry: "HookRegistry"
    key: int
    event: str

    def remove(self) -> None:
        self.registry.remove(self)


class HookRegistry:
    """Hooks in registration order per hook point; each registration is removable on its own."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[str, HookFn]] = {}
        self._keys = itertools.count()

    def add(self, event: str, fn: HookFn) -> HookHandle:
        check_hook(event, fn)
        key = next(self._keys)
        self._entries[key] = (event, fn)
        return HookHandle(self, key, event)

    def remove(self, handle: HookHandle) -> None:
        self._entries.pop(handle.key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def snapshot(self, per_call: Hooks = None) -> dict[str, list[HookFn]]:
        """Hook point -> functions, frozen now: registered ones, then ``per_call`` (a running session
        is unaffected by later registrations)."""
        out: dict[str, list[HookFn]] = {}
        for event, fn in [*self._entries.values(), *hook_pairs(per_call)]:
            out.setdefault(event, []).append(fn)
        return out

    @contextlib.contextmanager
    def scoped(self, *callbacks: Callback, **by_point: HookFn | Sequence[HookFn]) -> Iterator[list[HookHandle]]:
        """Register for the ``with`` body; on exit (even on error) remove exactly these registrations."""
        pending = hook_pairs(list(callbacks)) + hook_pairs(by_point)   # everything checked before registering
        handles: list[HookHandle] = []
        try:
            for event, fn in pending:
                handles.append(self.add(event, fn))
            yield handles
        finally:
            for handle in handles:
                handle.remove()


# -- ready-made callbacks -----------------------------------------------------------------------
def _set_guidance(state: SamplerState, value: float) -> None:
    state.guidance = torch.full_like(state.guidance, float(value))


def guidance_schedule(schedule: float | Sequence[float] | Callable[[int, int], float]) -> Callback:
    """Guidance per solver step: a constant, a per-step list (one value per step), or ``f(step, steps)``."""
    if callable(schedule):
        value_at = schedule
    elif isinstance(schedule, (int, float)):
        value_at = lambda step, steps: float(schedule)   # noqa: E731
    else:
        values = [float(v) for v in schedule]

        def value_at(step: int, steps: int) -> float:
            if len(values) != steps:
                raise WorkbenchError(f"guidance schedule has {len(values)} values but the sampler runs {steps} steps")
            return values[step]

    def hook(state: SamplerState) -> None:
        _set_guidance(state, value_at(state.step, state.steps))

    return Callback("pre_model", hook, "guidance_schedule")


def guidance_ramp(start: float, end: float) -> Callback:
    """Guidance moving linearly from ``start`` (first step) to ``end`` (last step) in every block."""
    return guidance_schedule(lambda step, steps: start + (end - start) * (step / max(steps - 1, 1)))


def guidance_cutoff(ratio: float, after: float = 1.0) -> Callback:
    """Keep the configured guidance for the first ``ratio`` of the steps, then use ``after``
    (1.0 = the plain conditional velocity)."""
    if not 0.0 <= ratio <= 1.0:
        raise WorkbenchError(f"guidance cut-off ratio must be in [0, 1], got {ratio!r}")

    def hook(state: SamplerState) -> None:
        if state.step >= ratio * state.steps:
            _set_guidance(state, after)

    return Callback("pre_model", hook, "guidance_cutoff")


def clamp_latents(limit: float) -> Callback:
    """After every step clamp generated rows of ``z`` to [-limit, limit] (prompt rows untouched)."""
    if not limit > 0:
        raise WorkbenchError(f"clamp limit must be > 0, got {limit!r}")

    def hook(state: SamplerState) -> None:
        state.z = torch.where(state.free[..., None], state.z.clamp(-limit, limit), state.z)

    return Callback("post_update", hook, "clamp_latents")


def steer(direction: torch.Tensor, strength: float) -> Callback:
    """Push generated rows along ``direction`` ((C,), (bs, C) or (B, bs, C)): ``strength * dt`` per
    step, so a whole block moves by ``strength * direction`` in total."""
    direction = torch.as_tensor(direction, dtype=torch.float32)

    def hook(state: SamplerState) -> None:
        if state.stage != 0:
            return
        if direction.shape[-1] != state.z.shape[-1]:
            raise WorkbenchError(f"steer direction has {direction.shape[-1]} channels, "
                                 f"latents have {state.z.shape[-1]}")
        push = strength * state.dt * direction.to(state.z.device)
        state.z = torch.where(state.free[..., None], state.z + push, state.z)

    return Callback("pre_model", hook, "steer")
