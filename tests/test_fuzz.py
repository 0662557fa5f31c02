"""Property tests: stream parsers give the same result for any split of their input into network
reads, and the settings loader turns any document into Settings or a ConfigError, nothing else."""

from __future__ import annotations

import asyncio
import string
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadgen.client.http1 import Response, _Exchange
from loadgen.client.sse import SseParser
from loadgen.errors import ConfigError
from loadgen.settings import Settings, build_settings, load_settings


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


cuts_st = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=30)

# ---- SSE ---------------------------------------------------------------------------------------------

# values never hold a line break (SSE cannot carry one inside a field)
value_st = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                   max_size=30).map(lambda s: s.encode())
line_st = st.one_of(
    st.tuples(st.just("data"), value_st),
    st.tuples(st.just("event"), st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=10)
              .map(str.encode)),
    st.tuples(st.just("comment"), value_st),
    st.tuples(st.sampled_from(["id", "retry"]), st.text(alphabet=string.digits, max_size=5).map(str.encode)),
)
event_st = st.lists(line_st, min_size=1, max_size=5)


def render(events: list[list[tuple[str, bytes]]], eol: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """The stream text and the events a correct parser reports (name, data lines joined by \\n);
    a block with neither data nor a name (comments, ids) yields no event."""
    out, expected = [], []
    for lines in events:
        name, data = b"", []
        for kind, value in lines:
            if kind == "comment":
                out.append(b":" + value + eol)
            else:
                out.append(kind.encode() + b": " + value + eol)
                if kind == "data":
                    data.append(value)
                elif kind == "event":
                    name = value
        out.append(eol)
        if data or name:
            expected.append((name, b"\n".join(data)))
    return b"".join(out), expected


def parse(parts: list[bytes]) -> tuple[list[tuple[bytes, bytes]], bytes]:
    parser = SseParser()
    events = []
    for part in parts:
        events.extend(parser.feed(part))
    return events, parser.pending


@settings(max_examples=400, deadline=None)
@given(st.lists(event_st, max_size=8), st.sampled_from([b"\n", b"\r\n", b"\r"]), cuts_st)
def test_sse_any_split_of_any_stream_gives_the_same_events(events, eol, cuts):
    stream, expected = render(events, eol)
    assert parse([stream]) == (expected, b"")
    assert parse(split(stream, cuts)) == (expected, b"")
    assert parse([bytes([b]) for b in stream]) == (expected, b"")  # one byte per read


# ---- HTTP/1.1 framing --------------------------------------------------------------------------------

body_st = st.binary(max_size=600)


@st.composite
def responses(draw) -> tuple[bytes, bytes, str]:
    """(raw response bytes, body, framing) for chunked, Content-Length and read-until-close bodies."""
    body = draw(body_st)
    framing = draw(st.sampled_from(["chunked", "length", "eof"]))
    head = [b"HTTP/1.1 200 OK", b"Content-Type: text/event-stream", b"X-Pad: " + b"p" * draw(
        st.integers(0, 40))]
    if framing == "chunked":
        head.append(b"Transfer-Encoding: chunked")
        sizes = draw(st.lists(st.integers(1, 64), max_size=40))
        pieces, pos = [], 0
        for size in sizes:
            if pos >= len(body):
                break
            chunk = body[pos:pos + size]
            pos += len(chunk)
            ext = draw(st.sampled_from([b"", b";ext=1", b"; name=\"v\""]))
            size_hex = draw(st.sampled_from([b"%x", b"%X"])) % len(chunk)
            pieces.append(size_hex + ext + b"\r\n" + chunk + b"\r\n")
        if pos < len(body):
            rest = body[pos:]
            pieces.append(b"%x\r\n" % len(rest) + rest + b"\r\n")
        trailer = draw(st.sampled_from([b"", b"X-Trailer: 1\r\n"]))
        payload = b"".join(pieces) + b"0\r\n" + trailer + b"\r\n"
    elif framing == "length":
        head.append(b"Content-Length: %d" % len(body))
        payload = body
    else:
        head.append(b"Connection: close")
        payload = body
    return b"\r\n".join(head) + b"\r\n\r\n" + payload, body, framing


def exchange(parts: list[bytes], framing: str) -> tuple[bytes, Response]:
    loop = asyncio.new_event_loop()
    try:
        got: list[bytes] = []

        def sink(resp: Response, data: bytes, now: int) -> bool:
            got.append(data)
            return True

        ex = _Exchange(loop, sink)
        finished = False
        for i, part in enumerate(parts):
            assert not finished, f"response complete before read {i} of {len(parts)}"
            finished = ex.feed(part, i)
        if framing == "eof":
            assert not finished
            ex.lost(None)  # the server closes the connection: that ends the body
        else:
            assert finished or not parts[-1]
        assert ex.done.done()
        resp = ex.done.result()
        return b"".join(got), resp
    finally:
        loop.close()


@settings(max_examples=400, deadline=None)
@given(responses(), cuts_st)
def test_http1_any_split_of_a_response_gives_the_same_body(resp, cuts):
    raw, body, framing = resp
    parts = [p for p in split(raw, cuts) if p]
    got, head = exchange(parts, framing)
    assert got == body
    assert head.status == 200 and head.content_type == "text/event-stream"


@settings(max_examples=50, deadline=None)
@given(responses())
def test_http1_one_byte_per_read(resp):
    raw, body, framing = resp
    assert exchange([raw[i:i + 1] for i in range(len(raw))], framing)[0] == body


# ---- settings ----------------------------------------------------------------------------------------

FIELDS = sorted(Settings.model_fields)
scalar_st = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["server", "offline", "concurrency", "singlestream", "1e3",
                                           "http://127.0.0.1:1", "fixed", "-1", "inf", "nan"]),
)
value_tree = st.recursive(
    scalar_st,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from([*FIELDS, "kind", "mean", "max"]),
                                                      st.text(max_size=8)), inner, max_size=4)),
    max_leaves=12,
)
doc_st = st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8), st.integers()),
                         value_tree, max_size=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc_st)
def test_build_settings_gives_settings_or_a_config_error(doc):
    try:
        result = build_settings(doc, "fuzz")
    except ConfigError as exc:
        assert str(exc).startswith("invalid settings in fuzz")
        return
    assert isinstance(result, Settings)


yaml_text_st = st.one_of(
    st.text(max_size=200),
    doc_st.map(lambda d: yaml.safe_dump(d, allow_unicode=True)),
    st.lists(st.sampled_from(["scenario: server", "qps: 5", "qps: [1, 2", "  - x", "input_len:",
                              "  kind: uniform", "  mean: 3", "&a [*a]", "!!python/object:os.system x",
                              "? [a]\n: b", "{", "'", "\t", "output_len: {kind: fixed, mean: 0}",
                              "sim: {faults: [x]}", "%YAML 1.1", "---", "...", "\ufeff", "key: !!binary xx",
                              "*undefined", "x: 0x1F", "duration_s: .inf"]), max_size=8)
    .map("\n".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(yaml_text_st)
def test_load_settings_gives_settings_or_a_config_error(tmp_path, text):
    path: Path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        result = load_settings(str(path))
    except ConfigError as exc:
        assert str(path) in str(exc)
        return
    assert isinstance(result, Settings)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=200))
def test_load_settings_of_any_bytes(tmp_path, data):
    path: Path = tmp_path / "fuzz.yaml"
    path.write_bytes(data)
    try:
        result = load_settings(str(path))
    except ConfigError:
        return
    assert isinstance(result, Settings)
