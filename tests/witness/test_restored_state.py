"""A witness whose state was put back from an old copy notices it by itself (witness10).

The state directory is copied (the files, as an operator would) after the witness cosigned
size 5; it then cosigns size 9 and is restored from the copy. Wherever it meets its own
cosignature on size 9 (the log's /checkpoint, a peer's checkpoint, a push, ``check``) it
adopts that checkpoint and refuses a log-signed fork consistent only with size 5; forged
"own" cosignatures are ignored; its cosignature on another root at a size it holds, or on a
checkpoint inconsistent with its state, is evidence. (Real processes:
``test_restored_state_process.py``.)
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.formats.cosignature import CosignatureSigner
from client.formats.note import FormatError, Note, Signature, parse_note, sign_note
from client.net.witness_client import AddCheckpointRequest
from client.witness.cli import main
from client.witness.core import Witness
from client.witness.metrics import WitnessMetrics
from client.witness.monitor import Monitor, Peer
from tests.witness.helpers import (
    OURS,
    PEER_NAME,
    PEER_SEED,
    WITNESS_NAME,
    FakeClock,
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
EARLY_FORK = FakeLog([*events(2), *events(18, "early-")])  # disagrees from size 3 on


def cosigned(log: FakeLog, size: int, *signers: CosignatureSigner, ts: int = 1_700_000_000) -> str:
    """``log``'s checkpoint of ``size``, signed by the log and cosigned by ``signers``."""
    text = log.checkpoint_text(size)
    return sign_note(text, [log.signer], [s.cosign(text, ts) for s in signers])


def copy_state(db: Path, to: Path) -> None:
    """Copy the state files (the database, its WAL and shared-memory files when present)."""
    to.mkdir()
    for f in db.parent.glob(db.name + "*"):
        shutil.copy2(f, to / f.name)


def restore_state(backup: Path, db: Path) -> None:
    """Put the copied files back, as an operator restoring a backup would."""
    for f in db.parent.glob(db.name + "*"):
        f.unlink()
    for f in backup.iterdir():
        shutil.copy2(f, db.parent / f.name)


@pytest.fixture
def restored(tmp_path: Path) -> Iterator[tuple[Witness, str]]:
    """A witness that cosigned LOG at 5, then 9, and was restored from a copy taken at 5:
    the restored witness (fresh store on the old files) and its note of size 9."""
    db = tmp_path / "w.db"
    w = make_witness(db, [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 5)) == 200
    w.store.close()
    copy_state(db, tmp_path / "backup")
    w = make_witness(db, [LOG.witnessed_log()])
    assert add_status(w, LOG.body(5, 9)) == 200
    later = w.checkpoint_by_hash(_hash())
    assert later is not None and "\n9\n" in later
    w.store.close()
    restore_state(tmp_path / "backup", db)
    w = make_witness(db, [LOG.witnessed_log()])
    assert stored_size(w) == 5
    try:
        yield w, later
    finally:
        w.store.close()


def _hash() -> str:
    from client.net.witness_client import origin_hash

    return origin_hash(LOG.origin)


def fork_push(old: int = 5, size: int = 7) -> bytes:
    """The fork of size ``size`` with a valid proof from ``old`` in the fork's own tree."""
    return FORK.body(old, size)


def rollback_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "WITNESS STATE ROLLED BACK" in r.message]


# --- on main, the restored witness cosigns the fork -------------------------------------------


def test_without_a_view_of_the_log_the_restored_witness_is_still_fooled(
    restored: tuple[Witness, str],
) -> None:
    """The gap itself (nothing told the witness): documented as still open."""
    w, _ = restored
    assert add_status(w, fork_push()) == 200


# --- (a) it adopts its later cosigned checkpoint: from the log --------------------------------


