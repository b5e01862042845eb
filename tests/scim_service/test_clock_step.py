"""The log time ``ts`` of SCIM events when the wall clock steps back (NTP correction, a VM
restored or migrated): readers page by ``ts`` (the search index, ``tlog-client scim
stream``'s cursor), so an event staged after a step back with a ``ts`` below what was
already published is never seen by a cursor that passed that time: an acknowledged event
silently missing from every export."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from client.tools.stream import Sink, stream

from .conftest import BASE_TS, ORIGIN, Harness, open_harness, user_event


class _ListSink(Sink):
    kind = "list"

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def send(self, records: Sequence[dict[str, Any]]) -> None:
        self.records.extend(records)


def test_a_clock_step_back_does_not_hide_an_event_from_the_stream(
    harness: Harness, tmp_path: Path
) -> None:
    h = harness
    now = [BASE_TS + 60_000]
    h.service.clock = lambda: now[0]
    first = user_event(rid="u-before-step", req="req-before")
    assert h.post_event(first).status_code == 200
    sink = _ListSink()
    cursor = tmp_path / "cursor.json"
    far = BASE_TS + 3_600_000  # the stream's "now": everything is settled
    client = h.auditor()
    stream(client, sink, cursor, origin=ORIGIN, settle_ms=0, now_ms=lambda: far)
    seen = {r["metadata"]["uid"] for r in sink.records}
    assert first["eid"] in seen

    now[0] = BASE_TS  # the wall clock steps back a minute
    second = user_event(rid="u-after-step", req="req-after")
    r = h.post_event(second)
    assert r.status_code == 200
    stream(client, sink, cursor, origin=ORIGIN, settle_ms=0, now_ms=lambda: far)
    seen = {r["metadata"]["uid"] for r in sink.records}
    assert second["eid"] in seen, "an acknowledged event never reached the stream"


def test_a_restart_with_the_clock_behind_continues_from_the_log(
    tmp_path: Path, database: str | None
) -> None:
    """A restart (a VM restored from a snapshot: its clock a minute behind) stamps its first
    events no earlier than the newest SCIM event in the log."""
    late = BASE_TS + 60_000
    with open_harness(tmp_path, database=database) as h:
        h.service.clock = lambda: late
        r = h.post_event(user_event(rid="u-before-restart", req="req-1"))
        assert r.status_code == 200
    with open_harness(tmp_path, database=database) as h:
        h.service.clock = lambda: BASE_TS  # behind the log
        r = h.post_event(user_event(rid="u-after-restart", req="req-2"))
        assert r.status_code == 200
        assert r.json()["ts"] == late
