"""HTTP API (Starlette): submission, tlog-tiles read API, JSON proofs.

Every proof answer carries the signed checkpoint it is relative to. Errors are JSON
``{"error": "<reason>"}`` and are mapped to status codes in one place (:data:`tlog.errors.ERRORS`);
malformed input is always a 4xx.
"""

from __future__ import annotations

import binascii
import contextlib
import gzip
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from client.formats.checkpoint import parse_decimal
from client.formats.merkle import LEAF_PREFIX
from client.formats.note import FormatError, b64decode_strict
from client.formats.proof_bundle import TlogProof
from client.formats.tiles import MAX_ENTRY_SIZE, parse_tile_path
from client.runtime.logredact import redact_target
from client.scim.leaf import RawEntryError, check_raw_entry, is_structured_entry
from tlog.auth import AuthError, Forbidden, Principal, TokenStore
from tlog.bodies import BodyTooLarge, MalformedBody, check_json_shape, off_loop
from tlog.errors import (
    BadRequest,
    PayloadTooLarge,
    error_response,
    json_errors,
)
from tlog.log import Log, NotFound, Published
from tlog.reads import ReadPool
from tlog.sequencer import Sequencer
from tlog.witnessing import WitnessPusher

__all__ = ["Limits", "create_app"]

log = logging.getLogger("tlog.http")

MAX_INDEX = (1 << 63) - 1


@dataclass(frozen=True)
class Limits:
    """Request limits. All are enforced before any work is queued."""

    max_entry_bytes: int = MAX_ENTRY_SIZE  # tlog-tiles entry bundles cap entries at 65,535
    max_batch_entries: int = 10_000  # per POST /v1/entries/batch
    max_batch_body_bytes: int = 16 << 20
    max_query_length: int = 2048


def b64(h: bytes) -> str:
    return binascii.b2a_base64(h, newline=False).decode("ascii")


class Scoped:
    """Just an ASGI scope, where a handler needs no more of a request (the fast paths)."""

    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope


