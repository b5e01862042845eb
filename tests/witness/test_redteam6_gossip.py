"""Red team 6: a hostile gossip peer must not blind the witness to the other peers.

A peer's answer that breaks the client's bounds (larger than the answer limit, or a body
that cannot be decoded) is that peer's failure: it is logged and the round goes on to the
next peer, which may be the one showing a fork.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner
from client.net.core import http_client
from client.witness.core import WitnessedLog
from client.witness.monitor import Monitor, Peer
from tests.witness.helpers import ORIGIN, FakeLog, events, make_witness, witness_serving

FORK_A = FakeLog(events(20))
FORK_B = FakeLog([*events(10), *events(10, "evil-")])

HOSTILE = "http://hostile.invalid"


def _hostile(kind: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if kind == "huge":
            return httpx.Response(200, content=b"x" * (2 << 20))
        # Announces gzip, is not gzip: the body cannot be decoded.
        return httpx.Response(200, content=b"not gzip", headers={"Content-Encoding": "gzip"})

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("kind", ["huge", "bad-gzip"])
def test_a_hostile_peer_does_not_stop_gossip_with_the_next_one(kind: str, tmp_path: Path) -> None:
    log = WitnessedLog(ORIGIN, (FORK_A.signer.verifier(),))  # same-size fork: no log needed
    w1 = make_witness(tmp_path / "1.db", [log], seed=b"\x01" * 32, name="w1")
    w2 = make_witness(tmp_path / "2.db", [log], seed=b"\x02" * 32, name="w2")
    w1.add_checkpoint(FORK_A.body(0, 20))
    w2.add_checkpoint(FORK_B.body(0, 20))
    bad = Peer("hostile", CosignatureSigner("hostile", b"\x03" * 32).verifier(), HOSTILE)
    with witness_serving(w2) as srv:
        good = Peer("w2", w2.verifier, srv.url)
        honest = httpx.HTTPTransport()
        mounts = {HOSTILE: _hostile(kind)}
        with httpx.Client(transport=honest, mounts=mounts) as http:
            assert Monitor(w1, [bad, good], http=http).gossip_once() == 1
    (e,) = w1.evidence()
    assert e.reason == "same tree size with different root hashes"


@pytest.fixture
def silent_peer() -> Iterator[tuple[str, list[int]]]:
    """A peer that accepts connections and never answers: its URL, and a count of them."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    stop = threading.Event()
    accepted: list[int] = []
    held: list[socket.socket] = []

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            accepted.append(1)
            held.append(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}", accepted
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


def test_a_silent_peer_is_asked_once_per_round_not_once_per_log(
    silent_peer: tuple[str, list[int]], tmp_path: Path
) -> None:
    """Each request to a peer that never answers costs the whole answer deadline, and the
    round (and the polling that shares its thread) waits: asking it again for each of the
    witness's logs multiplied that by the number of logs. A peer that cannot be reached is
    left for the next round; the peers after it are still asked."""
    url, accepted = silent_peer
    others = [FakeLog(events(3), origin=f"other{i}.example/log") for i in range(4)]
    logs = [WitnessedLog(ORIGIN, (FORK_A.signer.verifier(),))]
    logs += [lg.witnessed_log() for lg in others]
    w1 = make_witness(tmp_path / "1.db", logs, seed=b"\x01" * 32, name="w1")
    w2 = make_witness(tmp_path / "2.db", logs, seed=b"\x02" * 32, name="w2")
    w1.add_checkpoint(FORK_A.body(0, 20))
    w2.add_checkpoint(FORK_B.body(0, 20))
    silent = Peer("silent", CosignatureSigner("silent", b"\x03" * 32).verifier(), url)
    with witness_serving(w2) as srv, http_client(timeout=0.2) as http:
        good = Peer("w2", w2.verifier, srv.url)
        assert Monitor(w1, [silent, good], http=http).gossip_once() == 1
    assert len(accepted) == 1
    (e,) = w1.evidence()
    assert e.reason == "same tree size with different root hashes"
