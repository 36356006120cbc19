"""Plotly figures shared by the tabs; every figure sets its height explicitly."""
from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch

from workbench.projection import Projection

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#7f7f7f")
HEIGHT = 420
PROJECTION_HEIGHT = 560


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def empty_figure(message: str, height: int = HEIGHT) -> go.Figure:
    """A blank figure carrying a message (before anything has run)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#666"))
    fig.update_layout(height=height, xaxis_visible=False, yaxis_visible=False, margin=dict(l=20, r=20, t=40, b=20))
    return fig


@dataclass
class Overlay:
    """Latents drawn over the backdrop: ``latents`` (M, C) one path or (P, M, C) P paths."""

    name: str
    latents: torch.Tensor
    color: str
    mode: str = "lines"
    size: int = 4
    symbol: str = "circle"
    dash: str | None = None
    hover: list[str] | None = None   # one label per point of the flattened paths
    group: str | None = None         # legend group (click one entry to hide the group)
    legend: bool = True              # show an entry in the legend


def _with_gaps(xy: torch.Tensor) -> list[list[float | None]]:
    """(P, M, k) -> per axis one list with None between paths (one plotly trace, P separate lines)."""
    axes: list[list[float | None]] = [[] for _ in range(xy.shape[-1])]
    for path in xy:
        for a in range(xy.shape[-1]):
            axes[a] += path[:, a].tolist() + [None]
    return axes


def projection_figure(proj: Projection, overlays: list[Overlay], dims: int, title: str,
                      height: int = PROJECTION_HEIGHT, max_backdrop: int = 3000) -> go.Figure:
    """Backdrop of corpus latents (grey) with overlays, in 2-D or 3-D (the projection's first components)."""
    dims = 3 if dims == 3 and proj.n_components >= 3 else 2
    ref = proj.coords[:, :dims]
    if len(ref) > max_backdrop:
        ref = ref[torch.linspace(0, len(ref) - 1, max_backdrop).long()]
    three = dims == 3
    scatter = go.Scatter3d if three else go.Scatter   # SVG in 2-D: works without WebGL
    fig = go.Figure()
    backdrop = dict(x=ref[:, 0].tolist(), y=ref[:, 1].tolist(), mode="markers", name="corpus latents",
                    hoverinfo="skip", marker=dict(size=2 if three else 4, color="#b8b8b8", opacity=0.5))
    if three:
        backdrop["z"] = ref[:, 2].tolist()
    fig.add_trace(scatter(**backdrop))
    for ov in overlays:
        lat = ov.latents.float()
        paths = lat[None] if lat.dim() == 2 else lat
        xy = proj.transform(paths)[..., :dims]
        axes = _with_gaps(xy)
        trace = dict(x=axes[0], y=axes[1], mode=ov.mode, name=ov.name, legendgroup=ov.group, showlegend=ov.legend,
                     marker=dict(size=ov.size, color=ov.color, symbol=ov.symbol),
                     line=dict(color=ov.color, width=2 if three else 1.5, **({"dash": ov.dash} if ov.dash else {})))
        if three:
            trace["z"] = axes[2]
            if ov.symbol not in ("circle", "circle-open", "cross", "diamond", "diamond-open", "square",
                                 "square-open", "x"):
                trace["marker"]["symbol"] = "diamond"
        if ov.hover is not None:
            labels = []
            per = xy.shape[1]
            for p in range(xy.shape[0]):
                labels += ov.hover[p * per:(p + 1) * per] + [""]
            trace["text"], trace["hoverinfo"] = labels, "text+name"
        fig.add_trace((go.Scatter3d if three else go.Scatter)(**trace))
    names = [f"{proj.method.upper()} {i + 1}" for i in range(dims)]
    if three:
        fig.update_layout(scene=dict(xaxis_title=names[0], yaxis_title=names[1], zaxis_title=names[2]))
    else:
        fig.update_layout(xaxis_title=names[0], yaxis_title=names[1])
    fig.update_layout(height=height, title=title, legend=dict(orientation="h", y=-0.12),
                      margin=dict(l=40, r=20, t=60, b=40))
    return fig
