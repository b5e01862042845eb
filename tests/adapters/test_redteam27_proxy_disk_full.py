"""Red team 27: the real ``tlog scim-proxy`` whose outbox and intent journal share a disk that
fills up while it runs, durable intents on and off (the log down: nothing is delivered, so
the outbox holds every event the log will get).

The first write after the disk filled is forwarded (its intent fits the journal's
preallocated file) and its event cannot be stored: a 503 saying the SP processed it; the
next ones are refused before the SP ("not applied"). Found: that first write's intent was
recorded only at the proxy's *next start*: with space back and the proxy serving again,
the SP's change had no event for as long as the proxy ran (and, without durable intents,
none at all after a machine crash). Now the proxy records it as unknown, as a start-up
would, once the outbox takes events again, and a restart records it no second time.

Checked against what the SP applied: every write the SP saw has exactly one event, every
write refused "not applied" never reached it, every acknowledged write has its event.

Found too: ``/.tlog/readyz`` said ready while every write was refused (a balancer kept
sending them); now not ready, ``tlog_proxy_writes_taken`` 0, until the outbox takes a
probe again (asked by the readiness check itself, so no write is needed to get there)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import start_proxy, stop_processes

from .helpers import (
    fill_disk,
    outbox_events,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
    tmpfs,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "disk", lazy=True)


@pytest.mark.parametrize("durable", [False, True], ids=["intents", "durable-intents"])
def test_a_write_forwarded_as_the_disk_filled_is_recorded_once_space_is_back(
    tmp_path: Path,
    small_disk: Path,
    sp: tuple[str, list[tuple[str, str]]],
    durable: bool,
) -> None:
    upstream, seen = sp
    outbox = small_disk / "outbox.sqlite"
    flags = ["--log-key-tofu", *(["--durable-intents"] if durable else [])]
    answers: dict[str, tuple[int, str]] = {}

    def delete(i: int, base: str) -> None:
        r = httpx.delete(
            f"{base}/Users/u{i}",
            headers={"X-Request-Id": f"r{i}", "Authorization": "Bearer sp-token"},
            timeout=60,
        )
        answers[f"r{i}"] = (r.status_code, r.text)

    proc, base = start_proxy(
        tmp_path, upstream, "http://127.0.0.1:9", "t0k", "acme", *flags, outbox=outbox
    )
    try:
        for i in range(3):
            delete(i, base)
        filler = small_disk / "filler"
        fill_disk(filler)
        for i in range(3, 6):
            delete(i, base)
        assert [answers[f"r{i}"][0] for i in range(3, 6)] == [503] * 3, answers
        # writes refused: not ready, and said in a metric
        ops = base.rsplit("/v2", 1)[0] + "/.tlog"
        r = httpx.get(f"{ops}/readyz", timeout=30)
        assert r.status_code == 503 and r.json()["checks"]["outbox"]["writes_taken"] is False
        assert "tlog_proxy_writes_taken 0.0" in httpx.get(f"{ops}/metrics", timeout=30).text
        filler.unlink()
        # ready again before any write reaches it (a balancer sends none while not ready)
        assert httpx.get(f"{ops}/readyz", timeout=30).status_code == 200
        for i in range(6, 8):
            delete(i, base)
        applied = {p.rsplit("/", 1)[-1].replace("u", "r") for _, p in seen}
        # the first write after the disk filled reached the SP: recorded while the proxy runs
        assert "r3" in applied
        deadline = time.monotonic() + 30
        while "r3" not in outbox_events(outbox) and time.monotonic() < deadline:
            time.sleep(0.2)
        events = outbox_events(outbox)
        assert "r3" in events, (answers, sorted(events))
        (ev,) = events["r3"]
        assert ev["outcome"] == "warning" and ev["err"]["code"] == "unknown", ev
    finally:
        stop_processes([proc])
    # a restart on the same outbox records nothing twice
    proc, base = start_proxy(
        tmp_path, upstream, "http://127.0.0.1:9", "t0k", "acme", *flags, outbox=outbox
    )
    try:
        delete(8, base)
    finally:
        stop_processes([proc])
    events = outbox_events(outbox)
    applied = {p.rsplit("/", 1)[-1].replace("u", "r") for _, p in seen}
    for req, (status, text) in answers.items():
        if status == 204:
            assert req in applied and len(events.get(req, [])) == 1, (req, events.get(req))
        elif "not applied" in text:
            assert req not in applied and req not in events, (req, text)
        else:
            assert "processed this request" in text, (req, text)
    assert {r: len(events.get(r, [])) for r in applied} == dict.fromkeys(applied, 1), events
