"""Every one-byte change and every truncation of a signed document is rejected cleanly.

In the style of golang.org/x/mod/sumdb/note's tests: take a valid document, change one byte
(every single-bit flip, plus a handful of bytes that matter to the grammar: NUL, LF, CR,
space, '+', '/', '=', '0', 'A', DEL, 0xFF) or cut it short anywhere, and check the verifier
refuses it with :class:`FormatError` or :class:`VerificationError`. Anything else, an accepted
document or a crash with another exception, is a bug.

What counts as "accepted" is the full check a relying party makes: for the proof bundle,
the log signature, *and* the witness cosignature the policy requires, *and* inclusion of the
entry. Without the policy, a changed witness name would just be an unknown (ignored)
signature, which signed-note requires to be accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.cosignature import CosignatureVerifier
from client.formats.merkle import VerificationError
from client.formats.note import Ed25519Verifier, FormatError, open_note
from client.formats.proof_bundle import TlogProof
from tests.conftest import VECTORS

E2E: dict[str, Any] = json.loads((VECTORS / "c2sp-end-to-end.json").read_text())
SPEC: dict[str, Any] = json.loads((VECTORS / "c2sp-spec-examples.json").read_text())
LOG = Ed25519Verifier.from_vkey(E2E["log_vkey"])
WITNESS = CosignatureVerifier.from_vkey(E2E["witness_vkey"])
EXAMPLE = Ed25519Verifier.from_vkey(SPEC["signed_note"]["vkey"])

GRAMMAR_BYTES = b"\x00\n\r +/=0A\x7f\xff"


def accept_checkpoint(data: bytes) -> None:
    open_checkpoint(data, [LOG], origin=E2E["origin"])


def accept_signed_note(data: bytes) -> None:
    note = open_note(data, [EXAMPLE])
    if note.text != SPEC["signed_note"]["signed_text"]:  # pragma: no cover - would be a bug
        raise AssertionError("a changed note verified with a different text")


def accept_bundle(data: bytes) -> None:
    bundle = TlogProof.parse(data)
    _, note = bundle.verify(LOG, entry=b"scim-event-5", extra_verifiers=[WITNESS])
    if not any(s.name == WITNESS.name and s.key_id == WITNESS.key_id for s in note.verified):
        raise VerificationError("policy: the witness has not cosigned")


DOCUMENTS: dict[str, tuple[str, Callable[[bytes], None]]] = {
    "checkpoint_300": (E2E["checkpoint_300"], accept_checkpoint),
    "signed_note_example": (SPEC["signed_note"]["note"], accept_signed_note),
    "tlog_proof_index_5": (E2E["tlog_proof_index_5"], accept_bundle),
}


def one_byte_changes(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    for i, old in enumerate(data):
        values = {old ^ (1 << bit) for bit in range(8)} | set(GRAMMAR_BYTES)
        values.discard(old)
        for new in sorted(values):
            out.append(
                (f"byte {i} {old:#04x}->{new:#04x}", data[:i] + bytes([new]) + data[i + 1 :])
            )
    return out


def truncations(data: bytes) -> list[tuple[str, bytes]]:
    return [(f"first {n} bytes", data[:n]) for n in range(len(data))]


def outcome(accept: Callable[[bytes], None], data: bytes) -> str | None:
    """None if rejected cleanly, else what went wrong."""
    try:
        accept(data)
    except (FormatError, VerificationError):
        return None
    except Exception as exc:
        return f"crashed with {exc!r}"
    return "ACCEPTED"


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_original_is_accepted(name: str) -> None:
    text, accept = DOCUMENTS[name]
    accept(text.encode())


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_one_byte_change_is_rejected(name: str) -> None:
    text, accept = DOCUMENTS[name]
    cases = one_byte_changes(text.encode())
    assert len(cases) > 10 * len(text)
    failures = [f"{label}: {got}" for label, data in cases if (got := outcome(accept, data))]
    assert not failures, "\n".join(failures[:50])


@pytest.mark.parametrize("name", list(DOCUMENTS))
def test_every_truncation_is_rejected(name: str) -> None:
    text, accept = DOCUMENTS[name]
    failures = [
        f"{label}: {got}"
        for label, data in truncations(text.encode())
        if (got := outcome(accept, data))
    ]
    assert not failures, "\n".join(failures[:50])


def test_dropping_the_cosignature_fails_the_policy_but_not_the_log_signature() -> None:
    # The truncation that removes exactly the witness line leaves a well-formed bundle: it is
    # the policy (witness required) that rejects it, which is what the truncation test relies on.
    text = E2E["tlog_proof_index_5"]
    cut = text[: -len(E2E["cosignature_line"])]
    bundle = TlogProof.parse(cut)
    bundle.verify(LOG, entry=b"scim-event-5")
    with pytest.raises(VerificationError):
        accept_bundle(cut.encode())
