"""The forwarder's request head (client.adapters.forwarder.Forwarder) against the way it was
built before the proxy5 round: the same headers in the same order, the same bytes, the same
refusals. ``_reference_headers``/``_reference_bytes`` are the earlier code, kept here as the
reference."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from client.adapters.forwarder import HOP_BY_HOP, Forwarder

_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_FIELD_VALUE = re.compile(rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?")
_TARGET = re.compile(rb"[\x21-\x7e]+")


def _hop_by_hop(headers: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
    named = {
        t.strip().lower() for k, v in headers if k.lower() == b"connection" for t in v.split(b",")
    }
    return HOP_BY_HOP | named


def _reference_headers(f: Forwarder, scope: dict[str, Any], body: bytes) -> list[Any]:
    raw = [(bytes(k), bytes(v)) for k, v in scope.get("headers", ())]
    drop = _hop_by_hop(raw) | {b"content-length", b"expect"}
    if not f.preserve_host:
        drop |= {b"host"}
    out = [(k, v) for k, v in raw if k.lower() not in drop]
    if not f.preserve_host or not any(k.lower() == b"host" for k, _ in out):
        out.insert(0, (b"host", f.host_header))
    if body or str(scope["method"]) in ("POST", "PUT", "PATCH"):
        out.append((b"content-length", str(len(body)).encode()))
    if f.forwarded:
        client = scope.get("client")
        host = next((v for k, v in raw if k.lower() == b"host"), None)
        if client:
            prior = [v for k, v in out if k.lower() == b"x-forwarded-for"]
            ip = str(client[0]).encode("latin-1")
            chain = b", ".join([*prior, ip])
            out = [(k, v) for k, v in out if k.lower() != b"x-forwarded-for"]
            out.append((b"x-forwarded-for", chain))
        if not any(k.lower() == b"x-forwarded-proto" for k, _ in out):
            out.append((b"x-forwarded-proto", str(scope.get("scheme", "http")).encode()))
        if host is not None and not any(k.lower() == b"x-forwarded-host" for k, _ in out):
            out.append((b"x-forwarded-host", host))
    return out


def _reference_bytes(method: str, target: bytes, headers: list[Any], body: bytes) -> bytes:
    m = method.encode("ascii", "replace")
    if not _TOKEN.fullmatch(m):
        raise ValueError("illegal method characters")
    if not _TARGET.fullmatch(target):
        raise ValueError("illegal target characters")
    lines = [m + b" " + target + b" HTTP/1.1"]
    for k, v in headers:
        if not _TOKEN.fullmatch(k):
            raise ValueError("illegal header name")
        if not _FIELD_VALUE.fullmatch(v):
            raise ValueError("illegal header value")
        lines.append(k + b": " + v)
    lines.append(b"")
    lines.append(body)
    return b"\r\n".join(lines)


_NAMES = st.sampled_from(
    [
        b"host", b"Host", b"connection", b"Connection", b"keep-alive", b"x-forwarded-for",
        b"X-Forwarded-For", b"x-forwarded-proto", b"x-forwarded-host", b"content-length",
        b"expect", b"te", b"authorization", b"x-custom", b"X-Custom", b"bad name", b"b:d", b"",
    ]
)  # fmt: skip
_VALUES = st.sampled_from(
    [b"", b"a", b"1.2.3.4", b"x-custom", b"X-Custom, keep-alive", b" lead", b"trail ",
     b"a\x00b", b"a\tb", b"example.org", b"x-forwarded-for", b"close"]
) | st.binary(max_size=6)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.tuples(_NAMES, _VALUES), max_size=8),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, ("10.0.0.1", 1234), ("::1", 1)]),
    st.sampled_from(["GET", "POST", "PATCH", "DELETE", "BAD METHOD"]),
    st.sampled_from([b"", b"{}"]),
    st.booleans(),
)
def test_request_head_as_before(
    headers: list[tuple[bytes, bytes]],
    preserve_host: bool,
    forwarded: bool,
    client: Any,
    method: str,
    body: bytes,
    bytearrays: bool,
) -> None:
    if bytearrays:  # a server may hand byte sequences other than bytes
        headers = [(bytearray(k), bytearray(v)) for k, v in headers]  # type: ignore[misc]
    f = Forwarder("http://sp.example:8080/v2", preserve_host=preserve_host, forwarded=forwarded)
    scope: dict[str, Any] = {"method": method, "headers": headers, "scheme": "http"}
    if client is not None:
        scope["client"] = client
    got = f._request_headers(scope, body)
    assert got == _reference_headers(f, scope, body)
    assert all(type(k) is bytes and type(v) is bytes for k, v in got)
    try:
        want = _reference_bytes(method, b"/v2/Users", got, body)
    except ValueError as exc:
        with pytest.raises(ValueError) as err:
            Forwarder._request_bytes(method, b"/v2/Users", got, body)
        assert str(err.value) == str(exc)
    else:
        assert Forwarder._request_bytes(method, b"/v2/Users", got, body) == want


class _CountingDrop(frozenset[bytes]):
    """The forwarder's dropped names, counting the unions made from them."""

    unions = 0

    def __or__(self, other: Any) -> _CountingDrop:
        _CountingDrop.unions += 1
        return _CountingDrop(frozenset(self) | other)


