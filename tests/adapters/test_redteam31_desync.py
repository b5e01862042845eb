"""Red team 31, attack 1: HTTP request desync through ``tlog scim-proxy``. The audit promise
is that the event says what the SP applied; a request the proxy reads one way and the SP
another would get a change applied that the log records differently, or not at all.

Each hostile request goes, as raw bytes, to the real proxy process in front of a real SP
(scim2-server on wsgiref, SCIMMY on Node's llhttp), with a recording relay between the
proxy and the SP (the bytes the SP received, parsed again by h11). Expected, for each: it
is refused (400 or 501) before anything reaches the SP and no event is stored, or the SP
received exactly one request for it, whose method, target and body are those the event
records (its ``req.dig`` is the SHA-256 of the body the SP got), with no header the SP
could read as another (names with ``_``, a second ``Content-Type``, a trailer).

Found and fixed: ``Transfer-Encoding: gzip, chunked`` was taken as chunked by httptools
and forwarded (now 501 in the server runner); trailer fields of a chunked body were
appended to the request's headers mid-request and forwarded (``Authorization``,
``Content-Type``, ``X-Request-Id`` as trailers; now discarded); header names with ``_``
(``Transfer_Encoding``, which wsgiref hands the SP as ``HTTP_TRANSFER_ENCODING``) and
``X-HTTP-Method-Override`` were forwarded (now 400 in the proxy)."""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest

from tests.support import start_proxy, stop_processes

from .helpers import SCIM_TOKEN, outbox_events, start_scim2_server, stop

pytestmark = pytest.mark.slow

PATCH = (
    b'{"schemas":["urn:ietf:params:scim:api:messages:2.0:PatchOp"],'
    b'"Operations":[{"op":"replace","path":"active","value":false}]}'
)


