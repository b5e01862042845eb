"""client.formats.policy: the tlog-policy (Sigsum) format and quorum evaluation."""

from __future__ import annotations

from typing import Any

import pytest

from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import VerificationError
from client.formats.note import FormatError, Note, Signature, parse_note
from client.formats.policy import Policy
from tests.witness.helpers import ORIGIN, FakeLog

W = [CosignatureSigner(f"w{i}.example.com", bytes([i]) * 32) for i in range(5)]


def policy_text(log: FakeLog, quorum: str = "all-of-them", *, extra: str = "") -> str:
    lines = [
        "# test policy",
        f"log {log.signer.vkey()} https://log.example.com  # the log",
        *(f"witness W{i} {w.vkey()} https://w{i}.example.com" for i, w in enumerate(W[:3])),
        f"witness W3 {W[3].vkey()}",
        f"witness W4\t{W[4].vkey()}",
        "group g1 2 W0 W1 W2",
        "group g2 any W3 W4",
        "group all-of-them all g1 g2",
        "",
        extra,
        f"quorum {quorum}",
    ]
    return "\n".join(lines) + "\n"


def cosigned(log: FakeLog, which: list[int], size: int = 300) -> str:
    text = log.checkpoint_text(size)
    note = parse_note(log.checkpoint(size))
    sigs = tuple(W[i].cosign(text, 1000 + i) for i in which)
    return Note(note.text, note.signatures + sigs).format()


def test_parse(log300: FakeLog) -> None:
    p = Policy.parse(policy_text(log300))
    assert [lg.origin for lg in p.logs] == [ORIGIN]
    assert p.logs[0].url == "https://log.example.com"
    assert p.witnesses["W3"].url is None
    assert p.groups["g1"].threshold == 2
    assert p.groups["g2"].threshold == 1
    assert p.groups["all-of-them"].threshold == 2
    assert p.quorum == "all-of-them"
    assert len(p.verifiers()) == 6


@pytest.mark.parametrize(
    ("which", "ok"),
    [
        ([0, 1, 3], True),
        ([0, 2, 4], True),
        ([0, 1, 2, 3, 4], True),
        ([0, 1], False),  # g2 unmet
        ([0, 3, 4], False),  # g1 needs 2
        ([], False),
    ],
)
def test_quorum(log300: FakeLog, which: list[int], ok: bool) -> None:
    p = Policy.parse(policy_text(log300))
    note = cosigned(log300, which)
    if ok:
        cp, opened = p.verify_checkpoint(note, ORIGIN)
        assert cp.size == 300
        assert len(opened.verified) == 1 + len(which)
    else:
        with pytest.raises(VerificationError):
            p.verify_checkpoint(note, ORIGIN)
        with pytest.raises(VerificationError):
            p.check(note)


def test_quorum_none_and_single_witness(log300: FakeLog) -> None:
    p = Policy.parse(policy_text(log300, "none"))
    p.verify_checkpoint(log300.checkpoint(300), ORIGIN)
    p = Policy.parse(policy_text(log300, "W3"))
    p.verify_checkpoint(cosigned(log300, [3]), ORIGIN)
    with pytest.raises(VerificationError):
        p.verify_checkpoint(cosigned(log300, [4]), ORIGIN)


def test_vector_checkpoint(e2e: dict[str, Any]) -> None:
    text = f"log {e2e['log_vkey']}\nwitness w1 {e2e['witness_vkey']}\nquorum w1\n"
    p = Policy.parse(text)
    witnessed = e2e["checkpoint_300"] + e2e["cosignature_line"]
    cp, _ = p.verify_checkpoint(witnessed, e2e["origin"])
    assert cp.size == 300
    with pytest.raises(VerificationError):
        p.verify_checkpoint(e2e["checkpoint_300"], e2e["origin"])  # no cosignature
    with pytest.raises(VerificationError):
        p.verify_checkpoint(witnessed, "other.example.com/log")  # no such log


def test_bad_cosignature_from_known_witness_rejects(log300: FakeLog) -> None:
    p = Policy.parse(policy_text(log300, "W0"))
    note = parse_note(cosigned(log300, [0, 1]))
    bad = Signature(note.signatures[1].name, note.signatures[1].key_id, bytes(72))
    tampered = Note(note.text, (note.signatures[0], bad, note.signatures[2])).format()
    with pytest.raises(VerificationError):
        p.verify_checkpoint(tampered, ORIGIN)
    # Cosignatures over another checkpoint don't count.
    stale = Note(note.text, (note.signatures[0], W[0].cosign(log300.checkpoint_text(5), 1)))
    with pytest.raises(VerificationError):
        p.check(stale)


def test_unsigned_by_log_rejected(log300: FakeLog) -> None:
    p = Policy.parse(policy_text(log300, "none"))
    text = log300.checkpoint_text(300)
    only_witness = Note(text, (W[0].cosign(text, 1),)).format()
    with pytest.raises(VerificationError):
        p.verify_checkpoint(only_witness, ORIGIN)


@pytest.mark.parametrize(
    "bad",
    [
        "",  # no quorum
        "quorum none\nquorum none\n",
        "quorum nobody\n",
        "frobnicate x\nquorum none\n",
        "log\nquorum none\n",
        "log not-a-vkey\nquorum none\n",
        "log {log} url extra\nquorum none\n",
        "log {wit}\nquorum none\n",  # 0x04 key as a log key
        "witness A {log}\nquorum none\n",  # 0x01 key as a witness key
        "witness A\nquorum none\n",
        "witness A {wit}\nwitness A {wit2}\nquorum none\n",  # duplicate name
        "witness A {wit}\nwitness B {wit}\nquorum none\n",  # duplicate key
        "witness none {wit}\nquorum none\n",  # reserved name
        "witness A {wit}\ngroup g 1\nquorum g\n",  # no members
        "witness A {wit}\ngroup g 2 A\nquorum g\n",  # threshold > n
        "witness A {wit}\ngroup g 0 A\nquorum g\n",
        "witness A {wit}\ngroup g 01 A\nquorum g\n",
        "witness A {wit}\ngroup g -1 A\nquorum g\n",
        "witness A {wit}\ngroup g some A\nquorum g\n",
        "witness A {wit}\ngroup g 1 B\nquorum g\n",  # undefined member
        "witness A {wit}\ngroup g 1 A A\nquorum g\n",  # duplicate member
        "witness A {wit}\ngroup g 1 none\nquorum g\n",
        "witness A {wit}\ngroup A 1 A\nquorum A\n",  # group name clash
        "quorum g\nwitness A {wit}\ngroup g 1 A\n",  # used before defined
        "witness A {wit}\r\nquorum A\r\n",  # CRLF
        "witness A {wit}\nquorum A B\n",
        "witness A {wit}\x00\nquorum A\n",
    ],
)
def test_parse_rejects(log300: FakeLog, bad: str) -> None:
    text = bad.format(log=log300.signer.vkey(), wit=W[0].vkey(), wit2=W[1].vkey())
    with pytest.raises(FormatError):
        Policy.parse(text)


def test_comments_and_whitespace(log300: FakeLog) -> None:
    text = f"  # leading comment\n\tlog {log300.signer.vkey()}#trailing\n\nquorum none # c\n"
    p = Policy.parse(text.encode())
    assert len(p.logs) == 1 and p.quorum == "none"
