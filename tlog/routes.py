"""The log API's routes: submission, the tlog-tiles read API, JSON proofs, liveness.

:class:`Api` holds the handlers and their routing table (:meth:`Api.endpoints`); the app
factory (:mod:`tlog.app`) turns that table into the fast ASGI dispatch, Starlette's routes
and the OpenAPI operations. Every proof answer carries the signed checkpoint it is relative
to, as handed out by the published state (:mod:`tlog.published`: the same code with or
without witnesses). Errors map to status codes in one place (:data:`tlog.errors.ERRORS`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from client.formats.checkpoint import parse_decimal
from client.formats.merkle import LEAF_PREFIX
from client.formats.note import FormatError, b64decode_strict
from client.formats.proof_bundle import TlogProof
from client.formats.tiles import parse_tile_path
from client.runtime.logredact import redact_target
from client.scim.leaf import RawEntryError, check_raw_entry, is_structured_entry
from tlog.auth import AuthError, Forbidden, Principal, TokenStore
from tlog.bodies import BodyTooLarge, MalformedBody, check_json_shape, off_loop
from tlog.errors import BadRequest, PayloadTooLarge
from tlog.http import (
    MAX_INDEX,
    Endpoint,
    Limits,
    Query,
    Scoped,
    b64,
    header,
    read_asgi_body,
    read_body,
)
from tlog.log import Log, NotFound, Published
from tlog.published import PublishedState, Solo
from tlog.reads import ReadPool
from tlog.sequencer import Sequencer

__all__ = ["Api"]

log = logging.getLogger("tlog.http")


class Api:
    """The handlers of the log API; :meth:`endpoints` is its routing table."""

    def __init__(
        self,
        log_: Log,
        sequencer: Sequencer,
        tokens: TokenStore,
        limits: Limits,
        published: PublishedState | None = None,
        reads: ReadPool | None = None,
    ) -> None:
        self.log = log_
        self.seq = sequencer
        self.tokens = tokens
        self.limits = limits
        # What is handed out (the checkpoint, each note, what is cosigned): tlog.published.
        self.published: PublishedState = published or Solo(log_)
        # Nothing on the event loop touches the store (tlog.reads): what memory cannot
        # answer runs here, and a stalled store answers 503 after reads.timeout seconds.
        self.reads = reads or ReadPool()
        self._note_cache: dict[str, str] = {}

    def endpoints(self) -> list[Endpoint]:
        """The log API's routing table, hot paths first (:mod:`tlog.app` derives the fast
        dispatch, the Starlette routes and the OpenAPI operations from it)."""
        return [
            Endpoint("GET", "/tile/{path:path}", self.tile, hot=True),
            Endpoint("POST", "/v1/entries", self.add_entry, hot=True),
            Endpoint("GET", "/v1/proof/inclusion", self.inclusion, hot=True),
            Endpoint("GET", "/checkpoint", self.checkpoint),
            Endpoint("GET", "/healthz", self.healthz),
            Endpoint("POST", "/v1/entries/batch", self.add_batch),
            Endpoint("GET", "/v1/proof/consistency", self.consistency),
            Endpoint("GET", "/v1/log", self.log_info),
            Endpoint("GET", "/v1/entries/{index}", self.get_entry),
            Endpoint("GET", "/v1/bundle/{index}", self.bundle),
            Endpoint("GET", "/v1/witnesses", self.witnesses),
        ]

    # -- helpers -------------------------------------------------------------------------

    async def note(self, pub: Published) -> str:
        """The note handed out for ``pub`` (with witnesses, its cosignatures: a read)."""
        note = self.published.cached_note(pub)
        if note is None:
            note = await self.reads.run(lambda: self.note_for(pub), "a cosignature read")
        return note

    def note_for(self, pub: Published) -> str:
        """:meth:`note`, blocking (a store read with witnesses): off the event loop."""
        return self.published.note_for(pub)

    async def _json_note(self, pub: Published) -> str:
        """JSON string of the (cosigned) note for ``pub``, cached for the latest sizes."""
        note = await self.note(pub)
        got = self._note_cache.get(note)
        if got is None:
            if len(self._note_cache) > 64:
                self._note_cache.clear()
            got = self._note_cache[note] = json.dumps(note, ensure_ascii=False)
        return got

    def _refused(self, scope: Scope, exc: Exception) -> None:
        # The reason and the token's id at most (never the token); the path redacted.
        log.warning(
            "refused %s %s: %s",
            scope.get("method"),
            redact_target(str(scope.get("path", ""))),
            exc,
        )

    def principal(self, request: Request | Scoped, *roles: str) -> Principal:
        """The caller, with one of ``roles``: from the token cache, else a storage read."""
        authorization = header(request.scope, b"authorization")
        try:
            p = self.tokens.cached(authorization) or self.tokens.authenticate(authorization)
            p.require(*roles)
        except (AuthError, Forbidden) as exc:
            self._refused(request.scope, exc)
            raise
        return p

    async def authenticate(self, request: Request | Scoped, *roles: str) -> Principal:
        """:meth:`principal`, answered on the event loop while the token is cached
        (:mod:`tlog.auth`), else off it (a token is a storage read)."""
        scope = request.scope
        try:
            p = self.tokens.cached(header(scope, b"authorization"))
            if p is not None:
                p.require(*roles)
                return p
        except (AuthError, Forbidden) as exc:
            self._refused(scope, exc)
            raise
        return await self.reads.run(lambda: self.principal(request, *roles), "a token lookup")

    async def checkpoint_for(self, q: Query) -> Published:
        """The checkpoint a proof request is for: ``tree_size``, else the latest."""
        latest = self.log.latest
        if not q.has("tree_size"):
            return latest
        size = q.uint("tree_size")
        if size > latest.size:
            raise BadRequest(f"tree_size {size} is beyond the log's size {latest.size}")
        pub = self.log.cached_checkpoint_note(size)
        if pub is None:
            pub = await self.reads.run(lambda: self.log.checkpoint_note(size), "a checkpoint read")
        return pub

    async def inclusion_proof(self, index: int, size: int, leaf: bytes | None) -> list[bytes]:
        proof = self.log.cached_inclusion_proof(index, size, leaf)
        if proof is None:
            proof = await self.reads.run(
                lambda: self.log.inclusion_proof(index, size, leaf), "a proof read"
            )
        return proof

    # -- write ---------------------------------------------------------------------------

    async def add_entry(self, request: Scoped | Request) -> Response:
        scope = request.scope
        receive = request.receive
        await self.authenticate(request, "submitter")
        body = await read_asgi_body(scope, receive, self.limits.max_entry_bytes)
        if not body:
            raise BadRequest("empty entry")
        check_raw_entry(body)  # the CBOR-map space is the log's own (SCIM leaves)
        res = await self.seq.submit([body], [hashlib.sha256(LEAF_PREFIX + body).digest()])
        pub = res.checkpoint
        index = res.indices[0]
        proof = await self.inclusion_proof(index, pub.size, res.leaf_hashes[0])
        note = await self.note(pub)
        bundle = TlogProof(index, tuple(proof), note).format()
        hashes = ",".join(f'"{b64(h)}"' for h in proof)
        dup = "true" if res.duplicates[0] else "false"
        # Assembled directly (hot path); the same JSON as JSONResponse would make.
        out = (
            f'{{"index":{index},"leaf_hash":"{b64(res.leaf_hashes[0])}","duplicate":{dup},'
            f'"tree_size":{pub.size},"checkpoint":{await self._json_note(pub)},'
            f'"inclusion_proof":[{hashes}],"tlog_proof":{json.dumps(bundle, ensure_ascii=False)}}}'
        )
        return Response(out.encode(), media_type="application/json")

    async def add_batch(self, request: Request) -> Response:
        await self.authenticate(request, "submitter")
        body = await read_body(request, self.limits.max_batch_body_bytes)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        entries, hashes = await off_loop(len(body), lambda: self._parse_batch(body, ctype))
        res = await self.seq.submit(entries, hashes)
        pub = res.checkpoint
        return JSONResponse(
            {
                "tree_size": pub.size,
                "checkpoint": await self.note(pub),
                "indices": res.indices,
                "duplicates": [i for i, d in enumerate(res.duplicates) if d],
            }
        )

    def _parse_batch(self, body: bytes, ctype: str) -> tuple[list[bytes], list[bytes]]:
        """The entries of a batch body and their leaf hashes (hashed here, on the decoding
        thread, so that the writer thread does not)."""
        lim = self.limits
        entries: list[bytes] = []
        if ctype == "application/json":
            # {"entries": [...]}: two levels, one element per entry plus the two containers;
            # checked before json.loads builds anything.
            try:
                check_json_shape(body, max_items=lim.max_batch_entries + 1, max_depth=2)
            except MalformedBody:
                raise BadRequest('body must be {"entries": [<base64>, ...]}') from None
            except BodyTooLarge:
                raise PayloadTooLarge(f"more than {lim.max_batch_entries} entries") from None
            try:
                doc = json.loads(body)
            except RecursionError:  # pragma: no cover - the shape check bounds the depth
                raise BadRequest("body is nested too deeply") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"body is not JSON: {exc}") from None
            if (
                not isinstance(doc, dict)
                or set(doc) != {"entries"}
                or not isinstance(doc["entries"], list)
            ):
                raise BadRequest('body must be {"entries": [<base64>, ...]}')
            if len(doc["entries"]) > lim.max_batch_entries:
                raise PayloadTooLarge(f"more than {lim.max_batch_entries} entries")
            for i, e in enumerate(doc["entries"]):
                if not isinstance(e, str):
                    raise BadRequest(f"entry {i} is not a base64 string")
                try:
                    entries.append(b64decode_strict(e))
                except FormatError as exc:
                    raise BadRequest(f"entry {i}: {exc}") from None
        elif ctype in ("application/octet-stream", ""):
            # tlog-tiles entry bundle encoding: uint16_be(length) || entry, repeated.
            pos, n = 0, len(body)
            mv = memoryview(body)
            while pos < n:
                if pos + 2 > n:
                    raise BadRequest("truncated length prefix")
                ln = (body[pos] << 8) | body[pos + 1]
                pos += 2
                if pos + ln > n:
                    raise BadRequest(f"entry {len(entries)} is truncated")
                entries.append(bytes(mv[pos : pos + ln]))
                pos += ln
                if len(entries) > lim.max_batch_entries:
                    raise PayloadTooLarge(f"more than {lim.max_batch_entries} entries")
        else:
            raise BadRequest("Content-Type must be application/octet-stream or application/json")
        if not entries:
            raise BadRequest("empty batch")
        for i, e in enumerate(entries):
            if not e:
                raise BadRequest(f"entry {i} is empty")
            if is_structured_entry(e):
                raise BadRequest(f"entry {i}: {RawEntryError.__doc__}; wrap or prefix it")
            if len(e) > lim.max_entry_bytes:
                raise PayloadTooLarge(f"entry {i} is larger than {lim.max_entry_bytes} bytes")
        sha256 = hashlib.sha256
        return entries, [sha256(LEAF_PREFIX + e).digest() for e in entries]

    # -- liveness --------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """Liveness: the event loop answers. Touches no storage, takes no lock, no auth."""
        return Response(
            b'{"status":"ok"}', media_type="application/json", headers={"Cache-Control": "no-store"}
        )

    # -- tlog-tiles ------------------------------------------------------------------------

    async def checkpoint(self, request: Request) -> Response:
        return Response(
            self.published.checkpoint(),
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def tile(self, request: Scoped | Request) -> Response:
        path: str = request.path_params["path"]
        accept_encoding = header(request.scope, b"accept-encoding") or ""
        try:
            t = parse_tile_path("tile/" + path)
        except FormatError as exc:
            raise NotFound(f"no such tile: {exc}") from None
        size = self.log.latest.size
        if t.is_entries:
            gz = "gzip" in accept_encoding

            def bundle() -> bytes:
                data = self.log.entry_bundle(t.index, t.width, size)
                # Compressed on the pool thread too: up to 16 MiB is no job for the loop.
                return gzip.compress(data, compresslevel=1, mtime=0) if gz else data

            data = await self.reads.run(bundle, "an entry bundle read")
            headers = {"Cache-Control": "public, max-age=31536000, immutable"}
            if gz:
                headers["Content-Encoding"] = "gzip"
                headers["Vary"] = "Accept-Encoding"
            return Response(data, media_type="application/octet-stream", headers=headers)
        got = self.log.cached_hash_tile(t.level, t.index, t.width, size)
        if got is None:
            got = await self.reads.run(
                lambda: self.log.hash_tile(t.level, t.index, t.width, size), "a tile read"
            )
        data = got
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    # -- JSON proofs -----------------------------------------------------------------------

    async def log_info(self, request: Request) -> Response:
        Query(request, set())
        latest = self.log.latest
        return JSONResponse(
            {
                "origin": self.log.origin,
                "vkey": self.log.vkey,
                "tree_size": latest.size,
                "checkpoint": self.published.checkpoint(),
                "limits": {
                    "max_entry_bytes": self.limits.max_entry_bytes,
                    "max_batch_entries": self.limits.max_batch_entries,
                    "max_batch_body_bytes": self.limits.max_batch_body_bytes,
                    "max_backlog": self.seq.max_backlog,
                },
            }
        )

    async def inclusion(self, request: Scoped | Request) -> Response:
        q = Query(request, {"index", "leaf_hash", "tree_size"})
        pub = await self.checkpoint_for(q)
        if q.has("index") == q.has("leaf_hash"):
            raise BadRequest("give exactly one of index or leaf_hash")
        if q.has("index"):
            index = q.uint("index")
            leaf = None
            if index >= pub.size:
                raise BadRequest(f"index {index} is not below tree_size {pub.size}")
        else:
            leaf = q.hash("leaf_hash")
            found = await self.reads.run(lambda: self.log.index_of(leaf), "a leaf hash lookup")
            if found is None or found >= pub.size:
                raise NotFound("no entry with that leaf hash in the tree of that size")
            index = found
        proof = await self.inclusion_proof(index, pub.size, leaf)
        # The same JSON JSONResponse would make, assembled directly (hot path): base64 and
        # decimals need no escaping; the note is encoded by json.
        hashes = ",".join(f'"{b64(h)}"' for h in proof)
        extra = "" if leaf is None else f',"leaf_hash":"{b64(leaf)}"'
        body = (
            f'{{"index":{index},"tree_size":{pub.size},"inclusion_proof":[{hashes}],'
            f'"checkpoint":{await self._json_note(pub)}{extra}}}'
        )
        return Response(body.encode(), media_type="application/json")

    async def consistency(self, request: Request) -> Response:
        q = Query(request, {"old_size", "tree_size"})
        pub = await self.checkpoint_for(q)
        old = q.uint("old_size")
        if old > pub.size:
            raise BadRequest(f"old_size {old} is larger than tree_size {pub.size}")
        proof = self.log.cached_consistency_proof(old, pub.size)
        if proof is None:
            proof = await self.reads.run(
                lambda: self.log.consistency_proof(old, pub.size), "a proof read"
            )
        return JSONResponse(
            {
                "old_size": old,
                "tree_size": pub.size,
                "consistency_proof": [b64(h) for h in proof],
                "checkpoint": await self.note(pub),
            }
        )

    def _index(self, request: Request) -> int:
        if request.path_params["index"] == "batch":  # GET /v1/entries/batch
            raise HTTPException(405, headers={"Allow": "POST"})
        try:
            return parse_decimal(request.path_params["index"], what="index", maximum=MAX_INDEX)
        except FormatError as exc:
            raise BadRequest(str(exc)) from None

    async def get_entry(self, request: Request) -> Response:
        Query(request, set())
        index = self._index(request)
        return Response(
            await self.reads.run(lambda: self.log.entry(index), "an entry read"),
            media_type="application/octet-stream",
            headers={"Cache-Control": "public, max-age=31536000, immutable"},
        )

    async def bundle(self, request: Request) -> Response:
        q = Query(request, {"tree_size"})
        index = self._index(request)
        pub = await self.checkpoint_for(q)
        c = self.published.cosigned
        if not q.has("tree_size") and c is not None and index < c.size:
            # Prefer the newest cosigned checkpoint that covers the entry.
            size = c.size
            got = self.log.cached_checkpoint_note(size)
            if got is None:
                got = await self.reads.run(
                    lambda: self.log.checkpoint_note(size), "a checkpoint read"
                )
            pub = got
        if index >= pub.size:
            raise NotFound(f"index {index} is not below tree size {pub.size}")
        proof = await self.inclusion_proof(index, pub.size, None)
        text = TlogProof(index, tuple(proof), await self.note(pub)).format()
        return Response(
            text,
            media_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'inline; filename="{index}.tlog-proof"'},
        )

    async def witnesses(self, request: Request) -> Response:
        Query(request, set())
        status = self.published.status()
        if status is None:
            raise NotFound("this log has no witness policy")
        return JSONResponse(status)
