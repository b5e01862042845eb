"""A witness ignores signature lines of keys and types it does not know (issue 14 part 3):
other witnesses' cosignatures, ML-DSA-44 lines, lines of types no one has defined yet."""

from __future__ import annotations

import struct
from pathlib import Path

from client.formats.cosignature import MLDSACosignatureSigner
from client.formats.note import Note, Signature, parse_note
from client.net.witness_client import AddCheckpointRequest
from tests.witness.helpers import ORIGIN, FakeLog, events, make_witness


def test_pushed_checkpoint_with_foreign_lines(tmp_path: Path) -> None:
    log = FakeLog(events(8))
    w = make_witness(tmp_path / "w.db", [log.witnessed_log()])
    note = parse_note(log.checkpoint(8))
    text = note.text
    foreign = (
        MLDSACosignatureSigner.generate("other.example/w").cosign(text, 1700000000),
        # The log's own name with a key ID we do not know (e.g. a new key type): ignored.
        Signature(ORIGIN, 0x0BADF00D, b"\xff" + b"future-alg" + bytes(40)),
        Signature("grease.example/x", 0x01020304, struct.pack(">Q", 5) + bytes(64)),
    )
    pushed = Note(text, (foreign[0], *note.signatures, *foreign[1:])).format()
    lines = w.add_checkpoint(AddCheckpointRequest(0, (), pushed).format())
    assert lines.startswith("\u2014 " + w.name + " ")
    stored = w.latest(ORIGIN)
    assert stored is not None
    kept = parse_note(stored.note).signatures
    # Only the verified log signature and our own cosignature are stored and served.
    assert [(s.name, s.key_id) for s in kept] == [
        (ORIGIN, log.signer.key_id),
        (w.name, w.signer.key_id),
    ]
