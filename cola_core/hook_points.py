"""Hook points inside the models: named identity taps a caller can read or replace, per call.

Model code passes every activation through ``tap(point, x)``. Nobody listening (the normal case)
means ``tap`` is :data:`NO_TAP`, whose call returns ``x`` untouched: no parameters, no copies, the
outputs bit-identical. A caller listens for one call by activating a :class:`Taps` object::

    with tapping(my_taps):          # a per-call context (a ContextVar), never state on the modules
        model.dit(x, t, lengths)    # my_taps.see("dit.layer.0.resid_pre", x), ...

A name is ``{scope}.{model}[.{group}].{point}``: ``scope`` is set by the caller between model calls
(``block.3.step.7``), ``model`` is ``dit``, ``encode`` or ``decode``, and ``group`` names row ranges
of one forward (:func:`row_groups`; the sampler's cond rows [0, B) and uncond rows [B, 2B)). The
tables below list every point with its shape; :mod:`workbench.inside` builds on them.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch

from .errors import ColaError

# Shapes are written in these symbols: B rows of the call (per group), L latent rows queried, K key
# positions (the cached history, then the L rows), T tokens (L * patch_size), D model width, H heads,
# Hk key/value heads, hd head width, F MLP hidden width, C latent channels, V vocabulary.
DIT_LAYER_POINTS: dict[str, tuple[str, str]] = {
    "resid_pre": ("B L D", "residual stream entering the layer (layer 0: txt_in of the latents)"),
    "ada.shift_msa": ("B L D", "timestep modulation: shift before attention"),
    "ada.scale_msa": ("B L D", "timestep modulation: scale before attention"),
    "ada.gate_msa": ("B L D", "timestep modulation: gate on the attention output"),
    "attn_in": ("B L D", "LN(resid_pre) * (1 + scale_msa) + shift_msa"),
    "attn.q": ("B H L hd", "queries after q-norm and RoPE"),
    "attn.k": ("B H L hd", "keys of this call's rows after k-norm and RoPE (before joining the cache)"),
    "attn.v": ("B H L hd", "values of this call's rows"),
    "attn.pattern": ("B H L K", "softmax(q k^T / sqrt(hd) + mask); computed only when asked for"),
    "attn.z": ("B H L hd", "pattern @ v per head, before the output projection"),
    "attn_out": ("B L D", "gate_msa * proj_out(z): what attention adds to the residual"),
    "resid_mid": ("B L D", "resid_pre + attn_out"),
    "ada.shift_mlp": ("B L D", "timestep modulation: shift before the MLP"),
    "ada.scale_mlp": ("B L D", "timestep modulation: scale before the MLP"),
    "ada.gate_mlp": ("B L D", "timestep modulation: gate on the MLP output"),
    "mlp_in": ("B L D", "LN(resid_mid) * (1 + scale_mlp) + shift_mlp"),
    "mlp.hidden": ("B L F", "GELU(proj_in(mlp_in))"),
    "mlp_out": ("B L D", "gate_mlp * proj_out(hidden): what the MLP adds to the residual"),
    "resid_post": ("B L D", "resid_mid + mlp_out (= resid_pre of the next layer)"),
}
DIT_POINTS: dict[str, tuple[str, str]] = {
    "final.shift": ("B L D", "output modulation: shift"),
    "final.scale": ("B L D", "output modulation: scale"),
    "velocity": ("B L C", "the predicted velocity, txt_out(LN(resid) * (1 + scale) + shift)"),
}
VAE_LAYER_POINTS: dict[str, tuple[str, str]] = {
    "resid_pre": ("B L D", "residual stream entering the layer"),
    "norm_attn": ("B L D", "output of norm_attn: the residual carried past attention (post-norm, the release "
                           "layout) or the attention input (pre-norm)"),
    "attn.q": ("B H L hd", "queries after q-norm and RoPE"),
    "attn.k": ("B Hk L hd", "keys of this call's rows after k-norm and RoPE (before joining the cache)"),
    "attn.v": ("B Hk L hd", "values of this call's rows"),
    "attn.pattern": ("B H L K", "softmax(q k^T / sqrt(hd) + mask); computed only when asked for"),
    "attn.z": ("B H L hd", "pattern @ v per head, before the output projection"),
    "attn_out": ("B L D", "attn_out_proj(z): what attention adds"),
    "resid_mid": ("B L D", "norm_attn + attn_out (post-norm) or resid_pre + attn_out (pre-norm)"),
    "mlp.hidden": ("B L F", "the activated FFN hidden layer (SwiGLU: silu(gate) * up)"),
    "mlp_out": ("B L D", "what the FFN adds: norm_ffn(ffn(x)) (post-norm) or ffn(norm_ffn(x)) (pre-norm)"),
    "resid_post": ("B L D", "resid_mid + mlp_out (= resid_pre of the next layer)"),
}
ENCODE_POINTS: dict[str, tuple[str, str]] = {
    "embed": ("B T D", "token embeddings, before the patch embedder"),
    "mean": ("B L C", "posterior mean (VAE space)"),
    "logvar": ("B L C", "posterior log-variance (clamped)"),
}
DECODE_POINTS: dict[str, tuple[str, str]] = {
    "unpatched": ("B T D", "last layer's output unpatched to token rows, before the final norm"),
    "logits": ("B T V", "token logits"),
}


class Taps:
    """One call's listener on the hook points. Subclass and override :meth:`wants` and :meth:`see`.

    ``scope`` prefixes every name (None switches the taps off, e.g. between model calls);
    ``groups`` names row ranges of the current forward (set by :func:`row_groups`).
    """

    def __init__(self) -> None:
        self.scope: str | None = ""
        self.groups: tuple[tuple[str, slice], ...] = ()

    def under(self, prefix: str) -> bool:
        """False when no wanted name starts with ``prefix`` (then a whole forward skips its taps)."""
        return True

    def wants(self, name: str) -> bool:
        """Whether the point ``name`` should be shown to :meth:`see` (costly points are computed only then)."""
        return True

    def see(self, name: str, x: torch.Tensor) -> torch.Tensor | None:
        """Look at an activation; return a replacement of the same shape, or None to keep it."""
        return None


_ACTIVE: ContextVar[Taps | None] = ContextVar("cola_core_taps", default=None)


@contextlib.contextmanager
def tapping(taps: Taps) -> Iterator[Taps]:
    """Activate ``taps`` for the model calls made inside the ``with`` body (this thread/task only)."""
    token = _ACTIVE.set(taps)
    try:
        yield taps
    finally:
        _ACTIVE.reset(token)


def listening() -> bool:
    """Whether a :class:`Taps` is active in this context (fast paths then run the eager, tapped forwards)."""
    return _ACTIVE.get() is not None


class row_groups(contextlib.AbstractContextManager):
    """Name row ranges of the forwards inside (``cond=slice(0, B), uncond=slice(B, 2B)``) when taps listen."""

    def __init__(self, **groups: slice):
        self.groups = tuple(groups.items())
        self.taps: Taps | None = None
        self.saved: tuple[tuple[str, slice], ...] = ()

    def __enter__(self) -> "row_groups":
        self.taps = _ACTIVE.get()
        if self.taps is not None:
            self.saved, self.taps.groups = self.taps.groups, self.groups
        return self

    def __exit__(self, *exc) -> None:
        if self.taps is not None:
            self.taps.groups = self.saved


class Tap:
    """The no-op tap every forward gets when nobody listens: returns activations untouched, wants nothing."""

    def __call__(self, point: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def wants(self, point: str) -> bool:
        return False

    def at(self, sub: str) -> "Tap":
        return self


NO_TAP = Tap()


class ModelTap(Tap):
    """The tap of one forward: local point names -> full names, per row group, passed to the active Taps."""

    def __init__(self, taps: Taps, prefixes: list[tuple[str, slice | None]]):
        self.taps = taps
        self.prefixes = prefixes

    def at(self, sub: str) -> "ModelTap":
        """The tap of a sub-module (``layer.3``)."""
        return ModelTap(self.taps, [(f"{p}.{sub}", rows) for p, rows in self.prefixes])

    def wants(self, point: str) -> bool:
        return any(self.taps.wants(f"{p}.{point}") for p, _ in self.prefixes)

    def __call__(self, point: str, x: torch.Tensor) -> torch.Tensor:
        out = x
        for prefix, rows in self.prefixes:
            name = f"{prefix}.{point}"
            if not self.taps.wants(name):
                continue
            part = x if rows is None else x[rows]
            new = self.taps.see(name, part)
            if new is None or new is part:
                continue
            if new.shape != part.shape:
                raise ColaError(f"replacement for {name} has shape {tuple(new.shape)}; the activation there "
                                f"is {tuple(part.shape)}")
            new = new.to(device=x.device, dtype=x.dtype)
            if rows is None:
                out = new
            else:
                out = out.clone() if out is x else out
                out[rows] = new
        return out


def model_taps(model: str) -> Tap:
    """The tap for one forward of ``model`` (``dit``, ``encode``, ``decode``): :data:`NO_TAP` unless a
    :class:`Taps` listens and wants something under this forward's names."""
    taps = _ACTIVE.get()
    if taps is None or taps.scope is None:
        return NO_TAP
    base = f"{taps.scope}.{model}" if taps.scope else model
    prefixes = [(f"{base}.{g}", rows) for g, rows in taps.groups] if taps.groups else [(base, None)]
    prefixes = [(p, rows) for p, rows in prefixes if taps.under(p)]
    return ModelTap(taps, prefixes) if prefixes else NO_TAP
