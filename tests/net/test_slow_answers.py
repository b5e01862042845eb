"""A server that sends its answer one byte at a time must not hold a client for ever.

httpx's timeouts bound each socket read, not the answer: a log, witness or peer dripping a
byte every 50 ms never trips a 0.3 s read timeout and held every client in ``client/`` (the
witness's gossip and polling loop, the log's push round, the auditor) for as long as it
liked. :class:`client.net.core.HTTPCore` now bounds the whole answer
(``ANSWER_TIME_FACTOR`` times the timeout); the clients of :func:`http_client` bound the head
too. Each case runs the call in a thread and only checks that it *ends* (the servers drip
until the client goes away), so no test here depends on the machine's speed.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner
from client.net.core import HTTPCore, Unreachable, http_client
from client.witness.monitor import Monitor, Peer
from client.witness.server import start_server
from tests.net.helpers import DRIP_BODY, DRIP_HEAD, dripping, ends, self_signed
from tests.witness.helpers import FakeLog, events, make_witness


def _send(core: HTTPCore) -> BaseException | None:
    try:
        core.send("GET", "checkpoint", limit=1 << 30)
    except Exception as exc:
        return exc
    return None


def test_a_dripping_body_is_cut_off_with_any_client() -> None:
    with dripping(*DRIP_BODY) as url, httpx.Client(timeout=0.3) as http:
        got = ends(_send, HTTPCore(url, http))
    assert isinstance(got, Unreachable), got
    assert "took too long" in str(got)


@pytest.mark.parametrize("drip", [DRIP_HEAD, DRIP_BODY], ids=["head", "body"])
def test_a_dripping_answer_is_cut_off_by_http_client(drip: tuple[bytes, bytes]) -> None:
    with dripping(*drip) as url:
        core = HTTPCore(url, timeout=0.3)  # its own client: http_client()
        got = ends(_send, core)
        core.close()
    assert isinstance(got, Unreachable), got


def test_http_client_still_reads_normal_answers(tmp_path: Path) -> None:
    log = FakeLog(events(5))
    w = make_witness(tmp_path / "w.db", [log.witnessed_log()])
    srv, _ = start_server(w)
    try:
        with http_client(timeout=5) as http:
            core = HTTPCore(srv.url, http)
            for _ in range(3):  # kept-alive connections too
                assert core.send("GET", "healthz", limit=1000).status == 200
            assert core.send("POST", "add-checkpoint", limit=1000, content=log.body(0)).ok
    finally:
        srv.shutdown()
        srv.server_close()


def test_gossip_round_survives_a_dripping_peer(tmp_path: Path) -> None:
    """A lying peer that drips its checkpoint must not stop the round: the next peer's
    split view is still found."""
    fork_a = FakeLog(events(8))
    fork_b = FakeLog([*events(4), *events(4, "evil-")])
    w1 = make_witness(tmp_path / "1.db", [fork_a.witnessed_log()], seed=b"\x01" * 32, name="w1")
    w2 = make_witness(tmp_path / "2.db", [fork_a.witnessed_log()], seed=b"\x02" * 32, name="w2")
    w1.add_checkpoint(fork_a.body(0, 8))
    w2.add_checkpoint(fork_b.body(0, 8))
    srv, _ = start_server(w2)
    slow_key = CosignatureSigner("slow", b"\x03" * 32).verifier()
    try:
        with dripping(*DRIP_BODY) as slow_url:
            peers = [Peer("slow", slow_key, slow_url), Peer("w2", w2.verifier, srv.url)]
            monitor = Monitor(w1, peers, timeout=0.3)  # its own client: http_client()
            try:
                assert ends(monitor.gossip_once) == 1
            finally:
                monitor.close()
    finally:
        srv.shutdown()
        srv.server_close()
    (e,) = w1.evidence()
    assert e.peer == "peer w2"


def test_http_client_speaks_tls_and_bounds_a_dripping_tls_answer(tmp_path: Path) -> None:
    """The bounded sockets wrap TLS too (every production log and witness is https)."""
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    for drip, whole in ((b"ok", True), (b"x", False)):
        head = b"HTTP/1.1 200 OK\r\nContent-Length: " + (b"2" if whole else b"100000") + b"\r\n\r\n"
        with dripping(head, drip, tls=server_ctx, once=whole) as url:
            with http_client(timeout=0.5, verify=client_ctx) as http:
                got = ends(_send_keep, HTTPCore(url.replace("http:", "https:"), http))
        if whole:
            assert isinstance(got, bytes) and got == b"ok", got
        else:
            assert isinstance(got, Unreachable), got


def _send_keep(core: HTTPCore) -> BaseException | bytes:
    try:
        return core.send("GET", "checkpoint", limit=1 << 30).body
    except Exception as exc:
        return exc
