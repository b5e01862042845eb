"""Polling logs and gossiping with peer witnesses, to detect split views.

**Polling** (logs with a ``url``): GET ``<url>/checkpoint``, verify it with the log key; if it
is larger than what we cosigned, GET ``<url>/v1/proof/consistency?old_size=M&tree_size=N``
and run the very same checks as ``add-checkpoint`` (:meth:`Witness.update`), then cosign.

**Gossip**: for every peer and every log, GET ``<peer>/<SHA-256(origin) hex>/checkpoint``,
verify the log signature (and the peer's cosignature when present), and compare with our
latest cosigned checkpoint. A peer that cannot be reached, is busy or drips its answer is
left for the next round after its first failure (each request would wait the whole answer
deadline again); an answer over its bound or undecodable is that peer's failure for that
log: the round goes on with the next peers.

* same size, different root: evidence at once (two log-signed, contradictory tree heads);
* different sizes: ask the log for a consistency proof between them (from its hash tiles
  when it has no ``/v1/proof/consistency``, a tlog-tiles-only log). A proof that does not
  verify against the two signed roots is evidence at once (an honest log cannot produce
  one). A proof the log *refuses* to give (4xx, or a 200 that is not a proof) counts as one
  round of suspicion; ``missing_proof_rounds`` consecutive rounds (persisted, so they add
  up across ``gossip --once`` runs) make it evidence. Transport errors, 5xx, 429 and
  redirects (never followed) are treated as outages and never count: a log being down or
  moved is not a split view.

Both look for this witness's own cosignature first (:meth:`Witness.observe_own`): one on a
larger size than the state holds means the state was put back from an old copy, and that
checkpoint is adopted (the log's proof from the stored one checked when the log can be
asked). A peer's checkpoint of exactly the size and root we hold has the peer's verified
cosignature kept beside ours (:meth:`Witness.merge_cosignatures`), so that a peer put back
finds its own line here. The first round of :meth:`Monitor.run` is the start-up check that
``tlog-witness serve`` waits for (bounded) before it takes pushes.

The proof response also carries a checkpoint; if it is log-signed, at the size of one of
the two compared checkpoints and with another root, that is evidence too.

Evidence is stored in SQLite, logged with ``logging.critical``, served at GET /evidence, and
makes ``tlog-witness check`` exit non-zero; the witness then stops cosigning that origin
(see :mod:`client.witness.core`).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import httpx

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.cosignature import AnyCosignatureVerifier
from client.formats.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    VerificationError,
    consistency_ranges,
    proof_from_ranges,
    verify_consistency,
)
from client.formats.note import FormatError, b64decode_strict, b64encode
from client.formats.tiles import TILE_WIDTH, Tile, TileHashReader
from client.net.core import Answer, HTTPCore, Unreachable, http_client
from client.net.witness_client import (
    WitnessBusy,
    WitnessClient,
    WitnessError,
    WitnessUnreachable,
)
from client.witness.core import (
    AddCheckpointError,
    Conflict,
    Frozen,
    Unprocessable,
    Witness,
    WitnessedLog,
    describe,
)
from client.witness.provision import PullReport, pull
from client.witness.store import StateDamaged, StoredCheckpoint

__all__ = ["ConsistencyResponse", "LogClient", "LogUnavailable", "Monitor", "Peer", "ProofRefused"]

logger = logging.getLogger("client.witness")

MAX_RESPONSE_SIZE = 1 << 20


@dataclass(frozen=True)
class Peer:
    """Another witness to gossip with: its name (for reports), type-0x04 key and URL."""

    name: str
    verifier: AnyCosignatureVerifier
    url: str


class LogUnavailable(Exception):
    """The log could not be reached or answered 5xx/429: try again later, prove nothing."""


class ProofRefused(Exception):
    """The log answered, but not with a usable proof (4xx or a malformed 200)."""


@dataclass(frozen=True)
class ConsistencyResponse:
    proof: tuple[bytes, ...]
    checkpoint: str | None  # the signed note the log answered relative to (unverified)


class LogClient:
    """Reads a log's checkpoint and consistency proofs over its HTTP API."""

    def __init__(self, log: WitnessedLog, http: httpx.Client) -> None:
        if log.url is None:
            raise ValueError(f"log {log.origin!r} has no URL")
        self.log = log
        self._core = HTTPCore(log.url, http)
        self.url = self._core.url

    def _get(self, path: str, params: dict[str, int] | None = None) -> Answer:
        try:
            resp = self._core.send("GET", path, params=params, limit=MAX_RESPONSE_SIZE)
        except Unreachable as exc:
            raise LogUnavailable(str(exc)) from exc
        except FormatError as exc:
            raise ProofRefused(f"GET {self.url}{path}: {exc}") from None
        if resp.status >= 500 or resp.status in (408, 429) or 300 <= resp.status < 400:
            # A redirect (not followed) proves nothing either way, as an outage.
            raise LogUnavailable(f"GET {self.url}{path}: HTTP {resp.status}")
        return resp

    def checkpoint(self) -> str:
        resp = self._get("/checkpoint")
        if resp.status != 200:
            raise LogUnavailable(f"GET {self.url}/checkpoint: HTTP {resp.status}")
        return resp.text

    def consistency(self, old_size: int, tree_size: int) -> ConsistencyResponse:
        """GET /v1/proof/consistency; checks the JSON shape strictly, not the proof."""
        resp = self._get("/v1/proof/consistency", {"old_size": old_size, "tree_size": tree_size})
        if resp.status == 404:
            # No JSON proof API: a tlog-tiles-only log (Tessera, Sunlight, ...). Its hash
            # tiles give the same proof; the caller checks it against the two signed roots.
            return ConsistencyResponse(self._tile_proof(old_size, tree_size), None)
        if resp.status != 200:
            raise ProofRefused(f"log answered HTTP {resp.status} to a consistency request")
        try:
            doc = json.loads(resp.body)
        except (ValueError, RecursionError):  # RecursionError: [[[[...]]]], nested too deeply
            raise ProofRefused("consistency response is not JSON") from None
        if not isinstance(doc, dict):
            raise ProofRefused("consistency response is not a JSON object")
        for key, want in (("old_size", old_size), ("tree_size", tree_size)):
            got = doc.get(key)
            if type(got) is not int or got != want:
                raise ProofRefused(f"consistency response has {key}={got!r}, want {want}")
        raw = doc.get("consistency_proof")
        if not isinstance(raw, list) or not all(isinstance(h, str) for h in raw):
            raise ProofRefused("consistency_proof must be a list of base64 strings")
        try:
            proof = tuple(b64decode_strict(h, size=HASH_SIZE) for h in raw)
        except FormatError as exc:
            raise ProofRefused(f"bad consistency_proof hash: {exc}") from None
        note = doc.get("checkpoint")
        if note is not None and not isinstance(note, str):
            raise ProofRefused("checkpoint must be a string")
        return ConsistencyResponse(proof, note)

    def _tile_proof(self, old_size: int, tree_size: int) -> tuple[bytes, ...]:
        """The consistency proof computed from the log's hash tiles for ``tree_size``."""
        reader = TileHashReader(tree_size, self._hash_tile)
        try:
            return tuple(proof_from_ranges(consistency_ranges(old_size, tree_size), reader.node))
        except FormatError as exc:
            raise ProofRefused(f"bad hash tile: {exc}") from None

    def _hash_tile(self, tile: Tile) -> bytes:
        resp = self._get("/" + tile.path())
        if resp.status == 404 and tile.width < TILE_WIDTH:
            # tlog-tiles lets a log delete a partial tile once its full tile exists: the
            # partial tile's hashes are the full tile's first ones.
            full = self._get("/" + Tile(tile.level, tile.index).path())
            if full.status == 200:
                return full.body[: tile.width * HASH_SIZE]
        if resp.status != 200:
            raise ProofRefused(f"log answered HTTP {resp.status} to GET {tile.path()}")
        return resp.body


