"""redteam9: a live adapter recovers the intent journal of a dead peer sharing its outbox,
while it runs.

Before, the intents a killed ``tlog scim-proxy`` left waited until some adapter on that
outbox started again: with its peer running and the killed one not restarted, the write it
forwarded had no event at all. Now every adapter looks for journals whose lock became free
every ``intent_recovery_interval`` seconds (5 s) and records them as at a start-up. Two
real proxies on one outbox; one is killed with SIGKILL at the test-only ``TLOG_TEST_PAUSE``
point (after the SP answered, before the outbox commit)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, start_proxy, stop_processes

from .helpers import standin_sp  # noqa: F401  (the SP stand-in fixture, "sp")
from .intent_kills import outbox_events as _outbox_events
from .intent_kills import send_and_kill as _send_and_kill
from .logserver import Log, audit_read

TENANT = "acme"


def test_a_live_peer_records_a_killed_proxys_write_while_it_runs(
    tmp_path: Path,
    log: Log,
    sp: tuple[str, list[tuple[str, str]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream, seen = sp
    sub, aud = log.tokens(TENANT)
    outbox = tmp_path / "shared.sqlite"
    marker = tmp_path / "paused"
    peer, peer_base = start_proxy(tmp_path, upstream, log.url, sub, TENANT, outbox=outbox)
    try:
        monkeypatch.setenv("TLOG_TEST_PAUSE", f"answered:{marker}")
        victim, base = start_proxy(
            tmp_path, upstream, log.url, sub, TENANT, outbox=outbox, port=free_port()
        )
        monkeypatch.delenv("TLOG_TEST_PAUSE")
        body = b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],"Operations":[]}'
        try:
            _send_and_kill(
                victim,
                f"{base}/Users/u7",
                marker,
                method="PATCH",
                content=body,
                headers={"X-Request-Id": "peer-kill", "Authorization": "Bearer sp-token"},
            )
        finally:
            stop_processes([victim])
        assert ("PATCH", "/v2/Users/u7") in seen  # the SP applied it; no event yet
        # The peer goes on serving; within a few of its rounds the write is recorded, once.
        deadline = time.monotonic() + 60
        while not _outbox_events(outbox, "peer-kill") and time.monotonic() < deadline:
            r = httpx.delete(
                f"{peer_base}/Users/other",
                headers={"Authorization": "Bearer sp-token"},
                timeout=30,
            )
            assert r.status_code == 204
            time.sleep(0.5)
        assert len(_outbox_events(outbox, "peer-kill")) == 1
        deadline = time.monotonic() + 60
        got: list[dict[str, object]] = []
        while time.monotonic() < deadline:
            got = [e for e in audit_read(log, aud) if e["corr"]["req"] == "peer-kill"]
            if got:
                break
            time.sleep(0.3)
        assert len(got) == 1, got
        ev = got[0]
        assert ev["outcome"] == "warning" and ev["err"]["code"] == "unknown"  # type: ignore[index]
        assert ev["req"]["dig"] == hashlib.sha256(body).digest()  # type: ignore[index]
        # the dead journal is settled (gone); the peer's own is left alone
        journals = {p.name.split(".")[0] for p in (tmp_path / "shared.sqlite.intents").iterdir()}
        assert len(journals) == 1, journals
    finally:
        stop_processes([peer])
    assert len(_outbox_events(outbox, "peer-kill")) == 1
