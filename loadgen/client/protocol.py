"""The OpenAI request shapes loadgen speaks: ``/v1/completions``, ``/v1/chat/completions``,
``/v1/responses``, ``/v1/embeddings``, ``/v1/rerank`` and ``/v1/score``.

Each protocol builds the request body for a sample, names the stream reader of its events
(:mod:`loadgen.client.stream`) and pulls the generated text and usage out of a non-streaming body;
the client does the rest the same way for all. :func:`merge_extra` lays a user's ``extra_body`` over
the built body.
"""

from __future__ import annotations

from typing import Any

from loadgen.client.stream import ResponsesState, StreamState, responses_usage
from loadgen.workload.samples import Sample


def merge_extra(body: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``extra``'s fields laid over it; a null in ``extra`` removes that field (e.g.
    ``{"max_tokens": null}`` for a server that takes only ``max_completion_tokens``). What ``extra``
    may hold is checked where it is read (``loadgen.settings.RESERVED_FIELDS``, ``LENGTH_FIELDS``)."""
    for key, value in extra.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


class _Choices:
    """Completions and chat: the output is in ``choices[0]``, the usage beside it."""

    @staticmethod
    def text(choice: dict[str, Any]) -> str | None:
        raise NotImplementedError

    @classmethod
    def parse(cls, obj: dict[str, Any]) -> tuple[str, Any] | None:
        """(text, usage) of a non-streaming response; None when it has no choices."""
        choices = obj.get("choices")
        if not choices or not isinstance(choices[0], dict):
            return None
        return cls.text(choices[0]) or "", obj.get("usage")


class Completions(_Choices):
    path = "/v1/completions"
    state = StreamState

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        return _generation(model, stream, ignore_eos, continuous_usage, prompt=sample.as_prompt(),
                           max_tokens=sample.output_tokens)

    @staticmethod
    def text(choice: dict[str, Any]) -> str | None:
        return choice.get("text")

    @staticmethod
    def thinking(choice: dict[str, Any]) -> bool:
        return False


class Chat(_Choices):
    path = "/v1/chat/completions"
    state = StreamState

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        return _generation(model, stream, ignore_eos, continuous_usage, messages=sample.as_messages(),
                           max_tokens=sample.output_tokens, max_completion_tokens=sample.output_tokens)

    @staticmethod
    def text(choice: dict[str, Any]) -> str | None:
        msg = choice.get("delta") or choice.get("message")
        if not isinstance(msg, dict):
            return None
        # Reasoning models stream their thinking first (vLLM has spelled it ``reasoning_content`` and
        # ``reasoning``); it is generated output all the same. Tool-call deltas are output too.
        return (msg.get("content") or msg.get("reasoning_content") or msg.get("reasoning")
                or _tool_text(msg.get("tool_calls")))

    @staticmethod
    def thinking(choice: dict[str, Any]) -> bool:
        """Whether a choice that carries output carries thinking only (no answer text, no tool call)."""
        msg = choice.get("delta") or choice.get("message")
        return isinstance(msg, dict) and not msg.get("content") and not msg.get("tool_calls")


class Responses:
    """The Responses API (``/v1/responses``): ``input`` messages, ``max_output_tokens``, typed events."""

    path = "/v1/responses"
    state = ResponsesState

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        # no stream_options in the Responses API; ignore_eos is vLLM's extension, as for the other two
        return _generation(model, stream, ignore_eos, None, input=sample.as_messages(),
                           max_output_tokens=sample.output_tokens)

    @staticmethod
    def text(choice: dict[str, Any]) -> str | None:  # the stream reader reads events itself
        return None

    @staticmethod
    def thinking(choice: dict[str, Any]) -> bool:
        return False

    @staticmethod
    def parse(obj: dict[str, Any]) -> tuple[str, Any] | None:
        """(text of every output item: reasoning, messages, function calls; usage) of a response."""
        output = obj.get("output")
        if not isinstance(output, list):
            return None
        parts: list[str] = []
        for item in output:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call":
                parts.append(str(item.get("name") or "") + str(item.get("arguments") or ""))
            for part in item.get("content") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
        return "".join(parts), responses_usage(obj.get("usage"))


def _tool_text(calls: Any) -> str | None:
    """The text a tool-call delta adds: the function's name and its argument fragments."""
    if not isinstance(calls, list):
        return None
    parts = []
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(parts) or None


