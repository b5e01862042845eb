"""What the store-tool tests (``tlog migrate``, ``tlog backup``) share: a log with every
kind of record, and a store's tables read whole."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from client.formats.note import Ed25519Signer, sign_note
from tests.scim_service.conftest import open_harness, user_event
from tlog.backend import TABLES, Backend
from tlog.migrate import MARKER, open_location


def tables(st: Backend) -> dict[str, list[tuple[bytes, bytes]]]:
    with st.read() as rv:
        return {t: list(rv.raw(t)) for t in TABLES}


def populate(data: Path) -> None:
    """A log with every kind of record: entries, tokens, SCIM records, a cosignature."""
    with open_harness(data) as h:
        for i in range(40):
            ev = user_event(f"u-{i:03d}", req=f"req-{i:04d}")
            assert h.post_event(ev).status_code in (200, 201)
        assert h.client.post(
            "/v1/entries", content=b"plain entry", headers=h.h("sub1")
        ).status_code in (200, 401, 403)
        note = h.log.latest.note
        witness = Ed25519Signer("witness.example/w", b"\x05" * 32)
        line = sign_note(note.split("\n\n")[0] + "\n", [witness]).splitlines()[-1]
        h.log.storage.put_cosignatures(h.log.latest.size, (line + "\n").encode())


# Runs ``tlog migrate`` in a process of its own that kills itself with SIGKILL at the named
# point (a real kill -9 at an exact place: nothing after it runs, no cleanup, no flush).
CHILD = r"""
import os, signal, sys
import tlog.migrate as m
from tlog.storage import Storage
from tlog.pg import PgStorage

point, src, dst = sys.argv[1:4]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

for cls in (Storage, PgStorage):
    set_meta, load_raw, delete_meta = cls.set_meta, cls.load_raw, cls.delete_meta

    def patched_set_meta(self, key, value, _o=set_meta):
        if point == "before-marker" and key == m.MARKER:
            die()
        return _o(self, key, value)

    def patched_load_raw(self, table, items, _o=load_raw):
        if point == "before-first-record":
            die()
        if point == "between-tables" and table == "tokens":
            die()
        if point == "inside-a-table" and table == "entries":
            def some(items=items):
                for n, kv in enumerate(items):
                    if n == 5:
                        die()  # 5 records written in the table's open transaction
                    yield kv
            return _o(self, table, some())
        return _o(self, table, items)

    def patched_delete_meta(self, key, _o=delete_meta):
        if point == "before-marker-removed":
            die()
        return _o(self, key)

    cls.set_meta, cls.load_raw = patched_set_meta, patched_load_raw
    cls.delete_meta = patched_delete_meta

fsck, calls = m.fsck, []

def patched_fsck(store, *a, **k):
    calls.append(1)
    if point == "after-last-record" and len(calls) == 2:  # the copy's check
        die()
    return fsck(store, *a, **k)

m.fsck = patched_fsck
from tlog.cli import main
sys.exit(main(["migrate", "--from", src, "--to", dst]))
"""

POINTS = [
    "before-marker",
    "before-first-record",
    "inside-a-table",
    "between-tables",
    "after-last-record",
    "before-marker-removed",
]


def copy_of(source_log: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(source_log, data)
    return data


def killed_at(point: str, src: str, dst: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, point, src, dst],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


@contextmanager
def store_at(location: str) -> Iterator[Backend]:
    with open_location(location, create=False) as st:
        yield st


def marker_of(location: str) -> bytes | None:
    with store_at(location) as st, st.read() as rv:
        return rv.meta(MARKER)


def contents_of(location: str) -> dict[str, list[tuple[bytes, bytes]]]:
    with store_at(location) as st:
        return tables(st)
