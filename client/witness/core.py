"""The witness: verify ``add-checkpoint`` requests, cosign, and never roll back.

c2sp.org/tlog-witness. :meth:`Witness.add_checkpoint` applies the checks in this order, each
mapped to its status code by the exception it raises (the one place that decides codes):

1. body framing: ``old`` line, 0..63 base64 proof lines, blank line; the note parses
   strictly and its text is a canonical checkpoint ............................... 400
2. the origin is not a configured log ............................................... 404
3. no signature from the log's key, or a log-key signature that fails ............... 403
4. the checkpoint has extension lines ............................................... 400
5. ``old`` > checkpoint size ......................................................... 400
6. split-view evidence is recorded for this origin (see below) ........................ 422
   a checkpoint of the size we cosigned with another root: recorded as evidence ....... 422
7. ``old`` != the size this witness last cosigned (0 if none) ........... 409 + "<size>\\n"
8. a size-0 checkpoint whose root is not SHA-256("") ................................. 422
9. ``old`` == 0 with a non-empty proof; a consistency proof that fails ................ 422

Then it cosigns with each of its keys (cosignature/v1 Ed25519, and ML-DSA-44 ``subtree/v1``
when configured; one timestamp from the injectable clock) and stores the
checkpoint with only the verified log signature(s) and its own cosignature, through the
store's compare-and-swap, *before* answering.

Decisions this module takes (documented for operators):

* **Malformed before unknown.** The whole body is parsed before the origin is looked up, so
  a truncated or garbled note is always 400, never 404.
* **Extension lines: 400, after the signature check** (as Sunlight's witness, which answers
  ``errExtensions`` with 400). The note is well-formed tlog-checkpoint, but this witness
  does not accept the format variant: that is a client error. 403 would tell the log its
  key is wrong and 422 would raise a split-view alarm, both misleading. Checking after the
  signature means unauthenticated junk still gets 403/404 first.
* **Evidence freezes the origin.** Once split-view evidence for an origin is recorded (by
  gossip or polling), the witness refuses every further ``add-checkpoint`` for it with 422,
  which a log's client maps to a split-view alarm. Evidence needs two checkpoints signed
  by the log's key that cannot both be true, so only the log key holder can trigger this;
  cosigning more checkpoints from a key known to have forked would only lend them
  credibility. The operator resolves it (out of band) by investigating and, if they
  decide so, deleting the evidence rows.
* **Conflicting pushes are evidence, when provable.** A log-signed checkpoint of the size
  we cosigned with another root is evidence at once, whatever its ``old`` line says: the
  log signed both roots. A consistency proof that fails is *not* evidence by itself: the
  proof is unsigned, so anyone replaying the log's next (honest) checkpoint with a junk
  proof could otherwise freeze the log. The witness hands such a request to its
  ``on_inconsistent`` hook, which the monitor sets: it asks the log itself for the proof
  and records evidence if the log's own proof fails (or it refuses for
  ``missing_proof_rounds`` rounds); without a log URL the failure is counted as a
  suspicion, which ``tlog-witness check`` reports.
* **One exception per refusal, one table of statuses.** Every refusal, the ASGI app's
  (:mod:`client.witness.asgi`: the body's framing and size) and this module's, is an
  :class:`AddCheckpointError`; :data:`STATUS` maps each to its HTTP status (the first
  match wins), and :func:`status_of` is what every answer uses::

      AddCheckpointError              body(): the answer's body (text, or 409's size)
      ├── BadRequest             400  malformed body or note, extension lines, old > size
      ├── Forbidden              403  no valid signature from the log's key
      ├── UnknownOrigin          404  not a configured log
      ├── RequestTimeout         408  the body did not arrive in time (asgi)
      ├── Conflict               409  old != our size; the body is that size
      ├── LengthRequired         411  no Content-Length, or a chunked body (asgi)
      ├── PayloadTooLarge        413  more than MAX_BODY_SIZE (asgi)
      ├── Unprocessable          422  a split view, proved or suspected
      │   ├── Frozen                  split-view evidence is recorded for the origin
      │   └── Inconsistent            the request's consistency proof fails
      └── Unavailable            503  the store's compare-and-swap kept losing, or the
                                      state database cannot be read or written now
                                      (locked by another process, disk full, I/O error)

  Configuration errors (:class:`client.witness.config.ConfigError`) and the monitor's
  (``LogUnavailable``, ``ProofRefused``) never reach HTTP.
* **Our own later cosignature means our state went back.** A state put back from an old
  copy (backup, VM snapshot) remembers a smaller size than this witness cosigned since, and
  nothing in it can tell. Its own cosignature can: wherever the witness meets a log-signed
  checkpoint carrying a verified cosignature under its own key (the log's ``/checkpoint``, a
  peer's checkpoint, a push, ``tlog-witness check``), :meth:`Witness.observe_own` adopts it
  when it is larger than the state (after the log's own consistency proof from the stored
  checkpoint, when the log can be asked), so nothing inconsistent with it is ever cosigned;
  the same cosignature on another root at our size, or on a checkpoint the log cannot prove
  consistent with our state, is evidence (two histories carry our key). A forged line
  (another key, a bad signature, another witness's name) is ignored.
* **No cosigning with a log's key.** A cosigning key whose public key equals a configured
  log key (also one derived from the same private key, whatever the name) is refused:
  a cosignature by the log itself would count as an independent witness.
"""

