"""Review of witness10 (a witness whose state was put back): defects found and fixed.

1. ``serve``'s first round polled the logs (and cosigned what they served) *before* it
   asked the peers: a log serving a fork consistent with the restored size got it cosigned
   although a reachable peer held this witness's own line on the later size. The round now
   asks the peers first.
2. ``tlog-witness check`` stopped at a damaged row (``StateDamaged`` from the look for our
   own later cosignature) with one error line: the report (state problems, evidence of the
   other logs, exit 1 for evidence) never ran.
3. The peer lines kept on the held checkpoint could reach 64 signature lines; c2sp.org/
   signed-note only asks verifiers to accept 16, so a conforming verifier may reject the
   note served. The stored note now stays within 16 lines.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import CosignatureSigner
from client.formats.note import Ed25519Signer, parse_note, sign_note
from client.net.witness_client import AddCheckpointRequest, origin_hash
from client.witness.cli import main
from client.witness.core import Witness, WitnessedLog
from client.witness.monitor import Monitor, Peer
from tests.witness.helpers import (
    OURS,
    PEER_NAME,
    PEER_SEED,
    WITNESS_NAME,
    FakeLog,
    FakeLogServer,
    add_status,
    events,
    make_witness,
    peer_holding_our_line,
    serving,
    stored_size,
    witness_serving,
    write_check_config,
)

LOG = FakeLog(events(20))
FORK = FakeLog([*events(5), *events(15, "evil-")])  # agrees with LOG up to size 5 only
OTHER = FakeLog(events(6), origin="other.example.com/log", seed=bytes(range(100, 132)))


def _first_round(mon: Monitor) -> None:
    """Monitor.run's first round (what ``serve`` waits for), then stop."""
    stop = threading.Event()
    t = threading.Thread(target=mon.run, args=(stop,), kwargs={"gossip_interval": 60.0})
    t.start()
    try:
        assert mon.first_round.wait(30)
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()


# --- 1. the first round asks the peers before it cosigns what the log serves -----------------


def test_first_round_never_cosigns_a_fork_a_reachable_peer_would_have_refuted(
    tmp_path: Path,
) -> None:
    """Restored to size 5; a peer holds our line on LOG's 9; the log serves FORK's 7
    (consistent with 5 only) and proofs in FORK's tree. The start-up round must not cosign
    the fork: it meets our line at the peer first (and the log's own proof 5 -> 9 failing
    is evidence)."""
    peer = peer_holding_our_line(LOG, tmp_path / "b.db")
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 5)) == 200
    with serving(FakeLogServer(FORK)) as log_srv, witness_serving(peer) as sp:
        log_srv.log.size = 7
        w.logs = {LOG.origin: LOG.witnessed_log(log_srv.url)}
        mon = Monitor(w, [Peer("b", peer.verifier, sp.url)])
        try:
            _first_round(mon)
        finally:
            mon.close()
    stored = w.latest(LOG.origin)
    assert stored is not None
    assert stored.root_hash != FORK.root(7), "the restored witness cosigned the fork"
    assert [e.reason for e in w.evidence()] != []  # two histories carry our key
    peer.store.close()
    w.store.close()


# --- 2. check reports a damaged row instead of stopping at it ------------------------------


def test_check_reports_a_damaged_row_and_the_evidence_of_another_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """LOG's row is damaged (its root column no longer the note's) and the log serves our
    cosignature on it; OTHER has split-view evidence. ``check`` must still print its whole
    report and exit 1 (evidence), not stop at the damaged row with exit 3."""
    db = tmp_path / "state.db"
    w = make_witness(db, [LOG.witnessed_log(), OTHER.witnessed_log()])
    assert add_status(w, LOG.body(0, 5)) == 200
    assert add_status(w, OTHER.body(0, 6)) == 200
    w.record_evidence(OTHER.origin, "test", "a split view", "a\n", "b\n", {})
    w.store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE checkpoints SET root = ? WHERE origin = ?", (bytes(32), LOG.origin))
    conn.close()
    with serving(FakeLogServer(LOG)) as srv:
        srv.log.size = 9
        note = LOG.checkpoint(9)
        srv.served_note = note + OURS.cosign(LOG.checkpoint_text(9), 1_700_000_000).line()
        rc = main(
            [
                "check",
                "--config",
                str(write_check_config(tmp_path, [(LOG, srv.url), (OTHER, None)])),
            ]
        )
    out = capsys.readouterr().out
    assert "SPLIT-VIEW EVIDENCE: 1 record(s)" in out
    assert f"STATE PROBLEM: {LOG.origin}: stored size/root disagree with the note" in out
    assert rc == 1


# --- 3. the served note stays within what every verifier must accept ------------------------


def test_kept_peer_lines_never_take_the_note_past_16_signatures(tmp_path: Path) -> None:
    """Twenty peers cosigned the checkpoint we hold: the note we store and serve keeps at
    most 16 signature lines (c2sp.org/signed-note: verifiers accept at least 16), the
    log's and ours first, and as many peer lines as fit."""
    peers = [CosignatureSigner(f"peer{i}.example.com/w", bytes([i]) * 32) for i in range(20)]
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 9)) == 200
    text = LOG.checkpoint_text(9)
    verifiers = [p.verifier() for p in peers]
    for chunk in (peers[:3], peers[3:]):  # two gossip rounds showing more and more lines
        theirs = LOG.checkpoint(9) + "".join(p.cosign(text, 1_700_000_000).line() for p in chunk)
        w.merge_cosignatures(LOG.origin, theirs, verifiers)
    held = w.checkpoint_by_hash(origin_hash(LOG.origin))
    assert held is not None
    sigs = parse_note(held).signatures
    assert len(sigs) == 16
    assert [s.name for s in sigs[:2]] == [LOG.origin, WITNESS_NAME]
    assert len({(s.name, s.key_id) for s in sigs}) == 16
    stored = w.latest(LOG.origin)
    assert stored is not None and stored.size == 9
    w.store.close()


