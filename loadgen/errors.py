"""The one exception tree of loadgen.

::

    LoadgenError                 base of every error loadgen raises on purpose
    ├── ConfigError              bad settings, scenario file, CLI option or data file (exit code 2)
    ├── TargetError              the endpoint cannot be used for a run (exit code 2)
    │   ├── TargetUnreachable    no TCP/HTTP answer from the URL within the probe timeout
    │   ├── AuthenticationFailed HTTP 401/403 from the endpoint
    │   └── ModelNotServed       the model is not among the endpoint's /v1/models
    ├── LaunchError              a server loadgen started did not come up (log tail attached)
    └── ReportError              a report or requests.jsonl cannot be read back

Errors that happen *during* a run to a single request (HTTP 5xx, timeouts, broken streams) are never
raised: the client turns them into error fields of a :class:`loadgen.records.RequestRecord`.

Each error's message is written for the person running loadgen: it names the file, field, URL or model
and says what to do. The CLI prints the message without a traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class LoadgenError(Exception):
    """Base class; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class ConfigError(LoadgenError):
    """Invalid settings, scenario file, option or input data file."""

    exit_code = 2


class TargetError(LoadgenError):
    """The endpoint cannot serve this run."""

    exit_code = 2


class TargetUnreachable(TargetError):
    """No answer from the endpoint's URL."""


class AuthenticationFailed(TargetError):
    """The endpoint refused our credentials (HTTP 401 or 403)."""


class ModelNotServed(TargetError):
    """The requested model is not in the endpoint's model list."""


class LaunchError(LoadgenError):
    """A server that loadgen launched failed to start or exited early."""

    exit_code = 2


class ReportError(LoadgenError):
    """A report file cannot be read back."""

    exit_code = 2
