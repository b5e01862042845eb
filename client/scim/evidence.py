"""Evidence bundles of SCIM events, and their offline verification.

An evidence bundle (``tlog-scim-evidence@v1``, JSON) is what the console's "Export evidence"
button downloads: the shown events of one tenant, each with its public leaf, its decrypted
body and commitment nonce (absent for an erased event), and a ``c2sp.org/tlog-proof@v1``
receipt::

    {"format": "tlog-scim-evidence@v1", "origin": "...", "vkey": "...", "policy": "..."|null,
     "tenant": "acme", "tn": "<b64, 16 bytes>", "exported": <ms>, "access": {...},
     "events": [{"index": 41, "eid": "...", "leaf": "<b64>", "leaf_hash": "<b64>",
                 "erased": false, "event": {<JSON form>}, "nonce": "<b64>",
                 ["effect": {<the log's derived effect>},]
                 "tlog_proof": "c2sp.org/tlog-proof@v1\\n..."}, ...]}

:func:`verify_evidence` trusts nothing in the file: the log key and witness policy come from
the caller (``tlog-client scim verify-evidence --vkey/--policy``). For every event it checks
the receipt (log signature, origin, inclusion of ``SHA-256(0x00 || leaf)``), the leaf's
form and tenant ref, ``c = HMAC-SHA256(nonce, det_cbor(event))`` and, for an event that
carries an ``effect``, the leaf's ``e`` over it (:func:`client.scim.leaf.verify_effect`);
with a policy, the witness quorum on every checkpoint; across events, that two checkpoints
of one size have one root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError, leaf_hash
from client.formats.note import Ed25519Verifier, FormatError, b64decode_strict
from client.formats.policy import Policy
from client.formats.proof_bundle import TlogProof
from client.scim.event import event_from_json
from client.scim.jsonstrict import strict_json
from client.scim.leaf import (
    NONCE_SIZE,
    TENANT_REF_SIZE,
    parse_leaf,
    verify_commitment,
    verify_effect,
)

__all__ = ["FORMAT", "MAX_EVIDENCE_SIZE", "EvidenceReport", "verify_evidence"]

FORMAT = "tlog-scim-evidence@v1"
MAX_EVIDENCE_SIZE = 256 << 20
_TOP = {"format", "origin", "vkey", "policy", "tenant", "tn", "exported", "access", "events"}
_EVENT = {"index", "eid", "leaf", "leaf_hash", "erased", "event", "nonce", "tlog_proof", "effect"}


@dataclass(frozen=True)
class EvidenceReport:
    tenant: str
    events: int
    bodies: int
    erased: int
    checkpoints: dict[int, Checkpoint]  # tree size -> verified checkpoint


def _bad(what: str) -> FormatError:
    return FormatError(f"evidence bundle: {what}")


def verify_evidence(
    data: bytes | str,
    verifier: Ed25519Verifier,
    policy: Policy | None = None,
    *,
    tenant_ref: bytes | None = None,
) -> EvidenceReport:
    """Verify a bundle; raises :class:`FormatError` (malformed) or
    :class:`VerificationError` (a check failed)."""
    if len(data) > MAX_EVIDENCE_SIZE:
        raise _bad("too large")
    try:
        doc = strict_json(data.decode("utf-8") if isinstance(data, bytes) else data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _bad(f"not JSON: {exc}") from None
    if type(doc) is not dict or not set(doc) <= _TOP or doc.get("format") != FORMAT:
        raise _bad(f"not a {FORMAT} document")
    if doc.get("origin") != verifier.name:
        got = doc.get("origin")
        raise VerificationError(f"bundle is for origin {got!r}, not {verifier.name!r}")
    tenant = doc.get("tenant")
    if type(tenant) is not str or type(doc.get("events")) is not list:
        raise _bad("tenant and events are required")
    tn = b64decode_strict(str(doc.get("tn")), size=TENANT_REF_SIZE)
    if tenant_ref is not None and tn != tenant_ref:
        raise VerificationError("the bundle is for another tenant ref than the one given")
    checkpoints: dict[int, Checkpoint] = {}
    witnesses = [] if policy is None else policy.witness_verifiers()
    bodies = erased = 0
    seen: set[int] = set()
    for i, e in enumerate(doc["events"]):
        where = f"event {i}"
        if type(e) is not dict or not set(e) <= _EVENT:
            raise _bad(f"{where}: unknown fields")
        try:
            leaf = b64decode_strict(e["leaf"])
            lh = b64decode_strict(e["leaf_hash"], size=32)
            proof = TlogProof.parse(e["tlog_proof"])
            index = e["index"]
        except (KeyError, TypeError) as exc:
            raise _bad(f"{where}: {exc}") from None
        if leaf_hash(leaf) != lh:
            raise VerificationError(f"{where}: the leaf does not hash to leaf_hash")
        if type(index) is not int or proof.index != index:
            raise VerificationError(f"{where}: the receipt is for another index")
        if index in seen:
            raise _bad(f"{where}: index {index} appears twice")
        seen.add(index)
        cp, note = proof.verify(verifier, leaf=lh, extra_verifiers=witnesses)
        if policy is not None:
            try:
                policy.check(note)
            except VerificationError as exc:
                raise VerificationError(f"{where}: {exc}") from None
        prev = checkpoints.setdefault(cp.size, cp)
        if prev.root_hash != cp.root_hash:
            raise VerificationError(f"two different trees of size {cp.size} in one bundle")
        parsed = parse_leaf(leaf)
        if parsed.tn != tn:
            raise VerificationError(f"{where}: the leaf belongs to another tenant")
        if e.get("erased") is True:
            if "event" in e or "nonce" in e:
                raise _bad(f"{where}: an erased event with a body")
            erased += 1
            continue
        try:
            ev = event_from_json(json.dumps(e["event"]))
            nonce = b64decode_strict(e["nonce"], size=NONCE_SIZE)
        except (KeyError, TypeError) as exc:
            raise _bad(f"{where}: {exc}") from None
        verify_commitment(parsed, ev, nonce)
        if "effect" in e:  # the log's derived effect: must be the one the leaf commits to (e)
            effect = e["effect"]
            if not isinstance(effect, dict):
                raise _bad(f"{where}: effect is not an object")
            try:
                attested = verify_effect(parsed, effect, nonce)
            except VerificationError as exc:
                raise VerificationError(f"{where}: {exc}") from None
            except FormatError as exc:
                raise _bad(f"{where}: effect: {exc}") from None
            if not attested:
                raise VerificationError(f"{where}: an effect the leaf does not commit to")
        if ev["tenant"] != tenant:
            raise VerificationError(f"{where}: the body belongs to another tenant")
        bodies += 1
    return EvidenceReport(tenant, len(doc["events"]), bodies, erased, checkpoints)


def describe(report: EvidenceReport) -> list[str]:
    sizes = sorted(report.checkpoints)
    return [
        f"verified {FORMAT}",
        f"  tenant     {report.tenant}",
        f"  events     {report.events} ({report.bodies} with bodies, {report.erased} erased)",
        f"  checkpoints {', '.join(str(s) for s in sizes) or 'none'}",
    ]
