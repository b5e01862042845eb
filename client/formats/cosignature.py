"""C2SP tlog-cosignature v1: timestamped Ed25519 cosignatures (signature type 0x04).

The signed message is ``cosignature/v1\\ntime <T>\\n`` followed by the checkpoint note text,
and the signature bytes are ``uint64_be(T) || Ed25519 signature``. The message does not
commit to the cosigner's name, so every cosigner needs a key of its own.
"""

from __future__ import annotations

import hmac
import struct
from typing import Self

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA44PrivateKey, MLDSA44PublicKey

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import EMPTY_ROOT
from client.formats.note import (
    ALG_COSIGNATURE_V1,
    Ed25519PrivateKeyBase,
    Ed25519PublicKeyBase,
    FormatError,
    Signature,
    Signer,
    VkeyVerifier,
    b64decode_strict,
    b64encode,
    check_key_name,
    format_vkey,
    key_id,
    parse_vkey,
)

__all__ = [
    "ALG_COSIGNATURE_MLDSA44",
    "AnyCosignatureSigner",
    "AnyCosignatureVerifier",
    "CosignatureSigner",
    "CosignatureVerifier",
    "MLDSACosignatureSigner",
    "MLDSACosignatureVerifier",
    "cosignature_verifier",
    "cosigned_message",
    "load_cosignature_signer",
    "subtree_message",
]

MAX_TIMESTAMP = (1 << 63) - 1
ALG_COSIGNATURE_MLDSA44 = 0x06
MLDSA44_PUBLIC_KEY_SIZE = 1312
MLDSA44_SIGNATURE_SIZE = 2420
_SUBTREE_LABEL = b"subtree/v1\n\x00"


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise FormatError("timestamp out of range")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint_text.encode("utf-8")


def _timestamp(sig: Signature) -> int:
    """The cosignature's timestamp: the first 8 bytes, big-endian (both cosignature types)."""
    return int(struct.unpack(">Q", sig.raw[:8])[0])


class CosignatureVerifier(Ed25519PublicKeyBase):
    """Verifies ``cosignature/v1`` lines (type 0x04)."""

    ALG = ALG_COSIGNATURE_V1
    ALG_NAME = "cosignature/v1 (0x04)"

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != 8 + 64:
            return False
        (ts,) = struct.unpack(">Q", sig[:8])
        if ts > MAX_TIMESTAMP:
            return False
        try:
            self._key.verify(sig[8:], cosigned_message(msg.decode("utf-8"), ts))
        except InvalidSignature:
            return False
        return True

    timestamp = staticmethod(_timestamp)


class CosignatureSigner(Ed25519PrivateKeyBase):
    """A witness's cosigning key (type 0x04). :meth:`cosign` makes one signature line."""

    ALG = ALG_COSIGNATURE_V1
    ALG_NAME = "cosignature/v1 (0x04)"

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)

    def cosign(self, checkpoint_text: str, timestamp: int) -> Signature:
        sig = self._key.sign(cosigned_message(checkpoint_text, timestamp))
        return Signature(self.name, self.key_id, struct.pack(">Q", timestamp) + sig)

    def sign(self, msg: bytes) -> bytes:
        raise NotImplementedError("cosigners sign with cosign(text, timestamp)")


# --- ML-DSA-44 (type 0x06) ------------------------------------------------------------------


def _opaque8(data: bytes, what: str) -> bytes:
    if not 1 <= len(data) <= 255:
        raise FormatError(f"{what} must be 1-255 bytes")
    return bytes([len(data)]) + data


def subtree_message(
    name: str, timestamp: int, origin: str, start: int, end: int, root_hash: bytes
) -> bytes:
    """The ``subtree/v1`` message an ML-DSA-44 cosigner signs (see the module docstring)."""
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise FormatError("timestamp out of range")
    if timestamp != 0 and start != 0:
        raise FormatError("timestamp must be 0 for a subtree that does not start at 0")
    if not 0 <= start <= end < 1 << 64:
        raise FormatError("bad subtree range")
    if len(root_hash) != 32:
        raise FormatError("hash must be 32 bytes")
    if start == end and not hmac.compare_digest(root_hash, EMPTY_ROOT):
        raise FormatError("an empty subtree must have the empty-tree hash")
    return (
        _SUBTREE_LABEL
        + _opaque8(name.encode("utf-8"), "cosigner name")
        + struct.pack(">Q", timestamp)
        + _opaque8(origin.encode("utf-8"), "log origin")
        + struct.pack(">QQ", start, end)
        + root_hash
    )


def _checkpoint_fields(text: str) -> tuple[str, int, bytes]:
    """(origin, size, root) of a checkpoint (:meth:`Checkpoint.parse`) with no extension lines."""
    cp = Checkpoint.parse(text)
    if cp.extensions:
        raise FormatError("ML-DSA cosignatures cover only checkpoints without extension lines")
    return cp.origin, cp.size, cp.root_hash