class Query:
    """Strict query-string access: no repeated or unknown parameters."""

    def __init__(self, request: Request | Scoped, allowed: set[str]) -> None:
        # Parsed straight from the raw query string: this is on every proof request, and
        # building Starlette's URL and QueryParams objects costs more than the proof.
        raw: bytes = request.scope.get("query_string", b"")
        if len(raw) > 2048:
            raise BadRequest("query string too long")
        q: dict[str, str] = {}
        for part in raw.split(b"&") if raw else ():
            if not part:
                continue
            k_b, _, v_b = part.partition(b"=")
            try:
                k, v = k_b.decode("ascii"), v_b.decode("ascii")
                if "%" in k or "+" in k:
                    k = unquote_plus(k, errors="strict")
                if "%" in v or "+" in v:
                    v = unquote_plus(v, errors="strict")
            except UnicodeDecodeError:
                raise BadRequest("query string is not ASCII or not UTF-8") from None
            if k not in allowed:
                raise BadRequest(f"unknown query parameter {k!r}")
            if k in q:
                raise BadRequest(f"query parameter {k!r} given twice")
            q[k] = v
        self._q = q

    def has(self, name: str) -> bool:
        return name in self._q

    def uint(self, name: str, default: int | None = None) -> int:
        v = self._q.get(name)
        if v is None:
            if default is None:
                raise BadRequest(f"missing query parameter {name!r}")
            return default
        try:
            return parse_decimal(v, what=name, maximum=MAX_INDEX)
        except FormatError as exc:
            raise BadRequest(str(exc)) from None

    def hash(self, name: str) -> bytes:
        v = self._q.get(name)
        if v is None:
            raise BadRequest(f"missing query parameter {name!r}")
        try:
            return b64decode_strict(v, size=32)
        except FormatError as exc:
            raise BadRequest(f"{name}: {exc}") from None


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case) in an ASGI scope."""
    for k, v in scope["headers"]:
        if k == name:
            return bytes(v).decode("latin-1")
    return None


async def read_body(request: Request, limit: int) -> bytes:
    return await read_asgi_body(request.scope, request.receive, limit)


async def read_asgi_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (by Content-Length or counted)."""
    cl = header(scope, b"content-length")
    if cl is not None:
        if not cl.isdigit():
            raise BadRequest("bad Content-Length")
        if int(cl) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    chunks = []
    n = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected")
        chunk = message.get("body", b"")
        n += len(chunk)
        if n > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class Api:
    def __init__(
        self,
        log_: Log,
        sequencer: Sequencer,
        tokens: TokenStore,
        limits: Limits,
        pusher: WitnessPusher | None = None,
        reads: ReadPool | None = None,
    ) -> None:
        self.log = log_
        self.seq = sequencer
        self.tokens = tokens
        self.limits = limits
        self.pusher = pusher
        # Nothing on the event loop touches the store (tlog.reads): what memory cannot
        # answer runs here, and a stalled store answers 503 after reads.timeout seconds.
        self.reads = reads or ReadPool()
        self._note_cache: dict[str, str] = {}
        # With witnesses, GET /checkpoint is the newest cosigned checkpoint and every note
        # handed out carries the cosignatures gathered for its size.
        self.checkpoint_source: Callable[[], str] = (
            pusher.checkpoint if pusher is not None else (lambda: self.log.latest.note)
        )
        self.note_for: Callable[[Published], str] = (
            pusher.note_for if pusher is not None else (lambda p: p.note)
        )

    # -- helpers -------------------------------------------------------------------------

    async def note(self, pub: Published) -> str:
        """The note handed out for ``pub``: with witnesses, its cosignatures (a read)."""
        if self.pusher is None:
            return pub.note
        return await self.reads.run(lambda: self.note_for(pub), "a cosignature read")

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

    async def published(self, q: Query) -> Published:
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

    async def add_entry(self, request: Request) -> Response:
        return await self.add_entry_asgi(request.scope, request.receive)

    async def add_entry_asgi(self, scope: Scope, receive: Receive) -> Response:
        await self.authenticate(Scoped(scope), "submitter")
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
            self.checkpoint_source(),
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def tile(self, request: Request) -> Response:
        return await self.tile_response(
            request.path_params["path"], request.headers.get("accept-encoding", "")
        )

    async def tile_response(self, path: str, accept_encoding: str) -> Response:
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
                "checkpoint": self.checkpoint_source(),
                "limits": {
                    "max_entry_bytes": self.limits.max_entry_bytes,
                    "max_batch_entries": self.limits.max_batch_entries,
                    "max_batch_body_bytes": self.limits.max_batch_body_bytes,
                    "max_backlog": self.seq.max_backlog,
                },
            }
        )

    async def inclusion(self, request: Request | Scoped) -> Response:
        q = Query(request, {"index", "leaf_hash", "tree_size"})
        pub = await self.published(q)
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
        pub = await self.published(q)
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
        pub = await self.published(q)
        pusher = self.pusher
        if not q.has("tree_size") and pusher is not None:
            # Prefer the newest cosigned checkpoint that covers the entry.
            c = pusher.cosigned
            if c is not None and index < c.size:
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
        if self.pusher is None:
            raise NotFound("this log has no witness policy")
        return JSONResponse(self.pusher.status())


def route_operations(routes: list[Any]) -> set[tuple[str, str]]:
    """(OpenAPI path, lower-case method) of every route, HEAD left out (it follows GET)."""
    ops: set[tuple[str, str]] = set()
    for r in routes:
        if isinstance(r, Route):
            path = r.path.replace(":path}", "}")
            ops.update((path, m.lower()) for m in (r.methods or ()) if m != "HEAD")
    return ops


def _one_route_per_path(routes: list[Any]) -> list[Any]:
    """Routes on one path with different methods, merged into one route per path.

    Starlette answers a wrong method with the ``Allow`` of the first route whose path
    matches; merged, a 405 names every method the path has (RFC 9110 §15.5.6).
    """
    by_path: dict[str, list[Route]] = {}
    for r in routes:
        if isinstance(r, Route):
            by_path.setdefault(r.path, []).append(r)
    out: list[Any] = []
    for r in routes:
        if not isinstance(r, Route):
            out.append(r)
            continue
        group = by_path.get(r.path)
        if group is None:
            continue  # already merged into the first route of its path
        del by_path[r.path]
        if len(group) == 1:
            out.append(r)
            continue
        handlers: dict[str, Callable[[Request], Any]] = {}
        for g in group:
            for m in g.methods or ():
                handlers.setdefault(m, g.endpoint)

        async def dispatch(request: Request, handlers: dict[str, Any] = handlers) -> Response:
            return await handlers[request.method](request)  # type: ignore[no-any-return]

        out.append(Route(r.path, dispatch, methods=sorted(handlers)))
    return out


