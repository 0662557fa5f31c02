"""Servers loadgen can start and stop: the built-in simulated server and the vLLM launcher.

Each launcher is a context manager that yields a base URL and tears its server down on exit, so
``--url`` and "start it for me" reach the same runner.
"""
