"""Self-contained HTML reports: ``report.html`` for a run, ``sweep.html`` for a sweep.

The pages open offline: CSS and a few lines of JavaScript (``static/``, package data) are inline, every
plot is an inline SVG drawn by :mod:`loadgen.report.html.svgplot`, and nothing refers to a network
resource (the target's URL appears as text only). Every string that came from a report (model names,
URLs, error messages, server arguments) is escaped.

Each plot sits in ``<figure data-plot="NAME" data-points="N">`` where N is the number of data points
drawn. A small inline script (``static/measure.js``) measures every plot once the page is laid out and
writes what the browser actually drew into ``data-rendered`` (JSON: ``width``, ``height``, ``marks``,
``lines``, ``points``; the reference lines as ``refs`` ``[{label, drawn}]``, the visible ``legend``
entries, ``xlabel`` and ``ylabel``), so a headless browser's ``--dump-dom`` shows whether each plot
rendered with data.

Modules::

    page.py     escaping, number cells, tables, figures, the page shell (reads static/)
    run.py      report.html: header, tables, server and GPU sections   render_run_html, write_run_html
    figures.py  report.html's record-based figures, one function each   RUN_FIGURES
    sweep.py    sweep.html: curves, goodput, Pareto frontier, knees, table
                                                         render_sweep_html, write_sweep_html
    svgplot.py  inline-SVG charts
"""

from loadgen.report.html.figures import RUN_FIGURES
from loadgen.report.html.run import (
    MAX_PLOTTED_REQUESTS,
    RUN_OPTIONAL_FIGURES,
    render_run_html,
    write_run_html,
)
from loadgen.report.html.sweep import SWEEP_FIGURES, pareto_frontier, render_sweep_html, write_sweep_html

__all__ = [
    "MAX_PLOTTED_REQUESTS",
    "RUN_FIGURES",
    "RUN_OPTIONAL_FIGURES",
    "SWEEP_FIGURES",
    "pareto_frontier",
    "render_run_html",
    "render_sweep_html",
    "write_run_html",
    "write_sweep_html",
]
