"""The OpenAPI 3.1 description of the whole HTTP API of ``tlog serve``, served at
``/openapi.json`` and copied to ``docs/openapi.json``.

A test keeps it in sync with the app (every route is described and every description is a
route), and a schemathesis run fuzzes the server against it (no 5xx, answers conform).
Each operation names the token roles it accepts in ``x-roles`` (none: public).
"""

from __future__ import annotations

from typing import Any

__all__ = ["openapi"]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"
CBOR = "application/cbor"

B64 = {"type": "string", "contentEncoding": "base64"}
HASH = {**B64, "description": "32 bytes, base64"}
UINT = {"type": "integer", "minimum": 0}
NOTE = {"type": "string", "description": "a signed note (C2SP signed-note), maybe cosigned"}
ERROR = {"$ref": "#/components/schemas/Error"}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


RECEIPT = _obj(
    {
        "index": UINT,
        "leaf_hash": HASH,
        "tree_size": UINT,
        "checkpoint": NOTE,
        "inclusion_proof": {"type": "array", "items": HASH},
    },
    {"tlog_proof": {"type": "string"}},
)
ACCESS = _obj({"eid": {"type": "string"}, "index": UINT, "leaf_hash": HASH})
EVENT = {
    "type": "object",
    "description": "a SCIM audit event in its JSON form (SCIM.md §3)",
}
# The leaf's commitment nonce, for the submitter to check c = HMAC(nonce, det_cbor(event));
# left out for a retry whose body is erased.
NONCE = {**B64, "description": "the leaf's commitment nonce (absent once the body is erased)"}
# How the log stored the event's actor (docs/design.md, "Actors"): the stored event is the one
# sent with actor = {kind, pid, sd}; sd = HMAC(nonce, det_cbor(actor as sent)).
STORED_ACTOR = {
    **_obj(
        {"pid": B64, "sd": B64},
        {"nonce": {**B64, "description": "the nonce of sd (absent once the actor is erased)"}},
    ),
    "description": "present when the log stored the actor as a pseudonym: put {kind, pid, sd} "
    "in place of the actor sent before checking the commitment",
}
SUBMITTED = {
    "allOf": [
        RECEIPT,
        _obj(
            {"eid": {"type": "string"}, "duplicate": {"type": "boolean"}, "ts": UINT, "leaf": B64},
            {"nonce": NONCE, "actor": STORED_ACTOR},
        ),
    ]
}
BATCH_RESULT = _obj(
    {
        "eid": {"type": "string"},
        "index": UINT,
        "leaf_hash": HASH,
        "duplicate": {"type": "boolean"},
        "leaf": B64,
    },
    {"nonce": NONCE, "actor": STORED_ACTOR},
)
ERASURE = _obj(
    {
        "id": {"type": "string"},
        "state": {"type": "string"},
        "tenant": {"type": "string"},
        "rt": {"type": "string"},
        "reason": {"type": "string"},
        "kid_hash": B64,
        "created": UINT,
    },
)