class Monitor:
    """Runs polling and gossip rounds for one witness. One round at a time per method."""

    def __init__(
        self,
        witness: Witness,
        peers: Sequence[Peer] = (),
        *,
        http: httpx.Client | None = None,
        missing_proof_rounds: int = 3,
        timeout: float = 10.0,
        log_lists: Sequence[str] = (),
        log_list_interval: float = 3600.0,
    ) -> None:
        if missing_proof_rounds < 1:
            raise ValueError("missing_proof_rounds must be at least 1")
        self.witness = witness
        self.peers = tuple(peers)
        self.missing_proof_rounds = missing_proof_rounds
        self.log_lists = tuple(log_lists)
        self.log_list_interval = log_list_interval
        self.timeout = timeout
        self._owns_http = http is None
        self._http = http if http is not None else http_client(timeout=timeout)
        self._settle_lock = threading.Lock()
        self._settling: set[str] = set()  # origins whose pushed proof is being settled
        witness.on_inconsistent = self.settle_push
        witness.proof_source = self.log_proof
        self.first_round = threading.Event()  # set once run() has asked every log and peer

    def log_proof(
        self, log: WitnessedLog, old_size: int, tree_size: int
    ) -> tuple[bytes, ...] | None:
        """The log's own consistency proof ``old_size -> tree_size``, or None when the log
        has no URL, cannot be reached or refuses (logged): the caller decides without it."""
        if log.url is None:
            return None
        try:
            return LogClient(log, self._http).consistency(old_size, tree_size).proof
        except (LogUnavailable, ProofRefused) as exc:
            logger.warning(
                "%s: no consistency proof %d -> %d from the log: %s",
                log.origin,
                old_size,
                tree_size,
                exc,
            )
            return None

    def _observe(
        self, log: WitnessedLog, text: str, source: str, *, check_older: bool = False
    ) -> int:
        """Act on our own cosignature in a view of ``log`` (Witness.observe_own); the number
        of new evidence records (0 or 1)."""
        found = self.witness.observe_own(log, text, source, check_older=check_older)
        return int(found == "evidence")

    def settle_push(
        self, log: WitnessedLog, ours: StoredCheckpoint, theirs: Checkpoint, their_note: str
    ) -> int:
        """A pushed, log-signed checkpoint came with a consistency proof that failed.

        The pushed proof proves nothing (anyone can send junk with a replayed checkpoint),
        so ask the log for its own proof: evidence if that fails too, a round of suspicion
        if the log refuses or has no URL. Returns the number of new evidence records.
        """
        peer = "add-checkpoint"
        if log.url is None:
            rounds = self.witness.store.bump_suspicion(
                log.origin,
                peer,
                theirs.size,
                theirs.root_hash,
                "a pushed consistency proof failed and the log has no URL to ask",
                self.witness.now(),
            )
            logger.warning(
                "%s: pushed proof %d -> %d failed; no log URL to settle it (round %d)",
                log.origin,
                ours.size,
                theirs.size,
                rounds,
            )
            return 0
        # One settlement per log at a time: it runs in the push's worker thread and may wait
        # for the log as long as the HTTP timeout allows, and anyone can replay the log's
        # checkpoint with a junk proof. Pushes failing meanwhile get their 422 at once.
        with self._settle_lock:
            if log.origin in self._settling:
                logger.warning(
                    "%s: pushed proof %d -> %d failed; the log is already being asked",
                    log.origin,
                    ours.size,
                    theirs.size,
                )
                return 0
            self._settling.add(log.origin)
        try:
            return self._compare(log, ours, theirs, their_note, peer)
        finally:
            with self._settle_lock:
                self._settling.discard(log.origin)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # --- polling ------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Poll every log that has a URL once. Returns the number of new evidence records."""
        return sum(self.poll_log(lg) for lg in self.witness.logs.values() if lg.url)

    def poll_log(self, log: WitnessedLog) -> int:
        if self.witness.store.has_evidence(log.origin):
            return 0  # frozen: nothing more to cosign
        client = LogClient(log, self._http)
        try:
            text = client.checkpoint()
            cp, _ = open_checkpoint(text, log.verifiers, origin=log.origin)
        except (LogUnavailable, ProofRefused) as exc:
            logger.warning("poll %s: %s", log.origin, exc)
            return 0
        except (FormatError, VerificationError) as exc:
            logger.warning("poll %s: log served a bad checkpoint: %s", log.origin, exc)
            return 0
        peer = f"log {client.url}"
        if self._observe(log, text, peer):
            return 1
        ours = self.witness.latest(log.origin)
        old = 0
        proof: tuple[bytes, ...] = ()
        if ours is not None:
            if cp.size <= ours.size:
                # Not news; still a view of the log that must agree with ours. The log's
                # checkpoint may carry our peers' cosignatures on what we hold: kept.
                self._keep_peer_lines(log, ours, cp, text)
                return self._compare(log, ours, cp, text, peer)
            old = ours.size
        if ours is not None and old > 0:
            try:
                proof = client.consistency(old, cp.size).proof
            except LogUnavailable as exc:
                logger.warning("poll %s: %s", log.origin, exc)
                return 0
            except ProofRefused as exc:
                return self._suspect(log, ours, cp, text, peer, str(exc))
        try:
            self.witness.update(old, proof, text, proof_from_log=True)
        except Frozen:
            return 0
        except Conflict:
            return 0  # a push raced us; the next round compares again
        except Unprocessable as exc:
            if ours is None:
                logger.warning("poll %s: %s", log.origin, exc)
                return 0
            return self._evidence(
                log,
                ours,
                cp,
                text,
                peer,
                f"log's checkpoint is inconsistent with ours: {exc}",
                proof=proof,
            )
        except AddCheckpointError as exc:
            logger.warning("poll %s: not cosigned: %s", log.origin, exc)
            return 0
        # The log proved its growth: refusals before this one were not consecutive.
        self.witness.store.clear_suspicions(log.origin, peer)
        logger.info("poll %s: cosigned size %d", log.origin, cp.size)
        return 0

    # --- gossip -------------------------------------------------------------------------

    def gossip_once(self) -> int:
        """One round: every peer, every log. Returns the number of new evidence records."""
        found = 0
        for peer, log, text in self._peer_checkpoints("gossip", []):
            found += self.compare_peer_checkpoint(log, peer, text)
        return found

    def _peer_checkpoints(
        self, task: str, unreached: list[str]
    ) -> Iterator[tuple[Peer, WitnessedLog, str]]:
        """Every peer's latest checkpoint of each log it answers for (``task`` names the
        caller in the log lines). A peer that is down, slow or busy is asked nothing more
        and named in ``unreached``: each of its logs would cost the whole answer deadline
        again (and the polling on this thread would wait for it once per log)."""
        for peer in self.peers:
            client = WitnessClient(peer.url, peer.verifier, http=self._http)
            for log in self.witness.all_logs():
                try:
                    text = client.latest_checkpoint(log.origin)
                except (WitnessUnreachable, WitnessBusy) as exc:
                    logger.warning("%s %s: not asked further this round: %s", task, peer.name, exc)
                    unreached.append(f"peer {peer.name}")
                    break
                except (WitnessError, FormatError) as exc:
                    # FormatError: an answer over its bound or that cannot be decoded. It is
                    # this peer's failure; the next peer may be the one showing a fork.
                    logger.warning("%s %s/%s: %s", task, peer.name, log.origin, exc)
                    continue
                if text is not None:
                    yield peer, log, text

    def compare_peer_checkpoint(self, log: WitnessedLog, peer: Peer, text: str) -> int:
        """Verify a checkpoint a peer served and compare it with ours."""
        try:
            cp, note = open_checkpoint(text, [*log.verifiers, peer.verifier], origin=log.origin)
        except (FormatError, VerificationError) as exc:
            logger.warning("gossip %s/%s: bad checkpoint from peer: %s", peer.name, log.origin, exc)
            return 0
        log_keys = {(v.name, v.key_id) for v in log.verifiers}
        if not any((s.name, s.key_id) in log_keys for s in note.verified):
            logger.warning(
                "gossip %s/%s: checkpoint lacks the log signature", peer.name, log.origin
            )
            return 0
        peer_key = (peer.verifier.name, peer.verifier.key_id)
        if not any((s.name, s.key_id) == peer_key for s in note.verified):
            logger.warning(
                "gossip %s/%s: checkpoint not cosigned by the peer", peer.name, log.origin
            )
        if self._observe(log, text, f"peer {peer.name}"):
            return 1
        ours = self.witness.latest(log.origin)
        if ours is None:
            return 0
        self._keep_peer_lines(log, ours, cp, text)
        return self._compare(log, ours, cp, text, f"peer {peer.name}")

    def _keep_peer_lines(
        self, log: WitnessedLog, ours: StoredCheckpoint, cp: Checkpoint, text: str
    ) -> None:
        """``text`` is the checkpoint we hold: keep the verified cosignatures of our peers on
        it beside ours, so that a peer whose state is put back finds its own line here
        (:meth:`Witness.observe_own`)."""
        if (
            self.peers
            and cp.size == ours.size
            and hmac.compare_digest(cp.root_hash, ours.root_hash)
        ):
            self.witness.merge_cosignatures(log.origin, text, [p.verifier for p in self.peers])

    # --- comparison -----------------------------------------------------------------------

    def _compare(
        self,
        log: WitnessedLog,
        ours: StoredCheckpoint,
        theirs: Checkpoint,
        their_note: str,
        peer: str,
    ) -> int:
        """Compare two log-signed views; record evidence if they cannot both be true."""
        origin = log.origin
        if theirs.size == ours.size:
            if hmac.compare_digest(theirs.root_hash, ours.root_hash):
                self.witness.store.clear_suspicions(origin, peer)
                return 0
            return self._evidence(
                log, ours, theirs, their_note, peer, "same tree size with different root hashes"
            )
        if theirs.size == 0 or ours.size == 0:
            zero = theirs.root_hash if theirs.size == 0 else ours.root_hash
            if not hmac.compare_digest(zero, EMPTY_ROOT):
                return self._evidence(
                    log, ours, theirs, their_note, peer, "size-0 checkpoint with a non-empty root"
                )
            return 0  # every tree extends the empty tree
        if log.url is None:
            logger.warning(
                "%s: sizes %d and %d differ but no log URL to fetch a proof",
                origin,
                ours.size,
                theirs.size,
            )
            return 0
        (small_size, small_root), (big_size, big_root) = sorted(
            [(ours.size, ours.root_hash), (theirs.size, theirs.root_hash)]
        )
        try:
            resp = LogClient(log, self._http).consistency(small_size, big_size)
        except LogUnavailable as exc:
            logger.warning("%s: cannot reach the log for a proof: %s", origin, exc)
            return 0
        except ProofRefused as exc:
            return self._suspect(log, ours, theirs, their_note, peer, str(exc))
        found = self._check_response_checkpoint(log, ours, theirs, their_note, peer, resp)
        try:
            verify_consistency(small_size, big_size, small_root, big_root, resp.proof)
        except VerificationError as exc:
            return found + self._evidence(
                log,
                ours,
                theirs,
                their_note,
                peer,
                f"the log's consistency proof {small_size} -> {big_size} does not verify: {exc}",
                proof=resp.proof,
            )
        self.witness.store.clear_suspicions(origin, peer)
        return found

    def _check_response_checkpoint(
        self,
        log: WitnessedLog,
        ours: StoredCheckpoint,
        theirs: Checkpoint,
        their_note: str,
        peer: str,
        resp: ConsistencyResponse,
    ) -> int:
        """The proof response's own checkpoint is one more log-signed view of the log.

        "Ours" in evidence is always what this witness saw directly: its cosigned state, or
        the checkpoint the log just served it.
        """
        if resp.checkpoint is None:
            return 0
        try:
            cp, _ = open_checkpoint(resp.checkpoint, log.verifiers, origin=log.origin)
        except (FormatError, VerificationError):
            return 0  # unsigned junk proves nothing
        served = StoredCheckpoint(log.origin, cp.size, cp.root_hash, resp.checkpoint, 0)
        if cp.size == ours.size and not hmac.compare_digest(cp.root_hash, ours.root_hash):
            return self._evidence(
                log,
                ours,
                cp,
                resp.checkpoint,
                f"log {log.url}",
                "the log's proof response carries a checkpoint of our size with another root",
            )
        if cp.size == theirs.size and not hmac.compare_digest(cp.root_hash, theirs.root_hash):
            return self._evidence(
                log,
                served,
                theirs,
                their_note,
                peer,
                f"the log served us a size-{cp.size} checkpoint whose root differs from {peer}'s",
            )
        return 0

    def _suspect(
        self,
        log: WitnessedLog,
        ours: StoredCheckpoint,
        theirs: Checkpoint,
        their_note: str,
        peer: str,
        why: str,
    ) -> int:
        rounds = self.witness.store.bump_suspicion(
            log.origin, peer, theirs.size, theirs.root_hash, why, self.witness.now()
        )
        if rounds < self.missing_proof_rounds:
            logger.warning(
                "%s: log did not prove %d <-> %d (%s); round %d of %d",
                log.origin,
                ours.size,
                theirs.size,
                why,
                rounds,
                self.missing_proof_rounds,
            )
            return 0
        return self._evidence(
            log,
            ours,
            theirs,
            their_note,
            peer,
            f"the log did not prove consistency {ours.size} <-> {theirs.size} "
            f"for {rounds} rounds: {why}",
        )

    def _evidence(
        self,
        log: WitnessedLog,
        ours: StoredCheckpoint,
        theirs: Checkpoint,
        their_note: str,
        peer: str,
        reason: str,
        *,
        proof: Sequence[bytes] = (),
    ) -> int:
        detail: dict[str, object] = {
            "ours": {"size": ours.size, "root": b64encode(ours.root_hash)},
            "theirs": describe(theirs),
            "consistency_proof": [b64encode(h) for h in proof],
        }
        new = self.witness.record_evidence(log.origin, peer, reason, ours.note, their_note, detail)
        return int(new)

    # --- the check for our own later cosignatures (tlog-witness check) --------------------

    def check_own_once(self) -> tuple[int, list[str]]:
        """Ask every log with a URL and every peer for its latest checkpoint of each log, and
        act on our own cosignatures in them (:meth:`Witness.observe_own`), cosigning nothing
        new. Returns (new evidence records, what could not be asked)."""
        found = 0
        missed: list[str] = []
        logs = self.witness.all_logs()
        for log in logs:
            if log.url is None:
                continue
            client = LogClient(log, self._http)
            try:
                text = client.checkpoint()
            except (LogUnavailable, ProofRefused) as exc:
                logger.warning("check %s: the log cannot be asked: %s", log.origin, exc)
                missed.append(f"log {log.origin}")
                continue
            found += self._observe_checked(log, text, f"log {client.url}")
        for peer, log, text in self._peer_checkpoints("check", missed):
            found += self._observe_checked(log, text, f"peer {peer.name}")
        return found, missed

    def _observe_checked(self, log: WitnessedLog, text: str, source: str) -> int:
        """``_observe`` for ``check``: a damaged stored row of this log is left to the
        report, which names it (and goes on to the other logs and the evidence)."""
        try:
            return self._observe(log, text, source, check_older=True)
        except StateDamaged as exc:
            logger.warning("check %s: %s", log.origin, exc)
            return 0

    # --- background loop ----------------------------------------------------------------

    def pull_lists_once(self) -> PullReport:
        """Pull every configured ``logs/v0`` list once (adds logs; never re-keys)."""
        total = PullReport()
        for source in self.log_lists:
            try:
                r = pull(self.witness, source, timeout=self.timeout)
            except FormatError as exc:
                logger.warning("log list %s: %s", source, exc)
                continue
            for name in ("added", "known", "conflicts", "refused"):
                getattr(total, name).extend(getattr(r, name))
            if r.added:
                logger.warning("log list %s: added %s", source, ", ".join(r.added))
        return total

    def peers_then_logs(
        self, logs: Iterable[WitnessedLog], *, peers: bool = True, guarded: bool = False
    ) -> int:
        """One round: the peers first (a gossip round, when ``peers`` and there are any),
        then each of ``logs`` polled. Returns the new evidence records. The peers first:
        polling cosigns what the log serves, and a restored state must meet our own later
        cosignature at a peer before that (a log serving a fork consistent with the old size
        would get it cosigned otherwise). Every round of :meth:`run` (``serve``, the first
        before its first push) and the first round of ``tlog-witness poll``. ``guarded``: a
        step that raises is logged and the round goes on (the background loop must not
        die)."""
        steps: list[Callable[[], int]] = []
        if peers and self.peers:
            steps.append(self.gossip_once)
        steps.extend(functools.partial(self.poll_log, log) for log in logs)
        found = 0
        for step in steps:
            if not guarded:
                found += step()
                continue
            try:
                found += step()
            except Exception:  # a round must never kill the loop
                logger.exception("monitor round failed")
        return found

    def run(self, stop: threading.Event, *, gossip_interval: float) -> None:
        """Poll each log at its interval and gossip every ``gossip_interval`` s until stop
        (and pull the log lists every ``log_list_interval`` s)."""
        next_poll = {lg.origin: 0.0 for lg in self.witness.logs.values() if lg.url}
        next_gossip = 0.0
        next_lists = 0.0
        while not stop.is_set():
            # The first round asks every log and every peer for its latest checkpoint (the
            # start-up check, which `serve` waits for, bounded, before it takes pushes); the
            # lists come after it. A log or peer not reached is asked again at its interval.
            now = time.monotonic()
            gossip = bool(self.peers) and now >= next_gossip
            if gossip:
                next_gossip = now + gossip_interval
            due = [self.witness.logs[o] for o, at in next_poll.items() if now >= at]
            for log in due:
                next_poll[log.origin] = now + log.poll_interval
            self.peers_then_logs(due, peers=gossip, guarded=True)
            self.first_round.set()
            if self.log_lists and now >= next_lists:
                self._guard(self.pull_lists_once)
                next_lists = now + self.log_list_interval
            stop.wait(0.5)

    @staticmethod
    def _guard(fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # a round must never kill the loop
            logger.exception("monitor round failed")
