"""The log's signing key: the only module that holds it.

Contract: :meth:`CheckpointSigner.sign` refuses to sign a checkpoint that is not a verified
extension of the previous one it is shown (same origin, size not smaller, an RFC 9162
consistency proof that checks against both roots). The caller persists each signed
checkpoint in the same transaction as the tree it covers, and shows the signer the last
persisted one, so the guarantee holds across restarts.
"""

from __future__ import annotations

import os
from pathlib import Path

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import EMPTY_ROOT, VerificationError, verify_consistency
from client.formats.note import Ed25519Signer, Ed25519Verifier, FormatError, sign_note
from client.runtime.durable import create_new
from client.runtime.private import read_private_file

__all__ = ["CheckpointSigner", "ForkRefused", "create_key_file", "load_key_file"]


class ForkRefused(Exception):
    """The signer was asked to sign a checkpoint inconsistent with the last one it signed."""


def create_key_file(path: str | os.PathLike[str], name: str) -> Ed25519Signer:
    """Create a new Ed25519 key file (mode 0600, never overwriting) and return the signer."""
    signer = Ed25519Signer.generate(name)
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    create_new(p, (signer.skey() + "\n").encode("ascii"))
    return signer


def load_key_file(path: str | os.PathLike[str]) -> Ed25519Signer:
    """The signer of the key file at ``path``; refused (``PermissionError``) when another
    local user could have chosen or could read it: a symbolic link, another owner, group or
    other access, a second name (:func:`client.runtime.private.read_private_file`)."""
    p = Path(path)
    raw = read_private_file(p, "key file")
    try:
        return Ed25519Signer.from_skey(raw.decode("ascii"))
    except (UnicodeDecodeError, FormatError) as exc:
        raise FormatError(f"key file {p} is not a PRIVATE+KEY Ed25519 signer key") from exc


class CheckpointSigner:
    def __init__(self, key: Ed25519Signer, origin: str) -> None:
        if key.name != origin:
            # c2sp tlog-checkpoint: the key name SHOULD equal the origin; we require it,
            # because witnesses and verifiers find the key by the origin.
            raise ValueError(f"key name {key.name!r} is not the origin {origin!r}")
        self._key = key
        self.origin = origin

    @property
    def verifier(self) -> Ed25519Verifier:
        return self._key.verifier()

    def vkey(self) -> str:
        return self._key.vkey()

    def sign(
        self,
        checkpoint: Checkpoint,
        previous: Checkpoint | None,
        consistency_proof: list[bytes],
    ) -> str:
        """Sign ``checkpoint`` if it extends ``previous`` (None only for a new log)."""
        if checkpoint.origin != self.origin:
            raise ForkRefused("checkpoint origin is not this log's")
        if checkpoint.extensions:
            raise ForkRefused("this log signs no extension lines")
        if previous is None:
            if checkpoint.size != 0 or checkpoint.root_hash != EMPTY_ROOT:
                raise ForkRefused("the first checkpoint of a log must be the empty tree")
        else:
            if previous.origin != self.origin:
                raise ForkRefused("previous checkpoint has another origin")
            if checkpoint.size < previous.size:
                raise ForkRefused("tree size would go backwards")
            try:
                if previous.size == 0:
                    if previous.root_hash != EMPTY_ROOT:
                        raise VerificationError("bad empty root")
                else:
                    verify_consistency(
                        previous.size,
                        checkpoint.size,
                        previous.root_hash,
                        checkpoint.root_hash,
                        consistency_proof,
                    )
            except VerificationError as exc:
                raise ForkRefused(f"not an extension of the last checkpoint: {exc}") from exc
        return sign_note(checkpoint.text(), [self._key])
