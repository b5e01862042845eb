"""C2SP tlog-proof@v1: an offline proof that an entry is in a log.

::

    c2sp.org/tlog-proof@v1
    [extra <base64>]
    index <decimal>
    <base64 inclusion proof hash>   (0..63 lines, leaf sibling first)

    <signed checkpoint note, verbatim>

Verification: recompute the leaf hash (the caller's job, or from ``entry``), check the
checkpoint's origin and log signature, the cosignature policy if any, then inclusion.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from client.formats.checkpoint import Checkpoint, parse_decimal
from client.formats.merkle import HASH_SIZE, VerificationError, leaf_hash, verify_inclusion
from client.formats.note import (
    FormatError,
    Note,
    Verifier,
    b64decode_strict,
    b64encode,
    open_note,
    parse_note,
)

__all__ = ["HEADER", "TlogProof"]

HEADER = "c2sp.org/tlog-proof@v1"
MAX_PROOF_HASHES = 63
MAX_BUNDLE_SIZE = 1 << 20


@dataclass(frozen=True)
class TlogProof:
    index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint_note: str  # the signed checkpoint, verbatim
    extra: bytes | None = None

    def format(self) -> str:
        lines = [HEADER]
        if self.extra is not None:
            lines.append(f"extra {b64encode(self.extra)}")
        lines.append(f"index {self.index}")
        lines.extend(b64encode(h) for h in self.inclusion_proof)
        return "\n".join(lines) + "\n\n" + self.checkpoint_note

    @classmethod
    def parse(cls, data: str | bytes) -> TlogProof:
        if isinstance(data, bytes):
            if len(data) > MAX_BUNDLE_SIZE:
                raise FormatError("proof bundle too large")
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise FormatError("proof bundle is not UTF-8") from None
        if len(data) > MAX_BUNDLE_SIZE:
            raise FormatError("proof bundle too large")
        head, sep, note_text = data.partition("\n\n")
        if not sep:
            raise FormatError("proof bundle has no checkpoint")
        lines = head.split("\n")
        if lines[0] != HEADER:
            raise FormatError("not a c2sp.org/tlog-proof@v1 bundle")
        pos = 1
        extra = None
        if pos < len(lines) and lines[pos].startswith("extra "):
            extra = b64decode_strict(lines[pos][6:])
            pos += 1
        if pos >= len(lines) or not lines[pos].startswith("index "):
            raise FormatError("proof bundle has no index line")
        index = parse_decimal(lines[pos][6:], what="index")
        pos += 1
        hashes = tuple(b64decode_strict(h, size=HASH_SIZE) for h in lines[pos:])
        if len(hashes) > MAX_PROOF_HASHES:
            raise FormatError("inclusion proof too long")
        parse_note(note_text)  # well-formed note, strictly
        Checkpoint.parse(parse_note(note_text).text)
        bundle = cls(index, hashes, note_text, extra)
        if bundle.format() != data:
            raise FormatError("proof bundle is not in canonical form")
        return bundle

    def verify(
        self,
        log_verifier: Verifier,
        *,
        entry: bytes | None = None,
        leaf: bytes | None = None,
        origin: str | None = None,
        extra_verifiers: Sequence[Verifier] = (),
    ) -> tuple[Checkpoint, Note]:
        """Verify signature and inclusion; give the entry bytes or its leaf hash.

        ``origin`` defaults to the log key's name (the key name equals the origin). Witness
        cosignatures are checked when their verifiers are given (see client.formats.policy for
        quorums). Returns the checkpoint and the note with its verified signatures.
        """
        if (entry is None) == (leaf is None):
            raise ValueError("give exactly one of entry or leaf")
        lh = leaf_hash(entry) if entry is not None else bytes(leaf or b"")
        note = open_note(self.checkpoint_note, [log_verifier, *extra_verifiers])
        if not any(
            s.name == log_verifier.name and s.key_id == log_verifier.key_id for s in note.verified
        ):
            raise VerificationError("checkpoint is not signed by the log")
        cp = Checkpoint.parse(note.text)
        want_origin = origin if origin is not None else log_verifier.name
        if cp.origin != want_origin:
            raise VerificationError(f"checkpoint origin {cp.origin!r} is not {want_origin!r}")
        verify_inclusion(self.index, cp.size, lh, self.inclusion_proof, cp.root_hash)
        return cp, note
