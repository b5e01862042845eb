"""A client for one log that verifies everything the log says before returning it.

:class:`LogClient` speaks the log's HTTP API (``docs/api.md``): the tlog-tiles read API
(``/checkpoint``, ``/tile/...``) and the JSON proof API (``/v1/...``). It is pinned to the
log's verifier key and, optionally, to a witness :class:`~client.formats.policy.Policy`.

Trust model:

* the log is **untrusted**: every checkpoint is checked against the pinned key (signature,
  origin = key name), every proof against a checkpoint that verified, every tile and entry
  bundle against a verified root;
* the client keeps the largest verified checkpoint (:attr:`LogClient.latest`) and checks
  that every checkpoint it sees afterwards is consistent with it (RFC 9162 §2.1.4): a log
  that rolls back or forks raises :class:`VerificationError`;
* with a policy, a checkpoint must carry the policy's witness quorum before it is believed
  (:class:`QuorumNotMet` otherwise). A checkpoint *older* than one that met the quorum is
  accepted on the log signature alone once it is proven consistent with it: consistency
  puts it on the same witnessed history. Submissions are the exception: a freshly signed
  checkpoint cannot be witnessed yet, so their results report ``quorum`` instead of raising.

Errors form two families that callers should keep apart:

* :class:`LogClientError` (:class:`LogUnreachable`, :class:`LogHTTPError`): the log could not
  be asked or refused to answer. This proves nothing about its honesty; retry later.
* :class:`VerificationError` (and :class:`QuorumNotMet`) and :class:`FormatError`: the log
  answered, and the answer is wrong or malformed. This is evidence against the log.

A ``LogClient`` is not safe for concurrent use (it updates :attr:`~LogClient.latest`), except
:meth:`~LogClient.fetch_tile`, which only reads and may be called from many threads when the
underlying ``httpx.Client`` allows it (it does).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    VerificationError,
    consistency_ranges,
    fold_perfect,
    inclusion_ranges,
    leaf_hash,
    perfect_subtrees,
    proof_from_ranges,
    root_of_range,
    verify_consistency,
    verify_inclusion,
)
from client.formats.note import (
    Ed25519Verifier,
    FormatError,
    Note,
    Verifier,
    b64decode_strict,
    b64encode,
)
from client.formats.policy import Policy
from client.formats.proof_bundle import TlogProof
from client.formats.tiles import (
    MAX_ENTRY_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    Tile,
    TileHashReader,
    decode_entry_bundle,
    encode_entry_bundle,
    split_hash_tile,
)
from client.net.core import (
    CheckpointTracker,
    CoreClient,
    HTTPCore,
    HTTPFailure,
    StatusError,
    Unreachable,
)

__all__ = [
    "BatchSubmission",
    "ConsistencyProof",
    "FormatError",
    "InclusionProof",
    "LogClient",
    "LogClientError",
    "LogHTTPError",
    "LogUnreachable",
    "QuorumNotMet",
    "Submission",
    "VerificationError",
    "VerifiedBundle",
    "VerifiedCheckpoint",
    "VerifiedEntry",
    "check_quorum",
    "tile_covered",
    "verify_consistent",
    "verify_tile_hashes",
    "verify_tlog_proof",
]

MAX_NOTE_BYTES = 1 << 20
MAX_JSON_BYTES = 1 << 20
MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + MAX_ENTRY_SIZE)


# --- errors ---------------------------------------------------------------------------------


# The core's errors (client.net.core), under the names this module has always used.
LogClientError = HTTPFailure
LogUnreachable = Unreachable
LogHTTPError = StatusError


class QuorumNotMet(VerificationError):
    """The checkpoint is log-signed but lacks the policy's witness quorum."""


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature and origin verified.

    ``cosigners`` are the policy names of the witnesses whose cosignatures verified;
    ``quorum`` says whether they meet the policy's quorum (None without a policy).
    """

    checkpoint: Checkpoint
    note: str
    cosigners: frozenset[str] = frozenset()
    quorum: bool | None = None

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root_hash(self) -> bytes:
        return self.checkpoint.root_hash


@dataclass(frozen=True)
class InclusionProof:
    """``leaf_hash`` is at ``index`` in the tree of ``checkpoint`` (verified)."""

    index: int
    leaf_hash: bytes
    inclusion_proof: tuple[bytes, ...]
    checkpoint: VerifiedCheckpoint

    @property
    def tree_size(self) -> int:
        return self.checkpoint.size

    def tlog_proof(self) -> str:
        """The same proof as an offline ``c2sp.org/tlog-proof@v1`` bundle."""
        return TlogProof(self.index, self.inclusion_proof, self.checkpoint.note).format()


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree of ``old_size`` with ``old_root`` is a prefix of ``checkpoint`` (verified)."""

    old_size: int
    old_root: bytes
    consistency_proof: tuple[bytes, ...]
    checkpoint: VerifiedCheckpoint

    @property
    def tree_size(self) -> int:
        return self.checkpoint.size


