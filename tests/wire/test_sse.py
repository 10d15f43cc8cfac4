"""SSE framing and the incremental decoder every reader in helexa uses."""

from __future__ import annotations

import pytest

from helexa.wire.sse import DONE, SSEDecoder, data_frame, event_frame

FRAMES = data_frame(b'{"a":1}') + event_frame("message_stop", b'{"type":"message_stop"}') + DONE
WANT = [(None, b'{"a":1}'), ("message_stop", b'{"type":"message_stop"}'), (None, b"[DONE]")]


@pytest.mark.parametrize("size", [1, 2, 3, 7, len(FRAMES)])
def test_frames_decode_back_whatever_the_chunking(size: int) -> None:
    dec = SSEDecoder()
    out = []
    for i in range(0, len(FRAMES), size):
        out.extend(dec.feed(FRAMES[i : i + size]))
    assert out == WANT


def test_crlf_comments_and_multiline_data() -> None:
    raw = b": keep-alive\r\n\r\nevent: x\r\ndata: one\r\ndata:two\r\n\r\n"
    assert SSEDecoder().feed(raw) == [("x", b"one\ntwo")]


def test_an_unterminated_event_is_held_back() -> None:
    dec = SSEDecoder()
    assert dec.feed(b"data: partial") == []
    assert dec.feed(b"\n\n") == [(None, b"partial")]
