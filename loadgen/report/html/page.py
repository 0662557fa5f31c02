"""The page around every report: escaping, number cells, tables, figures and the page shell.

The shell inlines ``static/report.css`` and ``static/measure.js`` (package data), so a page opens
offline and refers to no network resource. ``measure.js`` measures every plot once the page is laid out
and writes what the browser drew into the figure's ``data-rendered`` (see :mod:`loadgen.report.html`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from importlib.resources import files
from typing import Any

from loadgen.report.html.svgplot import Chart

__all__ = ["cell", "esc", "figure_html", "is_num", "log_if_wide", "page_html", "table_html"]

_STATIC = files(__package__).joinpath("static")
_CSS = _STATIC.joinpath("report.css").read_text(encoding="utf-8")
# Measures what the browser drew; runs once, after layout, offline.
_MEASURE_JS = _STATIC.joinpath("measure.js").read_text(encoding="utf-8")


def esc(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def cell(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return esc(v)


def table_html(headers: Sequence[str], rows: Iterable[Sequence[str]], *, left: int = 1,
                row_classes: Sequence[str] | None = None) -> str:
    """``rows`` hold HTML already escaped; the first ``left`` columns are left-aligned."""
    head = "".join(f"<th class='{'l' if i < left else ''}'>{esc(h)}</th>" for i, h in enumerate(headers))
    body = []
    for k, row in enumerate(rows):
        cls = f" class='{row_classes[k]}'" if row_classes and row_classes[k] else ""
        cells = "".join(f"<td class='{'l' if i < left else ''}'>{c}</td>" for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_html(name: str, chart: Chart, caption: str = "") -> str:
    chart.key = name
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f"<figure data-plot='{esc(name)}' data-points='{chart.points}'>{chart.svg()}{cap}</figure>"


def page_html(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{_MEASURE_JS}</script>\n</body></html>\n"
    )


def log_if_wide(values: Iterable[float], ratio: float = 10.0) -> bool:
    v = [x for x in values if x is not None and math.isfinite(x) and x > 0]
    return bool(v) and max(v) / min(v) > ratio


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

