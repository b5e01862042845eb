"""Red team 4: time. An event's own ``ts`` is the submitter's claim (its SP's or adapter's
clock), any unsigned integer up to 2^53 - 1 ms; the log keeps it as it came. What reads it
must not break on one far in the future (or at the epoch): one such event, accepted and
acknowledged, must not stop the SIEM stream for every event after it."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from client.scim.event import MAX_SAFE_INT
from client.tools.stream import SyslogSink, stream, syslog_message

from .conftest import BASE_TS, ORIGIN, Harness, user_event


@pytest.mark.parametrize("claimed", [MAX_SAFE_INT, 253_402_300_800_000, 0])
def test_a_far_future_event_time_does_not_stop_the_syslog_stream(
    harness: Harness, tmp_path: Path, claimed: int
) -> None:
    h = harness
    odd = user_event(rid="u-odd-clock", req="req-odd", ts=claimed)
    assert h.post_event(odd).status_code == 200
    after = user_event(rid="u-after", req="req-after")
    assert h.post_event(after).status_code == 200
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(10)
    sink = SyslogSink("udp", "127.0.0.1", rx.getsockname()[1])
    try:
        res = stream(
            h.auditor(),
            sink,
            tmp_path / "cursor.json",
            origin=ORIGIN,
            filters={"actor": "admin-bob-9921"},
            settle_ms=0,
            now_ms=lambda: BASE_TS + 3_600_000,
        )
        msgs = [rx.recv(65536).decode("utf-8", "replace") for _ in range(res.records)]
    finally:
        sink.close()
        rx.close()
    assert res.events == 2
    text = "\n".join(msgs)
    assert odd["eid"] in text and after["eid"] in text
    for m in msgs:
        # RFC 5424: a TIMESTAMP has a four-digit year, else the NILVALUE "-".
        stamp = m.split(" ")[1]
        assert stamp == "-" or (len(stamp.split("-")[0]) == 4 and stamp.endswith("Z")), m


def test_syslog_timestamps_in_range_are_unchanged() -> None:
    rec = {"time": 1_717_200_000_123, "class_uid": 3001, "status_id": 1}
    head = syslog_message(rec, "h").split(b" ")
    assert head[1] == b"2024-06-01T00:00:00.123Z"
