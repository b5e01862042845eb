"""Red team 27: a real ``tlog-witness serve`` whose state database is on a file system that
stalls (``fsfreeze -f`` on a loop-mounted ext4: a hung disk).

Found: a push waited for the thaw (82 s in a trial), with no answer and no log line, and
``/readyz`` too (a read of SQLite's WAL writes its shared-memory map, whose page waits for
the thaw like a write): red team 5's stalled-state test holds the state's *lock*, which
SQLite's busy timeout bounds; a frozen disk has no such bound. Now every wait on the state
ends after ``state_timeout`` seconds (config; default 60) in a 503 saying so, nothing
cosigned, and ``/readyz`` is 503. After the thaw the witness cosigns again, consistently
with whatever the stalled push left in its state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.witness.store import WitnessStore
from tests.support import frozen_ext4, run_tool
from tests.witness.helpers import (
    FakeLog,
    events,
    serve_process,
    served_url,
    stop_serving,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    yield from frozen_ext4(tmp_path)


def test_a_stalled_state_disk_is_a_503_not_a_hang_and_cosigns_nothing(ext4: Path) -> None:
    log = FakeLog(events(60))
    cfg = write_config(ext4, log)
    cfg.write_text("state_timeout = 2\n" + cfg.read_text())
    proc = serve_process(cfg)
    try:
        url, _ = served_url(proc)
        with httpx.Client(timeout=30) as http:
            assert http.post(url + "/add-checkpoint", content=log.body(0, 20)).status_code == 200
            assert run_tool("fsfreeze", "-f", str(ext4)).returncode == 0
            try:
                r = http.post(url + "/add-checkpoint", content=log.body(20, 30))
                assert r.status_code == 503, (r.status_code, r.text)
                assert "did not answer" in r.text and "no cosignature was returned" in r.text, (
                    r.text
                )
                r = http.get(url + "/readyz")
                assert r.status_code == 503 and "did not answer" in r.text, r.text
                assert http.get(url + "/healthz").status_code == 200
            finally:
                assert run_tool("fsfreeze", "-u", str(ext4)).returncode == 0
            # the stalled push may have committed size 30 after the thaw (never answered):
            # the witness names its size, and the log's next push from there is cosigned
            r = http.post(url + "/add-checkpoint", content=log.body(20, 40))
            if r.status_code == 409:
                assert r.text.strip() == "30", r.text
                r = http.post(url + "/add-checkpoint", content=log.body(30, 40))
            assert r.status_code == 200, (r.status_code, r.text)
            assert http.get(url + "/readyz").status_code == 200
    finally:
        run_tool("fsfreeze", "-u", str(ext4))
        stop_serving(proc)
    store = WitnessStore(ext4 / "state.db")
    try:
        latest = store.latest(log.origin)
        assert latest is not None and latest.size == 40
    finally:
        store.close()
