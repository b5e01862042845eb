"""Red team 31, attack 2 (``tlog serve``): the wall clock steps back a year under a running
``tlog serve``, through libfaketime (``LD_PRELOAD``, a ``FAKETIME_TIMESTAMP_FILE`` the test
rewrites; the machine's clock is not touched). Expected: SCIM events are still taken (no
5xx, no hang), the log time they are stamped with never goes back (the in-process
``tests/scim_service/test_clock_step.py`` has the rule; this is the real process), and the
server says at ERROR that its clock is behind (which also shows the child saw the step).
Held: a guard. Python in the child reads libfaketime's time (checked by that line)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from client.scim import event_to_json
from tests.server.redteam8_load import make_token, scim_event
from tests.support import start_server, stop_processes

pytestmark = pytest.mark.slow


def _libfaketime() -> Path | None:
    """libfaketime's shared object where the distribution's package puts it (any arch)."""
    for root in (Path("/usr/lib"), Path("/usr/lib64"), Path("/usr/local/lib")):
        for p in [root / "faketime/libfaketime.so.1", *root.glob("*/faketime/libfaketime.so.1")]:
            if p.exists():
                return p
    return None


LIB = _libfaketime()


@pytest.mark.skipif(LIB is None, reason="needs libfaketime (apt-get install faketime)")
def test_the_log_time_does_not_go_back_when_the_clock_does(tmp_path: Path) -> None:
    stamp = tmp_path / "faketime"
    stamp.write_text("+0\n")
    env = {
        "LD_PRELOAD": str(LIB),  # (not None: skipped otherwise)
        "FAKETIME_TIMESTAMP_FILE": str(stamp),
        "FAKETIME_CACHE_DURATION": "1",  # the file re-read at most every second
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # an NTP step moves the wall clock only
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        srv = start_server(tmp_path / "data")
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        tok = make_token(tmp_path / "data", None, "--role", "submitter", "--tenant", "acme")
        headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
        url = srv.url + "/v1/scim/events"

        def post(n: str) -> int:
            r = httpx.post(
                url, content=event_to_json(scim_event(n)).encode(), headers=headers, timeout=60
            )
            assert r.status_code == 200, (r.status_code, r.text)
            return int(r.json()["ts"])

        before = post("a")
        assert abs(before - time.time() * 1000) < 3600_000  # the child's clock is right now
        stamp.write_text("-365d\n")  # the clock steps back a year
        log = tmp_path / "data-server.log"
        after = []
        for i in range(40):  # until the child has re-read the file and says its clock is behind
            after.append(post(f"b{i}"))
            if "behind the log time of the newest SCIM event" in log.read_text(errors="replace"):
                break
            time.sleep(0.25)
        assert all(t >= before for t in after), (before, after)
        assert after == sorted(after), after
        assert httpx.get(srv.url + "/checkpoint", timeout=30).status_code == 200
    finally:
        stop_processes([srv.proc])
    # The child did see the step (else the test proves nothing): it said so, loudly.
    out = (tmp_path / "data-server.log").read_text(errors="replace")
    assert "behind the log time of the newest SCIM event" in out, out[-2000:]
