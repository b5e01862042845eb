"""HTTP endpoints of the SCIM event service, under ``/v1/scim/`` (docs/api.md "SCIM events").

Authentication is the log's own (:class:`tlog.routes.Api`) and so is the error mapping
(:mod:`tlog.errors`): 401 for missing/unknown/expired/revoked tokens, 403 for a wrong role
or tenant, 400 for malformed input (every :class:`client.formats.note.FormatError`, which
includes :class:`client.scim.EventFormatError`), 413 for bodies over a limit, 409 for a
conflict with stored state, 415 for a body type the route does not take.

Roles (SCIM.md §5.1): ``submitter`` appends events of its own tenant and reads their
receipts; ``auditor`` searches and decrypts its tenant's events, and every such read is
itself logged as an access event; ``privacy-officer`` requests and (a second officer)
approves erasures. ``admin`` has no access to bodies.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from client.formats.note import FormatError, b64decode_strict
from client.formats.proof_bundle import TlogProof
from client.scim.cbor import MAX_DEPTH, CborTooLarge, EventFormatError, loads_det
from client.scim.event import (
    Event,
    actor_to_json,
    adopt_event,
    adopt_json_event,
    adopt_json_text,
    decode_event,
    event_to_json,
)
from client.scim.fastjson import decode_batch, decode_event_json
from tlog.auth import ROLES, Forbidden, Principal
from tlog.bodies import OFFLOAD_BYTES, BodyTooLarge, check_json_shape, off_loop
from tlog.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from tlog.http import (
    Endpoint,
    JsonBody,
    Query,
    Scoped,
    b64,
    header,
    json_body,
    read_asgi_body,
    read_body,
    request_id,
)
from tlog.log import NotFound, Published
from tlog.routes import Api
from tlog.scim.erasure import SUBJECT_KINDS, ErasureStatus, Hold
from tlog.scim.keys import SubjectId
from tlog.scim.search import Filters, Found, ReceiptInfo
from tlog.scim.service import ScimService, Submitted
from tlog.scim.store import TS_KEY_SIZE

__all__ = ["scim_routes"]

JSON = "application/json"
CBOR = "application/cbor"
MAX_FILTER_BYTES = 1024
MAX_SMALL_BODY = 64 * 1024  # erasure requests
_json_encode = msgspec.json.Encoder().encode
MAX_PSEUDONYM_BODY = 2 << 20  # one request's member references (max_refs of them) in one call

T = TypeVar("T")


class _StoredActor(msgspec.Struct, gc=False, omit_defaults=True):
    """How the log stored the event's actor (docs/api.md): the stored event is the one sent
    with ``actor = {kind, pid, sd}``; ``sd = HMAC(nonce, det_cbor(actor sent))``. No nonce
    once the actor is erased (a retry)."""

    pid: bytes
    sd: bytes
    nonce: bytes | None = None


def _stored_actor(actor: tuple[bytes, bytes, bytes | None] | None) -> _StoredActor | None:
    return None if actor is None else _StoredActor(*actor)


class _BatchResult(msgspec.Struct, gc=False, omit_defaults=True):
    """One event of a batch's answer, in the answer's key order (docs/api.md)."""

    eid: str
    index: int
    leaf_hash: bytes  # msgspec writes bytes as standard, padded base64 (what b64 writes)
    duplicate: bool
    leaf: bytes
    # the leaf's commitment nonce: the submitter checks c = HMAC(nonce, its event) with it;
    # left out once the body is erased
    nonce: bytes | None = None
    actor: _StoredActor | None = None  # the actor as stored, when pseudonymised


class _BatchAnswer(msgspec.Struct, gc=False):
    tree_size: int
    checkpoint: str
    results: list[_BatchResult]


class _Receipt(msgspec.Struct, gc=False, omit_defaults=True):
    """A single event's answer, in the key order of :meth:`ScimRoutes._submitted` (bytes
    are written as standard, padded base64, as b64 writes them)."""

    eid: str
    duplicate: bool
    ts: int
    leaf: bytes
    index: int
    leaf_hash: bytes
    tree_size: int
    checkpoint: str
    inclusion_proof: list[bytes]
    tlog_proof: str
    nonce: bytes | None = None  # as in _BatchResult
    actor: _StoredActor | None = None  # as in _BatchResult


_PROOF_HEAD = "c2sp.org/tlog-proof@v1\nindex "


def _tlog_proof(index: int, proof: list[bytes], note: str) -> str:
    """``TlogProof(index, tuple(proof), note).format()`` (no extra line). The hashes'
    lines are msgspec's JSON of the list (standard padded base64 in C, no character of
    which JSON escapes) with each ``","`` made a line break: one call for the list, not a
    base64 call and a decode per hash (4.2 -> 3.2 µs for 20 hashes)."""
    if not proof:
        return f"{_PROOF_HEAD}{index}\n\n{note}"
    hashes = _json_encode(proof)[2:-2].replace(b'","', b"\n").decode("ascii")
    return f"{_PROOF_HEAD}{index}\n{hashes}\n\n{note}"


def _receipt_answer(s: Submitted, size: int, note: str, proof: list[bytes]) -> bytes:
    """A single event's answer: the JSON of :meth:`ScimRoutes._submitted`'s dict."""
    return _json_encode(
        _Receipt(
            s.eid,
            s.duplicate,
            s.ts,
            s.leaf,
            s.index,
            s.leaf_hash,
            size,
            note,
            proof,
            _tlog_proof(s.index, proof, note),
            s.nonce,
            _stored_actor(s.actor),
        )
    )


# A batch's answer has a result per event: encoded in C, not by the json module through
# one dict per event (the JSON text is the same).
_answer_json = msgspec.json.Encoder()


def _media_type(request: Request | Scoped) -> str:
    return (header(request.scope, b"content-type") or "").split(";")[0].strip().lower()


def _text(value: object, what: str, max_bytes: int = MAX_FILTER_BYTES) -> str:
    if type(value) is not str or not value:
        raise BadRequest(f"{what} must be a non-empty string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadRequest(f"{what} is not valid Unicode") from None
    if size > max_bytes or any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise BadRequest(f"{what} is too long or contains control characters")
    return value


class _Query(Query):
    def text(self, name: str) -> str | None:
        v = self._q.get(name)
        return None if v is None else _text(v, name)

    def blob(self, name: str, size: int) -> bytes | None:
        v = self._q.get(name)
        if v is None:
            return None
        try:
            return b64decode_strict(v, size=size)
        except FormatError as exc:
            raise BadRequest(f"{name}: {exc}") from None


def _cbor_array_length(body: bytes) -> int | None:
    """The element count a CBOR array header announces (None if ``body`` is no array)."""
    if not body or body[0] >> 5 != 4:
        return None
    ai = body[0] & 0x1F
    if ai < 24:
        return ai
    if 24 <= ai <= 27:
        width = 1 << (ai - 24)
        if len(body) > width:
            return int.from_bytes(body[1 : 1 + width], "big")
    return None


def _eid(value: str) -> str:
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        raise BadRequest("eid must be a lowercase UUID") from None
    if canonical != value:
        raise BadRequest("eid must be a lowercase UUID")
    return value


class ScimRoutes:
    """The handlers, over the log's API (authentication, proofs, the read pool) and the SCIM
    service, both given explicitly. Nothing here touches the store on the event loop: reads
    go to the log's read pool (:mod:`tlog.reads`, 503 when the store stalls), writes to the
    service's writer thread."""

    def __init__(self, service: ScimService, api: Api) -> None:
        self.service = service
        self.api = api
        self.limits = service.limits

    # -- helpers -------------------------------------------------------------------------

    async def _principal(self, request: Request | Scoped, *roles: str) -> Principal:
        return await self.api.authenticate(request, *roles)

    async def _read(self, fn: Callable[[], T], what: str) -> T:
        return await self.api.reads.run(fn, what)

    @staticmethod
    def _tenant(p: Principal) -> str:
        if p.tenant is None:
            raise Forbidden("this token is not bound to a tenant")
        return p.tenant

    def _receipt(self, index: int, lh: bytes, pub: Published, note: str) -> dict[str, Any]:
        """A receipt, its proof read from the store: only in a read-pool job."""
        return self._receipt_json(
            index, lh, pub, note, self.api.log.inclusion_proof(index, pub.size, lh)
        )

    @staticmethod
    def _receipt_json(
        index: int, lh: bytes, pub: Published, note: str, proof: list[bytes]
    ) -> dict[str, Any]:
        return {
            "index": index,
            "leaf_hash": b64(lh),
            "tree_size": pub.size,
            "checkpoint": note,
            "inclusion_proof": [b64(h) for h in proof],
            "tlog_proof": TlogProof(index, tuple(proof), note).format(),
        }

    async def _submitted(self, s: Submitted, pub: Published) -> dict[str, Any]:
        """The receipt of a new event: its proof from memory when the log has it cached
        (the right edge a batch just wrote), else from the read pool."""
        proof = await self.api.inclusion_proof(s.index, pub.size, s.leaf_hash)
        note = await self.api.note(pub)
        out = {
            "eid": s.eid,
            "duplicate": s.duplicate,
            "ts": s.ts,
            "leaf": b64(s.leaf),
            **self._receipt_json(s.index, s.leaf_hash, pub, note, proof),
        }
        if s.nonce is not None:
            out["nonce"] = b64(s.nonce)
        if s.actor is not None:
            pid, sd, an = s.actor
            out["actor"] = {"pid": b64(pid), "sd": b64(sd)}
            if an is not None:
                out["actor"]["nonce"] = b64(an)
        return out

    # -- ingestion -----------------------------------------------------------------------

    async def add_event(self, request: Request | Scoped) -> Response:
        p = await self._principal(request, "submitter")
        tenant = self._tenant(p)
        ctype = _media_type(request)
        if ctype not in (JSON, CBOR):
            raise UnsupportedMediaType("Content-Type must be application/json or application/cbor")
        body = await read_asgi_body(request.scope, request.receive, self.limits.max_event_body)
        if not body:
            raise BadRequest("empty body")
        if len(body) <= OFFLOAD_BYTES:  # what off_loop does, without a coroutine and a lambda
            ev, data = self._parse_event(body, ctype)
        else:
            ev, data = await off_loop(len(body), lambda: self._parse_event(body, ctype))
        done, pub = await self.service.submit(tenant, [ev], encoded=[data])
        return JsonBody(await self._submitted_json(done[0], pub))

    async def _submitted_json(self, s: Submitted, pub: Published) -> bytes:
        """The JSON of :meth:`_submitted` (the same bytes as msgspec writes its dict,
        tested), encoded from a struct in C: no dict, no base64 call per hash twice. The
        proof and the note come from memory when cached (the usual case: the right edge a
        batch just wrote, the latest note), else as :meth:`_submitted` gets them."""
        api = self.api
        proof = api.log.cached_inclusion_proof(s.index, pub.size, s.leaf_hash)
        if proof is None:
            proof = await api.inclusion_proof(s.index, pub.size, s.leaf_hash)
        note = api.published.cached_note(pub)
        if note is None:
            note = await api.note(pub)
        return _receipt_answer(s, pub.size, note, proof)

    @staticmethod
    def _parse_event(body: bytes, ctype: str) -> tuple[Event, bytes]:
        """One event with its canonical encoding: JSON by the compiled decoder when it
        accepts (client.scim.fastjson), else by the reference path, which has the last word."""
        if ctype == JSON:
            fast = decode_event_json(body)
            if fast is not None:
                return fast
            return adopt_json_text(body)
        # decode_event admits only the canonical encoding: the body is the event's bytes.
        return decode_event(body), body

    def _parse_batch(self, body: bytes, ctype: str) -> list[tuple[Event, bytes]]:
        """Events of a batch body with their canonical encodings; every limit applies before
        the body is decoded."""
        limit = self.limits.max_batch_events
        max_items = self.limits.max_batch_items
        items: list[Any]
        if ctype == JSON:
            # The compiled decoder (client.scim.fastjson) only ever accepts; when it does
            # not, the reference path below decides and names what is wrong. It runs only
            # when the element limit surely holds: every JSON element but the first of a
            # container follows a ",", so the body's count of ",", "[" and "{" (strings
            # included) bounds the count check_json_shape makes outside strings. Its depth
            # limit needs no check there: the event schema bounds the depth of what the
            # decoder accepts far below it.
            if body.count(b",") + body.count(b"[") + body.count(b"{") <= max_items:
                fast = decode_batch(body)
                if fast is not None and len(fast) <= limit:
                    return fast
            try:
                check_json_shape(body, max_items=max_items, max_depth=MAX_DEPTH + 2)
            except BodyTooLarge:
                raise PayloadTooLarge(f"more than {max_items} JSON elements in one batch") from None
            doc = json_body(body)
            if type(doc) is not dict or set(doc) != {"events"} or type(doc["events"]) is not list:
                raise BadRequest('body must be {"events": [<event>, ...]}')
            items = doc["events"]
        else:
            n = _cbor_array_length(body)
            if n is not None and n > limit:
                raise PayloadTooLarge(f"more than {limit} events in one batch")
            try:
                doc = loads_det(body, max_depth=MAX_DEPTH + 1, max_items=max_items)
            except CborTooLarge:
                raise PayloadTooLarge(f"more than {max_items} CBOR items in one batch") from None
            if type(doc) is not list:
                raise BadRequest("a CBOR batch must be an array of events")
            items = doc
        if not items:
            raise BadRequest("empty batch")
        if len(items) > limit:
            raise PayloadTooLarge(f"more than {limit} events in one batch")
        events: list[tuple[Event, bytes]] = []
        for i, item in enumerate(items):
            try:
                # The items were parsed (strictly) from this body and belong to nobody else:
                # validated in place, no JSON re-encode and re-parse, no copy.
                events.append(adopt_json_event(item) if ctype == JSON else adopt_event(item))
            except EventFormatError as exc:
                raise EventFormatError(f"event {i}: {exc}") from None
        return events

    async def add_batch(self, request: Request) -> Response:
        p = await self._principal(request, "submitter")
        tenant = self._tenant(p)
        ctype = _media_type(request)
        if ctype not in (JSON, CBOR):
            raise UnsupportedMediaType("Content-Type must be application/json or application/cbor")
        body = await read_body(request, self.limits.max_batch_body)
        parsed = await off_loop(len(body), lambda: self._parse_batch(body, ctype))
        done, pub = await self.service.submit(
            tenant, [ev for ev, _ in parsed], encoded=[data for _, data in parsed]
        )
        answer = _BatchAnswer(
            pub.size,
            await self.api.note(pub),
            [
                _BatchResult(
                    s.eid,
                    s.index,
                    s.leaf_hash,
                    s.duplicate,
                    s.leaf,
                    s.nonce,
                    _stored_actor(s.actor),
                )
                for s in done
            ],
        )
        return Response(_answer_json.encode(answer), media_type=JSON)

    async def pseudonyms(self, request: Request) -> Response:
        p = await self._principal(request, "submitter")
        tenant = self._tenant(p)
        if _media_type(request) != JSON:
            raise UnsupportedMediaType("Content-Type must be application/json")
        doc = json_body(await read_body(request, MAX_PSEUDONYM_BODY))
        if type(doc) is not dict or set(doc) != {"refs"} or type(doc["refs"]) is not list:
            raise BadRequest('body must be {"refs": [{"rt": ..., "id": ...}, ...]}')
        if not doc["refs"]:
            raise BadRequest("no refs")
        if len(doc["refs"]) > self.limits.max_refs:
            raise PayloadTooLarge(f"more than {self.limits.max_refs} refs")
        refs: list[tuple[str, str]] = []
        for i, r in enumerate(doc["refs"]):
            if type(r) is not dict or set(r) != {"rt", "id"}:
                raise BadRequest(f"ref {i} must be {{'rt': ..., 'id': ...}}")
            rt = _text(r["rt"], f"refs[{i}].rt", 128)
            refs.append((rt, _text(r["id"], f"refs[{i}].id", 256)))
        pids = await self.service.pseudonyms(tenant, refs)
        return JSONResponse(
            {"refs": [{"rt": rt, "pid": b64(pid)} for (rt, _), pid in zip(refs, pids, strict=True)]}
        )

    async def whoami(self, request: Request) -> Response:
        """The calling token's role and tenant, so an adapter can refuse to start with a
        token of the wrong tenant or role instead of queueing events the log will refuse."""
        p = await self._principal(request, *ROLES)
        Query(request, set())
        return JSONResponse({"role": p.role, "tenant": p.tenant, "token_id": p.token_id})

    # -- reading -------------------------------------------------------------------------

    async def tenant_ref(self, request: Request) -> Response:
        p = await self._principal(request, "auditor")
        tenant = self._tenant(p)
        Query(request, set())
        return JSONResponse({"tenant": tenant, "tn": b64(self.service.tenant_ref(tenant))})

    def _found_json(self, f: Found, pub: Published, note: str) -> dict[str, Any]:
        out: dict[str, Any] = {"leaf": b64(f.leaf), "eid": f.eid}
        if f.event is None or f.nonce is None:
            out["erased"] = True
        else:
            out["event"] = json.loads(event_to_json(f.event))
            out["nonce"] = b64(f.nonce)
            if f.effect is not None:
                out["effect"] = f.effect  # derived by the log (effects.py); JSON values only
            if f.actor is not None:  # the event's actor is a pseudonym: its sealed actor
                if f.actor.actor is None or f.actor.an is None:
                    out["actor"] = {"unlinked": True}  # the actor was erased
                else:
                    out["actor"] = {
                        "actor": actor_to_json(f.actor.actor),
                        "nonce": b64(f.actor.an),
                    }
        out.update(self._receipt(f.index, f.leaf_hash, pub, note))
        del out["tlog_proof"]  # the proof is right there; keep pages small
        return out

    async def search(self, request: Request) -> Response:
        p = await self._principal(request, "auditor")
        tenant = self._tenant(p)
        names = {n for n in Filters.__dataclass_fields__} | {"limit", "cursor"}
        q = _Query(request, names)
        f = Filters(
            rid=q.text("rid"),
            req=q.text("req"),
            xid=q.text("xid"),
            ref=q.text("ref"),
            actor=q.text("actor"),
            action=q.text("action"),
            outcome=q.text("outcome"),
            ref_rt=q.text("ref_rt") or "User",
            since=q.uint("since") if q.has("since") else None,
            until=q.uint("until") if q.has("until") else None,
        )
        limit = q.uint("limit", self.limits.default_search_limit)
        if not 1 <= limit <= self.limits.max_search_limit:
            raise BadRequest(f"limit must be 1..{self.limits.max_search_limit}")
        cursor = q.blob("cursor", TS_KEY_SIZE)
        pub = self.api.log.latest
        note = await self.api.note(pub)

        def run() -> tuple[list[dict[str, Any]], bytes | None, dict[str, int]]:
            found, nxt = self.service.searcher.search(tenant, f, limit, cursor, pub)
            bodies = sum(1 for x in found if not x.erased)
            counts = {"results": len(found), "bodies": bodies, "erased": len(found) - bodies}
            return [self._found_json(x, pub, note) for x in found], nxt, counts

        results, nxt, counts = await self._read(run, "a SCIM search")
        # SCIM.md §5.1: every body read is itself logged, before the bodies leave.
        access, _ = await self.service.access.record(
            tenant,
            p,
            what="search",
            path="/v1/scim/events",
            query=[*f.items(), ("limit", str(limit))],
            counts=counts,
            req_id=request_id(request),
        )
        return JSONResponse(
            {
                "tree_size": pub.size,
                "checkpoint": note,
                "results": results,
                "next": None if nxt is None else b64(nxt),
                "access": {
                    "eid": access.eid,
                    "index": access.index,
                    "leaf_hash": b64(access.leaf_hash),
                },
            }
        )

    def _receipt_info_json(self, r: ReceiptInfo, pub: Published, note: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "eid": r.eid,
            "ts": r.ts,
            "leaf": b64(r.leaf),
            "leaf_hash": b64(r.leaf_hash),
            "erased": r.erased,
        }
        if r.index is None or r.index >= pub.size:
            out["pending"] = True
        else:
            out.update(self._receipt(r.index, r.leaf_hash, pub, note))
        return out

    async def receipts(self, request: Request) -> Response:
        p = await self._principal(request, "submitter", "auditor")
        tenant = self._tenant(p)
        q = _Query(request, {"eid", "req"})
        if q.has("eid") == q.has("req"):
            raise BadRequest("give exactly one of eid or req")
        eid = q.text("eid")
        req = q.text("req")
        wanted = None if eid is None else _eid(eid)
        pub = self.api.log.latest
        note = await self.api.note(pub)

        def run() -> list[dict[str, Any]]:
            infos = self.service.searcher.receipts(tenant, eid=wanted, req=req)
            return [self._receipt_info_json(r, pub, note) for r in infos]

        out = await self._read(run, "a SCIM receipts read")
        if eid is not None and not out:
            raise NotFound("no event with that eid for this tenant")
        if p.role == "auditor":
            await self.service.access.record(
                tenant,
                p,
                what="receipts",
                path="/v1/scim/receipts",
                query=[("eid", eid)] if eid is not None else [("req", req or "")],
                counts={"receipts": len(out)},
                req_id=request_id(request),
            )
        return JSONResponse({"tree_size": pub.size, "checkpoint": note, "receipts": out})

    # -- erasure, legal holds, retention (privacy officers) --------------------------------

    async def _erasure_json(self, st: ErasureStatus) -> dict[str, Any]:
        """What an officer sees: never whether the subject had keys or how much was erased
        (officers cannot read bodies; the counts are for the tenant's auditors)."""
        r = st.record
        out: dict[str, Any] = {
            "id": st.id,
            "state": r["state"],
            "tenant": r["tenant"],
            "rt": r["rt"],
            "kind": r["kind"],
            "reason": r["reason"],
            "kid_hash": b64(r["kid_hash"]),
            "requested_by": r["requested_by"],
            "requester": r.get("requester_name", ""),
            "created": r["created"],
            "expires": r["created"] + self.limits.erasure_ttl_ms,
        }
        for k, name in (("approved_by", "approved_by"), ("approver_name", "approver"),
                        ("done", "done")):  # fmt: skip
            if k in r:
                out[name] = r[k]
        if st.receipt is not None:
            out["receipt"] = await self._submitted(st.receipt, self.api.log.latest)
        if st.pending:
            out["event"] = "pending"
        return out

    async def _json_body(self, request: Request) -> dict[str, Any]:
        if _media_type(request) != JSON:
            raise UnsupportedMediaType("Content-Type must be application/json")
        doc = json_body(await read_body(request, MAX_SMALL_BODY))
        if type(doc) is not dict:
            raise BadRequest("body must be a JSON object")
        return doc

    @staticmethod
    def _subject(doc: dict[str, Any], optional: bool = False) -> SubjectId | None:
        ids = set(doc) & set(SUBJECT_KINDS)
        if not ids and optional and "rt" not in doc:
            return None
        if len(ids) != 1:
            raise BadRequest('name the subject with "rt" and one of "rid", "xid", "userName"')
        kind = ids.pop()
        return SubjectId(_text(doc.get("rt"), "rt", 128), kind, _text(doc[kind], kind, 1024))

    async def request_erasure(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        doc = await self._json_body(request)
        keys = set(doc)
        ids = keys & set(SUBJECT_KINDS)
        if len(ids) != 1 or keys - ids != {"tenant", "rt", "reason"}:
            raise BadRequest('body must be {"tenant", "rt", "rid"/"xid"/"userName", "reason"}')
        subject = self._subject(doc)
        assert subject is not None
        tenant = _text(doc["tenant"], "tenant", 256)
        reason = _text(doc["reason"], "reason", 64)
        st = await self.service.erasures.request(p, tenant, subject, reason, request_id(request))
        return JSONResponse(await self._erasure_json(st), status_code=_direct_status(st, 201))

    async def list_erasures(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        q = _Query(request, {"state"})
        state = q.text("state") or "pending"
        if state not in ("pending", "all"):
            raise BadRequest("state must be pending or all")
        found = await self._read(
            lambda: self.service.erasures.requests(p, all_states=state == "all"),
            "a read of erasure requests",
        )
        return JSONResponse({"erasures": [await self._erasure_json(st) for st in found]})

    def _request_id_param(self, request: Request) -> str:
        rid = request.path_params["id"]
        if not isinstance(rid, str):
            raise NotFound("no such erasure request")
        return rid

    async def erasure(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        Query(request, set())
        rid = self._request_id_param(request)
        st = await self._read(
            lambda: self.service.erasures.status(p, rid), "a read of an erasure request"
        )
        return JSONResponse(await self._erasure_json(st))

    async def approve_erasure(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        body = await read_body(request, MAX_SMALL_BODY)
        if body.strip() and json_body(body) != {}:
            raise BadRequest("approval takes no body (or {})")
        st = await self.service.erasures.approve(
            p, self._request_id_param(request), request_id(request)
        )
        return JSONResponse(await self._erasure_json(st), status_code=_direct_status(st, 200))

    async def certificate(self, request: Request) -> Response:
        """The erasure certificate (docs/api.md): the approval event, its nonce, its leaf and
        a tlog-proof against the latest checkpoint. No personal data."""
        p = await self._principal(request, "privacy-officer")
        Query(request, set())
        rid = self._request_id_param(request)
        pub = self.api.log.latest
        note = await self.api.note(pub)

        def run() -> dict[str, Any]:
            c = self.service.erasures.certificate(p, rid)
            return {
                "type": "tlog-erasure-certificate/v1",
                "request": c.request,
                "origin": self.api.log.origin,
                "event": json.loads(event_to_json(c.event)),
                "nonce": b64(c.nonce),
                "leaf": b64(c.leaf),
                **self._receipt(c.index, c.leaf_hash, pub, note),
            }

        return JSONResponse(await self._read(run, "an erasure certificate read"))

    async def _hold_json(self, h: Hold) -> dict[str, Any]:
        r = h.record
        out: dict[str, Any] = {
            "id": h.id,
            "tenant": r["tenant"],
            "scope": r["scope"],
            "reason": r["reason"],
            "by": r["by"],
            "person": r.get("person", ""),
            "created": r["created"],
        }
        if "rt" in r:
            out.update(rt=r["rt"], kind=r["kind"])
        if "released" in r:
            out["released"] = r["released"]
        if h.receipt is not None:
            out["receipt"] = await self._submitted(h.receipt, self.api.log.latest)
        if h.pending:
            out["event"] = "pending"
        return out

    async def place_hold(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        doc = await self._json_body(request)
        allowed = {"tenant", "reason", "rt", *SUBJECT_KINDS}
        if not {"tenant", "reason"} <= set(doc) or set(doc) - allowed:
            raise BadRequest('body must be {"tenant", "reason"[, "rt", "rid"/"xid"/"userName"]}')
        subject = self._subject(doc, optional=True)
        tenant = _text(doc["tenant"], "tenant", 256)
        reason = _text(doc["reason"], "reason", 64)
        hold = await self.service.erasures.place_hold(
            p, tenant, subject, reason, request_id(request)
        )
        return JSONResponse(await self._hold_json(hold), status_code=_direct_status(hold, 201))

    async def list_holds(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        Query(request, set())
        holds = await self._read(lambda: self.service.erasures.holds(p), "a read of legal holds")
        return JSONResponse({"holds": [await self._hold_json(h) for h in holds]})

    async def release_hold(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        hold = await self.service.erasures.release_hold(
            p, self._request_id_param(request), request_id(request)
        )
        return JSONResponse(await self._hold_json(hold), status_code=_direct_status(hold, 200))

    async def put_retention(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer")
        doc = await self._json_body(request)
        if set(doc) != {"tenant", "days"} or type(doc["days"]) is not int:
            raise BadRequest('body must be {"tenant": ..., "days": <30..3653>}')
        tenant = _text(doc["tenant"], "tenant", 256)
        rec = await self.service.erasures.set_retention(p, tenant, doc["days"], request_id(request))
        out = {"tenant": tenant, "days": rec["days"], "set": rec["set"]}
        if rec["pending"]:
            out["event"] = "pending"
        return JSONResponse(out, status_code=202 if rec["pending"] else 200)

    async def get_retention(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer", "admin")
        q = _Query(request, {"tenant"})
        tenant = q.text("tenant")
        if tenant is None:
            raise BadRequest("give tenant")
        rec = await self._read(
            lambda: self.service.erasures.retention(p, tenant), "a retention read"
        )
        if rec is None:
            return JSONResponse({"tenant": tenant, "days": None})
        return JSONResponse(
            {"tenant": tenant, "days": rec["days"], "set": rec["set"], "until": rec.get("until")}
        )

    async def expire(self, request: Request) -> Response:
        p = await self._principal(request, "privacy-officer", "admin")
        body = await read_body(request, MAX_SMALL_BODY)
        doc = json_body(body) if body.strip() else {}
        if type(doc) is not dict or set(doc) - {"tenant"}:
            raise BadRequest('body must be {} or {"tenant": ...}')
        tenant = None if "tenant" not in doc else _text(doc["tenant"], "tenant", 256)
        results = await self.service.erasures.expire(p, tenant)
        return JSONResponse(
            {
                "results": [
                    {
                        "tenant": r.tenant,
                        "before": r.before,
                        "events": r.events,
                        "deks": r.deks,
                        "held": r.held,
                        **(
                            {}
                            if r.receipt is None
                            else {"eid": r.receipt.eid, "index": r.receipt.index}
                        ),
                    }
                    for r in results
                ]
            }
        )


def scim_routes(service: ScimService, api: Api) -> list[Endpoint]:
    """The SCIM rows of the routing table (:class:`tlog.http.Endpoint`) over ``api`` (the
    log's, given to :func:`tlog.app.create_app` too), for its ``extra_routes``. A single
    event's ``POST`` is hot (answered before Starlette's router, like ``POST /v1/entries``):
    its handler uses only the scope, ``receive`` and the path parameters."""
    r = ScimRoutes(service, api)
    rows = [
        ("POST", "/v1/scim/events", r.add_event),
        ("GET", "/v1/scim/events", r.search),
        ("POST", "/v1/scim/events/batch", r.add_batch),
        ("GET", "/v1/scim/receipts", r.receipts),
        ("GET", "/v1/scim/tenant-ref", r.tenant_ref),
        ("POST", "/v1/scim/pseudonyms", r.pseudonyms),
        ("GET", "/v1/scim/whoami", r.whoami),
        ("POST", "/v1/scim/erasures", r.request_erasure),
        ("GET", "/v1/scim/erasures", r.list_erasures),
        ("GET", "/v1/scim/erasures/{id}", r.erasure),
        ("POST", "/v1/scim/erasures/{id}/approve", r.approve_erasure),
        ("GET", "/v1/scim/erasures/{id}/certificate", r.certificate),
        ("POST", "/v1/scim/holds", r.place_hold),
        ("GET", "/v1/scim/holds", r.list_holds),
        ("POST", "/v1/scim/holds/{id}/release", r.release_hold),
        ("PUT", "/v1/scim/retention", r.put_retention),
        ("GET", "/v1/scim/retention", r.get_retention),
        ("POST", "/v1/scim/expire", r.expire),
    ]
    return [
        Endpoint(m, path, h, hot=(m, path) == ("POST", "/v1/scim/events")) for m, path, h in rows
    ]


def _direct_status(done: ErasureStatus | Hold, new: int) -> int:
    """The status of an officer's direct write (faith30): 202 when it is done and its event
    is pending (the log stopped signing, or the sequencing failed, after the commit: the
    event reaches the log from its ``Q`` record; before, 503 for a write that happened),
    200 for a retry answered with the state of the write it repeats, else ``new``."""
    if done.pending:
        return 202
    return 200 if done.again else new
