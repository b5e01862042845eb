"""An SP that treats a PUT as a merge: what the PUT leaves out, it keeps.

RFC 7644 §3.5.1 leaves an omitted attribute to the SP (it MAY clear it or assign a
default); some SPs keep it. This front gives scim2-server (which clears it) that behaviour:
before a PUT on a User or a Group it reads the stored resource and adds back each attribute the body
leaves out (top-level, and each sub-attribute of the enterprise extension), then passes the
merged PUT on. Written with the standard library only, not with the adapter under test."""

from __future__ import annotations

import json
from typing import Any

from .helpers import read_body

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
_NEVER = {"meta", "id", "schemas"}


async def _call(app: Any, scope: dict[str, Any], method: str, body: bytes) -> tuple[int, bytes]:
    """One request to ``app`` (the scope's path and headers), its status and body."""
    status = 0
    out = b""

    async def disconnect() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(msg: dict[str, Any]) -> None:
        nonlocal status, out
        if msg["type"] == "http.response.start":
            status = msg["status"]
        elif msg["type"] == "http.response.body":
            out += msg.get("body", b"")

    await app(
        {**scope, "method": method, "headers": _sized(scope, body)}, _once(body, disconnect), send
    )
    return status, out


def _sized(scope: dict[str, Any], body: bytes) -> list[tuple[bytes, bytes]]:
    """The scope's headers with the Content-Length of ``body``."""
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
    return [*headers, (b"content-length", str(len(body)).encode())]


def _once(body: bytes, then: Any) -> Any:
    """An ASGI ``receive`` giving ``body`` whole, then what ``then`` gives."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return pending.pop() if pending else await then()

    return receive


def _merged(stored: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    low = {k.lower() for k in body}
    out = dict(body)
    for k, v in stored.items():
        if k in _NEVER or k.lower() in low:
            continue
        out[k] = v
    ext_b = next((v for k, v in body.items() if k.lower() == ENT.lower()), None)
    ext_s = stored.get(ENT)
    if isinstance(ext_s, dict) and isinstance(ext_b, dict):
        keys = {k.lower() for k in ext_b}
        out[ENT] = {**ext_b, **{k: v for k, v in ext_s.items() if k.lower() not in keys}}
    if ENT in out and ENT not in out.get("schemas", []):
        out["schemas"] = [*out.get("schemas", []), ENT]
    return out


def _merged_type(path: str) -> bool:
    return "/Users/" in path or "/Groups/" in path


def merging_sp(app: Any) -> Any:
    """``app`` behind a front that makes each PUT on a User or a Group a merge (see the
    module)."""

    async def front(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "PUT" or not _merged_type(path):
            return await app(scope, receive, send)
        body = await read_body(receive)
        status, stored = await _call(app, {**scope, "query_string": b""}, "GET", b"")
        if status == 200 and body:
            body = json.dumps(_merged(json.loads(stored), json.loads(body))).encode()
        await app({**scope, "headers": _sized(scope, body)}, _once(body, receive), send)

    return front
