"""C2SP tlog-cosignature v1: timestamped Ed25519 cosignatures (signature type 0x04).

The signed message is ``cosignature/v1\\ntime <T>\\n`` followed by the checkpoint note text,
and the signature bytes are ``uint64_be(T) || Ed25519 signature``. The message does not
commit to the cosigner's name, so every cosigner needs a key of its own.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from client.note import (
    ALG_COSIGNATURE_V1,
    FormatError,
    Signature,
    Signer,
    Verifier,
    b64decode_strict,
    b64encode,
    check_key_name,
    format_vkey,
    key_id,
    parse_vkey,
)

__all__ = ["CosignatureSigner", "CosignatureVerifier", "cosigned_message"]

MAX_TIMESTAMP = (1 << 63) - 1


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise FormatError("timestamp out of range")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint_text.encode("utf-8")


class CosignatureVerifier(Verifier):
    """Verifies ``cosignature/v1`` lines. After :meth:`verify`, ``last_timestamp`` is set."""

    def __init__(self, name: str, public_key: bytes) -> None:
        check_key_name(name)
        if len(public_key) != 32:
            raise FormatError("Ed25519 public key must be 32 bytes")
        self.name = name
        self.public_key = public_key
        self.key_id = key_id(name, ALG_COSIGNATURE_V1, public_key)
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> CosignatureVerifier:
        name, kid, alg, pub = parse_vkey(vkey)
        if alg != ALG_COSIGNATURE_V1:
            raise FormatError(f"vkey has algorithm 0x{alg:02x}, want cosignature/v1 (0x04)")
        v = cls(name, pub)
        if v.key_id != kid:
            raise FormatError("vkey key ID does not match its name and key")
        return v

    def vkey(self) -> str:
        return format_vkey(self.name, ALG_COSIGNATURE_V1, self.public_key)

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

    @staticmethod
    def timestamp(sig: Signature) -> int:
        return int(struct.unpack(">Q", sig.raw[:8])[0])


class CosignatureSigner(Signer):
    """A witness's cosigning key. :meth:`cosign` makes one signature line."""

    def __init__(self, name: str, seed: bytes) -> None:
        check_key_name(name)
        if len(seed) != 32:
            raise FormatError("Ed25519 seed must be 32 bytes")
        self.name = name
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public_key = self._key.public_key().public_bytes_raw()
        self.key_id = key_id(name, ALG_COSIGNATURE_V1, self.public_key)

    @classmethod
    def generate(cls, name: str) -> CosignatureSigner:
        return cls(name, Ed25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def from_skey(cls, skey: str) -> CosignatureSigner:
        """``PRIVATE+KEY+name+keyid+base64(0x04 || seed)``."""
        parts = skey.strip("\n").split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise FormatError("not a PRIVATE+KEY signer key")
        raw = b64decode_strict(parts[4])
        if len(raw) != 33 or raw[0] != ALG_COSIGNATURE_V1:
            raise FormatError("not a cosignature/v1 key")
        s = cls(parts[2], raw[1:])
        if parts[3] != f"{s.key_id:08x}":
            raise FormatError("signer key ID does not match")
        return s

    def skey(self) -> str:
        seed = self._key.private_bytes_raw()
        raw = bytes([ALG_COSIGNATURE_V1]) + seed
        return f"PRIVATE+KEY+{self.name}+{self.key_id:08x}+{b64encode(raw)}"

    def vkey(self) -> str:
        return format_vkey(self.name, ALG_COSIGNATURE_V1, self.public_key)

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.public_key)

    def cosign(self, checkpoint_text: str, timestamp: int) -> Signature:
        sig = self._key.sign(cosigned_message(checkpoint_text, timestamp))
        return Signature(self.name, self.key_id, struct.pack(">Q", timestamp) + sig)

    def sign(self, msg: bytes) -> bytes:
        raise NotImplementedError("cosigners sign with cosign(text, timestamp)")
