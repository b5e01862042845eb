"""fix40: a push the witness's state committed just before its file system said read-only
(:class:`client.witness.store.StateInDoubt`) is in doubt: the row stays in this process's
SQLite view, while the disk may not hold it (older kernels answer the fsync of a WAL frame
over an existing WAL from the page cache), and SQLite's recovery may drop it, with every
frame after it, at the next start. Found (review 40): the witness served that cosignature
(``GET /<hash>/checkpoint``, and gossip and its monitor read it), and once the file system
took writes again it cosigned the next push on top of it and became ready, without a
restart; after the repair and a restart the state could be back at the older size, and the
witness cosign a different root at a size it had already served (equivocation).

Expected, as ``tlog serve``'s store (``tlog.storage.Storage.in_doubt``): from that commit
on, every read of the state, every push and ``/readyz`` answer 503, saying to check the file
system, remount it and restart, until a restart; a writable file system does not clear it.
In process, with :class:`tests.support.OlderKernel` answering ``statvfs`` as that kernel
does on a real state file; each test failed before the fix."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.net.witness_client import origin_hash
from client.runtime.durable import can_write_in
from client.witness.store import StateInDoubt
from tests.support import OlderKernel
from tests.witness.helpers import FakeLog, add_status, events, make_witness, witness_serving


def test_an_in_doubt_cosignature_is_never_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FakeLog(events(40))
    (tmp_path / "state").mkdir()
    kernel = OlderKernel(monkeypatch, tmp_path / "state")
    w = make_witness(tmp_path / "state" / "state.db", [log.witnessed_log()])
    try:
        assert add_status(w, log.body(0, 10)) == 200
        kernel.fail()
        assert add_status(w, log.body(10, 20)) == 503
        # the row of size 20 is in this connection's view, but never served or built on
        with pytest.raises(StateInDoubt):
            w.checkpoint_by_hash(origin_hash(log.origin))
        with pytest.raises(StateInDoubt):
            w.latest(log.origin)  # what gossip and the monitor compare against
        assert w.store.in_doubt is not None and "restart" in w.store.in_doubt
        with witness_serving(w) as srv:
            url = f"http://127.0.0.1:{srv.server_address[1]}"
            with httpx.Client(timeout=30) as http:
                r = http.get(f"{url}/{origin_hash(log.origin)}/checkpoint")
                assert r.status_code == 503, (r.status_code, r.text)
                assert "\n20\n" not in r.text and "restart" in r.text, r.text
                r = http.get(url + "/readyz")
                assert r.status_code == 503, (r.status_code, r.text)
                assert "restart" in r.json()["state_db"], r.text
                r = http.post(url + "/add-checkpoint", content=log.body(10, 20))
                assert r.status_code == 503, (r.status_code, r.text)
                assert "restart" in r.text and "— witness.example.com/w7" not in r.text
                assert http.get(url + "/healthz").status_code == 200
    finally:
        w.store.close()


def test_a_writable_file_system_again_does_not_end_the_doubt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FakeLog(events(40))
    (tmp_path / "state").mkdir()
    kernel = OlderKernel(monkeypatch, tmp_path / "state")
    db = tmp_path / "state" / "state.db"
    w = make_witness(db, [log.witnessed_log()])
    try:
        assert add_status(w, log.body(0, 10)) == 200
        kernel.fail()
        assert add_status(w, log.body(10, 20)) == 503
        kernel.failed = False  # the operator remounts read-write, without a restart
        assert can_write_in(db.parent)
        # never cosigned on top of the in-doubt size 20, nor on top of 10 (both may be wrong)
        assert add_status(w, log.body(20, 30)) == 503
        assert add_status(w, log.body(10, 30)) == 503
        assert w.write_fault is not None
        assert w.store.in_doubt is not None
    finally:
        w.store.close()
    # the restart: a new store reads what the disk holds (here it kept the push: this
    # file system does not lie) and the log's next push is cosigned from there
    w = make_witness(db, [log.witnessed_log()])
    try:
        assert w.store.in_doubt is None
        latest = w.latest(log.origin)
        assert latest is not None and latest.size == 20
        assert add_status(w, log.body(20, 30)) == 200
    finally:
        w.store.close()


def test_a_failing_statvfs_after_a_commit_is_in_doubt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FakeLog(events(40))
    db = tmp_path / "state.db"
    w = make_witness(db, [log.witnessed_log()])
    try:
        assert add_status(w, log.body(0, 10)) == 200
        real = os.statvfs

        def statvfs(path: Any) -> Any:
            if str(path) == str(db):
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real(path)

        monkeypatch.setattr(os, "statvfs", statvfs)
        assert add_status(w, log.body(10, 20)) == 503
        assert w.store.in_doubt is not None and "Input/output error" in w.store.in_doubt
        monkeypatch.setattr(os, "statvfs", real)
        with pytest.raises(StateInDoubt):
            w.checkpoint_by_hash(origin_hash(log.origin))
    finally:
        w.store.close()
