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

from .conftest import BASE_TS, ORIGIN, T1, Harness, user_event


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


def test_a_clock_far_behind_the_log_time_is_said_loudly(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The log time never goes back (test_clock_step.py): with the clock behind the newest
    event's time, events are stamped with that time. A clock that stepped back a second is
    routine, but one far behind means the log's time is wrong (the clock jumped forward
    before, and every event since carries that time: a SIEM stream waits for it to pass) or
    the clock is wrong now: either way the operator must hear it, not find it out later."""
    h = harness
    late = BASE_TS + 10 * 365 * 24 * 3600 * 1000  # a clock that jumped ten years ahead
    h.service.clock = lambda: late
    assert h.post_event(user_event(rid="u-jump", req="req-jump")).status_code == 200
    now = [BASE_TS]
    # ... and came back: the log time starts again from the newest leaf's, as at a restart
    h.service.clock = lambda: now[0]
    with caplog.at_level("WARNING", logger="tlog.scim.service"):
        for i in range(3):
            now[0] += 1000
            r = h.post_event(user_event(rid=f"u-after-{i}", req=f"req-after-{i}"))
            assert r.status_code == 200 and r.json()["ts"] == late
    said = [r for r in caplog.records if "behind" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]  # once, not per event
    assert said[0].levelname == "ERROR"
    assert "u-after" not in said[0].getMessage()  # no identifier in the line
    # A routine step back (under a minute) is not worth a line.
    caplog.clear()
    h.service.clock = lambda: BASE_TS + 20 * 365 * 24 * 3600 * 1000
    assert h.post_event(user_event(rid="u-later", req="req-later")).status_code == 200
    h.service.clock = lambda: BASE_TS + 20 * 365 * 24 * 3600 * 1000 - 30_000
    with caplog.at_level("WARNING", logger="tlog.scim.service"):
        assert h.post_event(user_event(rid="u-step", req="req-step")).status_code == 200
    assert not [r for r in caplog.records if "behind" in r.getMessage()]


def test_a_log_time_left_ahead_by_a_clock_jump_does_not_expire_the_present(
    harness: Harness,
) -> None:
    """Retention expiry shreds what is due *now*. A clock that jumped ten years ahead for a
    moment left the log time there (it never goes back), and with it the expiry job's
    "now": the next run, with the clock right again, shredded every event of the tenant,
    irreversibly. Expiry counts from the wall clock when it is behind the log time (the
    smaller of the two: it never shreds more than what is due by either)."""
    h = harness
    day = 24 * 3600 * 1000
    assert h.post_event(user_event(rid="u-kept", req="req-kept")).status_code == 200
    r = h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=h.h("po_a"))
    assert r.status_code == 200
    h.service.clock = lambda: BASE_TS + 10 * 365 * day  # the jump: one event stamped then
    assert h.post_event(user_event(rid="u-jump", req="req-jump")).status_code == 200
    h.service.clock = lambda: BASE_TS + 2 * day  # the clock is right again
    res = h.client.post("/v1/scim/expire", json={}, headers=h.h("admin")).json()["results"]
    assert [x["events"] for x in res] == [0]
    found = [x.event["rid"] for x in h.auditor().search(rid="u-kept").results if x.event]
    assert found == ["u-kept"]
    # Once the wall clock itself is past the period, expiry works as always.
    h.service.clock = lambda: BASE_TS + 10 * 365 * day + 90 * day
    res = h.client.post("/v1/scim/expire", json={}, headers=h.h("admin")).json()["results"]
    assert res[0]["events"] >= 2
