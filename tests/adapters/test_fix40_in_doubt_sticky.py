"""fix40: the proxy's outbox and intent journal after a commit found in doubt (its file
system said read-only right after an fsync that answered success: older kernels answer it
from the page cache, ops31). Found (review 40): once the file system took writes again, the
next add was acknowledged, appended after the in-doubt WAL frame that SQLite's recovery may
drop at the next start, and with it every frame after it: an acknowledged event lost. The
same held for the intent journal's flushes.

Expected, as ``tlog serve``'s store (``Storage.in_doubt``): from that commit on, every add
and probe of the outbox is refused (OutboxError, which the middleware answers as after any
failed add: a direct delivery, else 503 before the SP), its backlog (``/.tlog/readyz``) is
refused with the reason, and every intent is refused, until a restart; events already
queued stay deliverable. A ``statvfs`` that fails itself is as much in doubt, an
OutboxError, not a raw OSError. In process, with :class:`tests.support.OlderKernel`
answering ``statvfs`` as that kernel does on real files; each test failed before the fix."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import pytest

from client.adapters.outbox import IntentJournal, Outbox, OutboxError, OutboxRecord
from tests.support import OlderKernel


def _record(i: int) -> OutboxRecord:
    return OutboxRecord(f"e{i}", f"r{i}", f'{{"eid": "e{i}"}}')


def test_an_outbox_in_doubt_takes_no_add_until_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = OlderKernel(monkeypatch, tmp_path)
    ob = Outbox(tmp_path / "outbox.sqlite")
    try:
        ob.add([_record(0)]).result(timeout=60)
        kernel.fail()
        with pytest.raises(OutboxError, match="may not be on its disk"):
            ob.add([_record(1)]).result(timeout=60)
        kernel.failed = False  # the operator remounts read-write, without a restart
        # never appended after the in-doubt frame: refused, saying to restart
        with pytest.raises(OutboxError, match="restart"):
            ob.add([_record(2)]).result(timeout=60)
        with pytest.raises(OutboxError, match="restart"):
            asyncio.run(ob.add_async([_record(3)]))
        with pytest.raises(OutboxError, match="restart"):
            ob.probe().result(timeout=60)  # writes are not taken again by a probe
        with pytest.raises(OutboxError, match="restart"):
            ob.backlog()  # /.tlog/status and readyz: 503 with the reason
        # the events queued before stay deliverable
        assert [p.eid for p in ob.pending()][:1] == ["e0"]
    finally:
        ob.close()
    ob = Outbox(tmp_path / "outbox.sqlite")  # the restart: adds are taken again
    try:
        ob.add([_record(2)]).result(timeout=60)
        assert ob.backlog()["pending"] == 3  # e0, e1 (this file system kept it), e2
    finally:
        ob.close()


def test_a_failing_statvfs_after_an_outbox_commit_is_an_outbox_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "outbox.sqlite"
    ob = Outbox(db)
    try:
        ob.add([_record(0)]).result(timeout=60)
        real = os.statvfs

        def statvfs(path: Any) -> Any:
            if str(path) == str(db):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(path)

        monkeypatch.setattr(os, "statvfs", statvfs)
        with pytest.raises(OutboxError, match="Input/output error"):
            ob.add([_record(1)]).result(timeout=60)
        monkeypatch.setattr(os, "statvfs", real)
        with pytest.raises(OutboxError, match="restart"):
            ob.add([_record(2)]).result(timeout=60)
    finally:
        ob.close()


def test_a_durable_intent_journal_in_doubt_takes_no_intent_until_a_restart(
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
        with pytest.raises(OSError, match="may not be on"):
            await journal.synced(doubt)
        kernel.failed = False  # remounted read-write, without a restart
        with pytest.raises(OSError, match="restart"):
            later = journal.begin({"p": "/Users/later"})
            await journal.synced(later)

    try:
        asyncio.run(run())
        assert journal.in_doubt is not None and "restart" in journal.in_doubt
    finally:
        journal.close(remove=True)