@dataclass(frozen=True)
class VerifiedEntry:
    index: int
    entry: bytes
    proof: InclusionProof


@dataclass(frozen=True)
class VerifiedBundle:
    """A verified tlog-proof: its text, parsed form, checkpoint and the leaf it proves."""

    text: str
    bundle: TlogProof
    leaf_hash: bytes
    checkpoint: VerifiedCheckpoint

    @property
    def index(self) -> int:
        return self.bundle.index


@dataclass(frozen=True)
class Submission:
    """An acknowledged entry: durable and covered by ``proof.checkpoint`` (verified)."""

    index: int
    duplicate: bool
    proof: InclusionProof
    tlog_proof: str

    @property
    def leaf_hash(self) -> bytes:
        return self.proof.leaf_hash


@dataclass(frozen=True)
class BatchSubmission:
    """An acknowledged batch. ``proofs`` is set only when they were asked for."""

    indices: tuple[int, ...]
    duplicates: tuple[int, ...]
    checkpoint: VerifiedCheckpoint
    proofs: tuple[InclusionProof, ...] | None = None

    @property
    def tree_size(self) -> int:
        return self.checkpoint.size


# --- verification helpers usable without a network ------------------------------------------


def check_quorum(policy: Policy, note: Note | str) -> tuple[frozenset[str], bool]:
    """(witnesses whose cosignature verified, whether they meet the quorum).

    Raises :class:`VerificationError` if a known witness's cosignature is bad. This adapter
    exists because :meth:`Policy.check` raises the same exception for a bad cosignature and
    for a missing quorum, and the CLI reports the two differently (exit 2 vs 3).
    """
    signed = policy.cosigned_by(note)  # a bad cosignature raises here
    try:
        policy.check(note)
    except VerificationError:  # cosigned_by passed, so this is the quorum
        return signed, False
    return signed, True


def _verify_note(
    note: str, log_verifier: Ed25519Verifier, policy: Policy | None
) -> VerifiedCheckpoint:
    """Log signature, origin = key name, cosignatures; the quorum is reported, not enforced."""
    verifiers: list[Verifier] = [log_verifier]
    if policy is not None:
        verifiers += policy.witness_verifiers()
    cp, opened = open_checkpoint(note, verifiers)
    if not any(
        s.name == log_verifier.name and s.key_id == log_verifier.key_id for s in opened.verified
    ):
        raise VerificationError("checkpoint is not signed by the log's key")
    if cp.origin != log_verifier.name:
        raise VerificationError(f"checkpoint origin {cp.origin!r} is not {log_verifier.name!r}")
    if cp.size == 0 and cp.root_hash != EMPTY_ROOT:
        raise VerificationError("empty tree with a non-empty root")
    if policy is None:
        return VerifiedCheckpoint(cp, note)
    signed, met = check_quorum(policy, opened)
    return VerifiedCheckpoint(cp, note, signed, met)


def verify_tlog_proof(
    text: str | bytes,
    log_verifier: Ed25519Verifier,
    *,
    policy: Policy | None = None,
    entry: bytes | None = None,
    leaf: bytes | None = None,
) -> VerifiedBundle:
    """Verify a ``c2sp.org/tlog-proof@v1`` bundle offline (c2sp.org/tlog-proof steps 1-4).

    Give exactly one of the entry bytes or its leaf hash. With a policy, the quorum must be
    met (:class:`QuorumNotMet` otherwise, after everything else verified).
    """
    if (entry is None) == (leaf is None):
        raise ValueError("give exactly one of entry or leaf")
    bundle = TlogProof.parse(text)
    lh = leaf_hash(entry) if entry is not None else bytes(leaf or b"")
    if len(lh) != HASH_SIZE:
        raise ValueError("leaf hash must be 32 bytes")
    vc = _verify_note(bundle.checkpoint_note, log_verifier, policy)
    verify_inclusion(bundle.index, vc.size, lh, bundle.inclusion_proof, vc.root_hash)
    if vc.quorum is False:
        raise QuorumNotMet(_quorum_message(policy, vc))
    return VerifiedBundle(bundle.format(), bundle, lh, vc)