def _generation(model: str, stream: bool, ignore_eos: bool, continuous_usage: bool | None,
                **fields: Any) -> dict[str, Any]:
    """A generation body: the model, the endpoint's own ``fields`` (prompt and length), greedy
    sampling, streaming with usage (``continuous_usage`` None: no stream_options), ignore_eos."""
    body: dict[str, Any] = {"model": model, **fields, "temperature": 0.0, "stream": stream}
    if stream and continuous_usage is not None:
        body["stream_options"] = _stream_options(continuous_usage)
    if ignore_eos:
        body["ignore_eos"] = True
    return body


def _stream_options(continuous_usage: bool) -> dict[str, bool]:
    # continuous_usage_stats (vLLM) puts the running token count in every chunk, so a chunk that
    # carries several tokens is counted as several; servers that do not know it may reject it.
    if continuous_usage:
        return {"include_usage": True, "continuous_usage_stats": True}
    return {"include_usage": True}


class Embeddings:
    """``/v1/embeddings``: one input per request, one JSON answer, no generated tokens (so no TTFT)."""

    path = "/v1/embeddings"
    state = StreamState  # never streams; the JSON answer is read by parse
    generates = False

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        if sample.inputs:
            return {"model": model, "input": [sample.as_prompt(), *sample.inputs], "encoding_format": "float"}
        return {"model": model, "input": sample.as_prompt(), "encoding_format": "float"}

    @staticmethod
    def text(choice: dict[str, Any]) -> str | None:
        return None

    @staticmethod
    def thinking(choice: dict[str, Any]) -> bool:
        return False

    @staticmethod
    def parse(obj: dict[str, Any]) -> tuple[str, Any] | None:
        """("", usage) of an embeddings answer; None when it holds no embedding."""
        data = obj.get("data")
        first = data[0] if isinstance(data, list) and data else None
        if not isinstance(first, dict) or "embedding" not in first:
            return None
        return "", obj.get("usage")


class Rerank(Embeddings):
    """``/v1/rerank`` (vLLM, Jina and Cohere style): the prompt is the query, ``Sample.inputs`` the
    documents; one JSON answer of relevance scores."""

    path = "/v1/rerank"

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        return {"model": model, "query": sample.as_prompt(), "documents": list(sample.inputs or ())}

    @staticmethod
    def parse(obj: dict[str, Any]) -> tuple[str, Any] | None:
        """("", usage) of a rerank answer; None when it holds no scored result."""
        results = obj.get("results")
        first = results[0] if isinstance(results, list) and results else None
        if not isinstance(first, dict) or "relevance_score" not in first:
            return None
        return "", _input_usage(obj.get("usage"))


class Score(Embeddings):
    """``/v1/score`` (vLLM): ``text_1`` the prompt, ``text_2`` the documents (``Sample.inputs``), one
    score per pair."""

    path = "/v1/score"

    @staticmethod
    def body(
        sample: Sample, model: str, stream: bool, ignore_eos: bool, continuous_usage: bool = False
    ) -> dict[str, Any]:
        return {"model": model, "text_1": sample.as_prompt(), "text_2": list(sample.inputs or ())}

    @staticmethod
    def parse(obj: dict[str, Any]) -> tuple[str, Any] | None:
        """("", usage) of a score answer; None when it holds no score."""
        data = obj.get("data")
        first = data[0] if isinstance(data, list) and data else None
        if not isinstance(first, dict) or "score" not in first:
            return None
        return "", _input_usage(obj.get("usage"))


def _input_usage(usage: Any) -> dict[str, Any] | None:
    """A pooling answer's usage as input tokens only (``prompt_tokens``, else ``total_tokens``)."""
    if not isinstance(usage, dict):
        return None
    tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
    return {"prompt_tokens": tokens} if isinstance(tokens, int) else None


#: one of the request shapes above (the classes themselves: their methods are static)
Wire = type[Completions] | type[Chat] | type[Responses] | type[Embeddings]

PROTOCOLS: dict[str, Wire] = {
    "completions": Completions, "chat": Chat, "responses": Responses, "embeddings": Embeddings,
    "rerank": Rerank, "score": Score,
}
