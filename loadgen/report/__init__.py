"""OUTPUTS: report.json, summary.txt, the console view and the self-contained HTML."""
