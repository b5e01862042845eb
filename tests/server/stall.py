"""A store stalled for real under a real uvicorn in this process (tests/server/test_stall.py,
tests/console/test_redteam3_console_stall.py): the storage calls wrapped by a :class:`Gate`
(or, for a PostgreSQL commit, the state row locked by another session: :class:`RowLock`)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from client.runtime.serving import ServingThread, hardened_config, hardened_server
from tlog.log import Log
from tlog.server import build_app

from ..support import listening_socket, serve_config
from .conftest import make_signer

__all__ = ["STALL", "WAIT", "Gate", "RowLock", "Served", "fill", "serve"]

WAIT = 20.0
STALL = 1.0  # the server's storage timeout in these tests


class Gate:
    """Blocks the wrapped storage calls while closed (like a frozen file system)."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.blocked = 0  # calls currently held

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def held(*a: Any, **kw: Any) -> Any:
            if not self.open.is_set():
                self.blocked += 1
                self.open.wait(60)
                self.blocked -= 1
            return fn(*a, **kw)

        return held


class RowLock:
    """PostgreSQL stalled for real, for the commit path: while "closed", another session
    holds the state row's lock (``SELECT ... FOR UPDATE`` in an open transaction), so a
    batch's compare-and-swap UPDATE waits inside the server, as behind a stuck writer or a
    frozen disk; reads (MVCC snapshots) and token lookups go on. Same switch as
    :class:`Gate` (``open.clear()`` stalls, ``open.set()`` thaws)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Any = None
        self.open = self

    def clear(self) -> None:
        import psycopg

        conn = psycopg.connect(self._url, autocommit=False, connect_timeout=10)
        row = conn.execute("SELECT tree_size FROM tlog_state WHERE id = 1 FOR UPDATE")
        assert row.fetchone() is not None
        self._conn = conn  # the transaction stays open: the lock is held

    def set(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.rollback()
            conn.close()

    def is_set(self) -> bool:
        return self._conn is None


class Served:
    def __init__(self, url: str, log_: Log, tokens: dict[str, str], gate: Gate | RowLock) -> None:
        self.url = url
        self.log = log_
        self.tokens = tokens
        self.gate = gate

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=WAIT)

    def post(self, tenant: str, body: bytes, path: str = "/v1/entries") -> httpx.Response:
        return httpx.post(
            self.url + path,
            content=body,
            timeout=WAIT,
            headers={"Authorization": f"Bearer {self.tokens[tenant]}"},
        )


@contextmanager
def serve(
    tmp_path: Path, stall: str, timeout: float = STALL, database: str | None = None
) -> Iterator[Served]:
    """A real uvicorn serving the log in this process; ``stall``: "read", "commit" or
    "remember". The commit stalls in PostgreSQL itself (:class:`RowLock`) on that backend,
    in a wrapper of the LMDB store's commit on LMDB."""
    app, log_, tokens = build_app(
        serve_config(tmp_path / "data", database, batch_age_ms=0.0, storage_timeout=timeout),
        make_signer(),
        scim=False,
    )
    toks = {t: tokens.create("submitter", tenant=t)[0] for t in ("t1", "t2")}
    gate: Gate | RowLock = Gate()
    st = log_.storage
    if stall == "commit" and database is not None:
        gate = RowLock(database)
    elif stall == "read":
        st.read = gate.wrap(st.read)  # type: ignore[method-assign]
    elif stall == "commit":
        assert isinstance(gate, Gate)
        st.commit_batch = gate.wrap(st.commit_batch)  # type: ignore[method-assign]
    else:  # the remembered-checkpoint file's write (and fdatasync)
        assert log_.remembered is not None and isinstance(gate, Gate)
        log_.remembered.write = gate.wrap(log_.remembered.write)  # type: ignore[method-assign]
    sock = listening_socket(64)
    port = sock.getsockname()[1]
    server = hardened_server(
        hardened_config(app, "127.0.0.1", port, log_config=None, access_log=False)
    )
    serving = ServingThread(server, [sock], name="stall-server")
    try:
        serving.start()
        yield Served(f"http://127.0.0.1:{port}", log_, toks, gate)
    finally:
        gate.open.set()
        serving.stop(WAIT)
        sock.close()
        st.close()


def fill(s: Served) -> None:
    """300 entries: tile 0 is complete, so proofs and tiles below 256 are in memory."""
    body = b"".join(len(e).to_bytes(2, "big") + e for e in (b"e-%d" % i for i in range(300)))
    r = s.post("t1", body, "/v1/entries/batch")
    assert r.status_code == 200, r.text
