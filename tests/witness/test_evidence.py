"""Issue 7 part 6: conflicting checkpoints pushed to a witness become split-view evidence,
and a log's own key can never count as a witness (neither in the witness nor in a policy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.formats.cosignature import CosignatureSigner
from client.formats.note import Ed25519Signer, FormatError
from client.formats.policy import Policy
from client.witness.cli import main
from client.witness.config import ConfigError, WitnessConfig
from client.witness.core import Witness
from client.witness.monitor import Monitor
from client.witness.store import WitnessStore
from tests.witness.helpers import (
    LOG_SEED,
    ORIGIN,
    FakeLog,
    FakeLogServer,
    add_status,
    events,
    make_witness,
    serving,
    write_config,
)


def configured_witness(cfg: Path) -> Witness:
    c = WitnessConfig.load(cfg)
    return Witness(c.signer(), c.logs, WitnessStore(c.state_db))


@pytest.mark.parametrize("old", [10, 0, 4])
def test_same_size_other_root_is_evidence_and_check_fails(
    tmp_path: Path, old: int, capsys: pytest.CaptureFixture[str]
) -> None:
    honest, fork = FakeLog(events(10)), FakeLog(events(10, prefix="forked-"))
    cfg = write_config(tmp_path, honest)
    w = configured_witness(cfg)
    assert add_status(w, honest.body(0)) == 200
    assert main(["check", "--config", str(cfg)]) == 0
    capsys.readouterr()
    # Whatever `old` says (ours, 0, or a stale size), a log-signed size-10 checkpoint with
    # another root contradicts the one we cosigned.
    proof = [] if old in (0, 10) else fork.consistency_proof(old, 10)
    assert add_status(w, fork.body(old, proof=proof)) == 422
    [ev] = w.evidence()
    assert ev.peer == "add-checkpoint" and "different root" in ev.reason
    assert ev.our_note.startswith(honest.checkpoint(10).rstrip("\n").rsplit("\n", 1)[0])
    assert ev.their_note == fork.checkpoint(10)  # only the verified log signature is kept
    assert main(["check", "--config", str(cfg)]) == 1
    out = capsys.readouterr().out
    assert "SPLIT-VIEW EVIDENCE: 1 record(s)" in out
    # The origin is frozen: even the honest continuation is refused from now on.
    honest_more = FakeLog(events(12))
    assert add_status(w, honest_more.body(10)) == 422


def test_unsigned_conflicts_are_not_evidence(tmp_path: Path) -> None:
    honest = FakeLog(events(10))
    w = make_witness(tmp_path / "w.db", [honest.witnessed_log()])
    assert add_status(w, honest.body(0)) == 200
    stranger = FakeLog(events(10, prefix="x-"), seed=bytes(32))  # same origin, wrong key
    assert add_status(w, stranger.body(10, proof=[])) == 403
    assert w.evidence() == []


def test_failed_proof_is_settled_with_the_logs_own_proof(tmp_path: Path) -> None:
    honest, honest16 = FakeLog(events(10)), FakeLog(events(16))
    with serving(FakeLogServer(honest16)) as srv:
        w = make_witness(tmp_path / "w.db", [honest.witnessed_log(srv.url)])
        mon = Monitor(w)
        try:
            assert add_status(w, honest.body(0)) == 200
            # A replayed honest checkpoint with a junk proof: 422, and the log's own proof
            # clears it, so nothing is frozen and the real push then succeeds.
            junk = [bytes(32)] * len(honest16.consistency_proof(10, 16))
            assert add_status(w, honest16.body(10, proof=junk)) == 422
            assert any(r.startswith("/v1/proof/consistency") for r in srv.requests)
            assert w.evidence() == []
            assert add_status(w, honest16.body(10)) == 200
        finally:
            mon.close()


def test_failed_proof_against_a_forked_log_is_evidence(tmp_path: Path) -> None:
    honest = FakeLog(events(10))
    fork16 = FakeLog(events(16, prefix="forked-"))  # same key, history rewritten
    with serving(FakeLogServer(fork16)) as srv:
        w = make_witness(tmp_path / "w.db", [honest.witnessed_log(srv.url)])
        mon = Monitor(w)
        try:
            assert add_status(w, honest.body(0)) == 200
            assert add_status(w, fork16.body(10)) == 422
            [ev] = w.evidence()
            assert "does not verify" in ev.reason
            assert ev.their_note == fork16.checkpoint(16)
        finally:
            mon.close()


def test_failed_proof_without_log_url_is_a_suspicion(tmp_path: Path) -> None:
    honest, fork16 = FakeLog(events(10)), FakeLog(events(16, prefix="forked-"))
    w = make_witness(tmp_path / "w.db", [honest.witnessed_log()])
    mon = Monitor(w)
    try:
        assert add_status(w, honest.body(0)) == 200
        assert add_status(w, fork16.body(10)) == 422
        assert w.evidence() == []
        [s] = w.store.suspicions()
        assert (s.peer, s.their_size) == ("add-checkpoint", 16)
    finally:
        mon.close()


@pytest.mark.parametrize("name", [ORIGIN, "witness.example.com/sneaky"])
def test_witness_refuses_the_logs_key(tmp_path: Path, name: str) -> None:
    log = FakeLog(events(3))
    # Same private key as the log (any name): the public keys are equal.
    with pytest.raises(ValueError, match="own key"):
        Witness(
            CosignatureSigner(name, LOG_SEED), [log.witnessed_log()], WitnessStore(tmp_path / "d")
        )
    cfg = write_config(tmp_path, log)
    (tmp_path / "witness.key").write_text(
        CosignatureSigner("witness.example.com/w7", LOG_SEED).skey()
    )
    with pytest.raises(ConfigError, match="own key"):
        WitnessConfig.load(cfg).signer()
    assert main(["check", "--config", str(cfg)]) == 2


def test_policy_refuses_a_witness_with_the_logs_key() -> None:
    log = Ed25519Signer(ORIGIN, LOG_SEED)
    same = CosignatureSigner("witness.example.com/w1", LOG_SEED)
    other = CosignatureSigner("witness.example.com/w1", bytes(range(100, 132)))
    ok = f"log {log.vkey()}\nwitness w1 {other.vkey()}\nquorum w1\n"
    assert Policy.parse(ok).quorum == "w1"
    with pytest.raises(FormatError, match="log's key"):
        Policy.parse(f"log {log.vkey()}\nwitness w1 {same.vkey()}\nquorum w1\n")
