"""ops31: review 39's two readiness fixes of the proxy, each with real processes (a real
``tlog serve``, a real ``tlog scim-proxy`` whose outbox and intent journal lie on a
loop-mounted ext4). Before, each was fixed without a test of its own.

R1: with ``--durable-intents``, an outbox add refused (its disk full) while the log was up
was delivered to the log directly, and that direct delivery kept ``/.tlog/readyz`` at 200
after the disk went read-only and every write was refused (its intent could not be
flushed) until a restart. O1: the outbox's disk stalled after an add failed (the log down,
so no direct delivery either): the last reading, made before the failure, still said writes
were taken, and readiness judged it however old."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from tests.support import (
    evict_cached,
    ext4_error,
    frozen_ext4,
    start_proxy,
    stop_processes,
    throttled_reads,
)

from .helpers import (
    fill_disk,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)
from .logserver import Log

WRITES = 400  # events in the outbox: its table then spans enough pages to read slowly

pytestmark = [pytest.mark.slow, pytest.mark.lmdb_only("the proxy's outbox disk is what fails")]


def _delete(base: str, i: int) -> httpx.Response:
    headers = {"Authorization": "Bearer sp-token", "X-Request-Id": f"r{i}"}
    return httpx.delete(f"{base}/Users/u{i}", headers=headers, timeout=60)


def test_r1_a_direct_delivery_before_the_disk_went_read_only_does_not_keep_it_ready(
    tmp_path: Path, log: Log, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, seen = sp
    sub, _ = log.tokens("acme")
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 32, "errors=remount-ro") as mnt:
        outbox = mnt / "outbox.sqlite"
        proc, base = start_proxy(
            tmp_path, upstream, log.url, sub, "acme", "--durable-intents", outbox=outbox
        )
        ops = base.rsplit("/v2", 1)[0] + "/.tlog"
        try:
            assert _delete(base, 0).status_code == 204
            fill_disk(mnt / "filler")
            # The add is refused (the disk is full; the intent fits the journal's file made
            # ahead): the event goes to the log directly, and the write is answered.
            direct = [_delete(base, i) for i in range(1, 4)]
            assert all(r.status_code == 204 for r in direct), [r.text for r in direct]
            status = httpx.get(ops + "/status", timeout=60).json()
            assert status["writes_taken"] is True, status  # the direct delivery works
            ext4_error(mnt)
            r = _delete(base, 4)
            assert r.status_code == 503 and "not applied" in r.text, (r.status_code, r.text)
            assert "/v2/Users/u4" not in [p for _, p in seen]
            ready = httpx.get(ops + "/readyz", timeout=60)
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["outbox"]["writes_taken"] is False, ready.text
        finally:
            stop_processes([proc])


def test_o1_a_slow_disks_last_reading_does_not_say_writes_are_taken_after_a_failed_add(
    tmp_path: Path, log: Log, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, _ = sp
    sub, _ = log.tokens("acme")
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 64) as mnt:
        outbox = mnt / "outbox.sqlite"
        proc, base = start_proxy(
            tmp_path, upstream, log.url, sub, "acme", "--intent-wait", "1", outbox=outbox
        )
        ops = base.rsplit("/v2", 1)[0] + "/.tlog"
        try:
            with httpx.Client(timeout=60) as client:
                assert _delete(base, 0).status_code == 204
                log.srv.stop()  # no direct delivery from now on; the outbox keeps events
                for i in range(1, WRITES + 1):  # enough pages for a slow read of them
                    assert _delete(base, i).status_code == 204
                ready = client.get(ops + "/readyz")  # the reading that will be old
                assert ready.status_code == 200, ready.text
                # a commit since that read: the proxy's reader drops its own page cache at
                # its next read, which then goes to the disk (a first add refused below
                # commits nothing, and the read would be answered from memory, fresh)
                assert _delete(base, WRITES + 1).status_code == 204
                fill_disk(mnt / "filler")
                # the next adds that need a new block are refused ("could not be recorded";
                # a WAL reused after a checkpoint may take a few more first)
                for i in range(WRITES + 2, WRITES + 200):
                    if _delete(base, i).status_code == 503:
                        break
                else:
                    raise AssertionError("the full disk took every add")
                with throttled_reads(mnt, proc.pid, iops=3):
                    # The throttled read is slow, answered from the last reading, made
                    # before the failed add. CI once saw it answered fresh within the bound
                    # (its pages still cached somewhere): then it is asked again, the cache
                    # dropped again; a fresh answer must not say writes are taken either.
                    for _ in range(5):
                        evict_cached(
                            *(p for p in mnt.iterdir() if p.name.startswith("outbox.sqlite"))
                        )
                        s = client.get(ops + "/status").json()
                        ready = client.get(ops + "/readyz")
                        assert ready.status_code == 503, ready.text
                        outbox_check = ready.json()["checks"]["outbox"]
                        assert outbox_check["writes_taken"] is False, ready.text
                        assert s.get("writes_taken") is False, s
                        if s.get("disk_slow") is True:  # the last reading, made before
                            break
        finally:
            stop_processes([proc])