def test_adopts_its_later_cosignature_from_the_log_and_refuses_the_fork(
    restored: tuple[Witness, str], caplog: pytest.LogCaptureFixture
) -> None:
    w, later = restored
    with serving(FakeLogServer(LOG)) as srv:
        srv.log.size = 9
        srv.served_note = later  # a log serving its witness-cosigned checkpoint
        w.logs = {LOG.origin: LOG.witnessed_log(srv.url)}
        mon = Monitor(w)
        try:
            with caplog.at_level(logging.WARNING, logger="client.witness"):
                assert mon.poll_log(w.logs[LOG.origin]) == 0
                assert mon.poll_log(w.logs[LOG.origin]) == 0  # seen again: nothing more
        finally:
            mon.close()
        assert "/v1/proof/consistency?old_size=5&tree_size=9" in srv.requests
    assert stored_size(w) == 9
    lines = rollback_lines(caplog)
    assert lines == [
        f"WITNESS STATE ROLLED BACK: log {LOG.origin}: the state held tree size 5 but this "
        "witness had cosigned tree size 9; adopted that checkpoint"
    ]
    assert [r.levelname for r in caplog.records if r.message in lines] == ["CRITICAL"]
    assert w.rolled_back == {LOG.origin: 1}
    metrics = WitnessMetrics(w).exposition().decode()
    assert f'tlog_witness_state_rolled_back_total{{origin="{LOG.origin}"}} 1.0' in metrics
    # (b) the fork consistent only with size 5 is refused: 409, the witness is at 9.
    assert add_status(w, fork_push()) == 409
    assert w.evidence() == []  # a refused fork alone is not evidence (unsigned proof)
    # The log's honest history goes on.
    assert add_status(w, LOG.body(9, 12)) == 200


def _poll_fork_once(w: Witness, fork: FakeLog) -> int:
    """One poll of a log (LOG's origin) serving ``fork`` at size 9, with our cosignature."""
    with serving(FakeLogServer(fork)) as srv:
        srv.log.size = 9
        srv.served_note = cosigned(fork, 9, OURS)
        w.logs = {LOG.origin: LOG.witnessed_log(srv.url)}
        mon = Monitor(w)
        try:
            return mon.poll_log(w.logs[LOG.origin])
        finally:
            mon.close()


def test_the_log_proving_the_restored_state_inconsistent_is_evidence(
    tmp_path: Path,
) -> None:
    """Our key on EARLY_FORK's size 9 while our state holds LOG's size 5, and the log's own
    proof 5 -> 9 fails: two histories carry our key. Evidence; the log is frozen."""
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 5)) == 200
    assert _poll_fork_once(w, EARLY_FORK) == 1
    (ev,) = w.evidence()
    assert "own cosignatures are on two inconsistent checkpoints" in ev.reason
    assert stored_size(w) == 5 and w.rolled_back == {}
    assert add_status(w, LOG.body(5, 9)) == 422  # frozen, as for any fork evidence
    w.store.close()


# --- (a) ... from a gossip peer ---------------------------------------------------------------


