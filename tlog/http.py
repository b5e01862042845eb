"""HTTP helpers of the log's API: request limits, the routing table's entry, strict query
strings, headers, request ids, and bounded bodies and strict JSON bodies, straight from the
ASGI scope; shared by every module with routes (the log's, the SCIM service's, the
console's).

Nothing here knows a route. :class:`Endpoint` is one row of the routing table
(:mod:`tlog.routes` has the log's rows, other modules may add theirs): :mod:`tlog.app`
derives the fast ASGI dispatch, the Starlette routes and the OpenAPI operations from it.
"""

from __future__ import annotations

import binascii
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from client.formats.checkpoint import parse_decimal
from client.formats.note import FormatError, b64decode_strict
from client.scim.jsonstrict import strict_json
from tlog.errors import BadRequest, PayloadTooLarge
from tlog.limits import Limits

__all__ = [
    "MAX_INDEX",
    "Endpoint",
    "Limits",
    "Query",
    "Scoped",
    "b64",
    "header",
    "json_body",
    "read_asgi_body",
    "read_body",
    "request_id",
]

MAX_INDEX = (1 << 63) - 1
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class Scoped:
    """Just an ASGI scope and its ``receive``: all a hot handler needs of a request (no
    Starlette request object, router or middleware on the fast path, :mod:`tlog.app`)."""

    __slots__ = ("receive", "scope")

    def __init__(self, scope: Scope, receive: Receive = _no_body) -> None:
        self.scope = scope
        self.receive = receive

    @property
    def path_params(self) -> dict[str, Any]:
        params: dict[str, Any] = self.scope.get("path_params", {})
        return params


Handler = Callable[[Any], Awaitable[Response]]
"""A route's handler: takes a Starlette :class:`Request`, or (a hot route) a :class:`Scoped`
or a Request alike, so it may use only ``scope``, ``receive`` and ``path_params``."""


@dataclass(frozen=True)
class Endpoint:
    """One row of the routing table.

    ``path`` in Starlette's syntax; a hot route's path is exact or ends in one
    ``{name:path}`` parameter. ``hot``: answered from the ASGI scope before Starlette's
    router (the handler then gets a :class:`Scoped`; through Starlette, HEAD or an
    over-long path, a :class:`Request`: it must use only what both have).
    """

    method: str
    path: str
    handler: Handler
    hot: bool = False

    def __post_init__(self) -> None:
        if self.hot:
            _, brace, rest = self.path.partition("{")
            if brace and (not rest.endswith(":path}") or "{" in rest):
                raise ValueError(f"a hot route's path ends in one {{name:path}}: {self.path}")


class JsonBody(Response):
    """``Response(body, media_type="application/json")`` for a body already encoded (200):
    the same status, headers and messages, without the generic header building (~3 µs of
    each single SCIM event's answer; ``tests/server/test_json_body.py``)."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", str(len(body)).encode("latin-1")),
            (b"content-type", b"application/json"),
        ]


def b64(h: bytes) -> str:
    return binascii.b2a_base64(h, newline=False).decode("ascii")


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


def request_id(request: Request | Scoped) -> str:
    """The caller's ``X-Request-Id`` if it is a plain token, else a fresh one."""
    rid = header(request.scope, b"x-request-id") or ""
    return rid if _REQUEST_ID_RE.fullmatch(rid) else uuid.uuid4().hex


def json_body(body: bytes) -> Any:
    """A request body as JSON, with duplicate keys, floats and NaN/Infinity refused (400)."""
    try:
        return strict_json(body.decode("utf-8"))
    except RecursionError:
        raise BadRequest("body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


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
