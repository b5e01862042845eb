"""Red team 30, attack 1 (the proxy): the file system under ``tlog scim-proxy``'s outbox
(and its intent journal) goes read-only while it runs (ext4 ``errors=remount-ro`` after an
error, the kernel's own path), durable intents on and off, the log down (the outbox holds
every event). Expected: a write is refused with a 503 "not applied" before it reaches the
SP (with durable intents: the intent's flush fails; without, from the first failed add on,
the first write itself reaching the SP and answered 503 "could not be recorded"),
``/.tlog/readyz`` is 503 (found: it said ready with durable intents while every write was
refused; fixed), ``/.tlog/healthz`` answers; after the operator's repair and a restart no
event is duplicated."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import httpx
import pytest

from tests.support import ext4_error, ext4_repair, frozen_ext4, start_proxy, stop_processes

from .helpers import (
    outbox_events,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("durable", [False, True], ids=["intents", "durable-intents"])
def test_a_read_only_outbox_file_system_refuses_writes_before_the_sp(
    tmp_path: Path, sp: tuple[str, list[tuple[str, str]]], durable: bool
) -> None:
    upstream, seen = sp
    extra = ("--durable-intents",) if durable else ()
    log, flags = "http://127.0.0.1:9", ("--log-key-tofu", *extra)  # the log down
    with contextlib.contextmanager(frozen_ext4)(tmp_path, 32, "errors=remount-ro") as mnt:
        outbox = mnt / "outbox.sqlite"
        proc, base = start_proxy(tmp_path, upstream, log, "t0k", "acme", *flags, outbox=outbox)
        ops = base.rsplit("/v2", 1)[0] + "/.tlog"

        def delete(i: int) -> httpx.Response:
            headers = {"Authorization": "Bearer sp-token", "X-Request-Id": f"r{i}"}
            return httpx.delete(f"{base}/Users/u{i}", headers=headers, timeout=60)

        try:
            assert delete(0).status_code == 204
            os.sync()  # only so that the test's own view is stable; the proxy syncs its own
            ext4_error(mnt)
            r = delete(1)
            if durable:  # the intent's flush fails: refused before the SP
                assert r.status_code == 503 and "not applied" in r.text, (r.status_code, r.text)
            else:
                # The intent lives in the page cache (it survives a kill of the proxy, not
                # the disk): the first write after the error reaches the SP, its event
                # cannot be stored, and the answer says so; from then on the proxy fails
                # closed.
                assert r.status_code == 503 and "could not be recorded" in r.text, r.text
            r = delete(2)
            assert r.status_code == 503 and "not applied" in r.text, (r.status_code, r.text)
            assert httpx.get(f"{ops}/healthz", timeout=10).status_code == 200
            ready = httpx.get(f"{ops}/readyz", timeout=10)
            assert ready.status_code == 503, ready.text
        finally:
            stop_processes([proc])
        applied = ["/v2/Users/u0"] if durable else ["/v2/Users/u0", "/v2/Users/u1"]
        assert [p for m, p in seen if m == "DELETE"] == applied  # the rest refused before
        mnt = ext4_repair(tmp_path)
        for run in range(2):  # every stored event once, after a restart too
            events = outbox_events(outbox)
            counts = {r: len(v) for r, v in events.items()}
            # Without durable intents, u1's change may have no event at all: its intent
            # and its event were lost with the page cache (documented: the disk's failure
            # is a machine crash for them).
            allowed = [{"r0": 1}] if durable else [{"r0": 1}, {"r0": 1, "r1": 1}]
            assert counts in allowed, (run, events)
            if run == 0:
                proc, _ = start_proxy(tmp_path, upstream, log, "t0k", "acme", *flags, outbox=outbox)
                stop_processes([proc])
