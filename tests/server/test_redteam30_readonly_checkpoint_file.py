"""Red team 30, attack 1: the file system of ``tlog serve``'s remembered checkpoint
(``--checkpoint-file`` on another device than the store, as docs/operations.md advises)
goes read-only under the running server, on LMDB and on PostgreSQL (the store stays
writable). Found: every write was answered 503 as it should, but ``/readyz`` said ready."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest

from tests.support import ext4_error, ext4_repair, frozen_ext4, start_server, token_for

from .acked import acknowledge as _acknowledge
from .acked import proves as _proves
from .acked import submit as _submit

pytestmark = pytest.mark.slow


def test_the_remembered_checkpoint_file_system_going_read_only(
    tmp_path: Path, database: str | None
) -> None:
    """``--checkpoint-file`` on another device (as the docs advise) whose file system goes
    read-only while the store's stays writable: a batch is committed to the store but its
    checkpoint cannot be remembered, so nothing is acknowledged or handed out (503 saying
    why), ``/readyz`` is 503, reads go on; after the repair and a restart the log serves
    what was acknowledged (and the unacknowledged committed entries, which a retry finds
    as duplicates), consistent with every checkpoint handed out."""
    data = tmp_path / "data"
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 32, "errors=remount-ro") as mnt:
        remembered = mnt / "last-checkpoint"
        srv = start_server(data, None, "--checkpoint-file", str(remembered), database=database)
        try:
            token = token_for(data, database, "--role", "submitter", "--tenant", "acme")
            vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
            acked = _acknowledge(srv, token, 4, "before")
            before = httpx.get(srv.url + "/checkpoint").text
            ext4_error(mnt)
            r = _submit(srv, token, b"refused-0")
            assert r.status_code == 503, (r.status_code, r.text)
            assert "Read-only file system" in r.json()["error"], r.text
            ready = httpx.get(srv.url + "/readyz", timeout=30)
            assert ready.status_code == 503, ready.text
            assert httpx.get(srv.url + "/checkpoint").text == before  # nothing new handed out
            assert _proves(srv, vkey, acked) == 4
        finally:
            srv.stop()
        ext4_repair(tmp_path)
        again = start_server(data, None, "--checkpoint-file", str(remembered), database=database)
        try:
            size = _proves(again, vkey, acked)
            assert size in (4, 5), size
            r = _submit(again, token, b"refused-0")  # the client's retry
            assert r.status_code == 200, r.text
            assert _proves(again, vkey, acked) == 5
        finally:
            again.stop()
