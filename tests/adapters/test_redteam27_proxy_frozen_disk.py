"""Red team 27: ``tlog scim-proxy`` whose outbox (and so its intent journal) is on a file
system that stalls (``fsfreeze`` on a loop-mounted ext4: a hung disk, a frozen snapshot).

Found, not fixed: the first write after the freeze blocks the proxy's event loop itself.
Its intent is written into the journal's shared memory map on the loop (by design: no
system call there), and a write to a page of a frozen file system waits in the kernel
(``ext4_page_mkwrite``) until the thaw. Every request then hangs, ``/.tlog/healthz`` and
``/.tlog/readyz`` included, with no error and no log line; nothing is lost (the writes are
forwarded and recorded after the thaw). A fix must take the journal's page faults off the
loop without a system call per write there (docs/testing.md, red team 27): kept here as a
strict ``xfail``, a ready reproduction."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import start_proxy, stop_processes

from .helpers import (
    frozen_ext4,
    run_tool,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

pytestmark = pytest.mark.slow


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    yield from frozen_ext4(tmp_path)


@pytest.mark.xfail(
    strict=True,
    raises=httpx.ReadTimeout,
    reason="the intent journal's memory map is written on the event loop (red team 27)",
)
def test_redteam27_a_frozen_outbox_disk_does_not_freeze_the_proxy(
    tmp_path: Path, ext4: Path, sp: tuple[str, list[tuple[str, str]]]
) -> None:
    upstream, _ = sp
    proc, base = start_proxy(
        tmp_path,
        upstream,
        "http://127.0.0.1:9",
        "t0k",
        "acme",
        "--log-key-tofu",
        outbox=ext4 / "outbox.sqlite",
    )
    ops = base.rsplit("/v2", 1)[0] + "/.tlog"
    headers = {"Authorization": "Bearer sp-token"}
    writer: threading.Thread | None = None
    try:
        assert httpx.delete(f"{base}/Users/u0", headers=headers, timeout=30).status_code == 204
        assert run_tool("fsfreeze", "-f", str(ext4)).returncode == 0
        done = threading.Event()

        def write() -> None:
            try:
                httpx.delete(f"{base}/Users/u1", headers=headers, timeout=60)
            except httpx.HTTPError:
                pass
            done.set()

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        done.wait(2)  # the write reaches the proxy (answered or held)
        # the promise: whatever the write's fate, the proxy answers its own endpoints
        r = httpx.get(f"{ops}/healthz", timeout=5)
        assert r.status_code == 200
    finally:
        run_tool("fsfreeze", "-u", str(ext4))
        if writer is not None:
            writer.join(60)
        stop_processes([proc])
