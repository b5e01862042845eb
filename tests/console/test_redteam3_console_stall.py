"""The console's handlers never wait for the store on the event loop.

``GET /v1/ui/summary`` (public, no token) read the store on the event loop: up to
:data:`tlog.ui.HISTORY_POINTS` checkpoint lookups plus an entry and cosignature read per
point (over a hundred round trips on PostgreSQL) for every request, and with a stalled
store (a frozen disk, a database that does not answer) the whole server stopped: no
``/healthz``, no ``/checkpoint``, no other tenant's request, for anyone who asked for the
summary. ``POST /v1/scim/exports`` looked its token up on the event loop too. Both now run
their storage work on the read threads (:class:`tlog.reads.ReadPool`), bounded by
``--storage-timeout`` (503 "has not answered"), like every other endpoint
(tests/server/test_stall.py).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server.stall import WAIT, Gate, Served, fill, serve


def _held(s: Served) -> None:
    assert isinstance(s.gate, Gate)
    for _ in range(int(WAIT * 100)):  # until the request waits in the store (a hang bound)
        if s.gate.blocked:
            return
        time.sleep(0.01)
    raise AssertionError("the request never reached the store")


@pytest.mark.parametrize("method,path", [("GET", "/v1/ui/summary"), ("POST", "/v1/scim/exports")])
def test_a_stalled_store_does_not_stop_the_server_for_the_console(
    tmp_path: Path, database: str | None, method: str, path: str
) -> None:
    with serve(tmp_path, "read", database=database) as s, ThreadPoolExecutor(2) as pool:
        fill(s)
        s.gate.open.clear()  # the store stops answering
        headers = {"Authorization": f"Bearer {s.tokens['t2']}"}  # not cached yet
        slow = pool.submit(
            httpx.request,
            method,
            s.url + path,
            headers=headers,
            json={"sink": "x"} if method == "POST" else None,
            timeout=WAIT,
        )
        _held(s)
        # Meanwhile the server answers everyone from memory.
        assert s.get("/healthz").status_code == 200
        assert s.get("/checkpoint").text == s.log.latest.note
        r = slow.result(WAIT)
        assert r.status_code == 503, r.text
        assert "has not answered" in r.json()["error"]
        s.gate.open.set()
        if method == "GET":
            ok = s.get(path)
            assert ok.status_code == 200 and ok.json()["tree_size"] == 300
