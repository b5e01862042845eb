"""client.net.core: the one Retry-After rule, bounded answers, retries, and the checkpoint
tracker that notices forks and rollbacks."""

from __future__ import annotations

import gzip
import time

import httpx
import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError
from client.formats.note import FormatError
from client.net.core import (
    CheckpointTracker,
    HTTPCore,
    StatusError,
    Unreachable,
    retry_after,
)


def test_retry_after_forms() -> None:
    assert retry_after("3") == 3.0
    assert retry_after(" 7 ", cap=30) == 7.0
    assert retry_after("300", cap=30) == 30.0
    assert retry_after("300") == 30.0  # the default cap: no server parks a client for long
    assert retry_after("soon") is None
    assert retry_after("-1") is None
    assert retry_after("٣") is None  # digits, but not ASCII
    assert retry_after(None) is None
    assert retry_after("") is None
    when = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 5))
    got = retry_after(when)
    assert got is not None and 3 <= got <= 5.5
    past = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() - 60))
    assert retry_after(past) == 0.0


def _core(handler: httpx.MockTransport) -> HTTPCore:
    return HTTPCore("http://log.test/", httpx.Client(transport=handler))


def test_send_bounds_the_decoded_body() -> None:
    bomb = gzip.compress(b"0" * 100_000)
    core = _core(
        httpx.MockTransport(
            lambda r: httpx.Response(200, content=bomb, headers={"content-encoding": "gzip"})
        )
    )
    assert len(bomb) < 1000
    with pytest.raises(FormatError, match="larger than"):
        core.send("GET", "checkpoint", limit=10_000)
    assert core.send("GET", "checkpoint", limit=100_000).body == b"0" * 100_000


def test_send_maps_transport_failures_and_joins_paths() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        raise httpx.ConnectError("refused", request=request)

    with pytest.raises(Unreachable, match="refused"):
        _core(httpx.MockTransport(handler)).send("GET", "/v1/x", limit=10, params={"a": 1})
    assert seen == ["http://log.test/v1/x?a=1"]


def test_call_retries_busy_answers_then_raises_the_servers_reason() -> None:
    answers = [
        httpx.Response(503, headers={"Retry-After": "0"}),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(200, content=b"ok"),
    ]
    core = _core(httpx.MockTransport(lambda r: answers.pop(0)))
    assert core.call("POST", "add", limit=10, retries=2).body == b"ok"
    assert answers == []

    core = _core(httpx.MockTransport(lambda r: httpx.Response(400, json={"error": "bad entry"})))
    with pytest.raises(StatusError) as info:
        core.call("POST", "add", limit=100, retries=3)
    assert (info.value.status, info.value.reason) == (400, "bad entry")

    busy = httpx.Response(503, headers={"Retry-After": "0"}, text="later")
    core = _core(httpx.MockTransport(lambda r: busy))
    with pytest.raises(StatusError) as info:
        core.call("GET", "x", limit=100, retries=1)
    assert (info.value.status, info.value.reason, info.value.retry_after) == (503, "later", 0.0)


def test_core_closes_only_a_client_it_made() -> None:
    given = httpx.Client()
    HTTPCore("http://x", given).close()
    assert not given.is_closed
    made = HTTPCore("http://x")
    made.close()
    assert made.http.is_closed


def _cp(size: int, root: int) -> Checkpoint:
    return Checkpoint("log.test/a", size, bytes([root]) * 32)


def test_tracker_proves_growth_and_catches_forks_and_rollbacks() -> None:
    proved: list[tuple[int, int]] = []
    tracker = CheckpointTracker(lambda old, new: proved.append((old.size, new.size)))
    tracker.observe(_cp(5, 1))
    tracker.observe(_cp(9, 2))
    tracker.observe(_cp(9, 2))  # the same head again: nothing to prove
    tracker.observe(_cp(7, 3))  # an older head: proven once, then remembered
    tracker.observe(_cp(7, 3))
    assert proved == [(5, 9), (7, 9)]
    assert tracker.latest == _cp(9, 2)
    with pytest.raises(VerificationError, match="fork"):
        tracker.observe(_cp(9, 4))
    with pytest.raises(VerificationError, match="fork"):
        tracker.observe(_cp(7, 4))  # a second root for a size already proven
    with pytest.raises(VerificationError, match="rollback"):
        tracker.observe(_cp(8, 5), claimed_latest=True)
    assert tracker.latest == _cp(9, 2)


def test_tracker_keeps_latest_when_the_proof_fails() -> None:
    def refuse(old: Checkpoint, new: Checkpoint) -> None:
        raise VerificationError("inconsistent")

    tracker = CheckpointTracker(refuse)
    tracker.observe(_cp(5, 1))
    with pytest.raises(VerificationError, match="inconsistent"):
        tracker.observe(_cp(9, 2))
    assert tracker.latest == _cp(5, 1)