class Tee:
    """A TCP relay on a loopback port in front of ``upstream`` (host, port) that keeps every
    byte a client sent through it, by connection."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sent: list[bytearray] = []
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            u = socket.create_connection(self.upstream)
            buf = bytearray()
            with self.lock:
                self.sent.append(buf)
            for args in ((c, u, buf), (u, c, None)):
                t = threading.Thread(target=self._pipe, args=args, daemon=True)
                t.start()
                self.threads.append(t)

    def _pipe(self, a: socket.socket, b: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := a.recv(65536):
                if keep is not None:
                    with self.lock:
                        keep += data
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def requests(self) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]]:
        """Every request the SP received: method, target, headers, body (parsed by h11,
        which refuses anything ambiguous: the proxy must send nothing it would refuse)."""
        out: list[list[Any]] = []
        with self.lock:
            streams = [bytes(b) for b in self.sent]
        for data in streams:
            conn = h11.Connection(h11.SERVER)
            conn.receive_data(data)
            while True:
                ev = conn.next_event()
                if ev is h11.NEED_DATA or isinstance(ev, h11.ConnectionClosed):
                    break
                if ev is h11.PAUSED:  # answer it (as if the SP had), to read the next one
                    conn.send(h11.Response(status_code=204, headers=[]))
                    conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
                elif isinstance(ev, h11.Request):
                    out.append([ev.method, ev.target, list(ev.headers.raw_items()), b""])
                elif isinstance(ev, h11.Data):
                    out[-1][3] += bytes(ev.data)
        return [tuple(r) for r in out]  # type: ignore[misc]

    def close(self) -> None:
        """Stop taking connections and wait for the relayed ones to end (their clients,
        the proxy, stopped first)."""
        try:
            self.srv.shutdown(socket.SHUT_RDWR)  # wakes the accept
        except OSError:
            pass
        self.srv.close()
        for t in self.threads:
            t.join(10)


def _send(port: int, request: bytes, *, wait: float = 2.0) -> list[int]:
    """Send ``request`` as is and return the statuses of every answer read until the proxy
    closes the connection or is silent for ``wait`` seconds."""
    out = b""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(request)
        try:
            while data := s.recv(65536):
                out += data
        except TimeoutError:
            pass
    return [int(part[2:5]) for part in out.split(b"HTTP/1.")[1:] if part[:2] in (b"0 ", b"1 ")]


def _head(
    path: str,
    extra: bytes,
    *,
    method: bytes = b"PATCH",
    ver: bytes = b"HTTP/1.1",
    close: bool = True,
) -> bytes:
    """A request's head; ``Connection: close`` unless ``close`` is false (a request with
    another behind it), so that the answer's end is the connection's."""
    return (
        method + b" " + path.encode() + b" " + ver + b"\r\nHost: sp\r\n"
        b"Authorization: Bearer " + SCIM_TOKEN.encode() + b"\r\n"
        b"Content-Type: application/scim+json\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + extra
        + b"\r\n"
    )


def _chunked(body: bytes, *, ext: bytes = b"", trailer: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n0\r\n%s\r\n" % (len(body), ext, body, trailer)


L = str(len(PATCH)).encode()


def refused_cases(u: str) -> dict[str, bytes]:
    """Requests each SP or parser could frame or read otherwise: all refused before the SP."""
    cl, rid = b"Content-Length: " + L + b"\r\n", b"X-Request-Id: "
    return {
        "cl-and-te": _head(u, cl + b"Transfer-Encoding: chunked\r\n" + rid + b"cl-te\r\n")
        + _chunked(PATCH),
        "two-cl": _head(u, cl + b"Content-Length: 5\r\n" + rid + b"two-cl\r\n") + PATCH,
        "cl-list": _head(u, b"Content-Length: " + L + b", " + L + b"\r\n" + rid + b"cl-list\r\n")
        + PATCH,
        "cl-plus": _head(u, b"Content-Length: +" + L + b"\r\n" + rid + b"cl-plus\r\n") + PATCH,
        "te-chunked-identity": _head(
            u, b"Transfer-Encoding: chunked, identity\r\n" + rid + b"ci\r\n"
        )
        + _chunked(PATCH),
        "te-gzip-chunked": _head(u, b"Transfer-Encoding: gzip, chunked\r\n" + rid + b"gc\r\n")
        + _chunked(PATCH),
        "te-other-and-cl": _head(u, b"Transfer-Encoding: xchunked\r\n" + cl + rid + b"xc\r\n")
        + PATCH,
        "obs-fold": _head(u, cl + rid + b"fold\r\nX-A: a\r\n b\r\n") + PATCH,
        "space-before-colon": _head(u, cl + b"Transfer-Encoding : chunked\r\n" + rid + b"sp\r\n")
        + PATCH,
        "bare-cr": _head(u, cl + rid + b"cr\rX-B: 1\r\n") + PATCH,
        "lf-only": _head(u, cl + rid + b"lf\r\n").replace(b"\r\n", b"\n") + PATCH,
        "nul-in-value": _head(u, cl + rid + b"nul\r\nX-C: a\x00b\r\n") + PATCH,
        "underscore-te": _head(u, cl + b"Transfer_Encoding: chunked\r\n" + rid + b"us-te\r\n")
        + PATCH,
        "underscore-cl": _head(u, cl + b"Content_Length: 3\r\n" + rid + b"us-cl\r\n") + PATCH,
        "underscore-ct": _head(u, cl + b"Content_Type: text/plain\r\n" + rid + b"us-ct\r\n")
        + PATCH,
        "method-override": _head(
            u, b"X-HTTP-Method-Override: DELETE\r\n" + rid + b"mo\r\n", method=b"GET"
        ),
        "expect-no-body": _head(u, cl + b"Expect: 100-continue\r\n" + rid + b"exp\r\n"),
    }


def passed_cases(u: str) -> dict[str, tuple[bytes, list[str]]]:
    """Requests the proxy takes: each with the request ids whose events must match what the
    SP received."""
    rid = b"X-Request-Id: "
    longer = str(len(PATCH) + 10).encode()
    return {
        "chunk-ext-trailers": (
            _head(u, b"Transfer-Encoding: chunked\r\n" + rid + b"trail\r\n")
            + _chunked(
                PATCH,
                ext=b';ext="1"',
                trailer=b"Authorization: Bearer other\r\nContent-Type: text/plain\r\n"
                b"X-Request-Id: smuggled\r\nX-HTTP-Method-Override: DELETE\r\n",
            ),
            ["trail"],
        ),
        "te-ows": (
            _head(u, b"Transfer-Encoding:  chunked \r\n" + rid + b"ows\r\n") + _chunked(PATCH),
            ["ows"],
        ),
        # Declared longer than the JSON: the next "request" is the body's tail, one request.
        "body-longer-than-json": (
            _head(u, b"Content-Length: " + longer + b"\r\n" + rid + b"long\r\n")
            + PATCH
            + b"DELETE /xy",
            ["long"],
        ),
        # Declared shorter: the rest is parsed as the next request (a DELETE, audited too).
        "body-shorter-pipelined": (
            _head(u, b"Content-Length: 10\r\n" + rid + b"short\r\n", close=False)
            + PATCH[:10]
            + _head(u.rsplit("/", 1)[0] + "/u-piped", rid + b"piped\r\n", method=b"DELETE"),
            ["short", "piped"],
        ),
        "http10-keep-alive": (
            _head(
                u,
                b"Content-Length: " + L + b"\r\nConnection: keep-alive\r\n" + rid + b"h10\r\n",
                ver=b"HTTP/1.0",
                close=False,
            )
            + PATCH
            + _head(u, rid + b"h10b\r\nContent-Length: 0\r\n", method=b"DELETE", ver=b"HTTP/1.0"),
            ["h10", "h10b?"],
        ),
        "fragment": (
            _head(u + "#/../../Groups/g", rid + b"frag\r\n", method=b"DELETE"),
            ["frag"],
        ),
        "absolute-form": (
            _head("http://other.example" + u, rid + b"abs\r\n", method=b"DELETE"),
            ["abs"],
        ),
        "expect-then-body": (
            _head(u, b"Content-Length: " + L + b"\r\nExpect: 100-continue\r\n" + rid + b"exp2\r\n")
            + PATCH,
            ["exp2"],
        ),
    }


@pytest.fixture(params=["scim2-server", "scimmy"])
def sp_base(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real SP: its base URL and the token it takes."""
    if request.param == "scim2-server":
        proc, base = start_scim2_server(tmp_path)
        token = SCIM_TOKEN
    else:
        from .scimmy import install_scimmy, start_scimmy

        proc, base = start_scimmy(install_scimmy(), tmp_path, SCIM_TOKEN)
        token = SCIM_TOKEN
    try:
        yield base, token
    finally:
        stop(proc)


