"""The two OpenAI request shapes loadgen speaks: ``/v1/completions`` and ``/v1/chat/completions``.

Each protocol builds the request body for a sample and pulls the generated text out of a response
event; the client does the rest the same way for both.
"""

from __future__ import annotations

from typing import Any

from loadgen.workload.samples import Sample


class Completions:
    path = "/v1/completions"

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "prompt": sample.as_prompt(),
            "max_tokens": sample.output_tokens,
            "temperature": 0.0,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = _stream_options(continuous_usage)
        if ignore_eos:
            body["ignore_eos"] = True
        return body

    @staticmethod
    def text(choice: dict[str, Any]) -> str | None:
        return choice.get("text")


class Chat:
    path = "/v1/chat/completions"

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": sample.as_messages(),
            "max_tokens": sample.output_tokens,
            "max_completion_tokens": sample.output_tokens,
            "temperature": 0.0,
            "stream": stream,
        }
        if stream:
            body["stream_options"] = _stream_options(continuous_usage)
        if ignore_eos:
            body["ignore_eos"] = True
        return body

    @staticmethod
    def text(choice: dict[str, Any]) -> str | None:
        msg = choice.get("delta") or choice.get("message")
        if not isinstance(msg, dict):
            return None
        # Reasoning models stream their thinking first; it is generated output all the same.
        return msg.get("content") or msg.get("reasoning_content") or msg.get("reasoning")


def _stream_options(continuous_usage: bool) -> dict[str, bool]:
    # continuous_usage_stats (vLLM) puts the running token count in every chunk, so a chunk that
    # carries several tokens is counted as several; servers that do not know it may reject it.
    if continuous_usage:
        return {"include_usage": True, "continuous_usage_stats": True}
    return {"include_usage": True}


PROTOCOLS: dict[str, type[Completions] | type[Chat]] = {"completions": Completions, "chat": Chat}
