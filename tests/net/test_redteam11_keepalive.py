"""Red team 11, part 1: the relay's kept-alive batch POST against a real ``tlog serve``
closing its idle connection (``--keep-alive``) just as the relay sends.

:class:`client.net.lean.LeanPoster` looks at the kept-alive connection before each request
(readable while idle: the server closed it) and opens a fresh one then. That look and the
server's close race: when the close arrives just after the look, the request goes out on a
connection the server has already given up, and no answer byte ever comes. Before, that
was :class:`Unreachable`: the relay logged "delivery to the log failed" (WARNING), failed
the receipt waiters of the batch and backed off, a routine event reported as an outage.
Now a reused connection that fails before any answer byte is retried once at once on a
fresh connection, within the same deadline (the batch is idempotent by eid, a
retry answers the original's receipt and never adds a leaf: docs/api.md).

The race is made certain, not hoped for: the look is told "not readable" (the moment
before the close arrived) while the test has already seen the server close the connection.
One test also spaces real batches around the server's keep-alive, without any patch.
"""

from __future__ import annotations

import logging
import select
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.adapters.outbox import Outbox
from client.adapters.relay import Relay
from client.net import lean
from client.net.core import Unreachable
from client.net.lean import LeanPoster
from harness.scim import event_record

from ..support import ServerProcess, wait_for
from .helpers import keep_alive_server

pytestmark = pytest.mark.slow

BATCH = "/v1/scim/events/batch"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    with keep_alive_server(tmp_path_factory.mktemp("rt11ka")) as got:
        yield got


def _tree_size(url: str) -> int:
    note = httpx.get(url + "/checkpoint", timeout=30).text
    return int(note.split("\n")[1])


def _body(*ns: int) -> bytes:
    return b'{"events":[' + b",".join(event_record(n).body.encode() for n in ns) + b"]}"


def _closed_by_server(poster: LeanPoster) -> bool:
    sock = poster._conn.sock
    return sock is not None and bool(select.select([sock], [], [], 0)[0])


@pytest.fixture
def late_look(monkeypatch: pytest.MonkeyPatch) -> None:
    """LeanPoster's look at its idle connection sees nothing: the server's close arrives
    just after it (the race), however long ago it really came."""
    monkeypatch.setattr(
        lean, "select", types.SimpleNamespace(select=lambda r, w, x, t=None: ([], [], []))
    )


def _poster(url: str, token: str) -> LeanPoster:
    return LeanPoster(
        url,
        timeout=10,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        context=None,
    )


def test_a_batch_sent_on_a_connection_the_server_just_closed_is_delivered(
    served: tuple[ServerProcess, str], late_look: None
) -> None:
    srv, token = served
    poster = _poster(srv.url, token)
    try:
        before = _tree_size(srv.url)
        first = poster.post(BATCH, _body(1100, 1101), limit=1 << 20)
        assert first is not None and first.status == 200, first
        wait_for(lambda: _closed_by_server(poster), 30, "the server closing the idle connection")
        again = poster.post(BATCH, _body(1102), limit=1 << 20)
        assert again is not None and again.status == 200, again
        assert _tree_size(srv.url) == before + 3
    finally:
        poster.close()


def test_a_fresh_connection_is_not_retried(
    served: tuple[ServerProcess, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a *reused* connection's failure before any answer byte is retried: a fresh
    connection that fails is the server's answer (here: nothing listens), said at once."""
    srv, token = served
    connects: list[int] = []
    real = lean.socket.create_connection

    def counted(*a: Any, **kw: Any) -> Any:
        connects.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(lean.socket, "create_connection", counted)
    port = srv.port + 1 if srv.port < 65535 else srv.port - 1
    poster = _poster(f"http://127.0.0.1:{port}", token)
    try:
        with pytest.raises(Unreachable):
            poster.post(BATCH, _body(1110), limit=1 << 20)
    finally:
        poster.close()
    assert len(connects) == 1


def test_the_relay_reports_no_outage_for_an_idle_close_race(
    served: tuple[ServerProcess, str],
    late_look: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, token = served
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = Relay(outbox, srv.url, token, idle=0.05, linger=0, backoff_min=5, backoff_max=5)
    assert relay._lean is not None
    caplog.set_level(logging.WARNING, logger="client.adapters.relay")
    before = _tree_size(srv.url)
    relay.start()
    caplog.clear()  # its start-up line (no log key configured)
    try:
        for n in range(1120, 1124):
            outbox.add([event_record(n)]).result()
            relay.kick()
            wait_for(lambda: not outbox.pending(), 30, "the event delivered")
            wait_for(lambda: _closed_by_server(relay._lean), 30, "the server closing it")
    finally:
        relay.stop()
        outbox.close()
    assert relay.delivered == 4 and relay.attempts == 4, (relay.delivered, relay.attempts)
    assert relay.healthy and relay.last_error == ""
    assert not [r.getMessage() for r in caplog.records], caplog.text
    assert _tree_size(srv.url) == before + 4


def test_batches_spaced_around_the_keep_alive_all_arrive_once(
    served: tuple[ServerProcess, str],
) -> None:
    """No patch: real batches, each sent from 0.96 s to 1.04 s after the previous answer,
    on a server that closes idle connections after 1 s. Every one is answered 200 (a race
    met is retried at once), and the log holds each event once."""
    srv, token = served
    poster = _poster(srv.url, token)
    spacing = [1.0 + (k - 4) / 100 for k in range(9)]
    try:
        before = _tree_size(srv.url)
        for k, gap in enumerate(spacing):
            if k:
                time.sleep(gap)
            got = poster.post(BATCH, _body(1200 + k), limit=1 << 20)
            assert got is not None and got.status == 200, (k, gap, got)
        assert _tree_size(srv.url) == before + len(spacing)
    finally:
        poster.close()
