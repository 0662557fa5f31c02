"""BESIDE the run: live Prometheus exporter, GPU telemetry, server /metrics scraping."""
