"""What vLLM to start: :class:`VllmLaunchSpec` (model, command prefix, flags) and its command line.

Command line (a list, never a shell)::

    [*command, MODEL, ...]           when the command's last word is "serve" (``vllm serve``)
    [*command, "--model", MODEL, ...] otherwise (``python -m vllm.entrypoints.openai.api_server``,
                                      a container image whose entrypoint is that module, ...)
    ... --host HOST --port PORT [--served-model-name NAME] *args
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from loadgen.errors import ConfigError

# Flags the launcher owns: passing them in ``args`` would make two sources of truth for the URL/model.
_OWNED_FLAGS = ("--host", "--port", "--model", "--served-model-name")


@dataclass(frozen=True)
class VllmLaunchSpec:
    """What to start. Immutable: derive variants with :meth:`with_args`, :meth:`with_flag` or
    :func:`dataclasses.replace`.

    ``env`` is added on top of the current environment. ``port=None`` picks a free port at each
    launch. ``startup_timeout_s`` bounds the wait for ``/health`` (first starts compile and warm up;
    about 80 s for a tiny model on 2 CPU cores).
    """

    model: str
    args: tuple[str, ...] = ()
    command: tuple[str, ...] = ("vllm", "serve")
    env: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int | None = None
    startup_timeout_s: float = 600.0
    served_model_name: str | None = None
    term_timeout_s: float = 15.0

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError("vLLM launch: `command` is empty; use e.g. ('vllm', 'serve')")
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        for arg in self.args:
            name = arg.split("=", 1)[0]
            if name in _OWNED_FLAGS:
                raise ConfigError(
                    f"vLLM launch: {name} is set by loadgen from the launch spec "
                    f"(model, host, port, served_model_name); remove it from the extra arguments"
                )

    @property
    def model_position(self) -> str:
        """``"positional"`` for ``... serve MODEL``, ``"--model"`` for every other command prefix."""
        return "positional" if self.command[-1] == "serve" else "--model"

    def command_line(self, port: int) -> list[str]:
        """The argument list for a launch on ``port``."""
        cmd = list(self.command)
        cmd += [self.model] if self.model_position == "positional" else ["--model", self.model]
        cmd += ["--host", self.host, "--port", str(port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        return cmd + list(self.args)

    def with_args(self, *args: str) -> VllmLaunchSpec:
        """A new spec with ``args`` appended to the extra flags."""
        return dataclasses.replace(self, args=(*self.args, *args))

    def with_flag(self, name: str, value: object | None = None) -> VllmLaunchSpec:
        """A new spec where flag ``name`` appears once: earlier ``name V`` / ``name=V`` are removed, then
        ``name value`` (or the bare switch when ``value`` is None) is appended. Assumes every earlier
        occurrence of ``name`` took one value unless written ``name=V`` or followed by another flag."""
        kept: list[str] = []
        args = list(self.args)
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == name:
                has_value = i + 1 < len(args) and not args[i + 1].startswith("--")
                i += 2 if has_value else 1
                continue
            if not arg.startswith(name + "="):
                kept.append(arg)
            i += 1
        kept += [name] if value is None else [name, str(value)]
        return dataclasses.replace(self, args=tuple(kept))
