"""Red team 8, attack 5: LMDB full under a real ``tlog serve`` committing SCIM batches,
single SCIM events and raw entries: the map (``--map-size`` 1 MiB) full in the middle of
them, and the data directory's file system (a tmpfs of a few MB) full.

Expected: a full map grows and nothing fails; a full disk is a clear 503 ("disk full"),
reads keep answering, writes resume by themselves once there is room; every acknowledged
submission is in the log once with a verified inclusion proof, the store opens afterwards
and ``tlog fsck`` is clean. (tests/server/test_corruption.py covers both in process, raw
entries only.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tests.pgsupport import open_store
from tests.support import ServerProcess, start_server, tlog_cli

from .redteam8_load import (
    KINDS,
    Load,
    check_after,
    clear_503,
    fill_then_free,
    make_token,
    small_tmpfs,
)

pytestmark = [pytest.mark.slow, pytest.mark.lmdb_only("LMDB's own map and file")]


def _entries(data: Path) -> list[bytes]:
    st = open_store(None, data / "db")
    try:
        with st.read() as rv:
            return rv.entries(0, rv.tree_size())
    finally:
        st.close()


def _finish(data: Path, srv: ServerProcess, load: Load, vkey: str) -> str:
    srv.stop()  # the store is checked closed, as fsck and a restart open it
    fs = tlog_cli("fsck", "--data", str(data))
    assert fs.returncode == 0, fs.stdout + fs.stderr
    again = start_server(data, None)
    try:
        check_after(load, again.url, vkey, _entries_via(again), clear_503)
    finally:
        again.stop()
    out = (data.parent / f"{data.name}-server.log").read_text()
    assert "Exception in ASGI application" not in out, out[-5000:]
    return out


def _entries_via(srv: ServerProcess) -> list[bytes]:
    """Every entry, as the restarted server serves them (the store opened again)."""
    size = int(httpx.get(srv.url + "/v1/log").json()["tree_size"])
    out = []
    with httpx.Client(timeout=30) as c:
        for i in range(size):
            r = c.get(f"{srv.url}/v1/entries/{i}")
            assert r.status_code == 200, r.text
            out.append(r.content)
    return out


def test_map_full_in_the_middle_of_scim_batches(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = start_server(data, None, "--map-size", str(1 << 20))
    load = Load(srv.url, "")
    try:
        token = make_token(data, None, "--role", "submitter", "--tenant", "acme")
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        load = Load(srv.url, token)
        load.start()
        load.wait_acked(1500, bound=120)
        load.stop()
    finally:
        load.stop()
    assert not load.failures(), [(a.kind, a.status, a.text[:200]) for a in load.failures()]
    out = _finish(data, srv, load, vkey)
    assert "LMDB map was full: grew it" in out, out[-3000:]


def test_data_directory_full_during_scim_batches(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "mnt", "16m") as mnt:
        data = mnt / "data"
        srv = start_server(data, None)
        load = Load(srv.url, "")
        try:
            token = make_token(data, None, "--role", "submitter", "--tenant", "acme")
            vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
            load = Load(srv.url, token)
            fill_then_free(mnt, load, srv.url, leave=2 << 20, says="disk full")
            after = {k: load.one(k).status for k in KINDS}
            assert set(after.values()) == {200}, after
        finally:
            load.stop()
            srv.stop()
        out = _finish(data, srv, load, vkey)
        assert "DISK FULL" in out, out[-3000:]
        # The server log is on the tmpfs too: leave the mount empty for umount.
        shutil.rmtree(data, ignore_errors=True)
