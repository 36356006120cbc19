"""One call's listener: record the names a filter keeps, replace the names a patch names, as they happen.

:class:`CallTaps` is a :class:`cola_core.hook_points.Taps` for the points inside the models and a
sampler-event handler for the sampler-level names, so a cache holds exactly the tensors asked for,
copied at the moment they are produced (peak memory follows the selection), and a patch lands
where the tensor is made, before anything downstream reads it.
"""
from __future__ import annotations

import warnings
from typing import Callable, Mapping

import torch

from cola_core.generate import SamplerState
from cola_core.hook_points import Taps

from ..errors import WorkbenchError
from .names import BLOCK_SPECS, SAMPLER_SPECS, NamesFilter, RunNames, is_glob, names_predicate

PatchValue = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
# Sampler-level names a patch may replace, the event where the loop's state holds them, and the state field.
PATCH_EVENTS = {"z_init": ("block_start", "z"), "z": ("pre_model", "z"), "guidance": ("guidance", "guidance"),
                "v_cond": ("guidance", "v_cond"), "v_uncond": ("guidance", "v_uncond"),
                "v_guided": ("guided", "v_guided"), "z_next": ("post_update", "z"), "z_final": ("block_end", "z"),
                "token_ids": ("decoded", "token_ids")}
# Sampler-level names recorded at each event: name -> state field (dt and x0_pred are computed).
RECORD_EVENTS = {"block_start": {"z_init": "z", "after_eos": "ended"}, "pre_model": {"t": "t", "t_next": "t_next", "dt": "dt", "z": "z"},
                 "guided": {"guidance": "guidance", "v_cond": "v_cond", "v_uncond": "v_uncond",
                            "v_guided": "v_guided", "x0_pred": "x0_pred"},
                 "post_update": {"z_next": "z"}, "block_end": {"z_final": "z"},
                 "decoded": {"token_ids": "token_ids", "logits": "logits"}}


class ActivationCache(dict):
    """Tensors of one run by dotted name, each copied when it was produced, with where they came from."""

    def __init__(self, fingerprint: str, run: dict):
        super().__init__()
        self.fingerprint = fingerprint
        self.run = run   # provenance: prompts, sample ids, knobs, blocks, context latents per prompt

    def subset(self, names_filter: NamesFilter) -> "ActivationCache":
        """The tensors whose names match (same provenance), e.g. as a patch source."""
        keep = names_predicate(names_filter)
        out = ActivationCache(self.fingerprint, self.run)
        out.update({k: v for k, v in self.items() if keep(k)})
        if not out:
            raise WorkbenchError(f"no cached name matches {names_filter!r}; the cache holds e.g. "
                                 f"{next(iter(self), '')!r}")
        return out

    def stack(self, names_filter: NamesFilter) -> tuple[list[str], torch.Tensor]:
        """The matching tensors in natural order (``layer.2`` before ``layer.10``), stacked: (names, (N, ...))."""
        names = sorted(self.subset(names_filter), key=natural_key)
        shapes = {tuple(self[n].shape) for n in names}
        if len(shapes) > 1:
            raise WorkbenchError(f"cannot stack {names_filter!r}: the tensors have shapes {sorted(shapes)}")
        return names, torch.stack([self[n] for n in names])


def natural_key(name: str) -> tuple:
    """Sort key of a dotted name with its numbers compared as numbers."""
    return tuple((0, int(seg), "") if seg.isdigit() else (1, 0, seg) for seg in name.split("."))


def sampler_point(run: RunNames, name: str) -> str | None:
    """The field of a sampler-level name (``z``, ``v_cond``, ...), None for a point inside a model."""
    section, point = run.locate(name)
    return point if section.points in SAMPLER_SPECS else None


def resolve_patches(run: RunNames, patches: Mapping[str, PatchValue], fingerprint: str) -> dict[str, PatchValue]:
    """Concrete name -> replacement tensor or ``fn(x) -> x'``, checked against the run before it starts.

    A tensor replaces one name and must have its shape in this run; a function may take a glob
    (it runs on every patchable name the glob matches). A whole :class:`ActivationCache` patches every
    patchable name it holds.
    """
    source = getattr(patches, "fingerprint", fingerprint)
    if source != fingerprint:
        raise WorkbenchError(f"patch source was recorded on another checkpoint (fingerprint {source[:12]} != "
                             f"{fingerprint[:12]})")
    bulk = isinstance(patches, ActivationCache)   # a whole cache: its read-only names are skipped
    out: dict[str, PatchValue] = {}
    for key, value in patches.items():
        if isinstance(value, torch.Tensor):
            if is_glob(key):
                raise WorkbenchError(f"patch {key!r}: a tensor replaces one name, not a glob (use fn(x) -> x')")
            want = run.shape(key)
            if tuple(value.shape) != want:
                raise WorkbenchError(f"patch for {key} is shaped {tuple(value.shape)}, but in this run {key} is {want} "
                                     f"(another batch, prompt length or checkpoint?)")
            names = [key]
        elif callable(value):
            names = sorted(run.select(key, "patch"))
        else:
            raise WorkbenchError(f"patch {key!r} must be a tensor or fn(x) -> x', got {type(value).__name__}")
        for name in names:
            field = sampler_point(run, name)
            if field is not None and field not in PATCH_EVENTS:
                if not (is_glob(key) or bulk):
                    raise WorkbenchError(f"{name} is read-only (computed from other tensors); patchable sampler names: "
                                         f"{', '.join(PATCH_EVENTS)}")
                continue
            out[name] = value
    if patches and not out:
        raise WorkbenchError(f"patches {sorted(patches)} name no patchable tensor of this run")
    return out


