"""add-checkpoint: the end-to-end vector, and every rejection with its exact status code."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import EMPTY_ROOT, VerificationError
from client.formats.note import Ed25519Signer, Signature, b64encode, open_note, sign_note
from client.net.witness_client import AddCheckpointRequest, origin_hash
from client.witness.core import AddCheckpointError, Witness
from tests.witness.helpers import (
    ORIGIN,
    WITNESS_NAME,
    WITNESS_SEED,
    FakeClock,
    FakeLog,
    add_status,
    events,
    make_witness,
)


@pytest.fixture
def w100(tmp_path: Path, log300: FakeLog, clock: FakeClock) -> Witness:
    """A witness whose state is the size-100 checkpoint of the vector log."""
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()], clock=clock)
    w.add_checkpoint(log300.body(0, 100))
    return w


def unchanged(w: Witness, size: int = 100) -> None:
    stored = w.latest(ORIGIN)
    assert stored is not None and stored.size == size


# --- the end-to-end vector --------------------------------------------------------------------


def test_end_to_end_vector(tmp_path: Path, e2e: dict[str, Any], log300: FakeLog) -> None:
    assert b64encode(log300.root(100)) == e2e["root_100_b64"]
    assert log300.checkpoint(300) == e2e["checkpoint_300"]
    assert log300.body(100, 300) == e2e["add_checkpoint_body_old_100"].encode()
    clock = FakeClock(1)
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()], clock=clock)
    assert w.vkey() == e2e["witness_vkey"]
    assert log300.signer.vkey() == e2e["log_vkey"]

    w.add_checkpoint(log300.body(0, 100))  # state: the size-100 checkpoint
    clock.now = e2e["cosignature_time"]
    got = w.add_checkpoint(e2e["add_checkpoint_body_old_100"].encode())
    assert got == e2e["cosignature_line"]

    # The monitoring endpoint's note is the checkpoint plus our line: the one in the vector's
    # tlog-proof bundle, byte for byte.
    served = w.checkpoint_by_hash(origin_hash(ORIGIN))
    assert served == e2e["checkpoint_300"] + e2e["cosignature_line"]
    assert served == e2e["tlog_proof_index_5"].split("\n\n", 1)[1]


def test_state_keeps_only_verified_signatures(w100: Witness, log300: FakeLog) -> None:
    grease = Signature("grease.invalid", 0x01020304, b"\x00" * 64)
    forged = Signature(ORIGIN, 0xDEADBEEF, b"\x01" * 64)  # log's name, random key ID
    other = CosignatureSigner("other.witness/x", bytes(32)).cosign(log300.checkpoint_text(), 5)
    note = sign_note(log300.checkpoint_text(300), [log300.signer], extra=(grease, forged, other))
    body = AddCheckpointRequest(100, tuple(log300.consistency_proof(100, 300)), note).format()
    assert add_status(w100, body) == 200
    stored = w100.latest(ORIGIN)
    assert stored is not None and stored.size == 300
    lines = stored.note.split("\n\n", 1)[1].splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"\u2014 {ORIGIN} ")
    assert lines[1].startswith(f"\u2014 {WITNESS_NAME} ")
    open_note(stored.note, [log300.signer.verifier(), w100.verifier])


# --- rejections -------------------------------------------------------------------------------


def _framing(log: FakeLog, old: str, proof_lines: list[str], note: str | None = None) -> bytes:
    note = log.checkpoint(300) if note is None else note
    return ("\n".join([old, *proof_lines]) + "\n\n" + note).encode()


def _proof_lines(log: FakeLog) -> list[str]:
    return [b64encode(h) for h in log.consistency_proof(100, 300)]


def _malformed_bodies(log: FakeLog) -> dict[str, bytes]:
    p = _proof_lines(log)
    good = log.body(100, 300).decode()
    note = log.checkpoint(300)
    return {
        "empty body": b"",
        "missing old line": ("\n".join(p) + "\n\n" + note).encode(),
        "old line only": b"old 100\n",
        "old without a value": _framing(log, "old ", p),
        "old with leading zero": _framing(log, "old 0100", p),
        "old negative": _framing(log, "old -1", p),
        "old with plus": _framing(log, "old +100", p),
        "old hex": _framing(log, "old 0x64", p),
        "old exponent": _framing(log, "old 1e2", p),
        "old non-ascii digits": _framing(log, "old \uff11\uff10\uff10", p),
        "old trailing space": _framing(log, "old 100 ", p),
        "old double space": _framing(log, "old  100", p),
        "old capitalised": _framing(log, "Old 100", p),
        "old too large": _framing(log, "old 99999999999999999999999", p),
        "proof url-safe base64": _framing(log, "old 100", ["-_" + p[0][2:], *p[1:]]),
        "proof unpadded base64": _framing(log, "old 100", [p[0].rstrip("="), *p[1:]]),
        "proof non-canonical base64": _framing(log, "old 100", [p[0][:-2] + "N=", *p[1:]]),
        "proof hash 31 bytes": _framing(log, "old 100", [b64encode(bytes(31)), *p[1:]]),
        "proof hash 33 bytes": _framing(log, "old 100", [b64encode(bytes(33)), *p[1:]]),
        "proof line with space": _framing(log, "old 100", [p[0] + " ", *p[1:]]),
        "proof line junk": _framing(log, "old 100", ["not base64!", *p[1:]]),
        "64 proof lines": _framing(log, "old 100", [b64encode(bytes(32))] * 64),
        "missing blank line": ("old 100\n" + "\n".join(p) + "\n" + note).encode(),
        "CRLF line endings": good.replace("\n", "\r\n").encode(),
        "CRLF in old line only": good.replace("old 100\n", "old 100\r\n", 1).encode(),
        "not UTF-8": good.encode().replace("\u2014".encode(), b"\xe2\x80"),
        "control character in note": good.replace("scim-log", "scim\x07log").encode(),
        "note without signatures": _framing(log, "old 100", p, log.checkpoint_text(300) + "\n"),
        "note not ending in newline": good.encode()[:-1],
        "junk after the note": (good + "trailing junk\n").encode(),
        "checkpoint with two lines": _framing(
            log, "old 100", p, sign_note(f"{ORIGIN}\n300\n", [log.signer])
        ),
        "checkpoint size with leading zero": _framing(
            log,
            "old 100",
            p,
            sign_note(f"{ORIGIN}\n0300\n{b64encode(log.root(300))}\n", [log.signer]),
        ),
        "checkpoint root not 32 bytes": _framing(
            log, "old 100", p, sign_note(f"{ORIGIN}\n300\n{b64encode(bytes(31))}\n", [log.signer])
        ),
        "body over 128 KiB": b"old 100\n\n" + b"x" * (128 * 1024),
    }


def test_malformed_bodies_are_400(w100: Witness, log300: FakeLog) -> None:
    for name, body in _malformed_bodies(log300).items():
        assert add_status(w100, body) == 400, name
    unchanged(w100)


def test_every_truncation_is_400(w100: Witness, log300: FakeLog) -> None:
    body = log300.body(100, 300)
    for n in range(len(body)):
        assert add_status(w100, body[:n]) == 400, n
    unchanged(w100)


def test_every_one_byte_change_is_rejected_cleanly(w100: Witness, log300: FakeLog) -> None:
    body = log300.body(100, 300)
    seen: set[int] = set()
    for i in range(len(body)):
        mutated = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        s = add_status(w100, mutated)
        assert s in (400, 403, 404, 409, 422), (i, s)
        seen.add(s)
    assert {400, 403, 404, 409, 422} <= seen
    unchanged(w100)


def test_unknown_origin_is_404(w100: Witness) -> None:
    other = FakeLog(events(10), origin="other.example.com/log", seed=b"\x07" * 32)
    assert add_status(w100, other.body(0, 10)) == 404
    # 404 comes before the old > size check (spec order).
    assert add_status(w100, other.body(0, 10).replace(b"old 0", b"old 50", 1)) == 404


def test_bad_signature_is_403(w100: Witness, log300: FakeLog) -> None:
    note = log300.checkpoint(300)
    text, sigline = note.split("\n\n")
    name, b64 = sigline.rstrip("\n").rsplit(" ", 1)
    raw = bytearray(base64.b64decode(b64))
    raw[10] ^= 0x80
    bad = f"{text}\n\n{name} {b64encode(bytes(raw))}\n"
    p = _proof_lines(log300)
    assert add_status(w100, _framing(log300, "old 100", p, bad)) == 403
    # A valid signature next to the bad one does not help: a known key that fails rejects.
    both = f"{text}\n\n{sigline}{name} {b64encode(bytes(raw))}\n"
    assert add_status(w100, _framing(log300, "old 100", p, both)) == 403
    # Signed by another key under the log's name: no trusted signature.
    imposter = sign_note(log300.checkpoint_text(300), [Ed25519Signer(ORIGIN, b"\x09" * 32)])
    assert add_status(w100, _framing(log300, "old 100", p, imposter)) == 403
    # 403 comes before 409 (stale old) and before the extension-line check.
    assert add_status(w100, _framing(log300, "old 7", p, imposter)) == 403
    ext_imposter = sign_note(
        log300.checkpoint_text(300) + "ext\n", [Ed25519Signer(ORIGIN, b"\x09" * 32)]
    )
    assert add_status(w100, _framing(log300, "old 100", p, ext_imposter)) == 403
    unchanged(w100)


def test_extension_lines_are_400(w100: Witness, log300: FakeLog) -> None:
    note = sign_note(log300.checkpoint_text(300) + "Timestamp: 1\n", [log300.signer])
    assert add_status(w100, _framing(log300, "old 100", _proof_lines(log300), note)) == 400
    unchanged(w100)


def test_old_larger_than_size_is_400(w100: Witness, log300: FakeLog) -> None:
    assert add_status(w100, log300.body(100, 50, proof=[])) == 400
    assert add_status(w100, log300.body(300, 200, proof=[])) == 400
    unchanged(w100)


def test_stale_old_is_409_with_size(w100: Witness, log300: FakeLog) -> None:
    for old in (0, 50, 99, 101, 200):
        with pytest.raises(AddCheckpointError) as info:
            w100.add_checkpoint(log300.body(old, 300))
        exc = info.value
        assert exc.status == 409
        assert exc.content_type == "text/x.tlog.size"
        assert exc.body() == "100\n"
    unchanged(w100)


def test_bad_consistency_proof_is_422(w100: Witness, log300: FakeLog) -> None:
    proof = log300.consistency_proof(100, 300)
    flipped = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    assert add_status(w100, log300.body(100, 300, proof=flipped)) == 422
    assert add_status(w100, log300.body(100, 300, proof=proof[:-1])) == 422
    assert add_status(w100, log300.body(100, 300, proof=[*proof, proof[0]])) == 422
    assert add_status(w100, log300.body(100, 300, proof=[])) == 422
    assert add_status(w100, log300.body(100, 300, proof=log300.consistency_proof(99, 300))) == 422
    unchanged(w100)


def test_conflicting_root_at_same_size_is_422(w100: Witness, log300: FakeLog) -> None:
    # Same size, same root: re-cosigned (200); a non-empty proof there is 422.
    assert add_status(w100, log300.body(100, 100)) == 200
    assert add_status(w100, log300.body(100, 100, proof=[log300.root(100)])) == 422
    # A fork that grows from a different size-100 tree cannot prove consistency either
    # (no evidence by itself: the proof is unsigned; see test_evidence.py).
    fork_big = FakeLog([*events(99), b"evil", *events(200, "x")])
    assert add_status(w100, fork_big.body(100, 300)) == 422
    assert w100.evidence() == []
    # A log-signed size-100 checkpoint with another root: 422 and split-view evidence.
    fork = FakeLog([*events(99), b"evil"])
    assert add_status(w100, fork.body(100, 100)) == 422
    assert len(w100.evidence()) == 1
    unchanged(w100)


def test_size_zero_rules(tmp_path: Path, log300: FakeLog) -> None:
    w = make_witness(tmp_path / "w.db", [log300.witnessed_log()])
    wrong_root = sign_note(f"{ORIGIN}\n0\n{b64encode(bytes(32))}\n", [log300.signer])
    empty = sign_note(Checkpoint(ORIGIN, 0, EMPTY_ROOT).text(), [log300.signer])
    assert add_status(w, AddCheckpointRequest(0, (), wrong_root).format()) == 422
    # old 0 with a non-empty proof: 422, even for a good checkpoint.
    one = b64encode(log300.root(1))
    assert add_status(w, f"old 0\n{one}\n\n{log300.checkpoint(5)}".encode()) == 422
    assert w.latest(ORIGIN) is None
    assert add_status(w, AddCheckpointRequest(0, (), empty).format()) == 200
    assert add_status(w, AddCheckpointRequest(0, (), log300.checkpoint(5)).format()) == 200
    # Now at 5: a size-0 checkpoint with old 0 is a stale old (409 precedes 422).
    with pytest.raises(AddCheckpointError) as info:
        w.add_checkpoint(AddCheckpointRequest(0, (), wrong_root).format())
    assert info.value.status == 409 and info.value.body() == "5\n"


def test_cosignature_verifies_and_uses_the_clock(w100: Witness, log300: FakeLog) -> None:
    line = w100.add_checkpoint(log300.body(100, 300))
    text = log300.checkpoint_text(300)
    note = open_note(text + "\n" + line, [w100.verifier])
    assert note.verified[0].raw[:8] == (1_700_000_000).to_bytes(8, "big")
    with pytest.raises(VerificationError):
        open_note(log300.checkpoint_text(299) + "\n" + line, [w100.verifier])


def test_cosigner_key_is_deterministic(e2e: dict[str, Any]) -> None:
    assert CosignatureSigner(WITNESS_NAME, WITNESS_SEED).vkey() == e2e["witness_vkey"]
