"""Red team 27 (fixed by stall28): ``tlog scim-proxy`` whose outbox (and so its intent
journal) is on a file system that stalls (``fsfreeze`` on a loop-mounted ext4: a hung disk,
a frozen snapshot), durable intents on and off (the log down: the outbox holds every event).

Found: the first write after the freeze blocked the proxy's event loop itself. Its intent
was written into the journal's shared memory map on the loop, and a write to a page of a
frozen file system waits in the kernel (``ext4_page_mkwrite``) until the thaw, holding the
GIL: every request hung, ``/.tlog/healthz`` and ``/.tlog/readyz`` included, with no error
and no log line. Now the journal's own thread writes (the GIL released) and a write waits
for its intent at most ``intent_wait`` seconds: a 503 "not applied", never forwarded;
healthz answers 200 (alive) saying the disk stalls, readyz is 503, the metrics
count it. After the thaw the proxy takes writes again, and every write the SP applied has
exactly one event (a restart adds none)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import frozen_ext4, run_tool, start_proxy, stop_processes

from .helpers import (
    outbox_events,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

pytestmark = pytest.mark.slow


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    yield from frozen_ext4(tmp_path)


@pytest.mark.parametrize("durable", [False, True], ids=["intents", "durable-intents"])
def test_redteam27_a_frozen_outbox_disk_does_not_freeze_the_proxy(
    tmp_path: Path, ext4: Path, sp: tuple[str, list[tuple[str, str]]], durable: bool
) -> None:
    upstream, seen = sp
    outbox = ext4 / "outbox.sqlite"
    extra = ("--durable-intents",) if durable else ()
    log, flags = "http://127.0.0.1:9", ("--log-key-tofu", *extra)  # the log down
    proc, base = start_proxy(tmp_path, upstream, log, "t0k", "acme", *flags, outbox=outbox)
    ops = base.rsplit("/v2", 1)[0] + "/.tlog"

    def delete(i: int) -> httpx.Response:
        headers = {"Authorization": "Bearer sp-token", "X-Request-Id": f"r{i}"}
        return httpx.delete(f"{base}/Users/u{i}", headers=headers, timeout=60)

    frozen = True
    try:
        assert delete(0).status_code == 204
        assert run_tool("fsfreeze", "-f", str(ext4)).returncode == 0
        # the proxy answers its own endpoints while a write waits for its intent
        answers: list[httpx.Response] = []
        writer = threading.Thread(target=lambda: answers.append(delete(1)))
        writer.start()
        assert httpx.get(f"{ops}/healthz", timeout=5).status_code == 200  # answers, alive
        writer.join(60)
        (r,) = answers
        assert r.status_code == 503 and "not applied" in r.text, r.text
        assert "stalled" in r.text
        h = httpx.get(f"{ops}/healthz", timeout=5)  # alive, saying the disk stalls
        assert h.status_code == 200 and h.json().get("intent_journal") == "stalled", h.text
        ready = httpx.get(f"{ops}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["checks"]["intent_journal"]["ok"] is False
        metrics = httpx.get(f"{ops}/metrics", timeout=10).text
        assert "tlog_proxy_intent_journal_stalled 1.0" in metrics
        assert "tlog_proxy_intent_stalls_total 1.0" in metrics
        assert run_tool("fsfreeze", "-u", str(ext4)).returncode == 0
        frozen = False
        assert delete(2).status_code == 204  # thawed: writes taken again
        assert httpx.get(f"{ops}/readyz", timeout=10).status_code == 200
    finally:
        if frozen:
            run_tool("fsfreeze", "-u", str(ext4))
        stop_processes([proc])
    assert ("DELETE", "/v2/Users/u1") not in seen  # refused before the SP
    applied = {f"r{i}" for i in (0, 2)}
    assert [p for m, p in seen if m == "DELETE"] == ["/v2/Users/u0", "/v2/Users/u2"]
    for run in range(2):  # every applied write has one event, after a restart too
        events = outbox_events(outbox)
        assert {r: len(v) for r, v in events.items()} == dict.fromkeys(applied, 1), (run, events)
        if run == 0:
            proc, _ = start_proxy(tmp_path, upstream, log, "t0k", "acme", *flags, outbox=outbox)
            stop_processes([proc])
