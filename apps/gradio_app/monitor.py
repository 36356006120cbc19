"""The off-manifold monitor as the tabs show it: latent norms over the encoded data's norm, and a flag.

High guidance pushes generated latents away from where the encoder puts text, and the decoder then
reads latents it never saw. The numbers are the workbench's (``Trajectory.norm_records``,
``wb.data_norm()``, the guidance sweep's ``norm_ratio`` / ``block_norms``); a ratio above
``OFF_MANIFOLD_RATIO`` is flagged in red, and the flag is also written out in words. Blocks a sample
generated after its EOS are drawn grey: they are not part of its text, and no flag counts them.
"""
from __future__ import annotations

import plotly.graph_objects as go

from workbench import OFF_MANIFOLD_RATIO

HEIGHT = 360
ON, OFF, PAST_EOS = "#1f77b4", "#d62728", "#c7c7c7"


def flag(blocks: list[int], worst: float, what: str = "block") -> str:
    """The flag in words (Markdown), or "" when nothing is off the manifold."""
    if not blocks:
        return ""
    listed = ", ".join(map(str, blocks[:12])) + (", …" if len(blocks) > 12 else "")
    many = len(blocks) > 1
    return (f"⚠ **Off-manifold**: {what}{'s' if many else ''} {listed} reach{'' if many else 'es'} up to "
            f"{worst:.2f}× the encoded data's latent norm (flagged above {OFF_MANIFOLD_RATIO:g}×)")


def completion_flag(records: list[dict]) -> str:
    """The flag of one sample's monitor records (``Trajectory.norm_records``), over the blocks of its text."""
    off = [r for r in records if r["off_manifold"] and not r["after_eos"]]
    return flag([r["block"] for r in off], max((r["ratio"] for r in off), default=0.0))


def reference_lines(fig: go.Figure, outside: bool = False, **where) -> None:
    """The encoded data's norm (ratio 1) and the off-manifold threshold, as horizontal lines labelled inside the
    plot's right end, or ``outside`` it (the figure then needs a right margin)."""
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888", annotation_text="encoded data",
                  annotation_position="right" if outside else "bottom right", **where)
    fig.add_hline(y=OFF_MANIFOLD_RATIO, line_dash="dash", line_color=OFF,
                  annotation_text=f"off-manifold: {OFF_MANIFOLD_RATIO:g}×",
                  annotation_position="right" if outside else "top right", **where)


def blocks_figure(records: list[dict], data_norm: float, highlight: int | None = None) -> go.Figure:
    """One sample's blocks: latent norm / encoded-data norm as bars (red above the threshold, grey past EOS)."""
    fig = go.Figure(go.Bar(
        x=[r["block"] for r in records], y=[r["ratio"] for r in records],
        marker=dict(color=[PAST_EOS if r["after_eos"] else OFF if r["off_manifold"] else ON for r in records],
                    pattern=dict(shape=["/" if r["after_eos"] else "" for r in records]),
                    line=dict(width=[3 if r["block"] == highlight else 0 for r in records], color="#000")),
        customdata=[[r["norm"], " (after EOS: not part of the text)" if r["after_eos"] else ""] for r in records],
        hovertemplate=f"block %{{x}}: norm %{{customdata[0]:.2f}} = %{{y:.2f}}× the data's {data_norm:.2f}"
                      f"%{{customdata[1]}}<extra></extra>", showlegend=False))
    for name, colour, hatch in (("on the manifold", ON, ""), ("off-manifold", OFF, ""),
                                ("after EOS (not part of the text)", PAST_EOS, "/")):
        fig.add_trace(go.Bar(x=[None], y=[None], name=name, marker=dict(color=colour, pattern=dict(shape=hatch))))
    reference_lines(fig, outside=True)
    words = completion_flag(records).replace("**", "")
    fig.update_layout(height=HEIGHT, title=words or "Off-manifold monitor: latent norm per block / encoded data's norm",
                      title_font=dict(color=OFF if words else None, size=13), xaxis_title="block",
                      yaxis=dict(title="norm ratio", rangemode="tozero"), xaxis=dict(dtick=1),
                      legend=dict(orientation="h", y=-0.3), margin=dict(l=50, r=120, t=50, b=40))
    return fig
