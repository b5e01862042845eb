"""The witness over real HTTP on 127.0.0.1 (ephemeral port), driven by httpx and raw sockets."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.note import open_note
from client.net.witness_client import (
    SplitViewAlarm,
    WitnessClient,
    WitnessRejected,
    append_signatures,
    origin_hash,
)
from client.witness.server import ServerStartError, WitnessHTTPServer
from tests.witness.helpers import ORIGIN, FakeClock, FakeLog, events, make_witness, witness_serving


@pytest.fixture
def server(tmp_path: Path, log300: FakeLog) -> Iterator[WitnessHTTPServer]:
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()], clock=FakeClock(1_700_000_000))
    with witness_serving(w) as srv:
        yield srv


def test_started_server_answers_at_once(server: WitnessHTTPServer) -> None:
    # start_server returned only once uvicorn had started (the socket alone listens from
    # the constructor on, so the request below would succeed either way): no wait loop.
    assert server.started and server.thread.is_alive()
    r = httpx.get(server.url + "/nope", timeout=10)
    assert r.status_code == 404


def test_a_server_that_cannot_start_raises_instead_of_hanging(
    tmp_path: Path, log300: FakeLog
) -> None:
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()])
    srv = WitnessHTTPServer(("127.0.0.1", 0), w)
    srv.server_close()  # its listening socket is gone: uvicorn cannot serve it
    with pytest.raises(ServerStartError, match="stopped before it started") as info:
        srv.start(timeout=30)
    assert isinstance(info.value.__cause__, OSError)
    srv.thread.join(10)
    assert not srv.thread.is_alive()
    srv.shutdown(1)  # harmless after a failed start


def test_push_over_http(server: WitnessHTTPServer, log300: FakeLog, e2e: dict[str, Any]) -> None:
    vkey = server.witness.vkey()
    with WitnessClient(server.url, vkey) as client:
        sigs = client.submit(log300.checkpoint(100), log300.consistency_proof)
        assert client.known_size(ORIGIN) == 100
        sigs = client.submit(log300.checkpoint(300), log300.consistency_proof)
        assert sigs[0].line() == e2e["cosignature_line"]
        witnessed = append_signatures(log300.checkpoint(300), sigs)
        assert client.latest_checkpoint(ORIGIN) == witnessed
        assert client.latest_checkpoint("unknown.example.com/log") is None
    # A client with no memory gets a 409 with the size, rebuilds the proof, retries.
    bigger = FakeLog(events(310))
    with WitnessClient(server.url, vkey) as fresh:
        sigs = fresh.submit(bigger.checkpoint(310), bigger.consistency_proof)
        open_note(bigger.checkpoint_text(310) + "\n" + sigs[0].line(), [server.witness.verifier])
    # A fork is a split-view alarm for the log.
    fork = FakeLog([*events(305), b"evil", *events(4, "x")])
    with WitnessClient(server.url, vkey) as client, pytest.raises(SplitViewAlarm) as info:
        client.submit(fork.checkpoint(310), fork.consistency_proof, old_size=310)
    assert info.value.status == 422


def test_status_codes_and_headers(server: WitnessHTTPServer, log300: FakeLog) -> None:
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/add-checkpoint", content=log300.body(0, 100))
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.text.startswith("\u2014 witness.example.com/w1 ")

        r = http.post("/add-checkpoint", content=log300.body(50, 300))
        assert r.status_code == 409
        assert r.headers["content-type"] == "text/x.tlog.size"
        assert r.text == "100\n"

        assert http.post("/add-checkpoint", content=b"old 1\n").status_code == 400
        assert (
            http.post("/add-checkpoint", content=log300.body(300, 200, proof=[])).status_code == 400
        )
        other = FakeLog(events(3), origin="other.example.com/x", seed=b"\x03" * 32)
        assert http.post("/add-checkpoint", content=other.body(0, 3)).status_code == 404
        forged = log300.body(100, 300).replace(b"KgmmieMb", b"KgmmieMc")
        assert http.post("/add-checkpoint", content=forged).status_code == 403
        bad_proof = log300.body(100, 300, proof=log300.consistency_proof(99, 300))
        assert http.post("/add-checkpoint", content=bad_proof).status_code == 422

        r = http.post("/add-checkpoint", content=b"x" * (128 * 1024 + 1))
        assert r.status_code == 413

        r = http.get(f"/{origin_hash(ORIGIN)}/checkpoint")
        assert r.status_code == 200 and r.text.startswith(f"{ORIGIN}\n100\n")
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert http.get(f"/{origin_hash('nope')}/checkpoint").status_code == 404
        assert http.get(f"/{origin_hash(ORIGIN).upper()}/checkpoint").status_code == 404
        assert http.get("/checkpoint").status_code == 404
        assert http.get("/add-checkpoint").status_code == 405
        assert http.put("/add-checkpoint", content=b"").status_code == 405
        assert http.post("/other", content=b"").status_code == 404

        r = http.get("/evidence")
        assert r.status_code == 200 and r.json() == {"evidence": []}

        # Still usable after all that (keep-alive connections survive errors).
        r = http.post("/add-checkpoint", content=log300.body(100, 300))
        assert r.status_code == 200


def _raw(server: WitnessHTTPServer, request: bytes) -> bytes:
    host, port = server.server_address[0], server.server_address[1]
    with socket.create_connection((str(host), port), timeout=5) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_body_framing_limits(server: WitnessHTTPServer) -> None:
    no_length = b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nold 0\n"
    assert _raw(server, no_length).startswith(b"HTTP/1.1 411 ")
    chunked = (
        b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5\r\nold 0\r\n0\r\n\r\n"
    )
    assert _raw(server, chunked).startswith(b"HTTP/1.1 411 ")
    huge = (
        b"POST /add-checkpoint HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert _raw(server, huge).startswith(b"HTTP/1.1 413 ")


def test_rejected_is_distinct_from_alarm(server: WitnessHTTPServer) -> None:
    other = FakeLog(events(3), origin="other.example.com/x", seed=b"\x03" * 32)
    with WitnessClient(server.url, server.witness.vkey()) as client:
        with pytest.raises(WitnessRejected) as info:
            client.submit(other.checkpoint(3), other.consistency_proof)
        assert info.value.status == 404
