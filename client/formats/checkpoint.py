"""C2SP tlog-checkpoint v1.0.0: the signed tree head.

Note text::

    <origin>\\n
    <tree size, decimal, no leading zeros>\\n
    <base64 root hash>\\n
    [extension lines, non-empty]

Parsing is strict: every field must round-trip to the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from client.formats.merkle import HASH_SIZE, VerificationError
from client.formats.note import FormatError, Note, Verifier, b64decode_strict, b64encode, open_note

__all__ = ["Checkpoint", "open_checkpoint", "parse_decimal"]

MAX_SIZE = (1 << 63) - 1


def parse_decimal(s: str, *, what: str = "number", maximum: int = MAX_SIZE) -> int:
    """ASCII decimal with no sign, no leading zeros, no spaces; 0 <= value <= maximum."""
    if not s or not s.isascii() or not s.isdigit():
        raise FormatError(f"{what} is not a decimal number")
    if len(s) > 1 and s[0] == "0":
        raise FormatError(f"{what} has leading zeros")
    if len(s) > 20:
        raise FormatError(f"{what} is too large")
    v = int(s)
    if v > maximum:
        raise FormatError(f"{what} is too large")
    return v


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise FormatError("bad origin")
        if not 0 <= self.size <= MAX_SIZE:
            raise FormatError("bad tree size")
        if len(self.root_hash) != HASH_SIZE:
            raise FormatError("root hash must be 32 bytes")
        for e in self.extensions:
            if not e or "\n" in e:
                raise FormatError("bad extension line")

    def text(self) -> str:
        """The note text (the signed bytes), ending in a newline."""
        lines = [self.origin, str(self.size), b64encode(self.root_hash), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse the note *text* (not the whole signed note)."""
        if not text.endswith("\n"):
            raise FormatError("checkpoint text must end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise FormatError("checkpoint needs origin, size and root lines")
        origin, size_s, root_s, *ext = lines
        if not origin:
            raise FormatError("empty origin")
        if any(c.isspace() and c != " " for c in origin):
            raise FormatError("origin contains white space")
        cp = cls(
            origin,
            parse_decimal(size_s, what="tree size"),
            b64decode_strict(root_s, size=HASH_SIZE),
            tuple(ext),
        )
        if cp.text() != text:  # round trip: one text form per value
            raise FormatError("checkpoint is not in canonical form")
        return cp


def open_checkpoint(
    data: str | bytes | Note, verifiers: Iterable[Verifier], *, origin: str | None = None
) -> tuple[Checkpoint, Note]:
    """Verify a signed checkpoint note and parse its text.

    ``origin``, when given, must equal the checkpoint's origin line.
    """
    note = open_note(data, verifiers)
    cp = Checkpoint.parse(note.text)
    if origin is not None and cp.origin != origin:
        raise VerificationError(f"checkpoint origin {cp.origin!r} is not {origin!r}")
    return cp, note
