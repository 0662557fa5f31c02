"""PURE numbers: latency summaries, inter-token gaps, MLPerf rules, the validity verdict, client health."""
