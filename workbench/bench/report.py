"""The bench ``report.html``: per-task accuracy bars with 95 % intervals, a second summary side by side."""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from ..io import write_text_atomic

COLORS = ("#1f77b4", "#ff7f0e")
HEIGHT = 460


def _label(summary: dict[str, Any]) -> str:
    protocol = f" ({summary['protocol']})" if summary.get("protocol") else ""
    return f"{summary.get('name') or 'summary'}{protocol}"


def accuracy_figure(summary: dict[str, Any], other: dict[str, Any] | None = None) -> go.Figure:
    """Grouped bars: accuracy per task (and the average) of each summary, error bars = 95 % Wilson interval."""
    fig = go.Figure()
    for color, s in zip(COLORS, [summary] + ([other] if other else [])):
        tasks = list(s["tasks"])
        acc = [s["tasks"][t]["accuracy"] for t in tasks]
        low = [a - s["tasks"][t]["ci95"][0] for t, a in zip(tasks, acc)]
        high = [s["tasks"][t]["ci95"][1] - a for t, a in zip(tasks, acc)]
        if s.get("tasks_average") is not None:
            tasks, acc, low, high = tasks + ["average"], acc + [s["tasks_average"]], low + [0], high + [0]
        fig.add_trace(go.Bar(x=tasks, y=acc, name=_label(s), marker_color=color,
                             text=[f"{a:.2f}" for a in acc], textposition="outside",
                             error_y=dict(type="data", symmetric=False, array=high, arrayminus=low)))
    fig.update_layout(barmode="group", height=HEIGHT, yaxis_title="accuracy (%)",
                      title="Accuracy per task (error bars: 95 % Wilson interval)")
    return fig


def _table(summaries: list[dict[str, Any]]) -> str:
    tasks = list(dict.fromkeys(t for s in summaries for t in s["tasks"]))
    head = "".join(f"<th>{html.escape(_label(s))}</th>" for s in summaries)
    rows = []
    for task in tasks:
        cells = []
        for s in summaries:
            r = s["tasks"].get(task)
            cells.append(f"<td>{r['accuracy']:.2f} ({r['correct']}/{r['total']}; "
                         f"{r['ci95'][0]:.1f}–{r['ci95'][1]:.1f})</td>" if r else "<td></td>")
        rows.append(f"<tr><td>{task}</td>{''.join(cells)}</tr>")
    average = "".join(f"<td>{s['tasks_average']:.2f}</td>" if s.get("tasks_average") is not None else "<td></td>"
                      for s in summaries)
    rows.append(f"<tr><th>tasks_average</th>{average}</tr>")
    return f"<table><tr><th>task</th>{head}</tr>{''.join(rows)}</table>"


def write_report(path: Path, summary: dict[str, Any], other: dict[str, Any] | None = None) -> Path:
    """A self-contained page (plotly.js inlined): bars, table, and the run's setup when there is one."""
    summaries = [summary] + ([other] if other else [])
    figure = accuracy_figure(summary, other).to_html(full_html=False, include_plotlyjs=True, div_id="accuracy")
    setup = json.dumps({"protocol": summary.get("protocol"), "run": summary.get("run")}, indent=1,
                       ensure_ascii=False)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>bench: {html.escape(_label(summary))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>Benchmark: {html.escape(_label(summary))}</h1>
{figure}
<h2>Accuracy (correct/total; 95 % interval)</h2>{_table(summaries)}
<details><summary>setup</summary><pre>{html.escape(setup)}</pre></details>
</body></html>
"""
    write_text_atomic(path, page)
    return path