def test_adopts_its_later_cosignature_from_a_gossip_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer keeps our cosignature beside its own when gossip shows it the checkpoint it
    holds; restored from its copy, our witness finds it there (no log URL at all)."""
    db = tmp_path / "w.db"
    a = make_witness(db, [LOG.witnessed_log()])
    b = make_witness(tmp_path / "b.db", [LOG.witnessed_log()], seed=PEER_SEED, name=PEER_NAME)
    assert add_status(a, LOG.body(0, 5)) == 200
    a.store.close()
    copy_state(db, tmp_path / "backup")
    a = make_witness(db, [LOG.witnessed_log()])
    for w in (a, b):
        assert add_status(w, LOG.body(0 if w is b else 5, 9)) == 200
    with witness_serving(a) as sa:
        mb = Monitor(b, [Peer("a", a.verifier, sa.url)])
        try:
            assert mb.gossip_once() == 0
        finally:
            mb.close()
    held = b.checkpoint_by_hash(_hash())
    assert held is not None
    assert {s.name for s in parse_note(held).signatures} == {LOG.origin, PEER_NAME, WITNESS_NAME}
    a.store.close()
    restore_state(tmp_path / "backup", db)
    a = make_witness(db, [LOG.witnessed_log()])
    assert stored_size(a) == 5
    with witness_serving(b) as sb:
        ma = Monitor(a, [Peer("b", b.verifier, sb.url)])
        try:
            with caplog.at_level(logging.WARNING, logger="client.witness"):
                assert ma.gossip_once() == 0
        finally:
            ma.close()
    assert stored_size(a) == 9
    (line,) = rollback_lines(caplog)
    assert "held tree size 5" in line and "cosigned tree size 9" in line
    assert "no consistency proof" in line  # no log URL: adopted on our signature alone
    assert add_status(a, fork_push()) == 409
    a.store.close()
    b.store.close()


# --- a push that carries our own cosignature ------------------------------------------------


def test_a_push_carrying_our_later_cosignature_is_adopted_first(
    restored: tuple[Witness, str], caplog: pytest.LogCaptureFixture
) -> None:
    w, later = restored
    body = AddCheckpointRequest(5, (), later).format()  # old 5, as the restored state says
    with caplog.at_level(logging.WARNING, logger="client.witness"):
        assert add_status(w, body) == 409  # the witness is at 9 now
    assert stored_size(w) == 9 and len(rollback_lines(caplog)) == 1
    assert add_status(w, fork_push()) == 409


def test_a_push_with_our_cosignature_on_another_root_at_our_size_is_evidence(
    tmp_path: Path,
) -> None:
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 9)) == 200
    other = cosigned(FORK, 9, OURS)
    assert add_status(w, AddCheckpointRequest(9, (), other).format()) == 422
    (ev,) = w.evidence()
    assert "own cosignature is on two different roots" in ev.reason
    assert ev.peer == "add-checkpoint"
    assert add_status(w, LOG.body(9, 12)) == 422  # frozen
    w.store.close()


# --- (d) forged "own" cosignatures are ignored ------------------------------------------------


def _forgeries() -> dict[str, str]:
    text = LOG.checkpoint_text(9)
    good = OURS.cosign(text, 1_700_000_000)
    other_key = CosignatureSigner(WITNESS_NAME, bytes(32)).cosign(text, 1_700_000_000)
    flipped = Signature(good.name, good.key_id, good.raw[:-1] + bytes([good.raw[-1] ^ 1]))
    other_name = Signature("witness.example.com/w9", good.key_id, good.raw)
    bad_ts = Signature(good.name, good.key_id, (2**63).to_bytes(8, "big") + good.raw[8:])
    no_log = Note(text, (good,)).format()
    return {
        "wrong key": sign_note(text, [LOG.signer], [other_key]),
        "bad signature": sign_note(text, [LOG.signer], [flipped]),
        "another witness's name with our key id": sign_note(text, [LOG.signer], [other_name]),
        "timestamp out of range": sign_note(text, [LOG.signer], [bad_ts]),
        "our cosignature without the log's signature": no_log,
        "our cosignature twice": sign_note(text, [LOG.signer], [good, good]),
        "another log's key": sign_note(text, [FakeLog([], seed=bytes(32)).signer], [good]),
    }


@pytest.mark.parametrize("kind", sorted(_forgeries()))
def test_a_forged_own_cosignature_is_ignored(
    restored: tuple[Witness, str], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    w, _ = restored
    forged = _forgeries()[kind]
    with caplog.at_level(logging.WARNING, logger="client.witness"):
        assert w.observe_own(w.logs[LOG.origin], forged, "test") == ""
        add_status(w, AddCheckpointRequest(5, (), forged).format())
    assert stored_size(w) in (5,)  # not adopted (the push itself is refused or 409)
    assert rollback_lines(caplog) == [] and w.rolled_back == {} and w.evidence() == []


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pos=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_our_cosignature_line_is_never_adopted(
    tmp_path_factory: pytest.TempPathFactory, pos: int, bit: int
) -> None:
    """Parsing side: a note whose cosignature line (name, key id, timestamp, signature) has
    any bit flipped is never taken for ours, and never raises."""
    text = LOG.checkpoint_text(9)
    good = cosigned(LOG, 9, OURS)
    line = good.splitlines(keepends=True)[-1]
    raw = bytearray(line.encode())
    i = pos % (len(raw) - 1)  # not the final newline
    raw[i] ^= 1 << bit
    try:
        mutated = good[: -len(line)] + raw.decode()
    except UnicodeDecodeError:
        return
    try:
        if parse_note(mutated).signatures == parse_note(good).signatures:
            return  # a non-canonical spelling of the very same line: it is ours
    except FormatError:
        pass
    w = _plain_witness(tmp_path_factory)
    try:
        w.observe_own(w.logs[LOG.origin], mutated, "test")
        stored = w.latest(LOG.origin)
        assert stored is not None and stored.size == 5, (i, bit, raw.decode(errors="replace"))
    finally:
        w.store.close()
    assert text  # the checkpoint text itself is the log's, untouched


def _plain_witness(f: pytest.TempPathFactory) -> Witness:
    w = make_witness(f.mktemp("w") / "w.db", [LOG.witnessed_log()], clock=FakeClock())
    assert add_status(w, LOG.body(0, 5)) == 200
    return w


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_observe_own_takes_any_text(text: str) -> None:
    """Whatever a log or a peer serves, looking for our cosignature in it never raises."""
    w = Witness(OURS, [LOG.witnessed_log()], _NoStore())  # type: ignore[arg-type]
    assert w.observe_own(w.logs[LOG.origin], text, "test") == ""


class _NoStore:
    """observe_own must answer "" before it reads the state for any text that is not a
    log-signed checkpoint with a valid cosignature of ours."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the store was used ({name})")


