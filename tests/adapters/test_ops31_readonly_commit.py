"""ops31: the proxy's outbox add and durable intent flushed on a file system that went
read-only before any write was refused (ext4 ``errors=remount-ro``). A WAL frame over an
existing WAL (the WAL restarted after a checkpoint) and an intent line in the journal's
file of fixed size need no new block, and the kernels that mark ext4 read-only after an
error take them into the page cache and answer their fsync with 0. Each is now checked
against the file system's ``statvfs`` after the fsync and before it counts: read-only
there, the add fails (the middleware then fails closed, as after any failed add: red team
30) and the intent is not synced (the write is refused before the SP).

The real-ext4 test (a real ``tlog scim-proxy``, the outbox's WAL reused, checked) passes on
this machine's kernel (6.15 and later) without the check too: the kernel refuses the write
itself. The in-process tests answer ``statvfs`` as the kernel that lies does, on real
files: each failed before the check."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path

import httpx
import pytest

from client.adapters.outbox import IntentJournal, Outbox, OutboxError, OutboxRecord
from tests.support import OlderKernel, ext4_error, frozen_ext4, start_proxy, stop_processes

from .helpers import standin_sp  # noqa: F401  (the SP stand-in fixture, "sp")


def _record(i: int) -> OutboxRecord:
    return OutboxRecord(f"e{i}", f"r{i}", f'{{"eid": "e{i}"}}')


def test_an_outbox_add_the_file_system_says_read_only_after_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = OlderKernel(monkeypatch, tmp_path)
    ob = Outbox(tmp_path / "outbox.sqlite")
    try:
        ob.add([_record(0)]).result(timeout=60)
        kernel.fail()
        with pytest.raises(OutboxError, match="may not be on its disk"):
            ob.add([_record(1)]).result(timeout=60)
        with pytest.raises(OutboxError, match="may not be on its disk"):
            asyncio.run(ob.add_async([_record(2)]))
    finally:
        ob.close()


def test_a_durable_intent_the_file_system_says_read_only_after_is_not_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = OlderKernel(monkeypatch, tmp_path)
    journal = IntentJournal(tmp_path, durable=True)

    async def run() -> None:
        first = journal.begin({"p": "/Users/first"})
        await journal.synced(first)
        journal.done(first)
        kernel.fail()
        doubt = journal.begin({"p": "/Users/in-doubt"})
        with pytest.raises(OSError, match="may not be on the disk"):
            await journal.synced(doubt)

    try:
        asyncio.run(run())
    finally:
        journal.close(remove=True)


@pytest.mark.slow
def test_an_outbox_add_over_a_reused_wal_after_an_ext4_error_is_refused(
    tmp_path: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    """The log down (the outbox keeps every event), intents not durable: the first write
    after the error reaches the SP and its event's add is the commit over a reused WAL;
    it must not be acknowledged ("could not be recorded", 503), and from then on writes are
    refused before the SP and ``/.tlog/readyz`` is 503."""
    upstream, seen = sp
    log, flags = "http://127.0.0.1:9", ("--log-key-tofu",)
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 32, "errors=remount-ro") as mnt:
        outbox = mnt / "outbox.sqlite"
        proc, base = start_proxy(tmp_path, upstream, log, "t0k", "acme", *flags, outbox=outbox)
        ops = base.rsplit("/v2", 1)[0] + "/.tlog"
        wal = Path(f"{outbox}-wal")

        def delete(i: int) -> httpx.Response:
            headers = {"Authorization": "Bearer sp-token", "X-Request-Id": f"r{i}"}
            return httpx.delete(f"{base}/Users/u{i}", headers=headers, timeout=60)

        def checkpoint() -> None:
            conn = sqlite3.connect(outbox)
            try:
                assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
            finally:
                conn.close()

        try:
            for i in range(3):
                assert delete(i).status_code == 204
            checkpoint()
            grown = wal.stat().st_size
            assert delete(3).status_code == 204
            assert wal.stat().st_size == grown, "the WAL grew: not the case under test"
            checkpoint()
            os.sync()
            ext4_error(mnt)
            r = delete(4)
            assert r.status_code == 503 and "could not be recorded" in r.text, r.text
            r = delete(5)
            assert r.status_code == 503 and "not applied" in r.text, (r.status_code, r.text)
            assert "/v2/Users/u5" not in [p for _, p in seen]  # refused before the SP
            ready = httpx.get(ops + "/readyz", timeout=60)
            assert ready.status_code == 503, ready.text
        finally:
            stop_processes([proc])
