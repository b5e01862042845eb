"""C2SP signed-note v1.0.0: Ed25519 signatures, key IDs, verifier keys, note parsing.

A note is UTF-8 text (one or more lines, each ending in "\\n"), a blank line, then one or more
signature lines ``— <name> <base64(key_id[4] || signature)>``. The signed bytes are the text
including its final newline. Signatures are matched to known keys on both the key name and
the key ID; unknown signatures (grease, other witnesses) are ignored, and a known key whose
signature does not verify rejects the whole note.

The private key file format is Go's ``golang.org/x/mod/sumdb/note`` signer key:
``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from client.formats.merkle import VerificationError

__all__ = [
    "ALG_COSIGNATURE_V1",
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Ed25519Signer",
    "Ed25519Verifier",
    "FormatError",
    "Note",
    "Signature",
    "Signer",
    "Verifier",
    "VkeyVerifier",
    "b64decode_strict",
    "b64encode",
    "check_key_name",
    "key_id",
    "open_note",
    "parse_note",
    "sign_note",
]

ALG_ED25519 = 0x01
ALG_COSIGNATURE_V1 = 0x04
MAX_SIGNATURES = 100  # Go note.Open rejects more
_DASH = "\u2014 "
MAX_NOTE_SIZE = 1 << 20


class FormatError(ValueError):
    """Malformed input: a note, key, checkpoint, bundle or proof that does not parse."""


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(s: str, *, size: int | None = None) -> bytes:
    """Standard RFC 4648 §4 base64 with padding; rejects URL-safe, unpadded and junk.

    Also rejects non-canonical encodings (non-zero trailing bits), so that each value has
    exactly one accepted text form.
    """
    if not s.isascii():
        raise FormatError("base64 must be ASCII")
    try:
        raw = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"bad base64: {exc}") from None
    if base64.b64encode(raw).decode("ascii") != s:
        raise FormatError("non-canonical base64")
    if size is not None and len(raw) != size:
        raise FormatError(f"decoded value is {len(raw)} bytes, want {size}")
    return raw


def check_key_name(name: str) -> None:
    """Key names are non-empty and contain no Unicode spaces and no '+' (signed-note)."""
    if not name:
        raise FormatError("empty key name")
    if "+" in name or any(c.isspace() for c in name):
        raise FormatError("key name contains '+' or white space")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise FormatError("key name contains a control character")


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """SHA-256(name || "\\n" || alg || public_key)[:4], big-endian (signed-note)."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class Signature:
    """One signature line of a note. ``raw`` is base64-decoded (key ID excluded)."""

    name: str
    key_id: int
    raw: bytes

    def line(self) -> str:
        return f"{_DASH}{self.name} {b64encode(struct.pack('>I', self.key_id) + self.raw)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed note. ``verified`` lists the signatures checked by known keys."""

    text: str
    signatures: tuple[Signature, ...]
    verified: tuple[Signature, ...] = field(default=())

    def format(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


class Verifier:
    """A verifier for one (name, key ID). Subclasses implement :meth:`verify`."""

    name: str
    key_id: int

    def verify(self, msg: bytes, sig: bytes) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class Signer:
    name: str
    key_id: int

    def sign(self, msg: bytes) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


class VkeyVerifier(Verifier):
    """A verifier with a vkey (``name+keyid+base64(ALG || public key)``) for type ``ALG``:
    the vkey form and its key-ID check, shared by every key type (Ed25519 notes and
    cosignatures here, ML-DSA-44 cosignatures in client.formats.cosignature)."""

    ALG: ClassVar[int]
    ALG_NAME: ClassVar[str]
    public_key: bytes

    def __init__(self, name: str, public_key: bytes) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        name, kid, alg, pub = parse_vkey(vkey)
        if alg != cls.ALG:
            raise FormatError(f"vkey has algorithm 0x{alg:02x}, want {cls.ALG_NAME}")
        v = cls(name, pub)
        if v.key_id != kid:
            raise FormatError("vkey key ID does not match its name and key")
        return v

    def vkey(self) -> str:
        return format_vkey(self.name, self.ALG, self.public_key)


class Ed25519PublicKeyBase(VkeyVerifier):
    """An Ed25519 public key under a note key name, for signature type ``ALG``.

    Shared by note signatures (0x01) and cosignatures (0x04, client.formats.cosignature): the key ID
    rule and the vkey form are the same, only the algorithm byte and the signed message
    differ.
    """

    ALG: ClassVar[int]
    ALG_NAME: ClassVar[str]

    def __init__(self, name: str, public_key: bytes) -> None:
        check_key_name(name)
        if len(public_key) != 32:
            raise FormatError("Ed25519 public key must be 32 bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, self.ALG, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)


class Ed25519PrivateKeyBase(Signer):
    """An Ed25519 private key under a note key name, for signature type ``ALG``.

    Key files use Go's note signer format ``PRIVATE+KEY+<name>+<id>+<base64(ALG || seed)>``.
    """

    ALG: ClassVar[int]
    ALG_NAME: ClassVar[str]

    def __init__(self, name: str, seed: bytes) -> None:
        check_key_name(name)
        if len(seed) != 32:
            raise FormatError("Ed25519 seed must be 32 bytes")
        self.name = name
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(name, self.ALG, self.public_key)

    @classmethod
    def generate(cls, name: str) -> Self:
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_skey(cls, skey: str) -> Self:
        parts = skey.strip("\n").split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise FormatError("not a PRIVATE+KEY signer key")
        name, kid_hex, b64 = parts[2], parts[3], parts[4]
        raw = b64decode_strict(b64)
        if len(raw) != 33 or raw[0] != cls.ALG:
            raise FormatError(f"signer key is not an {cls.ALG_NAME} seed")
        s = cls(name, raw[1:])
        if _parse_key_id_hex(kid_hex) != s.key_id:
            raise FormatError("signer key ID does not match")
        return s

    def skey(self) -> str:
        raw = bytes([self.ALG]) + self._key.private_bytes_raw()
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{b64encode(raw)}"

    def vkey(self) -> str:
        return format_vkey(self.name, self.ALG, self.public_key)


class Ed25519Verifier(Ed25519PublicKeyBase):
    """Verifies type-0x01 Ed25519 note signatures."""

    ALG = ALG_ED25519
    ALG_NAME = "Ed25519 (0x01)"

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != 64:
            return False
        try:
            self._key.verify(sig, msg)
        except InvalidSignature:
            return False
        return True


class Ed25519Signer(Ed25519PrivateKeyBase):
    """Signs notes with an Ed25519 key (type 0x01)."""

    ALG = ALG_ED25519
    ALG_NAME = "Ed25519 (0x01)"

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.name, self.public_key)

    def sign(self, msg: bytes) -> bytes:
        return self._key.sign(msg)


def _parse_key_id_hex(s: str) -> int:
    if len(s) != 8 or any(c not in "0123456789abcdef" for c in s):
        raise FormatError("key ID must be 8 lowercase hex digits")
    return int(s, 16)


def format_vkey(name: str, alg: int, public_key: bytes) -> str:
    check_key_name(name)
    kid = key_id(name, alg, public_key)
    return f"{name}+{kid:08x}+{b64encode(bytes([alg]) + public_key)}"


def parse_vkey(vkey: str) -> tuple[str, int, int, bytes]:
    """Parse ``<name>+<hex key id>+<base64(alg || key)>`` into (name, key_id, alg, key).

    The key ID is checked only by the caller that knows the algorithm's ID rule; for the
    standard rule (types 0x01 and 0x04) :func:`key_id` recomputes it.
    """
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise FormatError("vkey must be name+keyid+key")
    name, kid_hex, b64 = parts
    check_key_name(name)
    kid = _parse_key_id_hex(kid_hex)
    raw = b64decode_strict(b64)
    if len(raw) < 2:
        raise FormatError("vkey key too short")
    return name, kid, raw[0], raw[1:]


def _check_text(text: str) -> None:
    for c in text:
        o = ord(c)
        if (o < 0x20 and c != "\n") or o == 0x7F:
            raise FormatError("note contains a control character")


def parse_note(data: str | bytes) -> Note:
    """Split a note into text and signature lines, strictly, without verifying anything."""
    if isinstance(data, bytes):
        if len(data) > MAX_NOTE_SIZE:
            raise FormatError("note too large")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("note is not valid UTF-8") from None
    if len(data) > MAX_NOTE_SIZE:
        raise FormatError("note too large")
    _check_text(data)
    if not data.endswith("\n"):
        raise FormatError("note does not end in a newline")
    split = data.rfind("\n\n")
    if split < 0:
        raise FormatError("note has no signature block")
    text = data[: split + 1]
    sig_block = data[split + 2 :]
    sigs: list[Signature] = []
    for line in sig_block.split("\n")[:-1]:
        if not line.startswith(_DASH):
            raise FormatError("malformed signature line")
        rest = line[len(_DASH) :]
        name, sep, b64 = rest.partition(" ")
        if not sep:
            raise FormatError("malformed signature line")
        check_key_name(name)
        raw = b64decode_strict(b64)
        if len(raw) < 5:
            raise FormatError("signature too short")
        sigs.append(Signature(name, int.from_bytes(raw[:4], "big"), raw[4:]))
    if not sigs:
        raise FormatError("note has no signatures")
    if len(sigs) > MAX_SIGNATURES:
        raise FormatError("too many signatures")
    return Note(text, tuple(sigs))


def open_note(data: str | bytes | Note, verifiers: Iterable[Verifier]) -> Note:
    """Parse and verify a note against known keys.

    Returns the note with ``verified`` set to the signatures of known keys, all of which
    verified. Raises :class:`FormatError` if malformed and :class:`VerificationError` if no
    known key signed it or a known key's signature is bad.
    """
    note = data if isinstance(data, Note) else parse_note(data)
    by_id: dict[tuple[str, int], Verifier] = {(v.name, v.key_id): v for v in verifiers}
    msg = note.text.encode("utf-8")
    verified: list[Signature] = []
    seen: set[tuple[str, int]] = set()
    for sig in note.signatures:
        v = by_id.get((sig.name, sig.key_id))
        if v is None:
            continue
        if (sig.name, sig.key_id) in seen:
            raise VerificationError(f"duplicate signature from {sig.name}")
        seen.add((sig.name, sig.key_id))
        if not v.verify(msg, sig.raw):
            raise VerificationError(f"invalid signature from {sig.name}")
        verified.append(sig)
    if not verified:
        raise VerificationError("no signature from a known key")
    return Note(note.text, note.signatures, tuple(verified))


def sign_note(text: str, signers: Sequence[Signer], extra: Sequence[Signature] = ()) -> str:
    """Sign ``text`` (which must end in a newline) and format the note.

    ``extra`` signatures (already made, e.g. cosignatures) are appended after ours.
    """
    if not text.endswith("\n"):
        raise FormatError("note text must end in a newline")
    _check_text(text)
    msg = text.encode("utf-8")
    sigs = [Signature(s.name, s.key_id, s.sign(msg)) for s in signers]
    return Note(text, tuple(sigs) + tuple(extra)).format()