def _quorum_message(policy: Policy | None, vc: VerifiedCheckpoint) -> str:
    got = ", ".join(sorted(vc.cosigners)) or "none"
    quorum = policy.quorum if policy is not None else "?"
    return f"witness quorum {quorum!r} not met at size {vc.size} (cosigned by: {got})"


def tile_covered(tile: Tile, size: int) -> bool:
    """Whether the tree of ``size`` holds all hashes of ``tile`` (level -1: entries)."""
    level = max(tile.level, 0)
    return (size >> (TILE_HEIGHT * level)) >= tile.index * TILE_WIDTH + tile.width


def verify_consistent(old: Checkpoint, new: Checkpoint, proof: Sequence[bytes]) -> None:
    """``proof`` shows that ``old`` is a prefix of ``new``; else :class:`VerificationError`
    naming both sizes (a log that showed two histories)."""
    try:
        verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    except VerificationError as exc:
        raise VerificationError(
            f"the log's checkpoints of size {old.size} and {new.size} are inconsistent: {exc}"
        ) from None


def verify_tile_hashes(
    tile: Tile,
    hashes: Sequence[bytes],
    checkpoint: Checkpoint,
    node_reader: Callable[[int, int], bytes],
) -> None:
    """Check a hash tile's (or an entry bundle's leaf hashes') content against a signed root.

    The tile's hashes are split into perfect subtrees (at most 8); each subtree's root is
    proven to be a node of the tree by a node-level inclusion proof whose sibling hashes come
    from ``node_reader(level, index)`` (untrusted, e.g. other tiles): RFC 6962 trees contain
    every aligned complete subtree, and above level ``h`` a tree of ``n`` leaves has the shape
    of a tree of ``ceil(n / 2**h)`` leaves, so RFC 9162 §2.1.3.2 applies unchanged.
    """
    if not tile_covered(tile, checkpoint.size):
        raise ValueError(f"{tile.path()} is beyond the tree of size {checkpoint.size}")
    if len(hashes) != tile.width:
        raise FormatError(f"{tile.path()} holds {len(hashes)} hashes, want {tile.width}")
    base_level = TILE_HEIGHT * max(tile.level, 0)
    base = tile.index * TILE_WIDTH
    size = checkpoint.size
    for lv, ix in perfect_subtrees(base, base + tile.width):
        first = (ix << lv) - base
        piece = root_of_range(hashes[first : first + (1 << lv)])
        level = base_level + lv
        ranges = inclusion_ranges(ix << level, size)[level:]
        proof = proof_from_ranges(ranges, node_reader)
        try:
            verify_inclusion(
                ix, (size + (1 << level) - 1) >> level, piece, proof, checkpoint.root_hash
            )
        except VerificationError as exc:
            raise VerificationError(f"{tile.path()} does not match the checkpoint: {exc}") from None


# --- the client -----------------------------------------------------------------------------


def _json_field(doc: dict[str, Any], name: str, kind: type) -> Any:
    v = doc.get(name)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise FormatError(f"response field {name!r} is missing or not {kind.__name__}")
    return v


def _hash_list(doc: dict[str, Any], name: str) -> tuple[bytes, ...]:
    items = _json_field(doc, name, list)
    if len(items) > 64:
        raise FormatError(f"{name} is too long")
    out = []
    for h in items:
        if not isinstance(h, str):
            raise FormatError(f"{name} holds a non-string")
        out.append(b64decode_strict(h, size=HASH_SIZE))
    return tuple(out)