class CallTaps(Taps):
    """Records the kept names into :attr:`cache` and applies the patches, inside the models and at sampler events."""

    @classmethod
    def build(cls, run: RunNames, keep: set[str], patches: Mapping[str, PatchValue] | None, fingerprint: str,
              to: str | torch.device | None = None, facts: dict | None = None) -> "CallTaps":
        """The listener of one call, everything checked (names, shapes, checkpoint, device) before the run."""
        resolved = resolve_patches(run, {} if patches is None else patches, fingerprint)
        if to is not None:
            try:
                torch.empty(0, device=to)
            except (RuntimeError, TypeError, AssertionError) as exc:
                raise WorkbenchError(f"cannot move cached tensors to {to!r}: {exc}") from None
        return cls(run, keep, resolved, ActivationCache(fingerprint, facts or {}), to)

    def __init__(self, run: RunNames, keep: set[str], patches: dict[str, PatchValue], cache: ActivationCache,
                 to: str | torch.device | None = None):
        super().__init__()
        self.keep, self.patches, self.cache = keep, patches, cache
        self.to = torch.device(to) if to is not None else None
        self.wanted = keep | set(patches)
        self.prefixes = run.sections_with(self.wanted)
        self.applied: set[str] = set()
        self.scope = "prefill"   # the first model calls of a sampler run write the prompt prefix

    # -- cola_core Taps -----------------------------------------------------------------------------
    def under(self, prefix: str) -> bool:
        return prefix in self.prefixes

    def wants(self, name: str) -> bool:
        return name in self.wanted

    def see(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        new = self._patched(name, x)
        if name in self.keep:
            self.store(name, x if new is None else new)
        return new

    def _patched(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        value = self.patches.get(name)
        if value is None:
            return None
        self.applied.add(name)
        new = value(x) if callable(value) else value
        if not isinstance(new, torch.Tensor) or new.shape != x.shape:
            got = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            raise WorkbenchError(f"patch for {name} gave {got}; the tensor there is {tuple(x.shape)}")
        return new.to(device=x.device, dtype=x.dtype)

    def store(self, name: str, x: torch.Tensor) -> None:
        if name in self.cache:
            raise WorkbenchError(f"{name} was produced twice in one run; cache one model call at a time")
        self.cache[name] = x.detach().to(device=self.to, copy=True) if self.to else x.detach().clone()

    def warn_unused(self) -> None:
        """Say when a patch never applied or the cache stayed empty: generation stopped (EOS) before them."""
        unused = sorted(set(self.patches) - self.applied)
        if unused:
            warnings.warn(f"{len(unused)} patch(es) never applied, e.g. {unused[0]}: generation stopped before "
                          f"them (stop_at_eos=False runs every block)", stacklevel=3)
        if self.keep and not self.cache:
            warnings.warn("the cache is empty: generation stopped before any matching tensor was produced "
                          "(stop_at_eos=False runs every block)", stacklevel=3)

    # -- sampler events -----------------------------------------------------------------------------
    def on_event(self, event: str, state: SamplerState) -> None:
        """Patch, then record, the sampler-level names of this event; set the scope of the next model calls."""
        for field, (at, attr) in PATCH_EVENTS.items():
            if at == event and (name := sampler_name(state, field, event)) in self.patches:
                setattr(state, attr, self._patched(name, getattr(state, attr)))
        for field, attr in RECORD_EVENTS.get(event, {}).items():
            if (name := sampler_name(state, field, event)) in self.keep:
                value = getattr(state, attr)
                self.store(name, torch.tensor(value) if field == "dt" else value)
        scopes = {"pre_model": step_scope(state), "block_end": f"block.{state.block}",
                  "decoded": f"block.{state.block}.commit"}
        self.scope = scopes.get(event)


def sampler_name(state: SamplerState, field: str, event: str) -> str:
    """The sampler-level name of ``field`` at ``event``: ``block.{b}.{field}`` or
    ``block.{b}.step.{s}[.stage.{k}].{field}`` (z_next belongs to the step, not to its last stage)."""
    if field in BLOCK_SPECS:
        return f"block.{state.block}.{field}"
    return f"{step_scope(state, staged=event != 'post_update')}.{field}"


def step_scope(state: SamplerState, staged: bool = True) -> str:
    """``block.{b}.step.{s}``, with ``.stage.{k}`` for a solver's later evaluations when ``staged``."""
    stage = f".stage.{state.stage}" if state.stage and staged else ""
    return f"block.{state.block}.step.{state.step}{stage}"
