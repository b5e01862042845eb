"""Red team 31, attack 3 (the proxy): ``tlog scim-proxy`` stopped (SIGSTOP) with writes on
their way in, longer than its clients wait, then continued (SIGCONT), the log down (the
outbox keeps every event).

Expected: the waiting clients time out (a stopped process acknowledges nothing); after the
resume, every write the SP received has exactly one event and no event is of a write the SP
did not receive; writes after the resume are answered as usual."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import start_proxy, stop_processes

from .helpers import (
    outbox_events,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

pytestmark = pytest.mark.slow


def test_a_paused_proxy_records_each_write_the_sp_got_once(
    tmp_path: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, seen = sp
    outbox = tmp_path / "outbox.sqlite"
    proc, base = start_proxy(
        tmp_path, upstream, "http://127.0.0.1:9", "t0k", "acme", "--log-key-tofu", outbox=outbox
    )

    def delete(i: int, timeout: float) -> httpx.Response:
        headers = {"Authorization": "Bearer sp-token", "X-Request-Id": f"r{i}"}
        return httpx.delete(f"{base}/Users/u{i}", headers=headers, timeout=timeout)

    try:
        assert delete(0, 60).status_code == 204
        got: dict[int, Any] = {}

        def client(i: int) -> None:
            try:
                got[i] = delete(i, 3).status_code
            except httpx.HTTPError as exc:
                got[i] = exc

        threads = [threading.Thread(target=client, args=(i,)) for i in (1, 2, 3)]
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not any(t.is_alive() for t in threads)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert all(isinstance(v, httpx.TimeoutException) for v in got.values()), got
        assert delete(4, 60).status_code == 204  # answered as usual after the resume
    finally:
        stop_processes([proc])
    events = outbox_events(outbox)
    applied = sorted(p for m, p in seen if m == "DELETE")
    # Each write the SP received has one event; none is of a write it did not receive.
    assert {f"/v2/Users/u{r[1:]}" for r in events} == set(applied), (sorted(events), applied)
    assert all(len(v) == 1 for v in events.values()), events
    assert len(applied) == len(set(applied)), applied
    assert {"r0", "r4"} <= set(events), sorted(events)