def _check_index(value: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int")


class LogClient(CoreClient):
    """A verifying client for the log at ``url`` with the pinned key ``vkey``.

    ``http`` may be any ``httpx.Client`` (a Starlette ``TestClient`` in tests); the client
    closes it only if it made it. ``checkpoint``, if given, is a checkpoint note verified
    earlier (e.g. saved by an auditor): it becomes :attr:`latest`, so that whatever the log
    says next must be consistent with it. ``retries`` is how often a submission is retried
    after 503/429 (resubmission is idempotent), waiting ``Retry-After`` (at most 30 s).
    """

    def __init__(
        self,
        url: str,
        vkey: str | Ed25519Verifier,
        *,
        policy: Policy | None = None,
        http: httpx.Client | None = None,
        timeout: float = 30.0,
        checkpoint: str | None = None,
        retries: int = 3,
    ) -> None:
        self.url = url.rstrip("/")
        self.verifier = (
            vkey if isinstance(vkey, Ed25519Verifier) else Ed25519Verifier.from_vkey(vkey)
        )
        self.origin = self.verifier.name
        self.policy = policy
        if policy is not None:
            listed = policy.log_verifiers(self.origin)
            if listed and all(v.key_id != self.verifier.key_id for v in listed):
                raise ValueError(f"the policy lists another key for {self.origin!r}")
        self._core = HTTPCore(self.url, http, timeout=timeout)
        self.retries = retries
        self.latest: VerifiedCheckpoint | None = None
        # Sizes proven consistent with the latest: repeated answers about an old size need
        # no new consistency proof, and a second root for one is a fork.
        self._tree = CheckpointTracker(self._check_consistent)
        # The largest checkpoint that met the quorum (only with a policy).
        self.witnessed: VerifiedCheckpoint | None = None
        if checkpoint is not None:
            self.trust(checkpoint)

    # -- lifecycle ---------------------------------------------------------------------------

    # -- HTTP ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        limit: int,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        retry: bool = False,
    ) -> bytes:
        answer = self._core.call(
            method,
            path,
            limit=limit,
            params=params,
            content=content,
            headers=headers,
            retries=self.retries if retry else 0,
        )
        return answer.body

    def _get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return self._parse_json(self._request("GET", path, params=params, limit=MAX_JSON_BYTES))

    @staticmethod
    def _parse_json(body: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise FormatError(f"response is not JSON: {exc}") from None
        except RecursionError:  # [[[[...]]]] within the size bound: no ValueError
            raise FormatError("response is not JSON: nested too deeply") from None
        if not isinstance(doc, dict):
            raise FormatError("response is not a JSON object")
        return doc

    # -- checkpoints -----------------------------------------------------------------------

    def verify_note(self, note: str) -> VerifiedCheckpoint:
        """Verify a checkpoint note's log signature, origin and cosignatures (no network).

        The quorum is reported in the result, not enforced; nothing is remembered.
        """
        return _verify_note(note, self.verifier, self.policy)

    def trust(self, note: str) -> VerifiedCheckpoint:
        """Adopt a checkpoint verified earlier (e.g. saved state): signature and origin are
        checked again, and it must be consistent with :attr:`latest` if there is one.

        Its quorum is not required: it was believed when it was saved.
        """
        vc = self.verify_note(note)
        self._observe(vc, claimed_latest=False)
        if vc.quorum and (self.witnessed is None or vc.size > self.witnessed.size):
            self.witnessed = vc
        return vc

    def checkpoint(self) -> VerifiedCheckpoint:
        """GET /checkpoint: verified, quorum met (with a policy), consistent with :attr:`latest`.

        A checkpoint smaller than :attr:`latest` is a rollback, a different root at the same
        size a fork: both raise :class:`VerificationError`.
        """
        body = self._request("GET", "checkpoint", limit=MAX_NOTE_BYTES)
        try:
            note = body.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("checkpoint is not UTF-8") from None
        return self._accept(note, claimed_latest=True)

    def _accept(
        self,
        note: str,
        *,
        tree_size: int | None = None,
        claimed_latest: bool = False,
        need_quorum: bool = True,
    ) -> VerifiedCheckpoint:
        """Verify a checkpoint the log sent and fold it into :attr:`latest`."""
        vc = self.verify_note(note)
        if tree_size is not None and vc.size != tree_size:
            raise VerificationError(
                f"the log answered with a checkpoint of size {vc.size}, not {tree_size}"
            )
        if self.latest is None and not claimed_latest and need_quorum and vc.quorum is False:
            # Anchor on the log's latest (witnessed) checkpoint first: an older checkpoint
            # without the quorum is believed once it is proven consistent with that one.
            self.checkpoint()
        self._observe(vc, claimed_latest)
        if vc.quorum:
            if self.witnessed is None or vc.size > self.witnessed.size:
                self.witnessed = vc
        elif vc.quorum is False and need_quorum:
            # An older checkpoint proven consistent with a witnessed one is on witnessed history.
            if self.witnessed is None or vc.size > self.witnessed.size:
                raise QuorumNotMet(_quorum_message(self.policy, vc))
        return vc

    def _observe(self, vc: VerifiedCheckpoint, claimed_latest: bool) -> None:
        self._tree.observe(vc.checkpoint, claimed_latest=claimed_latest)
        cur = self.latest
        if cur is None or vc.size > cur.size:
            self.latest = vc
        elif vc.size == cur.size and len(vc.cosigners) > len(cur.cosigners):
            self.latest = vc  # the same tree head, better witnessed

    def _check_consistent(self, old: Checkpoint, new: Checkpoint) -> None:
        """Prove ``old`` is a prefix of ``new``, from the JSON API or else from tiles."""
        if old.size == 0:
            return  # _verify_note checked the empty root
        try:
            proof = self._fetch_consistency(old.size, new)
        except LogHTTPError as exc:
            if exc.status != 404:
                raise
            # No JSON API (a tiles-only log): compute the same proof from hash tiles.
            reader = TileHashReader(new.size, self.fetch_tile)
            proof = tuple(proof_from_ranges(consistency_ranges(old.size, new.size), reader.node))
        verify_consistent(old, new, proof)

    def _fetch_consistency(self, old_size: int, new: Checkpoint) -> tuple[bytes, ...]:
        doc = self._get_json(
            "v1/proof/consistency", {"old_size": str(old_size), "tree_size": str(new.size)}
        )
        vc = self.verify_note(_json_field(doc, "checkpoint", str))
        if vc.size != new.size or vc.root_hash != new.root_hash:
            raise VerificationError("consistency proof answered for another tree head")
        if _json_field(doc, "old_size", int) != old_size:
            raise FormatError("consistency proof for another old size")
        return _hash_list(doc, "consistency_proof")

    # -- proofs ----------------------------------------------------------------------------

    def inclusion_proof(self, target: int | bytes, tree_size: int | None = None) -> InclusionProof:
        """Verified inclusion proof for an index (int) or a leaf hash (32 bytes).

        For an index, the entry is fetched too (GET /v1/entries/<index>): a proof cannot be
        checked without the leaf. ``tree_size`` defaults to the log's latest.
        """
        if isinstance(target, bytes):
            if len(target) != HASH_SIZE:
                raise ValueError("leaf hash must be 32 bytes")
            return self._inclusion({"leaf_hash": b64encode(target)}, target, None, tree_size)
        return self.entry(target, tree_size).proof

    def _inclusion(
        self,
        params: dict[str, str],
        leaf: bytes,
        index: int | None,
        tree_size: int | None,
        *,
        need_quorum: bool = True,
    ) -> InclusionProof:
        if tree_size is not None:
            _check_index(tree_size, "tree_size")
            params = {**params, "tree_size": str(tree_size)}
        doc = self._get_json("v1/proof/inclusion", params)
        got_index = _json_field(doc, "index", int)
        if index is not None and got_index != index:
            raise VerificationError(f"asked for index {index}, got a proof for {got_index}")
        if "leaf_hash" in params and doc.get("leaf_hash") != params["leaf_hash"]:
            raise VerificationError("the proof is for another leaf hash")
        proof = _hash_list(doc, "inclusion_proof")
        vc = self._accept(
            _json_field(doc, "checkpoint", str), tree_size=tree_size, need_quorum=need_quorum
        )
        if _json_field(doc, "tree_size", int) != vc.size:
            raise FormatError("tree_size does not match the checkpoint")
        verify_inclusion(got_index, vc.size, leaf, proof, vc.root_hash)
        return InclusionProof(got_index, leaf, proof, vc)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Verified proof that the log's tree of ``old_size`` is a prefix of ``new_size``'s.

        The old root is the signed one if the client knows a checkpoint of that size, else
        it is read from the hash tiles: a consistency proof that verifies against the signed
        new root admits exactly one old root (RFC 9162 §2.1.4.2 hashes every proof node into
        the new root), so the tiles cannot make a wrong one pass.
        """
        _check_index(old_size, "old_size")
        params = {"old_size": str(old_size)}
        if new_size is not None:
            _check_index(new_size, "new_size")
            if new_size < old_size:
                raise ValueError("new_size is smaller than old_size")
            params["tree_size"] = str(new_size)
        doc = self._get_json("v1/proof/consistency", params)
        proof = _hash_list(doc, "consistency_proof")
        if _json_field(doc, "old_size", int) != old_size:
            raise FormatError("consistency proof for another old size")
        vc = self._accept(_json_field(doc, "checkpoint", str), tree_size=new_size)
        if old_size == 0:
            # Every tree extends the empty one (tlog-witness); RFC 9162 leaves size 0 out.
            if proof:
                raise VerificationError("a consistency proof from size 0 must be empty")
            return ConsistencyProof(0, EMPTY_ROOT, proof, vc)
        if old_size == vc.size:
            old_root = vc.root_hash
        elif self.latest is not None and self.latest.size == old_size:
            old_root = self.latest.root_hash
        else:
            reader = TileHashReader(vc.size, self.fetch_tile)
            old_root = fold_perfect(
                [reader.node(lv, ix) for lv, ix in perfect_subtrees(0, old_size)]
            )
        verify_consistency(old_size, vc.size, old_root, vc.root_hash, proof)
        return ConsistencyProof(old_size, old_root, proof, vc)

    def entry(self, index: int, tree_size: int | None = None) -> VerifiedEntry:
        """The entry at ``index`` and its verified inclusion proof."""
        _check_index(index, "index")
        entry = self._request("GET", f"v1/entries/{index}", limit=MAX_ENTRY_SIZE)
        proof = self._inclusion({"index": str(index)}, leaf_hash(entry), index, tree_size)
        return VerifiedEntry(index, entry, proof)

    def bundle(
        self,
        index: int,
        tree_size: int | None = None,
        *,
        entry: bytes | None = None,
        leaf: bytes | None = None,
    ) -> VerifiedBundle:
        """GET /v1/bundle/<index>: a verified offline tlog-proof.

        The inclusion is checked against ``entry`` or ``leaf`` if given, else against the
        entry fetched from the log.
        """
        _check_index(index, "index")
        params = None
        if tree_size is not None:
            _check_index(tree_size, "tree_size")
            params = {"tree_size": str(tree_size)}
        body = self._request("GET", f"v1/bundle/{index}", params=params, limit=MAX_NOTE_BYTES)
        bundle = TlogProof.parse(body)
        if bundle.index != index:
            raise VerificationError(f"asked for index {index}, got a bundle for {bundle.index}")
        if entry is None and leaf is None:
            entry = self._request("GET", f"v1/entries/{index}", limit=MAX_ENTRY_SIZE)
        lh = leaf_hash(entry) if entry is not None else bytes(leaf or b"")
        vc = self._accept(bundle.checkpoint_note, tree_size=tree_size)
        verify_inclusion(bundle.index, vc.size, lh, bundle.inclusion_proof, vc.root_hash)
        return VerifiedBundle(bundle.format(), bundle, lh, vc)

    # -- submission ------------------------------------------------------------------------

    def submit(self, entry: bytes, token: str) -> Submission:
        """POST /v1/entries; returns after checking the leaf hash, checkpoint and proof."""
        if not entry or len(entry) > MAX_ENTRY_SIZE:
            raise ValueError("an entry is 1 to 65535 bytes")
        body = self._request(
            "POST",
            "v1/entries",
            content=entry,
            headers={"Authorization": f"Bearer {token}"},
            limit=MAX_JSON_BYTES,
            retry=True,
        )
        doc = self._parse_json(body)
        lh = leaf_hash(entry)
        if b64decode_strict(_json_field(doc, "leaf_hash", str), size=HASH_SIZE) != lh:
            raise VerificationError("the log reports another leaf hash for this entry")
        index = _json_field(doc, "index", int)
        proof = _hash_list(doc, "inclusion_proof")
        vc = self._accept(_json_field(doc, "checkpoint", str), need_quorum=False)
        if _json_field(doc, "tree_size", int) != vc.size:
            raise FormatError("tree_size does not match the checkpoint")
        verify_inclusion(index, vc.size, lh, proof, vc.root_hash)
        text = _json_field(doc, "tlog_proof", str)
        bundle = TlogProof.parse(text)
        if (bundle.index, bundle.inclusion_proof, bundle.checkpoint_note) != (
            index,
            proof,
            vc.note,
        ):
            raise VerificationError("the tlog_proof differs from the proof in the answer")
        duplicate = _json_field(doc, "duplicate", bool)
        return Submission(index, duplicate, InclusionProof(index, lh, proof, vc), text)

    def submit_batch(
        self, entries: Sequence[bytes], token: str, *, proofs: bool = False
    ) -> BatchSubmission:
        """POST /v1/entries/batch (entry bundle encoding); the checkpoint is verified.

        Inclusion proofs are fetched and verified, one request per entry, only if ``proofs``.
        """
        if not entries:
            raise ValueError("empty batch")
        for e in entries:
            if not e or len(e) > MAX_ENTRY_SIZE:
                raise ValueError("an entry is 1 to 65535 bytes")
        body = self._request(
            "POST",
            "v1/entries/batch",
            content=encode_entry_bundle(entries),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
            },
            limit=MAX_JSON_BYTES + 24 * len(entries),
            retry=True,
        )
        doc = self._parse_json(body)
        vc = self._accept(_json_field(doc, "checkpoint", str), need_quorum=False)
        if _json_field(doc, "tree_size", int) != vc.size:
            raise FormatError("tree_size does not match the checkpoint")
        indices = _json_field(doc, "indices", list)
        dups = _json_field(doc, "duplicates", list)
        if len(indices) != len(entries):
            raise FormatError(f"{len(indices)} indices for {len(entries)} entries")
        for i in [*indices, *dups]:
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise FormatError("indices must be non-negative integers")
        if any(i >= vc.size for i in indices):
            raise VerificationError("an index is not covered by the returned checkpoint")
        if dups != sorted(set(dups)) or any(d >= len(entries) for d in dups):
            raise FormatError("bad duplicates list")
        fresh = [i for pos, i in enumerate(indices) if pos not in set(dups)]
        if len(set(fresh)) != len(fresh):
            raise VerificationError("the log gave one index to two new entries")
        verified: tuple[InclusionProof, ...] | None = None
        if proofs:
            verified = tuple(
                self._inclusion({"index": str(i)}, leaf_hash(e), i, vc.size, need_quorum=False)
                for i, e in zip(indices, entries, strict=True)
            )
        return BatchSubmission(tuple(indices), tuple(dups), vc, verified)

    # -- tiles -----------------------------------------------------------------------------

    def fetch_tile(self, tile: Tile) -> bytes:
        """Raw tile bytes, **unverified** (only the size is bounded). Thread-safe."""
        if tile.is_entries:
            return self._request("GET", tile.path(), limit=MAX_BUNDLE_BYTES)
        return self._request("GET", tile.path(), limit=tile.width * HASH_SIZE)

    def _covering_checkpoint(self, tile: Tile) -> VerifiedCheckpoint:
        vc = self.latest
        if vc is None or not tile_covered(tile, vc.size):
            vc = self.checkpoint()
        if not tile_covered(tile, vc.size):
            raise ValueError(f"{tile.path()} is beyond the log's checkpoint (size {vc.size})")
        return vc

    def _verify_tile(self, tile: Tile, hashes: list[bytes], vc: VerifiedCheckpoint) -> None:
        reader_tile = Tile(max(tile.level, 0), tile.index, tile.width)

        def fetch(t: Tile) -> bytes:
            if t == reader_tile:
                return b"".join(hashes)
            return self.fetch_tile(t)

        reader = TileHashReader(vc.size, fetch)
        verify_tile_hashes(reader_tile, hashes, vc.checkpoint, reader.node)

    def hash_tile(self, tile: Tile) -> bytes:
        """The hash tile's bytes, verified against :attr:`latest` (refreshed if too small)."""
        if tile.is_entries:
            raise ValueError("use entry_bundle() for entry bundles")
        vc = self._covering_checkpoint(tile)
        data = self.fetch_tile(tile)
        self._verify_tile(tile, split_hash_tile(data, tile.width), vc)
        return data

    def entry_bundle(self, index: int, width: int = TILE_WIDTH) -> list[bytes]:
        """The entries of bundle ``index`` (``width`` of them), verified against a checkpoint."""
        _check_index(index, "index")
        tile = Tile(-1, index, width)
        vc = self._covering_checkpoint(tile)
        entries = decode_entry_bundle(self.fetch_tile(tile), width)
        self._verify_tile(tile, [leaf_hash(e) for e in entries], vc)
        return entries
