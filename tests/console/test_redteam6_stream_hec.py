"""Red team 6: a HEC answer nested deeper than Python's recursion limit (``[[[[...]]]]``,
within the 64 KiB the sink reads) crashed ``tlog-client scim stream`` with a
``RecursionError``; it is taken by its 2xx status, as any answer that is not JSON."""

from __future__ import annotations

import socket

from client.tools.stream import HttpSink
from tests.console.test_redteam3_stream_sink import RECORD, RawReceiver


def test_a_hec_answer_nested_too_deeply_is_no_crash() -> None:
    body = b"[" * 30_000 + b"]" * 30_000

    def answer(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    rec = RawReceiver(answer)
    sink = HttpSink(rec.url, hec_token="t", origin="o", retries=0)
    try:
        sink.send([RECORD])  # taken, as a 2xx answer that is not JSON is
    finally:
        sink.close()
        rec.close()