from __future__ import annotations

import hmac
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import (
    AnyCosignatureSigner,
    AnyCosignatureVerifier,
    CosignatureSigner,
    CosignatureVerifier,
)
from client.formats.merkle import EMPTY_ROOT, VerificationError, verify_consistency
from client.formats.note import (
    FormatError,
    Note,
    Signature,
    Verifier,
    b64encode,
    open_note,
    parse_note,
)
from client.net.witness_client import CONTENT_TYPE_SIZE, AddCheckpointRequest, origin_hash
from client.runtime.durable import can_write_in
from client.witness.loglist import log_verifier
from client.witness.store import (
    Evidence,
    StateInDoubt,
    StoredCheckpoint,
    WitnessStore,
    check_row,
)

__all__ = [
    "STATUS",
    "AddCheckpointError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Frozen",
    "Inconsistent",
    "LengthRequired",
    "PayloadTooLarge",
    "RequestTimeout",
    "Unavailable",
    "UnknownOrigin",
    "Unprocessable",
    "Witness",
    "WitnessedLog",
    "status_of",
]

logger = logging.getLogger("client.witness")

_CAS_ATTEMPTS = 3
# Signature lines a stored note may reach by keeping peers' cosignatures: c2sp.org/
# signed-note only asks verifiers to accept 16 (Go's note.Open takes 100), and the note is
# served to anyone; the log's and our own lines come first, then as many peer lines as fit.
_MAX_STORED_LINES = 16


# --- errors, and the one table of their HTTP status (module docstring) -------------------


class AddCheckpointError(Exception):
    """A refused request: its status is :func:`status_of`; :meth:`body` the answer's body."""

    content_type = "text/plain; charset=utf-8"

    @property
    def status(self) -> int:
        return status_of(self)

    def body(self) -> str:
        return f"{self}\n"


class BadRequest(AddCheckpointError):
    pass


class Forbidden(AddCheckpointError):
    pass


class UnknownOrigin(AddCheckpointError):
    pass


class RequestTimeout(AddCheckpointError):
    pass


class Conflict(AddCheckpointError):
    """``old`` is not our latest size; the body tells the client what it is."""

    content_type = CONTENT_TYPE_SIZE

    def __init__(self, size: int) -> None:
        super().__init__(f"witness is at tree size {size}")
        self.size = size

    def body(self) -> str:
        return f"{self.size}\n"


class LengthRequired(AddCheckpointError):
    pass


class PayloadTooLarge(AddCheckpointError):
    pass


class Unprocessable(AddCheckpointError):
    pass


class Frozen(Unprocessable):
    """Split-view evidence is recorded for the origin."""