# --- what must never be adopted, through every door (not covered before) --------------------


def _restored_at_5(tmp_path: Path) -> Witness:
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 5)) == 200
    return w


def test_our_cosignature_on_a_checkpoint_with_extension_lines_is_never_adopted(
    tmp_path: Path,
) -> None:
    """Log-signed and with a valid line of ours, but with an extension line (which this
    witness never cosigns): not adopted from a view, nor from a push."""
    text = Checkpoint(LOG.origin, 9, LOG.root(9), ("extension line",)).text()
    note = sign_note(text, [LOG.signer], [OURS.cosign(text, 1_700_000_000)])
    w = _restored_at_5(tmp_path)
    assert w.own_cosigned(w.logs[LOG.origin], note) is None
    assert w.observe_own(w.logs[LOG.origin], note, "test") == ""
    assert add_status(w, AddCheckpointRequest(5, (), note).format()) == 400
    assert stored_size(w) == 5 and w.rolled_back == {} and w.evidence() == []
    w.store.close()


def test_our_cosignature_on_another_origin_signed_by_a_shared_log_key_is_never_adopted(
    tmp_path: Path,
) -> None:
    """Two origins signed by one key (one name): our line on B's size 9 is no view of A."""
    shared = Ed25519Signer("logs.example.com", bytes(range(7, 39)))
    a = WitnessedLog("a.example.com/log", (shared.verifier(),))
    b = WitnessedLog("b.example.com/log", (shared.verifier(),))
    w = make_witness(tmp_path / "w.db", [a, b])
    text = Checkpoint(b.origin, 9, LOG.root(9)).text()
    note = sign_note(text, [shared], [OURS.cosign(text, 1_700_000_000)])
    assert w.observe_own(a, note, "test") == ""
    assert w.latest(a.origin) is None and w.rolled_back == {}
    assert w.observe_own(b, note, "test") == "adopted"  # it is a view of B
    stored = w.latest(b.origin)
    assert stored is not None and stored.size == 9
    w.store.close()


def test_only_the_checkpoint_held_gets_peer_lines(tmp_path: Path) -> None:
    """A peer's valid line on another size, on another root at our size, on another
    origin's checkpoint of the same size and root, or on ours with an extension line, is
    not kept: on our note it would be a line that fails (a verifier rejects the note)."""
    peer = CosignatureSigner(PEER_NAME, PEER_SEED)
    twin = FakeLog(events(20), origin="twin.example.com/log")  # LOG's leaves, other origin
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 9)) == 200
    with_ext = Checkpoint(LOG.origin, 9, LOG.root(9), ("extension line",)).text()
    for text in (
        LOG.checkpoint_text(8),
        FORK.checkpoint_text(9),
        twin.checkpoint_text(9),
        with_ext,
    ):
        theirs = sign_note(text, [LOG.signer], [peer.cosign(text, 1_700_000_000)])
        assert not w.merge_cosignatures(LOG.origin, theirs, [peer.verifier()]), text
    held = w.checkpoint_by_hash(origin_hash(LOG.origin))
    assert held is not None and PEER_NAME not in held
    w.store.close()


def test_adoption_racing_pushes_in_two_threads_never_leaves_a_fork_or_a_torn_note(
    tmp_path: Path,
) -> None:
    """Restored at 5; one thread adopts our line on 9 (and keeps a peer's line on what it
    holds), the other pushes the honest 12 from 5 and the fork 7 from 5, both at once,
    many times over fresh states. Whatever wins, the state ends on our later checkpoint or
    past it (never on the fork: a fork pushed first is cosigned, the documented window, and
    then overtaken), the note always the checkpoint its row names, with our verified line."""
    peer = CosignatureSigner(PEER_NAME, PEER_SEED)
    later = sign_note(
        LOG.checkpoint_text(9), [LOG.signer], [OURS.cosign(LOG.checkpoint_text(9), 1)]
    )
    peer_view = later + peer.cosign(LOG.checkpoint_text(9), 2).line()
    for i in range(15):
        w = make_witness(tmp_path / f"w{i}.db", [LOG.witnessed_log()])
        assert add_status(w, LOG.body(0, 5)) == 200
        barrier = threading.Barrier(2)
        statuses: list[int] = []

        def adopt(w: Witness = w, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            w.observe_own(w.logs[LOG.origin], later, "peer b")
            w.merge_cosignatures(LOG.origin, peer_view, [peer.verifier()])

        body = LOG.body(5, 12) if i % 2 else FORK.body(5, 7)

        def push(
            w: Witness = w,
            barrier: threading.Barrier = barrier,
            body: bytes = body,
            statuses: list[int] = statuses,
        ) -> None:
            barrier.wait()
            statuses.append(add_status(w, body))

        threads = [threading.Thread(target=adopt), threading.Thread(target=push)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stored = w.latest(LOG.origin)  # check_row: the note names the row's size and root
        assert stored is not None
        assert stored.root_hash in (LOG.root(9), LOG.root(12)), (i, stored.size, statuses)
        assert w.own_cosigned(w.logs[LOG.origin], stored.note) is not None
        assert w.evidence() == []
        w.store.close()