def _openapi_endpoint(routes: list[Any]) -> Callable[[Request], Any]:
    """GET /openapi.json: the description of the routes this app has (tlog.openapi)."""
    from tlog.openapi import openapi

    doc = openapi()
    have = route_operations(routes) | {("/openapi.json", "get")}
    paths = {}
    for path, item in doc["paths"].items():
        kept = {m: op for m, op in item.items() if (path, m) in have}
        if kept:
            paths[path] = kept
    doc["paths"] = paths
    body = json.dumps(doc, separators=(",", ":")).encode()

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type="application/json")

    return endpoint


class LogApp:
    """The ASGI app: the hottest requests answered before Starlette's router.

    ``GET /v1/proof/inclusion``, ``GET /tile/...`` and ``POST /v1/entries`` are most of a
    busy log's traffic; they need nothing of Starlette's request object, routing or
    middleware, which cost more than a tile read. Their handlers and error mapping are the
    same ones the routes use, and every other request (HEAD included) goes to Starlette.
    """

    def __init__(self, app: Starlette, api: Api) -> None:
        self.app = app
        self.api = api
        self.state = app.state
        # (scope, status, seconds) after each HTTP request (tlog.metrics).
        self.observe: Callable[[Scope, int, float], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observe = self.observe
        t0 = time.perf_counter()
        response = await self._fast(scope, receive)
        if response is not None:
            # The fast paths know their status: no wrapper around send (hot path).
            try:
                await response(scope, receive, send)
            finally:
                if observe is not None:
                    observe(scope, response.status_code, time.perf_counter() - t0)
            return
        if observe is None:
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            observe(scope, status, time.perf_counter() - t0)

    async def _fast(self, scope: Scope, receive: Receive) -> Response | None:
        """The response of a hot path, or None for everything else (Starlette's router)."""
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if method == "GET":
                if path == "/v1/proof/inclusion":
                    return await self.api.inclusion(Scoped(scope))
                if path.startswith("/tile/") and len(path) < 200:
                    accept = header(scope, b"accept-encoding") or ""
                    return await self.api.tile_response(path[6:], accept)
            elif method == "POST" and path == "/v1/entries":
                return await self.api.add_entry_asgi(scope, receive)
        except Exception as exc:
            return error_response(exc)
        return None


def create_app(
    log_: Log,
    sequencer: Sequencer,
    tokens: TokenStore,
    limits: Limits | None = None,
    *,
    pusher: WitnessPusher | None = None,
    reads: ReadPool | None = None,
    extra_routes: list[Route] | None = None,
    on_startup: list[Callable[[], Any]] | None = None,
    on_shutdown: list[Callable[[], Any]] | None = None,
    api: Api | None = None,
) -> LogApp:
    # ``api``: built by the caller when its extra routes need it (they get it explicitly,
    # not through request.app.state); it must be over the same log, sequencer and tokens.
    if api is None:
        api = Api(log_, sequencer, tokens, limits or Limits(), pusher, reads)
    routes = [
        # Hot paths first: Starlette tries routes in order.
        Route("/tile/{path:path}", json_errors(api.tile), methods=["GET"]),
        Route("/v1/entries", json_errors(api.add_entry), methods=["POST"]),
        Route("/v1/proof/inclusion", json_errors(api.inclusion), methods=["GET"]),
        Route("/checkpoint", json_errors(api.checkpoint), methods=["GET"]),
        Route("/healthz", json_errors(api.healthz), methods=["GET"]),
        Route("/v1/entries/batch", json_errors(api.add_batch), methods=["POST"]),
        Route("/v1/proof/consistency", json_errors(api.consistency), methods=["GET"]),
        Route("/v1/log", json_errors(api.log_info), methods=["GET"]),
        Route("/v1/entries/{index}", json_errors(api.get_entry), methods=["GET"]),
        Route("/v1/bundle/{index}", json_errors(api.bundle), methods=["GET"]),
        Route("/v1/witnesses", json_errors(api.witnesses), methods=["GET"]),
        *(extra_routes or []),
    ]
    from tlog.ui import console_routes  # the browser console under /ui/ (imports this module)

    routes.extend(console_routes())
    routes.append(Route("/openapi.json", _openapi_endpoint(routes), methods=["GET"]))
    routes = _one_route_per_path(routes)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        sequencer.start()
        api.reads.start()
        if pusher is not None:
            pusher.start()
        for f in on_startup or []:
            f()
        try:
            yield
        finally:
            for f in on_shutdown or []:
                f()
            if pusher is not None:
                pusher.stop()
            sequencer.stop()
            api.reads.stop()

    async def http_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: http_error},
    )
    app.state.api = api
    return LogApp(app, api)
