"""Downloadable results: JSON (everything), CSV (one flat table) and a self-contained HTML page.

HTML pages inline plotly.js, so they open offline.
"""
from __future__ import annotations

import csv
import html
import json
import math
from pathlib import Path
from typing import Any, Iterable

import plotly.graph_objects as go


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(_jsonable(data), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_csv(path: Path, rows: Iterable[dict]) -> Path:
    """Rows as CSV; list values are written as JSON so every row stays one line."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v, ensure_ascii=False) if isinstance(v, (list, dict)) else v
                             for k, v in row.items()})
    return path


def write_html(path: Path, title: str, figures: list[go.Figure], summary: dict | None = None) -> Path:
    """One page: a heading, the summary as a definition list, then the figures (plotly.js inlined once)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    items = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in (summary or {}).items())
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif;margin:2em}dt{font-weight:bold}dd{margin:0 0 .5em 1em}</style>"
            f"</head><body><h1>{html.escape(title)}</h1><dl>{items}</dl>{''.join(parts)}</body></html>\n")
    path.write_text(page, encoding="utf-8")
    return path


def bundle(folder: Path, stem: str, data: Any, rows: list[dict], title: str, figures: list[go.Figure],
           summary: dict) -> list[str]:
    """Write ``stem.json``, ``stem.csv`` and ``stem.html`` into ``folder``; return their paths."""
    return [str(write_json(folder / f"{stem}.json", data)), str(write_csv(folder / f"{stem}.csv", rows)),
            str(write_html(folder / f"{stem}.html", title, figures, summary))]
