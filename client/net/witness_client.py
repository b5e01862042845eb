"""Client side of c2sp.org/tlog-witness ``add-checkpoint``: what a log runs to get cosigned.

Typical use by a log, after it signs a new checkpoint::

    client = WitnessClient("https://witness.example.com", "witness.example.com/w1+...")
    cosigs = client.submit(checkpoint_note, consistency_proof=tree.consistency_proof)
    witnessed = append_signatures(checkpoint_note, cosigs)

:meth:`WitnessClient.submit` remembers, per origin, the size the witness last cosigned, and
if the witness answers 409 with its size it rebuilds the proof from that size and retries
once. The outcomes are distinct exceptions, all subclasses of :class:`WitnessError`:

==========================  ==================================================================
:class:`WitnessConflict`    409 + ``text/x.tlog.size``: the witness is at another size
:class:`SplitViewAlarm`     409 without a size (transparency-dev/witness, v1.0.0) or 422: the
                            witness holds a checkpoint inconsistent with ours. Page someone.
:class:`WitnessBusy`        429 or 503: back off, ``retry_after`` seconds if the witness said
:class:`WitnessRejected`    any other status (400 malformed, 403 bad signature, 404 unknown log)
:class:`WitnessUnreachable` transport failure (DNS, connect, timeout)
==========================  ==================================================================

Returned cosignatures are always verified with the witness's type-0x04 key against the
checkpoint text; a 200 whose lines do not verify raises
:class:`client.formats.merkle.VerificationError`.

The request format lives here too (:class:`AddCheckpointRequest`), and the witness
(``client.witness``) parses requests with the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from client.formats.checkpoint import Checkpoint, parse_decimal
from client.formats.cosignature import (
    AnyCosignatureVerifier,
    CosignatureVerifier,
    cosignature_verifier,
)
from client.formats.merkle import HASH_SIZE, VerificationError
from client.formats.note import (
    FormatError,
    Note,
    Signature,
    b64decode_strict,
    b64encode,
    parse_note,
)
from client.net.core import CoreClient, HTTPCore, Unreachable, inert, retry_after

__all__ = [
    "CONTENT_TYPE_SIZE",
    "MAX_BODY_SIZE",
    "MAX_PROOF_HASHES",
    "AddCheckpointRequest",
    "ConsistencyProofFn",
    "SplitViewAlarm",
    "WitnessBusy",
    "WitnessClient",
    "WitnessConflict",
    "WitnessError",
    "WitnessRejected",
    "WitnessUnreachable",
    "append_signatures",
    "origin_hash",
    "parse_cosignature_lines",
]

CONTENT_TYPE_SIZE = "text/x.tlog.size"
MAX_PROOF_HASHES = 63  # c2sp.org/tlog-witness: 0..63 proof lines
MAX_BODY_SIZE = 128 * 1024  # as Sunlight's witness (http.MaxBytesHandler)

ConsistencyProofFn = Callable[[int, int], Sequence[bytes]]
"""``consistency_proof(old_size, new_size)`` -> RFC 6962 PROOF hashes (old_size > 0)."""


def origin_hash(origin: str) -> str:
    """Lowercase hex SHA-256 of the origin: the monitoring path ``/<hash>/checkpoint``."""
    return hashlib.sha256(origin.encode("utf-8")).hexdigest()


# --- request format -----------------------------------------------------------------------


@dataclass(frozen=True)
class AddCheckpointRequest:
    """The body of ``POST <prefix>/add-checkpoint``::

        old <decimal>\\n
        <base64 hash>\\n  x 0..63
        \\n
        <signed checkpoint note>

    :meth:`parse` checks the framing only (old line, proof lines, blank line, a non-empty
    note); the note itself is parsed and verified by the witness, which needs the origin
    first.
    """

    old_size: int
    consistency_proof: tuple[bytes, ...]
    checkpoint_note: str

    def format(self) -> bytes:
        if self.old_size < 0:
            raise ValueError("negative old size")
        if len(self.consistency_proof) > MAX_PROOF_HASHES:
            raise ValueError("consistency proof too long")
        if self.old_size == 0 and self.consistency_proof:
            raise ValueError("old size 0 needs an empty proof")
        for h in self.consistency_proof:
            if len(h) != HASH_SIZE:
                raise ValueError("proof hashes must be 32 bytes")
        lines = [f"old {self.old_size}", *(b64encode(h) for h in self.consistency_proof)]
        return ("\n".join(lines) + "\n\n" + self.checkpoint_note).encode("utf-8")

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpointRequest:
        """Strict framing parse; raises :class:`FormatError` (the witness's 400)."""
        if len(body) > MAX_BODY_SIZE:
            raise FormatError("request body too large")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("request body is not UTF-8") from None
        if "\r" in text:
            raise FormatError("request body contains a carriage return")
        head, sep, note = text.partition("\n\n")
        if not sep:
            raise FormatError("request body has no blank line before the checkpoint")
        lines = head.split("\n")
        if not lines[0].startswith("old "):
            raise FormatError("request body does not start with an 'old' line")
        old_size = parse_decimal(lines[0][4:], what="old size")
        if len(lines) - 1 > MAX_PROOF_HASHES:
            raise FormatError("consistency proof has more than 63 lines")
        proof = tuple(b64decode_strict(h, size=HASH_SIZE) for h in lines[1:])
        if not note:
            raise FormatError("request body has no checkpoint")
        return cls(old_size, proof, note)


# --- errors -------------------------------------------------------------------------------


class WitnessError(Exception):
    """Base class: the witness did not cosign."""


class WitnessConflict(WitnessError):
    """409 with ``text/x.tlog.size``: the witness's latest cosigned size is ``size``.

    Rebuild the consistency proof from ``size`` and retry (if ``size`` is not larger than
    the checkpoint being submitted).
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"witness is at tree size {size}")
        self.size = size


class SplitViewAlarm(WitnessError):
    """409 without a size body, or 422: the witness saw a checkpoint inconsistent with ours.

    For a log this means its own history forked (or its key is being misused): it must not
    be retried blindly.
    """

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"witness reports an inconsistent checkpoint (HTTP {status}): {body}")
        self.status = status
        self.body = body


class WitnessBusy(WitnessError):
    """429 or 503: back off. ``retry_after`` is in seconds when the witness said."""

    def __init__(self, retry_after: float | None, status: int = 503) -> None:
        super().__init__(f"witness is busy (HTTP {status}), retry after {retry_after}")
        self.retry_after = retry_after
        self.status = status


class WitnessRejected(WitnessError):
    """Any other non-200 status (400 malformed, 403 signature, 404 unknown origin, ...)."""

    def __init__(self, status: int, body: str = "") -> None:
        super().__init__(f"witness rejected the checkpoint (HTTP {status}): {body}")
        self.status = status
        self.body = body


class WitnessUnreachable(WitnessError):
    """The request did not complete (connection refused, timeout, DNS...)."""


# --- responses ----------------------------------------------------------------------------


def parse_cosignature_lines(
    checkpoint_text: str, body: str, verifier: AnyCosignatureVerifier
) -> tuple[Signature, ...]:
    """Parse a 200 body (note signature lines) and keep the ones from ``verifier``.

    Lines from other keys of the same witness (e.g. ML-DSA-44) are ignored. Raises
    :class:`FormatError` if a line is malformed and :class:`VerificationError` if a line
    from ``verifier``'s key fails or if there is none.
    """
    if not body or not body.endswith("\n") or body.startswith("\n") or "\n\n" in body:
        raise FormatError("cosignature response must be one or more non-empty lines")
    # Reuse the strict note parser for the lines: text + blank line + signature block.
    sigs = parse_note(checkpoint_text + "\n" + body).signatures
    msg = checkpoint_text.encode("utf-8")
    out: list[Signature] = []
    for sig in sigs:
        if (sig.name, sig.key_id) != (verifier.name, verifier.key_id):
            continue
        if not verifier.verify(msg, sig.raw):
            raise VerificationError(f"invalid cosignature from {verifier.name}")
        if CosignatureVerifier.timestamp(sig) == 0:
            # tlog-witness: checkpoint cosignatures carry a non-zero timestamp.
            raise VerificationError("cosignature has timestamp 0")
        out.append(sig)
    if not out:
        raise VerificationError(f"no cosignature from {verifier.name} in the response")
    return tuple(out)


def append_signatures(checkpoint_note: str, signatures: Sequence[Signature]) -> str:
    """The note with ``signatures`` appended (skipping any it already carries)."""
    note = parse_note(checkpoint_note)
    have = set(note.signatures)
    extra = tuple(s for s in signatures if s not in have)
    return Note(note.text, note.signatures + extra).format()


# Cosignature lines, a size, or a checkpoint: a witness never needs to say more.
MAX_ANSWER_BYTES = 1 << 20


# --- client -------------------------------------------------------------------------------


class WitnessClient(CoreClient):
    """Pushes checkpoints to one witness. Safe for concurrent use if ``http`` is.

    ``url`` is the witness's submission prefix (``<url>/add-checkpoint``) and monitoring
    prefix (``<url>/<origin hash>/checkpoint``). ``verifier`` is its type-0x04 or 0x06 key (object
    or vkey string).
    """

    def __init__(
        self,
        url: str,
        verifier: AnyCosignatureVerifier | str,
        *,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._core = HTTPCore(url, http, timeout=timeout)
        self.url = self._core.url
        self.verifier = cosignature_verifier(verifier) if isinstance(verifier, str) else verifier
        # origin -> the size this witness last told us (cosigned or via 409).
        self._known_size: dict[str, int] = {}
        # origin -> (size it had told us, smaller size it answered later): the witness went
        # back (restored from an old copy of its state, or lost it). Read by the caller.
        self.went_back: dict[str, tuple[int, int]] = {}

    def known_size(self, origin: str) -> int:
        """The size this client believes the witness holds for ``origin`` (0 if unknown)."""
        return self._known_size.get(origin, 0)

    def add_checkpoint(
        self, checkpoint_note: str, old_size: int, consistency_proof: Sequence[bytes]
    ) -> tuple[Signature, ...]:
        """One ``add-checkpoint`` round trip. Returns the verified cosignature(s).

        Raises one of the :class:`WitnessError` subclasses, or :class:`VerificationError`
        / :class:`FormatError` if a 200 response does not carry a valid cosignature.
        """
        cp = Checkpoint.parse(parse_note(checkpoint_note).text)
        body = AddCheckpointRequest(old_size, tuple(consistency_proof), checkpoint_note).format()
        try:
            resp = self._core.send(
                "POST",
                "add-checkpoint",
                limit=MAX_ANSWER_BYTES,
                content=body,
                headers={"Content-Type": "text/plain; charset=utf-8"},
                # safe to send twice: the witness compares-and-swaps its size from `old`
                # (tlog-witness), so a repeat of an applied push changes nothing and is
                # answered 409 with the new size, which resolves as any stale `old` does
                idempotent=True,
            )
        except Unreachable as exc:
            raise WitnessUnreachable(f"add-checkpoint to {self.url}: {exc}") from exc
        status = resp.status
        if status == 200:
            sigs = parse_cosignature_lines(cp.text(), resp.text, self.verifier)
            self._known_size[cp.origin] = cp.size
            return sigs
        text = resp.text[:1000]
        shown = inert(text.strip(), 1000)  # the witness's text: one inert line in our messages
        if status == 409:
            if resp.media_type() == CONTENT_TYPE_SIZE:
                try:
                    if not text.endswith("\n"):
                        raise FormatError("size body must end in a newline")
                    size = parse_decimal(text[:-1], what="witness size")
                except FormatError:
                    raise SplitViewAlarm(status, shown) from None
                self._known_size[cp.origin] = size
                raise WitnessConflict(size)
            # transparency-dev/witness answers a same-size root mismatch with a bare 409.
            raise SplitViewAlarm(status, shown)
        if status == 422:
            raise SplitViewAlarm(status, shown)
        if status in (429, 503):
            raise WitnessBusy(retry_after(resp.headers.get("retry-after")), status)
        raise WitnessRejected(status, shown)

    def submit(
        self,
        checkpoint_note: str,
        consistency_proof: ConsistencyProofFn,
        *,
        old_size: int | None = None,
    ) -> tuple[Signature, ...]:
        """Push ``checkpoint_note``, building proofs with ``consistency_proof(old, new)``.

        ``old_size`` defaults to what this client last learned from the witness (0 at
        first, which a witness with state answers with a 409 carrying its size). On one
        :class:`WitnessConflict` whose size is not beyond the checkpoint, the proof is
        rebuilt from that size and the request retried once; any other outcome propagates.
        """
        cp = Checkpoint.parse(parse_note(checkpoint_note).text)
        old = self.known_size(cp.origin) if old_size is None else old_size
        if old > cp.size:
            old = 0  # our memory is ahead of this checkpoint; let the witness tell us
        try:
            return self.add_checkpoint(
                checkpoint_note, old, self._proof(consistency_proof, old, cp.size)
            )
        except WitnessConflict as conflict:
            if old_size is None and conflict.size < old:
                self.went_back[cp.origin] = (old, conflict.size)
            if conflict.size > cp.size or conflict.size == old:
                raise
            proof = self._proof(consistency_proof, conflict.size, cp.size)
            return self.add_checkpoint(checkpoint_note, conflict.size, proof)

    @staticmethod
    def _proof(fn: ConsistencyProofFn, old: int, new: int) -> tuple[bytes, ...]:
        if old == 0 or old == new:
            return ()
        return tuple(fn(old, new))

    def latest_checkpoint(self, origin: str) -> str | None:
        """GET ``<url>/<origin hash>/checkpoint``: the witness's latest cosigned checkpoint.

        Returns the note text unverified (``None`` on 404); verify it with the log key and
        the witness key before trusting it.
        """
        try:
            path = f"{origin_hash(origin)}/checkpoint"
            resp = self._core.send("GET", path, limit=MAX_ANSWER_BYTES)
        except Unreachable as exc:
            raise WitnessUnreachable(f"GET checkpoint from {self.url}: {exc}") from exc
        if resp.status == 404:
            return None
        if resp.status in (429, 503):
            raise WitnessBusy(retry_after(resp.headers.get("retry-after")), resp.status)
        if resp.status != 200:
            raise WitnessRejected(resp.status, inert(resp.text[:1000].strip(), 1000))
        return resp.text