def test_many_connection_headers_one_union() -> None:
    # A hostile head of ~2,000 ``Connection`` headers (32 KiB, the hardened head limit):
    # the names they list are collected once, not a new set per header (a copy of the
    # growing set each: quadratic, tens of ms of CPU per request). Same headers out.
    headers = [(b"Connection", b"x-%d" % i) for i in range(2000)] + [(b"x-1", b"v"), (b"a", b"b")]
    f = Forwarder("http://sp.example:8080/v2")
    scope: dict[str, Any] = {"method": "POST", "headers": headers, "scheme": "http"}
    want = _reference_headers(f, scope, b"{}")
    _CountingDrop.unions = 0
    f._drop = _CountingDrop(f._drop)
    assert f._request_headers(scope, b"{}") == want
    assert _CountingDrop.unions <= 1


# --- the answer's head (proxy7 round: flags noted per header instead of two more passes) ---

_RESP_NAMES = st.sampled_from(
    [
        b"Connection",
        b"connection",
        b"Keep-Alive",
        b"TE",
        b"Trailer",
        b"Upgrade",
        b"Proxy-Authenticate",
        b"Proxy-Connection",
        b"ETag",
        b"Location",
        b"Content-Type",
        b"X-Custom",
        b"x-custom",
        b"Cache-Control",
    ]
)
_RESP_VALUES = st.sampled_from([b"close", b"keep-alive", b"x-custom", b"X-Custom, etag", b"v", b""])


def _reference_answer(headers: list[tuple[bytes, bytes]], status: int) -> tuple[Any, bool]:
    """What the forwarder computed before: the headers passed on, and whether the body is
    framed (its end not the connection's)."""
    drop = _hop_by_hop(headers)
    framed = status in (204, 304) or any(
        k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers
    )
    return [(k, v) for k, v in headers if k.lower() not in drop], framed


@settings(max_examples=500, deadline=None)
@given(
    status=st.sampled_from([200, 201, 204, 304, 400, 404, 500]),
    headers=st.lists(st.tuples(_RESP_NAMES, _RESP_VALUES), max_size=10),
    framing=st.sampled_from(["none", "length", "chunked"]),
    interim=st.lists(st.tuples(_RESP_NAMES, _RESP_VALUES), max_size=3) | st.none(),
)
def test_answer_headers_equal_the_reference(
    status: int,
    headers: list[tuple[bytes, bytes]],
    framing: str,
    interim: list[tuple[bytes, bytes]] | None,
) -> None:
    import asyncio

    from client.adapters.forwarder import _Conn

    if status in (204, 304):
        framing = "none"  # no body and no framing headers on these
    head = list(headers)
    tail = b""
    if framing == "length":
        head.append((b"Content-Length", b"0"))
    elif framing == "chunked":
        head.append((b"Transfer-Encoding", b"chunked"))
        tail = b"0\r\n\r\n"
    data = b""
    if interim is not None:  # a 1xx answer first: its headers must not count
        data += b"HTTP/1.1 100 Continue\r\n"
        data += b"".join(k + b": " + v + b"\r\n" for k, v in interim) + b"\r\n"
    data += b"HTTP/1.1 %d X\r\n" % status
    data += b"".join(k + b": " + v + b"\r\n" for k, v in head) + b"\r\n" + tail
    loop = asyncio.new_event_loop()
    try:
        conn = _Conn(loop)
        conn.data_received(data)
        assume(conn.error is None)  # e.g. a 1xx with "Connection: close" and more after it
        assert conn.head_done
        want_headers, want_framed = _reference_answer(conn.headers, status)
        assert conn.headers == head
        assert conn.answer_headers() == want_headers
        assert conn.framed is want_framed
    finally:
        loop.close()