# --- (e) a log serving our cosignature over another root at a size we hold -------------------


def test_the_log_serving_our_cosignature_on_another_root_is_evidence(tmp_path: Path) -> None:
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 9)) == 200
    assert _poll_fork_once(w, FORK) == 1
    (ev,) = w.evidence()
    assert ev.peer.startswith("log http://127.0.0.1:")
    assert "own cosignature is on two different roots" in ev.reason
    assert WITNESS_NAME in ev.our_note and WITNESS_NAME in ev.their_note
    assert add_status(w, LOG.body(9, 12)) == 422
    w.store.close()


# --- tlog-witness check -----------------------------------------------------------------------


def test_check_adopts_from_the_log_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state.db"
    w = make_witness(db, [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 5)) == 200
    w.store.close()
    with serving(FakeLogServer(LOG)) as srv:
        srv.log.size = 9
        srv.served_note = cosigned(LOG, 9, OURS)
        assert main(["check", "--config", str(write_check_config(tmp_path, [(LOG, srv.url)]))]) == 0
    out = capsys.readouterr().out
    assert (
        f"STATE ROLLED BACK: log {LOG.origin}: the state held tree size 5; adopted tree size 9"
        in out
    )
    assert f"log {LOG.origin}: cosigned size 9" in out


# --- (c) the start-up check is bounded ------------------------------------------------------


def test_serve_does_not_wait_past_the_bound_for_a_first_round_that_does_not_end(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """However many logs and peers hang, ``serve`` starts after 3 x http_timeout (a whole
    answer's deadline) with a WARNING; the round goes on in the background."""
    import threading
    from types import SimpleNamespace

    from client.witness.cli import _startup_check

    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log("http://127.0.0.1:9")])
    mon = Monitor(w)  # its first round never runs here
    cfg = SimpleNamespace(logs=list(w.logs.values()), peers=[], http_timeout=0.05)
    try:
        with caplog.at_level(logging.WARNING, logger="client.witness"):
            _startup_check(cfg, mon, threading.Event())  # type: ignore[arg-type]
    finally:
        mon.close()
        w.store.close()
    assert "start-up check: the logs and peers did not all answer within 0.15 s" in caplog.text


