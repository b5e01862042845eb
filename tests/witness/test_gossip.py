"""Split-view detection: one log key signs two forked trees, each shown to a different
witness; gossip between the witnesses must find it, and ``tlog-witness check`` must fail."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.cosignature import CosignatureSigner
from client.net.witness_client import SplitViewAlarm, WitnessClient
from client.witness.cli import main
from client.witness.config import load_signer
from client.witness.core import Witness, WitnessedLog
from client.witness.monitor import Monitor, Peer
from client.witness.server import WitnessHTTPServer, start_server
from client.witness.store import WitnessStore
from tests.witness.helpers import (
    ORIGIN,
    FakeLog,
    FakeLogServer,
    events,
    make_witness,
    serving,
    witness_serving,
)

FORK_A = FakeLog(events(20))
FORK_B = FakeLog([*events(10), *events(10, "evil-")])  # same key, same origin, other history


@dataclass
class Node:
    name: str
    dir: Path
    key: Path
    db: Path
    config: Path
    server: WitnessHTTPServer

    @property
    def witness(self) -> Witness:
        return self.server.witness

    def client(self) -> WitnessClient:
        return WitnessClient(self.server.url, self.witness.vkey())


def write_config(node: Node, log_url: str, peers: list[Node], rounds: int = 3) -> None:
    lines = [
        f'name = "{node.name}"',
        f'key_file = "{node.key.name}"',
        f'state_db = "{node.db.name}"',
        'listen = "127.0.0.1:0"',
        f"missing_proof_rounds = {rounds}",
        "http_timeout = 5",
        "",
        "[[log]]",
        f'origin = "{ORIGIN}"',
        f'vkey = "{FORK_A.signer.vkey()}"',
        f'url = "{log_url}"',
    ]
    for p in peers:
        lines += ["", "[[peer]]", f'name = "{p.name}"', f'vkey = "{p.witness.vkey()}"']
        lines.append(f'url = "{p.server.url}"')
    node.config.write_text("\n".join(lines) + "\n")


@pytest.fixture
def two_forks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[list[Node]]:
    """Log servers for fork A and fork B; witness w1 follows A, w2 follows B."""
    with ExitStack() as stack:
        log_a = stack.enter_context(serving(FakeLogServer(FORK_A)))
        log_b = stack.enter_context(serving(FakeLogServer(FORK_B)))
        nodes: list[Node] = []
        for name, log_server in (("w1.example.com", log_a), ("w2.example.com", log_b)):
            d = tmp_path / name
            d.mkdir()
            key = d / "witness.key"
            assert main(["keygen", "--name", name, "--key", str(key)]) == 0
            log = WitnessedLog(ORIGIN, (FORK_A.signer.verifier(),), log_server.url)
            w = Witness(load_signer(key), [log], WitnessStore(d / "state.db"))
            server, _ = start_server(w)
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            nodes.append(Node(name, d, key, d / "state.db", d / "witness.toml", server))
        write_config(nodes[0], log_a.url, [nodes[1]])
        write_config(nodes[1], log_b.url, [nodes[0]])
        capsys.readouterr()
        yield nodes


def test_split_view_is_detected_by_gossip(
    two_forks: list[Node], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    w1, w2 = two_forks
    # Honest phase: both witnesses cosign the common prefix; gossip finds nothing.
    for node in (w1, w2):
        with node.client() as c:
            c.submit(FORK_A.checkpoint(8), FORK_A.consistency_proof)
    for node in (w1, w2):
        assert main(["gossip", "--config", str(node.config), "--once"]) == 0
        assert main(["check", "--config", str(node.config)]) == 0
    assert "ok: no split-view evidence" in capsys.readouterr().out

    # The attack: the same log key extends the tree two ways, one per witness.
    with w1.client() as c:
        c.submit(FORK_A.checkpoint(20), FORK_A.consistency_proof)
    with w2.client() as c:
        c.submit(FORK_B.checkpoint(16), FORK_B.consistency_proof)

    rounds = 0
    caplog.set_level(logging.CRITICAL, logger="client.witness")
    while rounds < 3 and not (w1.witness.evidence() and w2.witness.evidence()):
        rounds += 1
        main(["gossip", "--config", str(w1.config), "--once"])
        main(["gossip", "--config", str(w2.config), "--once"])
    assert rounds == 1, "a fork with a failing proof must be caught in the first round"
    assert any(r.levelno == logging.CRITICAL for r in caplog.records)

    for node in (w1, w2):
        assert main(["check", "--config", str(node.config)]) == 1
        out = capsys.readouterr().out
        assert "SPLIT-VIEW EVIDENCE" in out and "does not verify" in out
        for e in node.witness.evidence():
            # Both sides of the evidence are checkpoints signed by the log's key.
            a, _ = open_checkpoint(e.our_note, [FORK_A.signer.verifier()], origin=ORIGIN)
            b, _ = open_checkpoint(e.their_note, [FORK_A.signer.verifier()], origin=ORIGIN)
            assert a.root_hash != b.root_hash

    # w2's log (fork B) answered the proof request with its own size-20 checkpoint: a
    # direct same-size contradiction of w1's, filed with the log's note as "ours".
    direct = [e for e in w2.witness.evidence() if "differs from peer w1.example.com" in e.reason]
    assert len(direct) == 1
    assert direct[0].our_note == FORK_B.checkpoint(20)
    assert direct[0].their_note.startswith(FORK_A.checkpoint(20))

    # Exposed over HTTP.
    doc = httpx.get(f"{w1.server.url}/evidence").json()
    assert doc["evidence"] and doc["evidence"][0]["origin"] == ORIGIN
    assert doc["evidence"][0]["peer"] == "peer w2.example.com"
    assert json.loads(doc["evidence"][0]["detail"])["theirs"]["size"] == 16

    # The origin is frozen: no more cosignatures for this log.
    with w1.client() as c, pytest.raises(SplitViewAlarm):
        c.submit(FORK_A.checkpoint(20), FORK_A.consistency_proof, old_size=20)


def test_same_size_fork_needs_no_log(tmp_path: Path) -> None:
    log = WitnessedLog(ORIGIN, (FORK_A.signer.verifier(),))  # no URL: no proofs available
    w1 = make_witness(tmp_path / "1.db", [log], seed=b"\x01" * 32, name="w1")
    w2 = make_witness(tmp_path / "2.db", [log], seed=b"\x02" * 32, name="w2")
    w1.add_checkpoint(FORK_A.body(0, 20))
    w2.add_checkpoint(FORK_B.body(0, 20))
    with witness_serving(w2) as srv:
        peer = Peer("w2", w2.verifier, srv.url)
        with httpx.Client() as http:
            assert Monitor(w1, [peer], http=http).gossip_once() == 1
            assert Monitor(w1, [peer], http=http).gossip_once() == 0  # recorded once
    (e,) = w1.evidence()
    assert e.reason == "same tree size with different root hashes"
    assert e.their_note.startswith(FORK_B.checkpoint_text(20))


def test_missing_proof_counts_rounds_and_outages_do_not(tmp_path: Path) -> None:
    with serving(FakeLogServer(FORK_B)) as log_srv:
        url = log_srv.url
        log = WitnessedLog(ORIGIN, (FORK_A.signer.verifier(),), url)
        w1 = make_witness(tmp_path / "1.db", [log], seed=b"\x01" * 32, name="w1")
        w2 = make_witness(tmp_path / "2.db", [log], seed=b"\x02" * 32, name="w2")
        w1.add_checkpoint(FORK_B.body(0, 12))
        w2.add_checkpoint(FORK_A.body(0, 18))
        with witness_serving(w2) as srv:
            peer = Peer("w2", w2.verifier, srv.url)
            with httpx.Client() as http:
                mon = Monitor(w1, [peer], http=http, missing_proof_rounds=3)
                log_srv.proof_status = 503
                for _ in range(4):
                    assert mon.gossip_once() == 0
                assert w1.store.suspicions() == []
                log_srv.proof_status = 404
                assert mon.gossip_once() == 0
                assert mon.gossip_once() == 0
                assert [s.rounds for s in w1.store.suspicions()] == [2]
                # The other side keeps growing; the count goes on regardless of its size.
                w2.add_checkpoint(FORK_A.body(18, 19))
                # Rounds persist: a new monitor (a new `gossip --once`) continues the count.
                assert Monitor(w1, [peer], http=http, missing_proof_rounds=3).gossip_once() == 1
    (e,) = w1.evidence()
    assert "did not prove consistency" in e.reason
    assert e.their_note.startswith(FORK_A.checkpoint_text(19))


def test_polling_cosigns_then_catches_a_forked_log(tmp_path: Path) -> None:
    log = FakeLog(events(40))
    log.size = 10
    with serving(FakeLogServer(log)) as log_srv, httpx.Client() as http:
        url = log_srv.url
        w = make_witness(tmp_path / "w.db", [log.witnessed_log(url)])
        mon = Monitor(w, http=http)
        assert mon.poll_once() == 0
        assert (latest := w.latest(ORIGIN)) is not None and latest.size == 10
        log.size = 30
        assert mon.poll_once() == 0
        assert (latest := w.latest(ORIGIN)) is not None and latest.size == 30
        assert any("old_size=10&tree_size=30" in p for p in log_srv.requests)
        assert mon.poll_once() == 0  # no news is fine

        fork = FakeLog([*events(25), *events(15, "evil-")])
        log_srv.log = fork
        assert mon.poll_once() == 1
        (e,) = w.evidence()
        assert "inconsistent with ours" in e.reason
        assert e.peer == f"log {url}"
        fork.size = 30  # a same-size fork served at /checkpoint: frozen, nothing more happens
        assert mon.poll_once() == 0


def test_peer_checkpoints_without_the_log_signature_are_ignored(tmp_path: Path) -> None:
    imposter = FakeLog(events(20, "evil-"), seed=b"\x66" * 32)  # same origin, another key
    good = WitnessedLog(ORIGIN, (FORK_A.signer.verifier(),))
    bad = WitnessedLog(ORIGIN, (imposter.signer.verifier(),))
    w1 = make_witness(tmp_path / "1.db", [good], seed=b"\x01" * 32, name="w1")
    w_evil = make_witness(tmp_path / "2.db", [bad], seed=b"\x02" * 32, name="evil")
    w1.add_checkpoint(FORK_A.body(0, 20))
    w_evil.add_checkpoint(imposter.body(0, 20))
    with witness_serving(w_evil) as srv, httpx.Client() as http:
        peer = Peer("evil", w_evil.verifier, srv.url)
        assert Monitor(w1, [peer], http=http).gossip_once() == 0
        # A peer whose key we have wrong: its cosignature fails, checkpoint ignored.
        wrong = Peer("evil", CosignatureSigner("evil", b"\x09" * 32).verifier(), srv.url)
        assert Monitor(w1, [wrong], http=http).gossip_once() == 0
    assert w1.evidence() == []