class Inconsistent(Unprocessable):
    """The request's consistency proof does not verify (not evidence alone)."""


class Unavailable(AddCheckpointError):
    pass


STATUS: tuple[tuple[type[AddCheckpointError], int], ...] = (
    (BadRequest, 400),
    (Forbidden, 403),
    (UnknownOrigin, 404),
    (RequestTimeout, 408),
    (Conflict, 409),
    (LengthRequired, 411),
    (PayloadTooLarge, 413),
    (Unprocessable, 422),
    (Unavailable, 503),
)


def status_of(exc: AddCheckpointError) -> int:
    """The HTTP status of a refusal (:data:`STATUS`; 500 for one it does not list)."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


# --- configuration values -----------------------------------------------------------------


@dataclass(frozen=True)
class WitnessedLog:
    """A log this witness cosigns. ``url`` (optional) enables polling and proof fetching."""

    origin: str
    verifiers: tuple[Verifier, ...]
    url: str | None = None
    poll_interval: float = 60.0

    def __post_init__(self) -> None:
        if not self.verifiers:
            raise ValueError(f"log {self.origin!r} needs at least one key")


# --- the witness ------------------------------------------------------------------------------


class Witness:
    """Cosigns checkpoints for a fixed set of logs. Safe for concurrent use.

    Several ``Witness`` objects (threads, processes) may share one store: the store's
    compare-and-swap is the only thing that serialises them, by design.
    """

    def __init__(
        self,
        signer: CosignatureSigner,
        logs: Iterable[WitnessedLog],
        store: WitnessStore,
        *,
        clock: Callable[[], float] = time.time,
        extra_signers: Sequence[AnyCosignatureSigner] = (),
    ) -> None:
        logs = tuple(logs)
        self.signers: tuple[AnyCosignatureSigner, ...] = (signer, *extra_signers)
        for lg in logs:
            for v in lg.verifiers:
                if any(getattr(v, "public_key", None) == s.public_key for s in self.signers):
                    raise ValueError(
                        f"the cosigning key is log {lg.origin!r}'s own key: a witness must "
                        "have a key of its own"
                    )
        self.signer = signer
        self.verifier: CosignatureVerifier = signer.verifier()
        # Every key this witness cosigns with: Ed25519 first, then e.g. ML-DSA-44.
        self.verifiers: tuple[AnyCosignatureVerifier, ...] = tuple(
            s.verifier() for s in self.signers
        )
        self.logs: Mapping[str, WitnessedLog] = {lg.origin: lg for lg in logs}
        self.store = store
        self._clock = clock
        self._origin_by_hash = {origin_hash(o): o for o in self.logs}
        # Called with (log, our latest, their checkpoint, their note) when a push's
        # consistency proof fails; the monitor settles it with the log's own proof.
        self.on_inconsistent: (
            Callable[[WitnessedLog, StoredCheckpoint, Checkpoint, str], object] | None
        ) = None
        # Asks the log for a consistency proof (log, old size, new size); None when it cannot
        # give one now. The monitor sets it for logs with a URL (see observe_own).
        self.proof_source: Callable[[WitnessedLog, int, int], Sequence[bytes] | None] | None = None
        self._own_ids = frozenset((v.name, v.key_id) for v in self.verifiers)
        # Why the last push could not be stored when its state's disk failed (an I/O error,
        # a file system gone read-only: SQLite says "disk I/O error" or "readonly"), None
        # once a push is stored again: /readyz fails meanwhile (a lock held by another
        # process or a full disk is not sticky: it ends by itself).
        self.write_fault: str | None = None
        # Rolled-back states noticed (observe_own), per origin, for /metrics; the CRITICAL
        # line is written once per origin and process.
        self.rolled_back: dict[str, int] = {}
        self.rollbacks: dict[str, tuple[int, int]] = {}  # the last (held, adopted) sizes
        self._rollback_lock = threading.Lock()
        self._rollback_logged: set[str] = set()

    @property
    def name(self) -> str:
        return self.signer.name

    def vkey(self) -> str:
        return self.signer.vkey()

    def now(self) -> int:
        return int(self._clock())

    # --- add-checkpoint -----------------------------------------------------------------

    def add_checkpoint(self, body: bytes) -> str:
        """Process a request body; returns the 200 body (cosignature lines).

        Raises an :class:`AddCheckpointError` subclass carrying the status code. Durable:
        the new state is committed before this returns.
        """
        try:
            req = AddCheckpointRequest.parse(body)
        except FormatError as exc:
            raise BadRequest(str(exc)) from None
        if self.store.in_doubt is not None:
            raise _in_doubt(self.store.in_doubt)
        if self.write_fault is not None and not can_write_in(Path(self.store.path).parent):
            # Still read-only: nothing is tried. A file system gone read-only after an error
            # (ext4 errors=remount-ro) still takes writes over blocks the file already has
            # into the page cache, and its fsync answers 0: a push that needed no new block
            # "succeeded" without reaching the disk (CI, review 39), as tlog serve's store
            # refuses its writes (tlog.storage). Until a new file can be made beside the
            # state: 503, and readiness still fails.
            logger.error("add-checkpoint: the state's file system still refuses writes")
            raise Unavailable(
                "the witness's state database cannot be used now (its file system refuses "
                "writes); nothing was cosigned: retry later"
            )
        try:
            sigs = self.update(req.old_size, req.consistency_proof, req.checkpoint_note)
        except StateInDoubt as exc:
            self.write_fault = str(exc)
            raise _in_doubt(str(exc)) from None
        except sqlite3.Error as exc:
            if _disk_fault(exc):
                self.write_fault = f"the last push could not be stored: {exc}"
            # The state cannot be read or written now (another process holds its write lock
            # past the timeout, a full disk, an I/O error): nothing was committed, so
            # nothing is cosigned; the log retries. Loud for the operator, 503 for the log.
            logger.error("add-checkpoint: the state database cannot be used now: %s", exc)
            raise Unavailable(
                f"the witness's state database cannot be used now ({exc}); "
                "nothing was cosigned: retry later"
            ) from None
        self.write_fault = None
        return "".join(s.line() for s in sigs)

    def update(
        self,
        old_size: int,
        consistency_proof: Sequence[bytes],
        checkpoint_note: str,
        *,
        proof_from_log: bool = False,
    ) -> tuple[Signature, ...]:
        """Checks 1-9 of the module docstring, cosign, compare-and-swap. See add_checkpoint.

        ``proof_from_log``: the proof was fetched from the log itself (polling), whose
        caller settles a failure; ``on_inconsistent`` is for pushed proofs only.
        """
        try:
            note = parse_note(checkpoint_note)
            cp = Checkpoint.parse(note.text)
        except FormatError as exc:
            raise BadRequest(f"malformed checkpoint: {exc}") from None
        log = self.log_for(cp.origin)
        if log is None:
            raise UnknownOrigin("unknown log origin")
        try:
            opened = open_note(note, log.verifiers)
        except VerificationError as exc:
            raise Forbidden(f"checkpoint not signed by the log: {exc}") from None
        if cp.extensions:
            raise BadRequest("checkpoints with extension lines are not supported")
        if old_size > cp.size:
            raise BadRequest("old size is larger than the checkpoint size")
        signed_note = Note(cp.text(), opened.verified).format()  # unverified lines dropped
        if not proof_from_log and any(
            (sig.name, sig.key_id) in self._own_ids for sig in note.signatures
        ):
            # It carries a line under our own key: if it is our cosignature on a larger size
            # than our state holds, the state went back; adopt it before judging the push.
            # (Not its older ones: anyone can replay those, and each would cost a request to
            # the log in this worker thread; polling and gossip compare them with the log.)
            self.observe_own(log, checkpoint_note, "add-checkpoint")
        for _ in range(_CAS_ATTEMPTS):
            # Checked again after a lost compare-and-swap, which also refuses once evidence
            # is recorded (in its transaction): evidence found meanwhile freezes this push too.
            if self.store.has_evidence(cp.origin):
                raise Frozen("split-view evidence is recorded for this log; not cosigning")
            stored = self.latest(cp.origin)
            if (
                stored is not None
                and stored.size == cp.size
                and not hmac.compare_digest(stored.root_hash, cp.root_hash)
            ):
                self.record_evidence(
                    cp.origin,
                    "add-checkpoint",
                    "same tree size with different root hashes",
                    stored.note,
                    signed_note,
                    {"ours": _describe_stored(stored), "theirs": describe(cp)},
                )
                raise Frozen("checkpoint conflicts with the one this witness cosigned")
            try:
                self._check_against(stored, old_size, consistency_proof, cp)
            except Inconsistent:
                if stored is not None and self.on_inconsistent and not proof_from_log:
                    self.on_inconsistent(log, stored, cp, signed_note)
                raise
            # Sign a re-encoding of what we parsed (Sunlight does the same): Checkpoint.parse
            # already insists on the canonical form, so this is the note text byte for byte.
            # Never older than this witness's previous cosignature of the log: a clock that
            # stepped back (NTP, a VM snapshot) must not date a larger tree before a smaller
            # one (red team 31), said at ERROR (review 40b: the clamp was silent). Ties
            # stay: timestamps are whole seconds, and a log may publish several
            # checkpoints a second (dating each a second after the one before would run
            # ahead of the clock without bound).
            now, last = self.now(), self._last_cosigned(stored)
            if now < last:
                logger.error(
                    "the clock (%d) is behind this witness's previous cosignature of a "
                    "checkpoint of this log (%d s later): cosigned at that time instead; "
                    "fix the clock (NTP)",
                    now,
                    last - now,
                )
                now = last
            cosigs = tuple(s.cosign(cp.text(), now) for s in self.signers)
            new_note = Note(cp.text(), (*opened.verified, *cosigs)).format()
            expected = None if stored is None else (stored.size, stored.root_hash)
            if self.store.compare_and_swap(cp.origin, expected, cp.size, cp.root_hash, new_note):
                return cosigs
            # Someone else committed in between: re-check against the new state (usually
            # a 409 now). The cosignature we made is dropped unseen.
        raise Unavailable("state is changing too fast; retry")

    def _last_cosigned(self, stored: StoredCheckpoint | None) -> int:
        """The newest timestamp of this witness's own cosignatures on ``stored``'s note (0
        for none, or for a note that does not parse: the check of the state is elsewhere)."""
        if stored is None:
            return 0
        ours = {(s.name, s.key_id) for s in self.signers}
        try:
            sigs = parse_note(stored.note).signatures
        except FormatError:
            return 0
        return max(
            (
                int.from_bytes(s.raw[:8], "big")
                for s in sigs
                if (s.name, s.key_id) in ours and len(s.raw) >= 8
            ),
            default=0,
        )

    @staticmethod
    def _check_against(
        stored: StoredCheckpoint | None,
        old_size: int,
        proof: Sequence[bytes],
        cp: Checkpoint,
    ) -> None:
        latest = 0 if stored is None else stored.size
        if old_size != latest:
            raise Conflict(latest)
        if cp.size == 0 and not hmac.compare_digest(cp.root_hash, EMPTY_ROOT):
            raise Unprocessable("size-0 checkpoint must have the empty-tree root")
        if old_size == 0:
            # tlog-witness: old 0 needs an empty proof; nothing to be consistent with.
            if proof:
                raise Unprocessable("old size 0 requires an empty consistency proof")
            return
        if stored is None:  # pragma: no cover - latest == old_size > 0 implies a row
            raise Unavailable("internal error: no stored checkpoint")
        try:
            verify_consistency(old_size, cp.size, stored.root_hash, cp.root_hash, proof)
        except VerificationError as exc:
            raise Inconsistent(f"consistency check failed: {exc}") from None

    # --- monitoring ---------------------------------------------------------------------

    def own_cosigned(self, log: WitnessedLog, text: str) -> tuple[Checkpoint, str] | None:
        """``text`` if it is a checkpoint of ``log`` signed by the log's key and cosigned by
        one of this witness's own keys, both verified: the checkpoint and the note of those
        verified lines only (as a stored checkpoint is). Else None.

        Only a line whose name *and* key ID are ours is ours (the key ID hashes the name: a
        line under another witness's name with our key ID is someone else's, and ignored);
        such a line whose signature fails makes the whole note worthless here (a forgery,
        never evidence: anyone can write one). A checkpoint with extension lines is never
        ours either: this witness does not cosign them.
        """
        try:
            note = parse_note(text)
        except FormatError:
            return None
        if not any((sig.name, sig.key_id) in self._own_ids for sig in note.signatures):
            return None
        try:
            cp = Checkpoint.parse(note.text)
            opened = open_note(note, [*log.verifiers, *self.verifiers])
        except (FormatError, VerificationError):
            return None
        if cp.origin != log.origin or cp.extensions:
            return None
        log_ids = {(v.name, v.key_id) for v in log.verifiers}
        kept = [s for s in opened.verified if (s.name, s.key_id) in log_ids | self._own_ids]
        if not any((s.name, s.key_id) in log_ids for s in kept) or not any(
            (s.name, s.key_id) in self._own_ids for s in kept
        ):
            return None
        return cp, Note(cp.text(), tuple(kept)).format()

    def observe_own(
        self, log: WitnessedLog, text: str, source: str, *, check_older: bool = False
    ) -> str:
        """A view of ``log`` met somewhere (the log, a peer, a push): act on our own
        cosignature in it. Returns ``"adopted"``, ``"evidence"`` (new evidence recorded) or
        ``""`` (nothing to do: no verified cosignature of ours, or not beyond our state).

        Our cosignature on a larger tree size than the state holds means the state went
        back (restored from a backup or a snapshot): the witness adopts that checkpoint,
        which it vouched for, so that it never cosigns a checkpoint inconsistent with it.
        When the log can be asked (``proof_source``), the stored checkpoint must first be
        proved consistent with it: a proof that fails means two histories carry our key,
        which is evidence, as is our cosignature on another root at the size we hold.

        ``check_older``: our cosignature on a *smaller* size is checked against the state
        too (the log's proof between them), for ``check``, which does not compare the view
        with the state otherwise; polling and gossip do (``_compare``), and a push does not
        (anyone can replay an old checkpoint: each would cost a request to the log).
        """
        found = self.own_cosigned(log, text)
        if found is None:
            return ""
        cp, note = found
        if cp.size == 0:
            return ""  # the empty tree is behind nothing (a bad root: the comparisons judge it)
        origin = log.origin
        for _ in range(_CAS_ATTEMPTS):
            if self.store.has_evidence(origin):
                return ""  # frozen already: nothing will be cosigned
            stored = self.latest(origin)
            if stored is not None and cp.size < stored.size:
                return self._check_older(log, stored, cp, note, source) if check_older else ""
            if stored is not None and cp.size == stored.size:
                if hmac.compare_digest(cp.root_hash, stored.root_hash):
                    return ""
                new = self.record_evidence(
                    origin,
                    source,
                    "this witness's own cosignature is on two different roots at one tree "
                    "size (the log equivocated, or the witness key was used elsewhere)",
                    stored.note,
                    note,
                    {"ours": _describe_stored(stored), "theirs": describe(cp)},
                )
                return "evidence" if new else ""
            held = 0 if stored is None else stored.size
            checked = None
            if stored is not None and held > 0:
                checked = self._ask_log(log, source, stored, cp, note)
                if checked not in (None, "proved"):
                    return checked  # two histories carry our key
            expected = None if stored is None else (stored.size, stored.root_hash)
            if self.store.compare_and_swap(origin, expected, cp.size, cp.root_hash, note):
                self._note_rollback(origin, held, cp.size, proved=checked == "proved")
                return "adopted"
        return ""

    def _check_older(
        self, log: WitnessedLog, stored: StoredCheckpoint, cp: Checkpoint, note: str, source: str
    ) -> str:
        """Our cosignature on a smaller size than the state holds: evidence if the log's own
        proof from it to the state fails (two histories carry our key); else nothing."""
        if cp.size == 0:
            return ""  # the empty tree precedes every tree
        checked = self._ask_log(log, source, stored, cp, note)
        return "" if checked in (None, "proved") else checked

    def _ask_log(
        self, log: WitnessedLog, source: str, stored: StoredCheckpoint, cp: Checkpoint, note: str
    ) -> str | None:
        """Check the log's own consistency proof between ``stored`` and ``cp`` (two sizes
        >0 that differ, both cosigned by us; the smaller first). None when there is no proof
        to check (no ``proof_source``, or the log cannot give one now); ``"proved"`` when it
        verifies; else the two histories are recorded: ``"evidence"`` if new, else ``""``."""
        if self.proof_source is None:
            return None
        (old, old_root), (new, new_root) = sorted(
            [(stored.size, stored.root_hash), (cp.size, cp.root_hash)]
        )
        proof = self.proof_source(log, old, new)
        if proof is None:
            return None
        try:
            verify_consistency(old, new, old_root, new_root, proof)
        except VerificationError as exc:
            return self._two_histories(log.origin, source, (old, new), stored, cp, note, proof, exc)
        return "proved"

    def _two_histories(
        self,
        origin: str,
        source: str,
        sizes: tuple[int, int],
        stored: StoredCheckpoint,
        cp: Checkpoint,
        note: str,
        proof: Sequence[bytes],
        exc: VerificationError,
    ) -> str:
        """Record that our cosignatures are on two checkpoints the log's own consistency
        proof between ``sizes`` does not join; "evidence" if it is new, else ""."""
        new = self.record_evidence(
            origin,
            source,
            "this witness's own cosignatures are on two inconsistent checkpoints: the "
            f"log's consistency proof {sizes[0]} -> {sizes[1]} does not verify ({exc})",
            stored.note,
            note,
            {
                "ours": _describe_stored(stored),
                "theirs": describe(cp),
                "consistency_proof": [b64encode(h) for h in proof],
            },
        )
        return "evidence" if new else ""

    def _note_rollback(self, origin: str, held: int, cosigned: int, *, proved: bool) -> None:
        with self._rollback_lock:
            self.rolled_back[origin] = self.rolled_back.get(origin, 0) + 1
            self.rollbacks[origin] = (held, cosigned)
            first = origin not in self._rollback_logged
            self._rollback_logged.add(origin)
        how = "" if proved else " (no consistency proof from the log to check it against)"
        if first:
            logger.critical(
                "WITNESS STATE ROLLED BACK: log %s: the state held tree size %d but this "
                "witness had cosigned tree size %d; adopted that checkpoint%s",
                origin,
                held,
                cosigned,
                how,
            )
        else:
            logger.warning(
                "witness state behind: log %s: held tree size %d, had cosigned %d; adopted%s",
                origin,
                held,
                cosigned,
                how,
            )

    def merge_cosignatures(
        self, origin: str, text: str, verifiers: Sequence[AnyCosignatureVerifier]
    ) -> bool:
        """Keep the verified cosignatures of ``verifiers`` (peer witnesses) from ``text``
        beside ours when ``text`` is the very checkpoint we hold (same size and root). A
        peer restored from an old copy of its state then finds its own cosignature here
        (:meth:`observe_own`). True if the stored note changed."""
        stored = self.latest(origin)
        if stored is None:
            return False
        try:
            theirs = open_note(text, verifiers)
            cp = Checkpoint.parse(theirs.text)
            ours = parse_note(stored.note)
        except (FormatError, VerificationError):
            return False
        if theirs.text != ours.text or not hmac.compare_digest(cp.root_hash, stored.root_hash):
            return False  # not the checkpoint we hold (the text names origin, size, root)
        have = {(s.name, s.key_id) for s in ours.signatures}
        add = tuple(s for s in theirs.verified if (s.name, s.key_id) not in have)
        add = add[: max(0, _MAX_STORED_LINES - len(ours.signatures))]
        if not add:
            return False  # nothing new, or no room left in what a served note may carry
        merged = Note(ours.text, (*ours.signatures, *add)).format()
        return self.store.replace_note(origin, stored.size, stored.root_hash, merged)

    def latest(self, origin: str) -> StoredCheckpoint | None:
        """The stored checkpoint of ``origin``, its size and root checked against its signed
        note (:func:`client.witness.store.check_row`: a damaged row raises
        :class:`~client.witness.store.StateDamaged`, never taken for a split view)."""
        stored = self.store.latest(origin)
        return None if stored is None else check_row(stored)

    def log_for(self, origin: str) -> WitnessedLog | None:
        """The configured log for ``origin``, else one provisioned from a log list."""
        log = self.logs.get(origin)
        if log is not None:
            return log
        listed = self.store.listed_log(origin)
        if listed is None:
            return None
        try:
            verifier = log_verifier(listed.vkey)
        except FormatError:  # pragma: no cover - checked when it was added
            return None
        if any(getattr(verifier, "public_key", None) == s.public_key for s in self.signers):
            return None  # never cosign for a log that has this witness's own key
        return WitnessedLog(origin, (verifier,))

    def all_logs(self) -> list[WitnessedLog]:
        """Configured logs, then logs provisioned from log lists."""
        out = list(self.logs.values())
        for listed in self.store.listed_logs():
            if listed.origin not in self.logs:
                log = self.log_for(listed.origin)
                if log is not None:
                    out.append(log)
        return out

    def checkpoint_by_hash(self, hexhash: str) -> str | None:
        """The latest cosigned checkpoint note for ``SHA-256(origin) == hexhash``."""
        origin = self._origin_by_hash.get(hexhash)
        if origin is None:
            origin = next(
                (lg.origin for lg in self.store.listed_logs() if origin_hash(lg.origin) == hexhash),
                None,
            )
        if origin is None:
            return None
        stored = self.latest(origin)
        return None if stored is None else stored.note

    def evidence(self) -> list[Evidence]:
        return self.store.evidence()

    def record_evidence(
        self,
        origin: str,
        peer: str,
        reason: str,
        our_note: str,
        their_note: str,
        detail: Mapping[str, object],
    ) -> bool:
        """Store split-view evidence durably and log it loudly. True if it is new."""
        new = self.store.record_evidence(
            origin, peer, reason, our_note, their_note, json.dumps(dict(detail)), self.now()
        )
        if new:
            logger.critical(
                "SPLIT VIEW DETECTED for log %s (via %s): %s\n--- our checkpoint ---\n%s"
                "--- their checkpoint ---\n%s",
                origin,
                peer,
                reason,
                our_note,
                their_note,
            )
        return new


def describe(cp: Checkpoint) -> dict[str, object]:
    """Size and root of a checkpoint, for evidence details."""
    return {"size": cp.size, "root": b64encode(cp.root_hash)}


def _describe_stored(stored: StoredCheckpoint) -> dict[str, object]:
    return {"size": stored.size, "root": b64encode(stored.root_hash)}


def _in_doubt(why: str) -> Unavailable:
    """The 503 of a push while the state is in doubt (:class:`StateInDoubt`): the push that
    found it so may be on the disk or not, so it is not said that nothing was cosigned; no
    cosignature is returned, and none is until a restart."""
    logger.error("add-checkpoint: the state is in doubt until a restart: %s", why)
    return Unavailable(
        f"the witness's state database cannot be used until a restart ({why}); "
        "no cosignature was returned: retry later"
    )


def _disk_fault(exc: sqlite3.Error) -> bool:
    """Did SQLite fail because the disk under the state failed (an I/O error, a read-only
    file system), which only the operator's repair and a restart end?"""
    msg = str(exc).lower()
    return "disk i/o error" in msg or "readonly" in msg or "read-only" in msg
