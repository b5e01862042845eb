"""C2SP tlog-cosignature v1: timestamped Ed25519 cosignatures (signature type 0x04).

The signed message is ``cosignature/v1\\ntime <T>\\n`` followed by the checkpoint note text,
and the signature bytes are ``uint64_be(T) || Ed25519 signature``. The message does not
commit to the cosigner's name, so every cosigner needs a key of its own.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature

from client.note import (
    ALG_COSIGNATURE_V1,
    Ed25519PrivateKeyBase,
    Ed25519PublicKeyBase,
    FormatError,
    Signature,
)

__all__ = ["CosignatureSigner", "CosignatureVerifier", "cosigned_message"]

MAX_TIMESTAMP = (1 << 63) - 1


def cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise FormatError("timestamp out of range")
    return f"cosignature/v1\ntime {timestamp}\n".encode() + checkpoint_text.encode("utf-8")


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

    @staticmethod
    def timestamp(sig: Signature) -> int:
        return int(struct.unpack(">Q", sig.raw[:8])[0])


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
