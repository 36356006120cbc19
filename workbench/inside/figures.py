"""Plotly figures of single activations (explicit heights, for notebooks and the app)."""
from __future__ import annotations

import torch

from ..errors import WorkbenchError


def attention_figure(pattern: torch.Tensor, title: str = "attention pattern", sample: int = 0, height: int = 320):
    """One heatmap per head of an ``attn.pattern`` (B, H, L, K): query rows against key positions."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    if pattern.dim() != 4:
        raise WorkbenchError(f"an attention pattern is (B, H, L, K); got shape {tuple(pattern.shape)}")
    if not 0 <= sample < pattern.shape[0]:
        raise WorkbenchError(f"sample {sample} out of range: the pattern has {pattern.shape[0]} rows")
    heads = pattern.shape[1]
    fig = make_subplots(rows=1, cols=heads, subplot_titles=[f"head {h}" for h in range(heads)], shared_yaxes=True)
    for h in range(heads):
        fig.add_trace(go.Heatmap(z=pattern[sample, h].float().cpu().tolist(), zmin=0, zmax=1, coloraxis="coloraxis"),
                      row=1, col=h + 1)
        fig.update_xaxes(title_text="key position", row=1, col=h + 1)
    fig.update_yaxes(title_text="query row", autorange="reversed", row=1, col=1)
    fig.update_layout(height=height, title=title, coloraxis={"colorscale": "Viridis"})
    return fig
