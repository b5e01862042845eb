"""Red team 6: a hostile gossip peer must not blind the witness to the other peers.

A peer's answer that breaks the client's bounds (larger than the answer limit, or a body
that cannot be decoded) is that peer's failure: it is logged and the round goes on to the
next peer, which may be the one showing a fork.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner
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
