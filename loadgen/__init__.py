"""loadgen: a load tester for LLM serving endpoints with MLPerf LoadGen scenario semantics.

Importing this package touches no global state: the event loop policy, signal handlers and logging are
set up by the CLI (``loadgen.cli.main``) or by whoever calls :func:`loadgen.engine.runner.run`.
"""

__version__ = "0.1.0"
