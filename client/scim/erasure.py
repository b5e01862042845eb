"""Erasure certificates: what a privacy officer hands to a data subject or a regulator.

``GET /v1/scim/erasures/{id}/certificate`` answers a JSON document::

    {"type": "tlog-erasure-certificate/v1", "request": "<32 hex>", "origin": "...",
     "event": {<the log's tlog.erasure.approve event, JSON>}, "nonce": "<b64>",
     "leaf": "<b64>", "index": n, "leaf_hash": "<b64>", "tree_size": n,
     "checkpoint": "<signed note>", "inclusion_proof": [...],
     "tlog_proof": "c2sp.org/tlog-proof@v1 ..."}

:func:`verify_certificate` checks it offline with nothing but the log's verifier key:

* the ``tlog_proof`` bundle: the checkpoint is signed by the log, has its origin, and the leaf
  is included at ``index`` under its root (RFC 6962);
* ``leaf`` hashes to ``leaf_hash``, parses as a SCIM leaf, and commits to ``event`` under
  ``nonce`` (``c = HMAC(nonce, det_cbor(event))``);
* the event is the log's own (exact ``tlog.`` spelling, see :mod:`client.scim.reserved`), a
  ``tlog.erasure.approve`` of the request named by the certificate.

The event holds no personal data: the request id, ``SHA-256(kid)`` of the destroyed keys,
the reason code and the two officers' token ids. Nothing else is needed or shown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from client.formats.merkle import VerificationError, leaf_hash
from client.formats.note import Ed25519Verifier, FormatError, b64decode_strict
from client.formats.proof_bundle import TlogProof
from client.scim.event import Event, event_from_json
from client.scim.leaf import parse_leaf, verify_commitment
from client.scim.reserved import event_origin

__all__ = ["CERTIFICATE_TYPE", "VerifiedErasure", "verify_certificate"]

CERTIFICATE_TYPE = "tlog-erasure-certificate/v1"


@dataclass(frozen=True)
class VerifiedErasure:
    request: str
    origin: str
    tenant: str
    index: int
    tree_size: int
    erased_at: int  # the log's time of the approval (ms)
    subject_rt: str
    reason: str
    kid_hash: str
    requested_by: str
    approved_by: str
    event: Event


def _field(doc: Mapping[str, Any], name: str, typ: type) -> Any:
    v = doc.get(name)
    if type(v) is not typ:
        raise FormatError(f"certificate: {name} missing or not a {typ.__name__}")
    return v


def verify_certificate(doc: Mapping[str, Any], vkey: str) -> VerifiedErasure:
    """Verify an erasure certificate (module docstring). Raises :class:`FormatError` for a
    malformed document and :class:`VerificationError` for one that does not verify."""
    if not isinstance(doc, Mapping) or doc.get("type") != CERTIFICATE_TYPE:
        raise FormatError(f"not a {CERTIFICATE_TYPE} document")
    request = _field(doc, "request", str)
    verifier = Ed25519Verifier.from_vkey(vkey)
    leaf = b64decode_strict(_field(doc, "leaf", str))
    nonce = b64decode_strict(_field(doc, "nonce", str), size=32)
    lh = b64decode_strict(_field(doc, "leaf_hash", str), size=32)
    if leaf_hash(leaf) != lh:
        raise VerificationError("certificate: leaf does not hash to leaf_hash")
    bundle = TlogProof.parse(_field(doc, "tlog_proof", str))
    if bundle.index != _field(doc, "index", int):
        raise VerificationError("certificate: index differs from the proof bundle's")
    cp, _ = bundle.verify(verifier, entry=leaf)
    event = event_from_json(json.dumps(_field(doc, "event", dict)))
    parsed = parse_leaf(leaf)
    verify_commitment(parsed, event, nonce)
    if event_origin(event) != "log" or event["rt"] != "tlog.erasure":
        raise VerificationError("certificate: the event is not one of the log's erasure events")
    if [a["a"] for a in event.get("acts", ())] != ["tlog.erasure.approve"]:
        raise VerificationError("certificate: the event is not an erasure approval")
    x = event.get("x", {})
    if x.get("request") != request or event.get("rid") != request:
        raise VerificationError("certificate: the event is for another erasure request")
    for k in ("subject_rt", "reason", "kid_hash", "requested_by", "approved_by"):
        if type(x.get(k)) is not str:
            raise VerificationError(f"certificate: the erasure event has no {k}")
    return VerifiedErasure(
        request=request,
        origin=cp.origin,
        tenant=event["tenant"],
        index=bundle.index,
        tree_size=cp.size,
        erased_at=parsed.ts,
        subject_rt=x["subject_rt"],
        reason=x["reason"],
        kid_hash=x["kid_hash"],
        requested_by=x["requested_by"],
        approved_by=x["approved_by"],
        event=event,
    )