def test_check_finds_our_cosignature_on_an_older_checkpoint_of_another_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Our state holds LOG's size 9; the log serves our cosignature on EARLY_FORK's size 4,
    and its own proof 4 -> 9 cannot lead from that root: evidence, exit 1."""
    w = make_witness(tmp_path / "state.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 9)) == 200
    w.store.close()
    with serving(FakeLogServer(LOG)) as srv:
        srv.log.size = 9
        srv.served_note = cosigned(EARLY_FORK, 4, OURS)
        assert main(["check", "--config", str(write_check_config(tmp_path, [(LOG, srv.url)]))]) == 1
        assert "/v1/proof/consistency?old_size=4&tree_size=9" in srv.requests
    out = capsys.readouterr().out
    assert "SPLIT-VIEW EVIDENCE: 1 record(s)" in out
    assert "own cosignatures are on two inconsistent checkpoints" in out


def test_a_pushed_older_cosignature_of_ours_costs_no_request_to_the_log(
    tmp_path: Path,
) -> None:
    """Anyone can replay an old checkpoint: a push never asks the log about it."""
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 9)) == 200
    with serving(FakeLogServer(LOG)) as srv:
        w.logs = {LOG.origin: LOG.witnessed_log(srv.url)}
        mon = Monitor(w)
        try:
            old = AddCheckpointRequest(9, (), cosigned(EARLY_FORK, 4, OURS)).format()
            assert add_status(w, old) == 400  # old > size
            old = AddCheckpointRequest(4, (), cosigned(EARLY_FORK, 4, OURS)).format()
            assert add_status(w, old) == 409
        finally:
            mon.close()
        assert srv.requests == []
    assert w.evidence() == [] and stored_size(w) == 9
    w.store.close()


def test_peer_lines_on_the_logs_checkpoint_of_our_size_are_kept(tmp_path: Path) -> None:
    """A log serving its cosigned checkpoint (ours and a peer's lines on it) gives us the
    peer's line to keep; a bad line under the peer's key gives nothing."""
    peer = CosignatureSigner(PEER_NAME, PEER_SEED)
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    assert add_status(w, LOG.body(0, 9)) == 200
    with serving(FakeLogServer(LOG)) as srv:
        srv.log.size = 9
        w.logs = {LOG.origin: LOG.witnessed_log(srv.url)}
        mon = Monitor(w, [Peer("b", peer.verifier(), "http://127.0.0.1:9")])
        try:
            good = cosigned(LOG, 9, OURS, peer)
            bad = good.replace(good.splitlines()[-1][-8:], "AAAAAAA=")
            srv.served_note = bad
            assert mon.poll_log(w.logs[LOG.origin]) == 0
            assert PEER_NAME not in (w.checkpoint_by_hash(_hash()) or "")
            srv.served_note = good
            assert mon.poll_log(w.logs[LOG.origin]) == 0
        finally:
            mon.close()
    held = w.checkpoint_by_hash(_hash())
    assert held is not None
    assert [s.name for s in parse_note(held).signatures] == [LOG.origin, WITNESS_NAME, PEER_NAME]
    stored = w.latest(LOG.origin)
    assert stored is not None and stored.size == 9 and w.evidence() == []
    w.store.close()


def test_a_state_without_the_log_adopts_our_cosignature_from_a_peer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A copy taken before the log was witnessed at all holds nothing for it: our line on a
    peer's size 9 is adopted (held size 0), and a fork from 0 gets 409 with 9."""
    peer = peer_holding_our_line(LOG, tmp_path / "b.db")
    w = make_witness(tmp_path / "w.db", [LOG.witnessed_log()])
    with witness_serving(peer) as sp:
        mon = Monitor(w, [Peer("b", peer.verifier, sp.url)])
        try:
            with caplog.at_level(logging.WARNING, logger="client.witness"):
                assert mon.gossip_once() == 0
        finally:
            mon.close()
    assert stored_size(w) == 9
    (line,) = rollback_lines(caplog)
    assert "the state held tree size 0 but this witness had cosigned tree size 9" in line
    assert add_status(w, FORK.body(0, 7)) == 409
    peer.store.close()
    w.store.close()