def _dig(body: bytes) -> str:
    return base64.b64encode(hashlib.sha256(body).digest()).decode()


def test_no_request_reaches_the_sp_read_otherwise_than_its_event(
    tmp_path: Path, sp_base: tuple[str, str]
) -> None:
    base, token = sp_base
    host_port, _, path = base.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    tee = Tee((host, int(port)))
    outbox = tmp_path / "outbox.sqlite"
    upstream = f"http://127.0.0.1:{tee.port}/{path}"
    proc, pbase = start_proxy(
        tmp_path, upstream, "http://127.0.0.1:9", "t0k", "acme", "--log-key-tofu", outbox=outbox
    )
    pport = int(pbase.removeprefix("http://").split("/")[0].split(":")[1])
    user = f"/{path}/Users/u1"
    try:
        before = len(tee.requests())
        answers: dict[str, list[int]] = {}
        reached = []  # the refused cases whose request reached the SP all the same
        for name, raw in refused_cases(user).items():
            answers[name] = _send(pport, raw, wait=1.0 if name == "expect-no-body" else 10)
            got = tee.requests()
            if len(got) > before:
                reached.append((name, answers[name], got[before:]))
                before = len(got)
        assert not reached, ([r[0] for r in reached], reached)
        for name, statuses in answers.items():
            if name == "expect-no-body":  # 100, then nothing: the body never came
                assert statuses in ([100], [100, 408]), (name, statuses)
            else:
                assert statuses and statuses[0] in (400, 501), (name, statuses)
        for name, (raw, _) in passed_cases(user).items():
            answers[name] = _send(pport, raw, wait=10)
    finally:
        stop_processes([proc])
        tee.close()
    events = outbox_events(outbox)
    got = tee.requests()[before:]
    # Nothing refused was recorded.
    for rid in (b"cl-te", b"two-cl", b"us-te", b"us-cl", b"us-ct", b"mo", b"gc", b"exp"):
        assert rid.decode() not in events, (rid, events.get(rid.decode()))
    cases = passed_cases(user).values()
    must = {rid for _, rids in cases for rid in rids if not rid.endswith("?")}
    may = {rid[:-1] for _, rids in cases for rid in rids if rid.endswith("?")}
    seen = []
    for method, target, headers, body in got:
        names = [k.lower() for k, _ in headers]
        rid = dict((k.lower(), v) for k, v in headers).get(b"x-request-id", b"").decode()
        # No header the SP could read as another, none twice that the audit reads once.
        assert not any(b"_" in k for k in names), headers
        for once in (b"content-type", b"authorization", b"x-request-id", b"content-length"):
            assert names.count(once) <= 1, (once, headers)
        assert b"transfer-encoding" not in names and b"x-http-method-override" not in names
        auth = [v for k, v in headers if k.lower() == b"authorization"]
        assert auth == [b"Bearer " + token.encode()], headers
        assert rid in events and len(events[rid]) == 1, (rid, sorted(events))
        ev = events[rid][0]
        assert ev["req"]["dig"] == _dig(body), (rid, ev["req"], body)
        assert ev["op"] == method.decode().lower(), (rid, ev["op"], method)
        assert target.startswith(f"/{path}/".encode()) and b"#" not in target, target
        seen.append(rid)
    # Every write the proxy took reached the SP once, and each event is of one that did
    # (an HTTP/1.0 keep-alive's second request may be served or not).
    assert len(seen) == len(set(seen)) and must <= set(seen) <= must | may, (seen, answers)
    assert set(events) == set(seen), (sorted(events), seen)
