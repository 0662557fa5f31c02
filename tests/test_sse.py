"""The SSE parser gives the same events for any split of the byte stream."""

from hypothesis import given, settings
from hypothesis import strategies as st

from loadgen.client.sse import SseParser

STREAM = (
    b'data: {"choices":[{"text":" a"}]}\n\n'
    b": keep-alive comment\n\n"
    b'event: error\ndata: {"error":{"message":"boom"}}\n\n'
    b'data: {"x":1}\r\n\r\n'
    b"data: line1\ndata: line2\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    (b"", b'{"choices":[{"text":" a"}]}'),
    (b"error", b'{"error":{"message":"boom"}}'),
    (b"", b'{"x":1}'),
    (b"", b"line1\nline2"),
    (b"", b"[DONE]"),
]


def _feed_all(parts):
    parser = SseParser()
    events = []
    for part in parts:
        events.extend(parser.feed(part))
    return events, parser.pending


def test_whole_stream():
    assert _feed_all([STREAM]) == (EXPECTED, b"")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=20))
def test_any_split_gives_identical_events(cuts):
    points = sorted(set(cuts))
    parts = [STREAM[a:b] for a, b in zip([0, *points], [*points, len(STREAM)], strict=True)]
    assert _feed_all(parts) == (EXPECTED, b"")


def test_unterminated_event_stays_pending():
    events, pending = _feed_all([b'data: {"a":1}\n\ndata: {"trunc'])
    assert events == [(b"", b'{"a":1}')]
    assert pending == b'data: {"trunc'
