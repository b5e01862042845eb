"""ops11: ``tlog-witness poll`` on a restored state asks the peers first, as ``serve``'s first
round does (witness10, review10): before, its first round polled the logs at once, so a log
serving a fork consistent with the restored (older) size got the fork cosigned, although a
reachable peer held this witness's own cosignature on the later size. The first round of
``poll`` is now the same function as ``serve``'s rounds (``Monitor.peers_then_logs``)."""

from __future__ import annotations

from pathlib import Path

from client.formats.cosignature import CosignatureSigner
from client.witness.cli import main
from tests.witness.helpers import (
    PEER_NAME,
    PEER_SEED,
    FakeLog,
    FakeLogServer,
    add_status,
    events,
    make_witness,
    peer_holding_our_line,
    serving,
    witness_serving,
    write_check_config,
)

LOG = FakeLog(events(20))
FORK = FakeLog([*events(5), *events(15, "evil-")])  # agrees with LOG up to size 5 only
PEER = CosignatureSigner(PEER_NAME, PEER_SEED)


def _restored_config(tmp_path: Path, log_url: str, peer_url: str) -> Path:
    """A witness whose state was put back to LOG's size 5, configured with the log (its
    URL) and the peer."""
    db = tmp_path / "state.db"
    w = make_witness(db, [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 5)) == 200
    w.store.close()
    return write_check_config(tmp_path, [(LOG, log_url)], [("w2", PEER.vkey(), peer_url)])


def _poll_once_restored(tmp_path: Path, log: FakeLog, size: int) -> int:
    """``poll --once`` of the restored witness, its log serving ``log`` at ``size``, the
    peer holding our line on LOG's 9; its exit code."""
    peer = peer_holding_our_line(LOG, tmp_path / "peer.db")
    try:
        with serving(FakeLogServer(log)) as log_srv, witness_serving(peer) as sp:
            log_srv.log.size = size
            cfg = _restored_config(tmp_path, log_srv.url, sp.url)
            return main(["poll", "--config", str(cfg), "--once"])
    finally:
        peer.store.close()


def _stored(tmp_path: Path) -> tuple[int, bytes, int]:
    w = make_witness(tmp_path / "state.db", [LOG.witnessed_log()])
    try:
        stored = w.latest(LOG.origin)
        assert stored is not None
        return stored.size, stored.root_hash, len(w.evidence())
    finally:
        w.store.close()


def test_poll_never_cosigns_a_fork_a_reachable_peer_would_have_refuted(tmp_path: Path) -> None:
    """Restored to size 5; the peer holds our line on LOG's 9; the log serves FORK's 7
    (consistent with 5 only). ``poll --once`` meets our line at the peer first, so FORK's 7
    is not cosigned: it is evidence (exit 1)."""
    rc = _poll_once_restored(tmp_path, FORK, 7)
    size, root, evidence = _stored(tmp_path)
    assert root != FORK.root(7), "the restored witness cosigned the fork"
    assert size != 7
    # Our line on LOG's 9 met first; the log's own proof 5 -> 9 fails (it serves FORK):
    # two histories carry our key, recorded as evidence, and the log is frozen.
    assert evidence >= 1 and rc == 1


def test_poll_adopts_our_later_cosignature_at_a_peer_then_goes_on(tmp_path: Path) -> None:
    """The same restore, the log honest and grown to 12: the peer's line on 9 is adopted
    first, then the log's 12 cosigned with its proof 9 -> 12; no evidence."""
    rc = _poll_once_restored(tmp_path, LOG, 12)
    assert rc == 0
    assert _stored(tmp_path) == (12, LOG.root(12), 0)