def _content(media: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {media: {"schema": schema}}


# The answer of an officer's direct write that is done while its event is not in the log
# yet (tlog.scim.routes._direct_status, faith30).
_PENDING = (
    'done; its event is committed and reaches the log once the log signs again ("event": "pending")'
)


def _op(
    summary: str,
    ok: dict[str, Any] | None,
    *,
    roles: tuple[str, ...] = (),
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    status: str = "200",
    extra: dict[str, str] | None = None,
    writes: bool = False,
) -> dict[str, Any]:
    """One operation: its success answer, and the 4xx (and 503 for writes) it may give."""
    responses: dict[str, Any] = {status: {"description": "success"}}
    if ok is not None:
        responses[status]["content"] = ok
    for code, why in (extra or {}).items():
        responses[code] = {"description": why}
    responses["4XX"] = {
        "description": "malformed request (400), no or bad token (401), wrong role or "
        "tenant (403), not found (404), over a limit (413), wrong media type (415)",
        "content": _content(JSON, ERROR),
    }
    if writes:
        responses["503"] = {
            "description": "backlog full or the store cannot commit; retry after Retry-After",
            "content": _content(JSON, ERROR),
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        }
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if roles:
        op["security"] = [{"bearer": []}]
        op["x-roles"] = list(roles)
    else:
        op["security"] = []
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": body}
    return op


def _q(name: str, schema: dict[str, Any], required: bool = False, desc: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
    if desc:
        p["description"] = desc
    return p


def _p(name: str, schema: dict[str, Any], desc: str = "") -> dict[str, Any]:
    p: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": schema}
    if desc:
        p["description"] = desc
    return p


def _paths() -> dict[str, Any]:
    tree_size = _q("tree_size", UINT, desc="a published tree size (default: the latest)")
    index = _p("index", {"type": "string", "pattern": "^[0-9]+$"}, "entry index, decimal")
    filters = [
        _q(n, {"type": "string"})
        for n in ("rid", "req", "xid", "ref", "actor", "action", "outcome", "ref_rt")
    ] + [
        _q("since", UINT),
        _q("until", UINT),
        _q("limit", {"type": "integer", "minimum": 1, "maximum": 100}),
        _q("cursor", B64),
    ]
    return {
        "/healthz": {
            "get": _op(
                "liveness: the server's event loop answers; touches no storage",
                _content(JSON, _obj({"status": {"const": "ok"}})),
            )
        },
        "/readyz": {
            "get": _op(
                "readiness: writer, storage, signing, backlog (and witness quorum) checks; 503 "
                "exactly when writes would get 503",
                _content(JSON, _obj({"status": {"enum": ["ready"]}, "checks": {"type": "object"}})),
                extra={"503": "not ready: the failing checks are in the body"},
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (text exposition format 0.0.4)",
                _content("text/plain; version=0.0.4; charset=utf-8", {"type": "string"}),
            )
        },
        "/checkpoint": {
            "get": _op(
                "the latest (cosigned, with witnesses) checkpoint, served from memory",
                _content(TEXT, {"type": "string"}),
            )
        },
        "/tile/{path}": {
            "get": _op(
                "a tlog-tiles hash tile (<L>/<N>[.p/<W>]) or entry bundle (entries/<N>[.p/<W>])",
                _content(OCTETS, {"type": "string", "format": "binary"}),
                params=[
                    _p(
                        "path",
                        {"type": "string"},
                        "the tile path after /tile/ (it contains slashes)",
                    )
                ],
            )
        },
        "/v1/log": {
            "get": _op(
                "origin, verifier key, size, checkpoint and the request limits",
                _content(
                    JSON,
                    _obj(
                        {
                            "origin": {"type": "string"},
                            "vkey": {"type": "string"},
                            "tree_size": UINT,
                            "checkpoint": NOTE,
                            "limits": {"type": "object"},
                        }
                    ),
                ),
            )
        },
        "/v1/entries": {
            "post": _op(
                "append one entry; answered once it is durable, with its proof",
                _content(
                    JSON,
                    {
                        "allOf": [
                            RECEIPT,
                            _obj(
                                {"duplicate": {"type": "boolean"}, "tlog_proof": {"type": "string"}}
                            ),
                        ]
                    },
                ),
                roles=("submitter",),
                body=_content(OCTETS, {"type": "string", "format": "binary", "minLength": 1}),
                writes=True,
            )
        },
        "/v1/entries/batch": {
            "post": _op(
                "append up to max_batch_entries entries (tlog-tiles bundle encoding, or JSON)",
                _content(
                    JSON,
                    _obj(
                        {
                            "tree_size": UINT,
                            "checkpoint": NOTE,
                            "indices": {"type": "array", "items": UINT},
                            "duplicates": {"type": "array", "items": UINT},
                        }
                    ),
                ),
                roles=("submitter",),
                body={
                    OCTETS: {"schema": {"type": "string", "format": "binary"}},
                    JSON: {"schema": _obj({"entries": {"type": "array", "items": B64}})},
                },
                writes=True,
            )
        },
        "/v1/entries/{index}": {
            "get": _op(
                "the entry at an index",
                _content(OCTETS, {"type": "string", "format": "binary"}),
                params=[index],
            )
        },
        "/v1/bundle/{index}": {
            "get": _op(
                "a tlog-proof bundle (C2SP tlog-proof) for the entry at an index",
                _content(TEXT, {"type": "string"}),
                params=[index, tree_size],
            )
        },
        "/v1/proof/inclusion": {
            "get": _op(
                "an inclusion proof by index or leaf hash (exactly one)",
                _content(
                    JSON,
                    _obj(
                        {
                            "index": UINT,
                            "tree_size": UINT,
                            "checkpoint": NOTE,
                            "inclusion_proof": {"type": "array", "items": HASH},
                        },
                        {"leaf_hash": HASH},
                    ),
                ),
                params=[_q("index", UINT), _q("leaf_hash", HASH), tree_size],
            )
        },
        "/v1/proof/consistency": {
            "get": _op(
                "a consistency proof from old_size to tree_size",
                _content(
                    JSON,
                    _obj(
                        {
                            "old_size": UINT,
                            "tree_size": UINT,
                            "checkpoint": NOTE,
                            "consistency_proof": {"type": "array", "items": HASH},
                        }
                    ),
                ),
                params=[_q("old_size", UINT, required=True), tree_size],
            )
        },
        "/v1/witnesses": {
            "get": _op(
                "witness policy status: per witness, the cosigned size, errors and alarms",
                _content(JSON, {"type": "object"}),
            )
        },
        "/v1/scim/events": {
            "post": _op(
                "append one SCIM audit event of the token's tenant",
                _content(JSON, SUBMITTED),
                roles=("submitter",),
                body={
                    JSON: {"schema": EVENT},
                    CBOR: {"schema": {"type": "string", "format": "binary"}},
                },
                writes=True,
            ),
            "get": _op(
                "search the tenant's events (decrypted); the read is itself logged",
                _content(
                    JSON,
                    _obj(
                        {
                            "tree_size": UINT,
                            "checkpoint": NOTE,
                            "results": {"type": "array", "items": {"type": "object"}},
                            "next": {"type": ["string", "null"]},
                            "access": ACCESS,
                        }
                    ),
                ),
                roles=("auditor",),
                params=filters,
                writes=True,
            ),
        },
        "/v1/scim/events/batch": {
            "post": _op(
                "append up to max_batch_events events of the token's tenant",
                _content(
                    JSON,
                    _obj(
                        {
                            "tree_size": UINT,
                            "checkpoint": NOTE,
                            "results": {"type": "array", "items": BATCH_RESULT},
                        }
                    ),
                ),
                roles=("submitter",),
                body={
                    JSON: {"schema": _obj({"events": {"type": "array", "items": EVENT}})},
                    CBOR: {"schema": {"type": "string", "format": "binary"}},
                },
                writes=True,
            )
        },
        "/v1/scim/receipts": {
            "get": _op(
                "receipts (proofs) of the tenant's events by eid or request id",
                _content(
                    JSON,
                    _obj(
                        {
                            "tree_size": UINT,
                            "checkpoint": NOTE,
                            "receipts": {"type": "array", "items": {"type": "object"}},
                        }
                    ),
                ),
                roles=("submitter", "auditor"),
                params=[_q("eid", {"type": "string"}), _q("req", {"type": "string"})],
                writes=True,
            )
        },
        "/v1/scim/tenant-ref": {
            "get": _op(
                "the tenant's public reference (tn) in SCIM leaves",
                _content(JSON, _obj({"tenant": {"type": "string"}, "tn": B64})),
                roles=("auditor",),
            )
        },
        "/v1/scim/pseudonyms": {
            "post": _op(
                "pseudonyms (pid) of SCIM resource ids under the tenant's keys",
                _content(
                    JSON,
                    _obj(
                        {
                            "refs": {
                                "type": "array",
                                "items": _obj({"rt": {"type": "string"}, "pid": B64}),
                            }
                        }
                    ),
                ),
                roles=("submitter",),
                body=_content(
                    JSON,
                    _obj(
                        {
                            "refs": {
                                "type": "array",
                                "items": _obj({"rt": {"type": "string"}, "id": {"type": "string"}}),
                            }
                        }
                    ),
                ),
                writes=True,
            )
        },
        "/v1/scim/whoami": {
            "get": _op(
                "the calling token's role and tenant",
                _content(
                    JSON,
                    _obj(
                        {
                            "role": {"type": "string"},
                            "tenant": {"type": ["string", "null"]},
                            "token_id": {"type": "string"},
                        }
                    ),
                ),
                roles=("submitter", "auditor", "privacy-officer", "admin"),
            )
        },
        "/v1/scim/erasures": {
            "post": _op(
                "request the crypto-shredding of a subject (a second officer approves)",
                _content(JSON, ERASURE),
                status="201",
                roles=("privacy-officer",),
                body=_content(
                    JSON,
                    _obj(
                        {
                            "tenant": {"type": "string"},
                            "rt": {"type": "string"},
                            "reason": {"type": "string"},
                        },
                        {"rid": {"type": "string"}, "xid": {"type": "string"}},
                    ),
                ),
                extra={"202": _PENDING},
                writes=True,
            ),
            "get": _op(
                "erasure requests (pending, or all)",
                _content(JSON, _obj({"erasures": {"type": "array", "items": ERASURE}})),
                roles=("privacy-officer",),
                params=[_q("state", {"type": "string", "enum": ["pending", "all"]})],
            ),
        },
        "/v1/scim/erasures/{id}/certificate": {
            "get": _op(
                "the erasure certificate of a carried-out erasure request",
                _content(JSON, {"type": "object"}),
                roles=("privacy-officer",),
                params=[_p("id", {"type": "string"})],
            )
        },
        "/v1/scim/holds": {
            "post": _op(
                "place a legal hold (on a tenant, or one subject); erasure and expiry wait",
                _content(JSON, {"type": "object"}),
                status="201",
                roles=("privacy-officer",),
                body=_content(
                    JSON,
                    _obj(
                        {"tenant": {"type": "string"}, "reason": {"type": "string"}},
                        {
                            "rt": {"type": "string"},
                            "rid": {"type": "string"},
                            "xid": {"type": "string"},
                            "userName": {"type": "string"},
                        },
                    ),
                ),
                extra={"202": _PENDING},
                writes=True,
            ),
            "get": _op(
                "the legal holds in force",
                _content(JSON, _obj({"holds": {"type": "array", "items": {"type": "object"}}})),
                roles=("privacy-officer",),
            ),
        },
        "/v1/scim/holds/{id}/release": {
            "post": _op(
                "release a legal hold",
                _content(JSON, {"type": "object"}),
                roles=("privacy-officer",),
                params=[_p("id", {"type": "string"})],
                extra={"202": _PENDING},
                writes=True,
            )
        },
        "/v1/scim/retention": {
            "put": _op(
                "set a tenant's retention period (days)",
                _content(JSON, {"type": "object"}),
                roles=("privacy-officer",),
                body=_content(
                    JSON, _obj({"tenant": {"type": "string"}, "days": {"type": "integer"}})
                ),
                extra={"202": _PENDING},
                writes=True,
            ),
            "get": _op(
                "a tenant's retention period",
                _content(JSON, {"type": "object"}),
                roles=("privacy-officer", "admin"),
                params=[_q("tenant", {"type": "string"}, required=True)],
            ),
        },
        "/v1/scim/expire": {
            "post": _op(
                "shred the keys of events past their tenant's retention (not under a hold)",
                _content(JSON, {"type": "object"}),
                roles=("privacy-officer", "admin"),
                body=_content(JSON, _obj({}, {"tenant": {"type": "string"}})),
                writes=True,
            )
        },
        "/v1/scim/erasures/{id}": {
            "get": _op(
                "the state of an erasure request",
                _content(JSON, ERASURE),
                roles=("privacy-officer",),
                params=[_p("id", {"type": "string"})],
            )
        },
        "/v1/scim/erasures/{id}/approve": {
            "post": _op(
                "approve (and carry out) an erasure request; not by the requester",
                _content(JSON, ERASURE),
                roles=("privacy-officer",),
                params=[_p("id", {"type": "string"})],
                extra={
                    "202": _PENDING,
                    "409": "expired, under a legal hold, or the requester approving",
                },
                writes=True,
            )
        },
        "/v1/scim/exports": {
            "post": _op(
                "record that an auditor exported events to a sink (logged as an access event)",
                _content(JSON, _obj({"sink": {"type": "string"}, "access": ACCESS})),
                status="201",
                roles=("auditor",),
                body=_content(
                    JSON,
                    _obj(
                        {"sink": {"type": "string"}},
                        {"events": UINT, "bodies": UINT, "erased": UINT},
                    ),
                ),
                writes=True,
            )
        },
        "/v1/ui/summary": {
            "get": _op(
                "what the browser console shows: size, checkpoint history, witnesses",
                _content(JSON, {"type": "object"}),
            )
        },
        "/ui": {
            "get": _op(
                "redirect to /ui/",
                None,
                status="308",
            )
        },
        "/ui/": {
            "get": _op(
                "the browser console (static page)",
                {"text/html": {"schema": {"type": "string"}}},
            )
        },
        "/ui/{name}": {
            "get": _op(
                "a static file of the browser console",
                {"*/*": {"schema": {"type": "string"}}},
                params=[_p("name", {"type": "string"})],
            )
        },
        "/openapi.json": {
            "get": _op(
                "this document",
                _content(JSON, {"type": "object"}),
            )
        },
    }


def openapi() -> dict[str, Any]:
    """The OpenAPI document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "tlog",
            "version": "1",
            "description": "Transparency log for SCIM provisioning audit events: RFC 6962 "
            "Merkle log, C2SP checkpoints and tiles, witnesses, SCIM event service. "
            'Errors are JSON {"error": "<reason>"}; malformed input is always a 4xx. '
            "See docs/api.md.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a token from `tlog token create` (tlog_...)",
                },
            },
            "schemas": {"Error": _obj({"error": {"type": "string"}})},
        },
        "paths": _paths(),
    }


if __name__ == "__main__":  # python -m tlog.openapi > docs/openapi.json
    import json
    import sys

    sys.stdout.write(json.dumps(openapi(), indent=2, ensure_ascii=False) + "\n")
