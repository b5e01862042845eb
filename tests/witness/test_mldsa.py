"""ML-DSA-44 cosignatures (c2sp.org/tlog-cosignature v1.1.0-rc.1, type 0x06, ``subtree/v1``).

Checked against a published vector (torchwood's litewitness testdata: a checkpoint signed by
an ML-DSA-44 log key) and against the spec's message layout; the Go side verifies ours in
tests/interop/test_go_witnesses.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import (
    CosignatureSigner,
    CosignatureVerifier,
    MLDSACosignatureSigner,
    MLDSACosignatureVerifier,
    cosignature_verifier,
    load_cosignature_signer,
    subtree_message,
)
from client.formats.merkle import EMPTY_ROOT, VerificationError
from client.formats.note import FormatError, Note, open_note, parse_note
from client.formats.policy import Policy
from client.net.witness_client import AddCheckpointRequest, parse_cosignature_lines
from client.witness.cli import _load, main
from client.witness.core import Witness, WitnessedLog
from client.witness.store import WitnessStore
from tests.witness.helpers import ORIGIN, FakeClock, FakeLog, events

VECTOR = Path(__file__).parent / "vectors" / "torchwood_mldsa_log.json"
SEED = bytes(range(7, 39))


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VECTOR.read_text())
    return doc


def test_published_vector_verifies(vector: dict[str, Any]) -> None:
    v = MLDSACosignatureVerifier.from_vkey(vector["log_vkey"])
    note = open_note(vector["checkpoint_note"], [v])
    (sig,) = note.verified
    assert MLDSACosignatureVerifier.timestamp(sig) == 0
    assert len(sig.raw) == 8 + 2420 and len(v.public_key) == 1312
    # One flipped bit anywhere in the signature, the text or the name: rejected.
    raw = bytearray(sig.raw)
    raw[100] ^= 1
    assert not v.verify(note.text.encode(), bytes(raw))
    assert not v.verify(note.text.replace("\n1\n", "\n2\n").encode(), sig.raw)
    renamed = MLDSACosignatureVerifier("example.com/other", v.public_key)
    assert not renamed.verify(note.text.encode(), sig.raw)


def test_witness_accepts_the_vector_from_an_ml_dsa_log(
    tmp_path: Path, vector: dict[str, Any]
) -> None:
    log = WitnessedLog("example.com/mldsa-log", (cosignature_verifier(vector["log_vkey"]),))
    w = Witness(CosignatureSigner("example.com/witness", SEED), [log], WitnessStore(tmp_path / "d"))
    body = AddCheckpointRequest(0, (), vector["checkpoint_note"]).format()
    lines = w.add_checkpoint(body)
    assert lines.startswith("\u2014 example.com/witness ")


def test_message_layout_and_key_id() -> None:
    root = bytes(range(32))
    m = subtree_message("w.example/1", 1700000000, "log.example/a", 0, 5, root)
    assert m[:12] == bytes.fromhex("73756274726565 2f76310a00".replace(" ", ""))
    assert m[12] == len("w.example/1") and m[13:24] == b"w.example/1"
    assert struct.unpack(">Q", m[24:32]) == (1700000000,)
    assert m[32] == len("log.example/a") and m[33:46] == b"log.example/a"
    assert struct.unpack(">QQ", m[46:62]) == (0, 5) and m[62:] == root
    with pytest.raises(FormatError):
        subtree_message("w", 1, "o", 2, 4, root)  # a timestamp only for start 0
    with pytest.raises(FormatError):
        subtree_message("w", 0, "o", 3, 3, root)  # an empty subtree hashes to SHA-256("")
    assert subtree_message("w", 0, "o", 3, 3, EMPTY_ROOT)
    s = MLDSACosignatureSigner("w.example/1", SEED)
    want = hashlib.sha256(b"w.example/1\n\x06" + s.public_key).digest()[:4]
    assert s.key_id == int.from_bytes(want, "big")
    assert s.vkey().startswith(f"w.example/1+{want.hex()}+B")  # base64 of 0x06...


def test_sign_verify_and_key_files() -> None:
    s = MLDSACosignatureSigner.generate("witness.example.com/pq")
    again = load_cosignature_signer(s.skey())
    assert isinstance(again, MLDSACosignatureSigner) and again.vkey() == s.vkey()
    ed = CosignatureSigner.generate("witness.example.com/ed")
    assert isinstance(load_cosignature_signer(ed.skey()), CosignatureSigner)
    v = cosignature_verifier(s.vkey())
    assert isinstance(v, MLDSACosignatureVerifier)
    assert isinstance(cosignature_verifier(ed.vkey()), CosignatureVerifier)
    text = Checkpoint(ORIGIN, 7, bytes(32)).text()
    sig = s.cosign(text, 1_700_000_123)
    assert v.verify(text.encode(), sig.raw)
    assert MLDSACosignatureVerifier.timestamp(sig) == 1_700_000_123
    # A different timestamp in the 8-byte prefix breaks it; so do extension lines.
    forged = struct.pack(">Q", 1_700_000_124) + sig.raw[8:]
    assert not v.verify(text.encode(), forged)
    assert not v.verify((text + "ext\n").encode(), sig.raw)
    with pytest.raises(FormatError):
        s.cosign(text + "ext\n", 1)
    with pytest.raises(FormatError):
        MLDSACosignatureSigner.from_skey(ed.skey())


def test_witness_cosigns_with_both_keys(tmp_path: Path) -> None:
    log = FakeLog(events(20))
    ed = CosignatureSigner("witness.example.com/w1", SEED)
    pq = MLDSACosignatureSigner("witness.example.com/w1", SEED)
    w = Witness(
        ed,
        [log.witnessed_log()],
        WitnessStore(tmp_path / "d"),
        clock=FakeClock(),
        extra_signers=[pq],
    )
    body = w.add_checkpoint(log.body(0, 20))
    assert body.count("\u2014 witness.example.com/w1 ") == 2
    text = log.checkpoint_text(20)
    # A log that knows only one of the keys takes its line and ignores the other.
    (only_pq,) = parse_cosignature_lines(text, body, pq.verifier())
    (only_ed,) = parse_cosignature_lines(text, body, ed.verifier())
    assert only_pq.key_id == pq.key_id and only_ed.key_id == ed.key_id
    stored = w.latest(ORIGIN)
    assert stored is not None
    for key in (pq, ed):
        policy = Policy.parse(f"log {log.signer.vkey()}\nwitness w {key.vkey()}\nquorum w\n")
        policy.verify_checkpoint(stored.note, ORIGIN)
    # A bad ML-DSA line under a key the policy knows is an error, not ignored.
    note = parse_note(stored.note)
    bad = [
        s if s.key_id != pq.key_id else type(s)(s.name, s.key_id, s.raw[:-1] + b"\0")
        for s in note.signatures
    ]
    policy = Policy.parse(f"log {log.signer.vkey()}\nwitness w {pq.vkey()}\nquorum w\n")
    with pytest.raises(VerificationError):
        policy.verify_checkpoint(Note(note.text, tuple(bad)).format(), ORIGIN)


def test_cli_keygen_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = "witness.example.com/w9"
    assert main(["keygen", "--name", name, "--key", str(tmp_path / "w.key")]) == 0
    pq_key = tmp_path / "pq.key"
    assert main(["keygen", "--name", name, "--key", str(pq_key), "--alg", "mldsa44"]) == 0
    vkeys = capsys.readouterr().out.split()
    assert isinstance(cosignature_verifier(vkeys[1]), MLDSACosignatureVerifier)
    assert pq_key.stat().st_mode & 0o077 == 0
    log = FakeLog(events(4))
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        f'name = "{name}"\nkey_file = "w.key"\nmldsa_key_file = "pq.key"\n'
        'state_db = "s.db"\nlisten = "127.0.0.1:0"\n'
        f'[[log]]\norigin = "{ORIGIN}"\nvkey = "{log.signer.vkey()}"\n'
    )
    _, w = _load(argparse.Namespace(config=str(cfg)))  # the same setup `serve` uses
    assert len(w.add_checkpoint(log.body(0, 4)).splitlines()) == 2
    assert main(["check", "--config", str(cfg)]) == 0
