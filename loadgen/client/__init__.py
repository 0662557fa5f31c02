"""ONE request, timed at the byte: request bodies, HTTP transports, SSE parsing, endpoint probes."""
