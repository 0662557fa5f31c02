"""The remote fleet in the outputs: ``fleet_energy`` (DCGM, direct or through Prometheus) and the
replicas of ``server_metrics``, as summary.txt lines, a console line and an HTML section."""

from __future__ import annotations

from html import escape
from typing import Any

__all__ = ["fleet_console_lines", "fleet_html", "fleet_summary_lines"]


def _num(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def fleet_summary_lines(data: dict[str, Any]) -> list[str]:
    """``key : value`` lines for summary.txt's Additional Stats (none when there is no fleet data)."""
    fe = data.get("fleet_energy")
    lines: list[str] = []
    if isinstance(fe, dict):
        lines += [
            f"Fleet GPU energy source : {fe.get('source')}",
            f"Fleet GPUs : {fe.get('gpu_count')}",
            f"Fleet GPU energy (J) : {_num(fe.get('energy_j'), '.2f')}",
            f"Fleet GPU energy method : {fe.get('energy_method') or 'n/a'}",
            f"Fleet GPU joules per output token : {_num(fe.get('joules_per_output_token'), '.6f')}",
            f"Fleet GPU output tokens per joule : {_num(fe.get('output_tokens_per_joule'), '.4f')}",
            f"Fleet GPU mean power (W) : {_num(fe.get('power_mean_w'), '.2f')}",
        ]
        if fe.get("note"):
            lines.append(f"Fleet GPU energy note : {fe['note']}")
    sm = data.get("server_metrics")
    if isinstance(sm, dict) and sm.get("replicas"):
        lines.append(f"Server replicas : {len(sm['replicas'])}")
    return lines


def fleet_console_lines(data: dict[str, Any]) -> list[str]:
    fe = data.get("fleet_energy")
    if not isinstance(fe, dict):
        return []
    return [f"fleet GPUs ({fe.get('source')}, {fe.get('gpu_count')}): {_num(fe.get('energy_j'), '.0f')} J, "
            f"{_num(fe.get('joules_per_output_token'), '.4f')} J/output token, "
            f"{_num(fe.get('output_tokens_per_joule'), '.2f')} output tokens/J, mean "
            f"{_num(fe.get('power_mean_w'), '.0f')} W"]


def fleet_html(data: dict[str, Any]) -> list[str]:
    """``<h2>Fleet</h2>``: energy per GPU and in all, and per-replica token deltas."""
    fe, sm = data.get("fleet_energy"), data.get("server_metrics")
    replicas = sm.get("replicas") if isinstance(sm, dict) else None
    if not isinstance(fe, dict) and not replicas:
        return []
    out = ["<h2>Fleet</h2>"]
    if isinstance(fe, dict):
        how = f"{escape(str(fe.get('source')))}, {escape(str(fe.get('energy_method')))}"
        out.append(f"<p>GPU energy ({how}): "
                   f"{_num(fe.get('energy_j'), '.1f')} J, {_num(fe.get('joules_per_output_token'), '.4f')} "
                   f"J/output token, {_num(fe.get('output_tokens_per_joule'), '.2f')} output tokens/J</p>")
        rows = "".join(f"<tr><td>{escape(k)}</td><td>{_num(g.get('energy_j'), '.1f')}</td>"
                       f"<td>{_num(g.get('power_mean_w'), '.1f')}</td>"
                       f"<td>{_num(g.get('util_mean_pct'), '.0f')}</td></tr>"
                       for k, g in (fe.get("gpus") or {}).items())
        out.append("<table><tr><th>GPU</th><th>energy J</th><th>mean W</th><th>util %</th></tr>"
                   f"{rows}</table>")
        if fe.get("note"):
            out.append(f"<p class='note'>{escape(str(fe['note']))}</p>")
    if replicas:
        rows = "".join(
            f"<tr><td>{escape(str(r.get('url') or r.get('instance')))}</td>"
            f"<td>{_num((r.get('deltas') or {}).get('vllm:prompt_tokens_total'), '.0f')}</td>"
            f"<td>{_num((r.get('deltas') or {}).get('vllm:generation_tokens_total'), '.0f')}</td></tr>"
            for r in replicas)
        out.append("<table><tr><th>replica</th><th>prompt tokens</th><th>generated tokens</th></tr>"
                   f"{rows}</table>")
    return out


def fleet_joules_per_output_token(report: dict[str, Any]) -> float | None:
    """The fleet's GPU joules per output token (``fleet_energy``: DCGM, direct or via Prometheus); None
    when the report has none. A remote fleet's GPUs are the ones serving, so sweeps and plans prefer
    this over the client host's own ``telemetry``."""
    fe = report.get("fleet_energy")
    if not isinstance(fe, dict):
        return None
    jpt = fe.get("joules_per_output_token")
    return float(jpt) if isinstance(jpt, int | float) and jpt > 0 else None
