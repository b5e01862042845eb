"""Ops30: a slow outbox disk is not a stalled one, and the middleware's own bounded reads.

* Stall29 bounded the reads of ``tlog scim-proxy``'s ``/.tlog/`` endpoints by
  ``--intent-wait``, but called every read longer than that a stall: on a loaded or
  throttled disk ``/.tlog/readyz`` said 503 ``disk_stalled`` and a healthy proxy was shed
  from its load balancer. Now a read longer than the bound is a stall only when its thread
  has not run for half the bound (held in one wait by the kernel); a read that moves is
  slow: status says ``disk_slow`` with the last reading and its age, readiness stays 200,
  ``tlog_proxy_disk_slow`` is 1. Tested with the real proxy process whose reads of the
  outbox's loop device the kernel throttles (cgroup blkio), and with a frozen one
  (``fsfreeze``), which still says ``disk_stalled``.
* An app embedding the middleware had the stall fields (``backlog()``) but not the bounded
  reads: ``backlog()`` on a frozen disk waits for the thaw. ``AuditMiddleware.ops_state()``
  is the proxy's bounded read, for the app's own status and readiness.

The clients' timeouts are bounds: reached, they are a hang (a failure)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.adapters.exchange import AuditConfig
from client.adapters.forwarder import Forwarder
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Outbox
from tests.support import (
    evict_cached,
    frozen_ext4,
    run_tool,
    start_proxy,
    stop_processes,
    throttled_reads,
)

from .durable_intents import patch
from .helpers import standin_sp  # noqa: F401  (the SP stand-in fixture, "sp")

pytestmark = pytest.mark.slow

LOG_DOWN = "http://127.0.0.1:9"  # the log down: the outbox keeps every event
BOUND = 60  # seconds a client or the test waits at most: reached, it is a hang (a failure)
WRITES = 400  # events in the outbox: its table then spans enough pages to read slowly


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    yield from frozen_ext4(tmp_path, size_mib=64)


def _delete(base: str, i: int, client: httpx.Client) -> int:
    headers = {"Authorization": "Bearer sp-token", "X-Request-Id": f"r{i}"}
    return client.delete(f"{base}/Users/u{i}", headers=headers, timeout=BOUND).status_code


def test_a_slow_outbox_read_is_not_a_stall_and_a_frozen_one_is(
    tmp_path: Path, ext4: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, _ = sp
    outbox = ext4 / "outbox.sqlite"
    proc, base = start_proxy(
        tmp_path, upstream, LOG_DOWN, "t0k", "acme", "--intent-wait", "1", outbox=outbox
    )
    ops = base.rsplit("/v2", 1)[0] + "/.tlog"
    frozen = False
    try:
        with httpx.Client() as client:
            for i in range(WRITES):
                assert _delete(base, i, client) == 204
            s = client.get(f"{ops}/status", timeout=BOUND).json()
            assert s["pending"] == WRITES and s["disk_stalled"] is False, s
            # a commit since that read (the proxy's reader drops its own page cache at its
            # next read), and the outbox's pages out of the kernel's: the next read of the
            # backlog reads every page of the table from the disk
            assert _delete(base, WRITES, client) == 204
            evict_cached(*(p for p in ext4.iterdir() if p.name.startswith("outbox.sqlite")))
            with throttled_reads(ext4, proc.pid, iops=3):
                # slow (a page every 0.33 s, more than the 1 s bound in all) but moving: the
                # last reading, said slow; ready; not stalled
                s = client.get(f"{ops}/status", timeout=BOUND).json()
                assert s["disk_stalled"] is False, s
                assert s["disk_slow"] is True and s["pending"] == WRITES, s
                assert s["reading_age_ms"] >= 0
                r = client.get(f"{ops}/readyz", timeout=BOUND)
                assert r.status_code == 200, r.text
                assert r.json()["checks"]["disk"] == {
                    "ok": True,
                    "slow": True,
                    "reading_age_ms": r.json()["checks"]["disk"]["reading_age_ms"],
                }
                m = client.get(f"{ops}/metrics", timeout=BOUND).text
                assert "tlog_proxy_disk_stalled 0.0" in m and "tlog_proxy_disk_slow 1.0" in m, m
                assert "tlog_proxy_outbox_pending_events" in m
                assert "stalled" not in client.get(f"{ops}/healthz", timeout=BOUND).text
            # unthrottled: the slow read ends, and the next reading is fresh
            deadline = time.monotonic() + BOUND
            while True:
                s = client.get(f"{ops}/status", timeout=BOUND).json()
                if "disk_slow" not in s or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert s["pending"] == WRITES + 1 and s["disk_stalled"] is False, s
            # frozen: the read's thread is held in one wait, not run: a stall, at once
            assert _delete(base, WRITES + 1, client) == 204
            assert run_tool("fsfreeze", "-f", str(ext4)).returncode == 0
            frozen = True
            s = client.get(f"{ops}/status", timeout=BOUND).json()
            assert s["disk_stalled"] is True and "pending" not in s, s
            assert "disk_slow" not in s
            r = client.get(f"{ops}/readyz", timeout=BOUND)
            assert r.status_code == 503 and r.json()["checks"]["disk"]["ok"] is False, r.text
            m = client.get(f"{ops}/metrics", timeout=BOUND).text
            assert "tlog_proxy_disk_stalled 1.0" in m and "tlog_proxy_disk_slow 0.0" in m, m
            assert run_tool("fsfreeze", "-u", str(ext4)).returncode == 0
            frozen = False
            deadline = time.monotonic() + BOUND
            while True:  # (the read the freeze held may first be answered slow)
                s = client.get(f"{ops}/status", timeout=BOUND).json()
                fresh = s.get("disk_stalled") is False and "disk_slow" not in s
                if fresh or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert s["pending"] == WRITES + 2 and "disk_slow" not in s, s
    finally:
        if frozen:
            run_tool("fsfreeze", "-u", str(ext4))
        stop_processes([proc])


def test_the_middleware_ops_state_answers_on_a_frozen_disk(
    ext4: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, seen = sp

    async def main() -> list[dict[str, object]]:
        ob = Outbox(ext4 / "outbox.sqlite")
        fwd = Forwarder(upstream)
        mw = AuditMiddleware(fwd, AuditConfig(tenant="acme", sp_id="sp1", intent_wait=1), ob)
        mw.intent_recovery_interval = 0
        mw.start()
        got: list[dict[str, object]] = []
        frozen = False
        try:
            got.append(await asyncio.wait_for(mw.ops_state(), BOUND))
            # a commit since that read: the next one writes its read mark into the WAL's
            # shared memory, which the freeze holds (backlog() would wait for the thaw)
            assert await patch(mw, "/v2/Users/u0") == 200
            assert run_tool("fsfreeze", "-f", str(ext4)).returncode == 0
            frozen = True
            for _ in range(2):  # the read held since, and a second one
                got.append(await asyncio.wait_for(mw.ops_state(), BOUND))
            assert run_tool("fsfreeze", "-u", str(ext4)).returncode == 0
            frozen = False
            deadline = time.monotonic() + BOUND
            while True:  # (the read the freeze held may first be answered slow)
                last = await asyncio.wait_for(mw.ops_state(), BOUND)
                fresh = last.get("disk_stalled") is False and "disk_slow" not in last
                if fresh or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            got.append(last)
        finally:
            if frozen:
                run_tool("fsfreeze", "-u", str(ext4))
            await asyncio.to_thread(mw.close)
            await fwd.aclose()
            ob.close()
        return got

    before, held, again, after = asyncio.run(main())
    assert before["disk_stalled"] is False and before["pending"] == 0, before
    for doc in (held, again):
        assert doc["disk_stalled"] is True and "stalled" in str(doc["error"]), doc
        assert "pending" not in doc  # no figure the disk would have to give
    assert after["disk_stalled"] is False and after["pending"] == 1, after
    assert "disk_slow" not in after, after
    assert seen == [("PATCH", "/v2/Users/u0")]
