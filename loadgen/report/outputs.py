"""A run's output files, in turn: ``report.json``, ``summary.txt``, ``report.html``.

The one module that imports :mod:`loadgen.report.html` (the plots are only needed when writing), so the
report itself never depends on the page that draws it.
"""

from __future__ import annotations

from pathlib import Path

from loadgen.report.build import Report
from loadgen.report.files import write_json, write_text

__all__ = ["write_outputs"]


def write_outputs(out_dir: Path, report: Report) -> None:
    """``report.json``, ``summary.txt`` and ``report.html``; ``requests.jsonl`` was written during the run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report.data.setdefault("files", {})
    report.data["files"].update({
        "report": "report.json", "summary": "summary.txt", "requests": "requests.jsonl",
        "html": "report.html",
    })
    write_json(out_dir / "report.json", report.data)
    write_text(out_dir / "summary.txt", report.summary_text)
    from loadgen.report.html import write_run_html  # the plots (numpy, svgplot) only when writing

    write_run_html(out_dir)