class MLDSACosignatureVerifier(VkeyVerifier):
    """Verifies ML-DSA-44 checkpoint cosignatures (type 0x06) over ``subtree/v1``."""

    ALG = ALG_COSIGNATURE_MLDSA44
    ALG_NAME = "ML-DSA-44 (0x06)"

    def __init__(self, name: str, public_key: bytes) -> None:
        check_key_name(name)
        if len(public_key) != MLDSA44_PUBLIC_KEY_SIZE:
            raise FormatError(f"ML-DSA-44 public key must be {MLDSA44_PUBLIC_KEY_SIZE} bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, self.ALG, public_key)
        try:
            self._key = MLDSA44PublicKey.from_public_bytes(public_key)
        except ValueError as exc:
            raise FormatError(f"bad ML-DSA-44 public key: {exc}") from None

    def verify(self, msg: bytes, sig: bytes) -> bool:
        if len(sig) != 8 + MLDSA44_SIGNATURE_SIZE:
            return False
        (ts,) = struct.unpack(">Q", sig[:8])
        try:
            origin, size, root = _checkpoint_fields(msg.decode("utf-8"))
            message = subtree_message(self.name, ts, origin, 0, size, root)
        except (FormatError, UnicodeDecodeError):
            return False
        try:
            self._key.verify(sig[8:], message)
        except InvalidSignature:
            return False
        return True

    timestamp = staticmethod(_timestamp)


class MLDSACosignatureSigner(Signer):
    """An ML-DSA-44 cosigning key (type 0x06), from its 32-byte FIPS 204 seed."""

    ALG = ALG_COSIGNATURE_MLDSA44

    def __init__(self, name: str, seed: bytes) -> None:
        check_key_name(name)
        if len(seed) != 32:
            raise FormatError("ML-DSA-44 seed must be 32 bytes")
        self.name = name
        self._seed = seed
        self._key = MLDSA44PrivateKey.from_seed_bytes(seed)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(name, self.ALG, self.public_key)

    @classmethod
    def generate(cls, name: str) -> Self:
        return cls(name, MLDSA44PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_skey(cls, skey: str) -> Self:
        parts = skey.strip("\n").split("+", 4)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise FormatError("private key must be PRIVATE+KEY+name+id+key")
        raw = b64decode_strict(parts[4])
        if len(raw) != 33 or raw[0] != cls.ALG:
            raise FormatError("not an ML-DSA-44 (0x06) private key")
        k = cls(parts[2], raw[1:])
        if f"{k.key_id:08x}" != parts[3]:
            raise FormatError("private key ID does not match its name and key")
        return k

    def skey(self) -> str:
        raw = bytes([self.ALG]) + self._seed
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{b64encode(raw)}"

    def vkey(self) -> str:
        return format_vkey(self.name, self.ALG, self.public_key)

    def verifier(self) -> MLDSACosignatureVerifier:
        return MLDSACosignatureVerifier(self.name, self.public_key)

    def cosign(self, checkpoint_text: str, timestamp: int) -> Signature:
        origin, size, root = _checkpoint_fields(checkpoint_text)
        sig = self._key.sign(subtree_message(self.name, timestamp, origin, 0, size, root))
        return Signature(self.name, self.key_id, struct.pack(">Q", timestamp) + sig)

    def sign(self, msg: bytes) -> bytes:
        """A log's own ML-DSA-44 checkpoint signature (timestamp 0) over note text ``msg``."""
        return self.cosign(msg.decode("utf-8"), 0).raw


AnyCosignatureVerifier = CosignatureVerifier | MLDSACosignatureVerifier
AnyCosignatureSigner = CosignatureSigner | MLDSACosignatureSigner


def cosignature_verifier(vkey: str) -> AnyCosignatureVerifier:
    """A cosigner's vkey of type 0x04 (Ed25519) or 0x06 (ML-DSA-44)."""
    alg = parse_vkey(vkey)[2]
    if alg == ALG_COSIGNATURE_MLDSA44:
        return MLDSACosignatureVerifier.from_vkey(vkey)
    return CosignatureVerifier.from_vkey(vkey)


def load_cosignature_signer(skey: str) -> AnyCosignatureSigner:
    """A private key file's contents, type 0x04 or 0x06."""
    parts = skey.strip("\n").split("+", 4)
    if len(parts) == 5:
        try:
            raw = b64decode_strict(parts[4])
        except FormatError:
            raw = b""
        if raw[:1] == bytes([ALG_COSIGNATURE_MLDSA44]):
            return MLDSACosignatureSigner.from_skey(skey)
    return CosignatureSigner.from_skey(skey)
