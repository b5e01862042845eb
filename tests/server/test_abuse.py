"""Availability under abuse (issue 7 part 4): hostile bodies, slow and idle clients, stalls.

In process: oversized and deeply nested batch bodies get a 4xx without being built, and
while one is being decoded the event loop still answers ``/checkpoint`` (checked by
ordering: the decode waits until a concurrent ``/checkpoint`` has been answered, which can
only happen if the decode is off the loop). A writer stuck inside a commit leaves
``/checkpoint`` and ``/healthz`` answering.

Against a real ``tlog serve`` (uvicorn, 127.0.0.1): slowloris heads are cut with 408, silent
connections are closed, a slow body is cut, oversized heads get 431, and a few hundred idle
or half-sent sockets do not lock a new client out.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cbor2
import httpx
import pytest
from starlette.testclient import TestClient

import tlog.app
import tlog.routes
import tlog.scim.routes
from tests.support import (
    ServerProcess,
    serve_config,
    slow_reader,
    start_proxy,
    start_server,
    stop_processes,
    wait_reset,
)
from tlog.bodies import OFFLOAD_BYTES, BodyTooLarge, MalformedBody, check_json_shape
from tlog.log import Log
from tlog.server import build_app

from .conftest import make_signer

WAIT = 20.0  # bound on every wait in this file; never a pass/fail threshold


class Env:
    def __init__(self, client: TestClient, log_: Log, token: str) -> None:
        self.client = client
        self.log = log_
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, path: str, body: bytes, ctype: str) -> httpx.Response:
        return self.client.post(path, content=body, headers={**self.headers, "Content-Type": ctype})


@pytest.fixture
def env(tmp_path: Path, database: str | None) -> Iterator[Env]:
    """The app with its default limits (16 MiB log batches, 8 MiB SCIM batches)."""
    app, log_, tokens = build_app(serve_config(tmp_path, database, batch_age_ms=0.0), make_signer())
    token, _ = tokens.create("submitter", tenant="t1")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Env(client, log_, token)
    log_.storage.close()


def huge_json_entries() -> bytes:
    """An 8 MiB {"entries": [...]} of two million tiny entries."""
    n = (8 << 20) // 4
    return b'{"entries":[' + b'"",' * (n - 1) + b'""]}'


def huge_cbor_array() -> bytes:
    """An 8 MiB CBOR array of eight million small integers (each one byte)."""
    n = (8 << 20) - 5
    return b"\x9a" + struct.pack(">I", n) + b"\x01" * n


def deep_json(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


class Spy:
    """Records the sizes of inputs a decoder was called with, and calls it."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.sizes: list[int] = []

    def __call__(self, data: Any, *a: Any, **kw: Any) -> Any:
        self.sizes.append(len(data))
        return self.fn(data, *a, **kw)


# -- the shape check itself -----------------------------------------------------------------


def test_json_shape_counts_elements_and_depth() -> None:
    check_json_shape(b'{"entries":["a,b]","c"]}', max_items=3, max_depth=2)
    with pytest.raises(BodyTooLarge):
        check_json_shape(b'{"entries":["a","b","c"]}', max_items=3, max_depth=2)
    with pytest.raises(MalformedBody):
        check_json_shape(b'{"entries":[["a"]]}', max_items=10, max_depth=2)
    # Brackets and commas inside strings (escaped quotes included) are not structure.
    check_json_shape(b'["[[[[,,,,\\"]]]]"]', max_items=1, max_depth=1)


def test_json_shape_stops_at_the_limit() -> None:
    """A 64 MiB array of scalars is refused for its element count."""
    body = b"[" + b"1," * (32 << 20) + b"1]"
    with pytest.raises(BodyTooLarge):
        check_json_shape(body, max_items=10, max_depth=2)


# -- oversized and nested bodies: 4xx, never built ------------------------------------------


def test_8mib_json_batch_is_refused_unbuilt(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(json.loads)
    monkeypatch.setattr(tlog.app.json, "loads", spy)
    r = env.post("/v1/entries/batch", huge_json_entries(), "application/json")
    assert r.status_code == 413, r.text
    assert not [n for n in spy.sizes if n > 1 << 20], "the 8 MiB body was handed to json.loads"


def test_8mib_cbor_batch_is_refused_unbuilt(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(cbor2.loads)
    monkeypatch.setattr(cbor2, "loads", spy)
    r = env.post("/v1/scim/events/batch", huge_cbor_array(), "application/cbor")
    assert r.status_code == 413, r.text
    assert spy.sizes == []


def test_cbor_batch_with_too_many_nested_items_is_413(env: Env) -> None:
    """Few events, but millions of items inside them: the item budget refuses it."""
    inner = b"\x9a" + struct.pack(">I", 3 << 20) + b"\x01" * (3 << 20)
    body = b"\x82" + inner + inner
    r = env.post("/v1/scim/events/batch", body, "application/cbor")
    assert r.status_code == 413, r.text


def test_8mib_json_scim_batch_is_413(env: Env) -> None:
    body = b'{"events":[' + b"1," * (4 << 20) + b"1]}"
    r = env.post("/v1/scim/events/batch", body, "application/json")
    assert r.status_code == 413, r.text


@pytest.mark.parametrize(
    ("path", "ctype", "body"),
    [
        ("/v1/entries/batch", "application/json", deep_json(100_000)),
        ("/v1/entries/batch", "application/json", b'{"entries":' + deep_json(50_000) + b"}"),
        ("/v1/scim/events/batch", "application/json", b'{"events":' + deep_json(100_000) + b"}"),
        ("/v1/scim/events", "application/json", b'{"a":' + deep_json(100_000) + b"}"),
        ("/v1/scim/events/batch", "application/cbor", b"\x81" * 100_000 + b"\x01"),
        ("/v1/scim/events", "application/cbor", b"\x81" * 60_000 + b"\x01"),
        ("/v1/scim/pseudonyms", "application/json", deep_json(60_000)),
    ],
)
def test_deep_nesting_is_400(env: Env, path: str, ctype: str, body: bytes) -> None:
    r = env.post(path, body, ctype)
    assert r.status_code in (400, 413), (r.status_code, r.text)


def test_bad_bodies_never_5xx(env: Env) -> None:
    bodies = [
        b"",
        b"{",
        b"[",
        b'"',
        b"\xff\xfe",
        b"null",
        b'{"entries":null}',
        b'{"entries":[1]}',
        b'{"entries":["!!"]}',
        b'{"entries":[""]}',
        b'{"entries":[]}',
        b"1" * 100_000,
        b'{"entries":' + b"9" * 5000 + b"}",
        b'{"events":[{}]}',
        b'{"events":[[]]}',
    ]
    for path in ("/v1/entries/batch", "/v1/scim/events/batch", "/v1/scim/events"):
        for ctype in ("application/json", "application/cbor", "application/octet-stream"):
            for body in bodies:
                r = env.post(path, body, ctype)
                assert 400 <= r.status_code < 500, (path, ctype, body[:20], r.status_code, r.text)


# -- decoding is off the event loop ---------------------------------------------------------


def _checkpoint_during(
    env: Env,
    monkeypatch: pytest.MonkeyPatch,
    module: Any,
    name: str,
    send: Callable[[], httpx.Response],
) -> tuple[bool, httpx.Response]:
    """Hold the decode step ``module.name`` until a concurrent GET /checkpoint is answered.

    Returns whether /checkpoint was answered while the decode was held, and the big
    request's response. If the decode ran on the event loop, /checkpoint could not be
    answered until the hold gave up, and the first value would be False.
    """
    original = getattr(module, name)
    entered = threading.Event()
    answered = threading.Event()
    seen: list[bool] = []

    def held(*a: Any, **kw: Any) -> Any:
        entered.set()
        seen.append(answered.wait(WAIT))
        return original(*a, **kw)

    monkeypatch.setattr(module, name, held)
    out: list[httpx.Response] = []
    t = threading.Thread(target=lambda: out.append(send()))
    t.start()
    try:
        assert entered.wait(WAIT), "the decode never started"
        r = env.client.get("/checkpoint")
        assert r.status_code == 200
        h = env.client.get("/healthz")
        assert h.status_code == 200 and h.json() == {"status": "ok"}
        answered.set()
    finally:
        answered.set()
        t.join(WAIT)
    assert not t.is_alive() and out
    return seen == [True], out[0]


def test_big_json_decode_does_not_block_checkpoint(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = huge_json_entries()
    concurrent, r = _checkpoint_during(
        env,
        monkeypatch,
        tlog.routes,
        "check_json_shape",
        lambda: env.post("/v1/entries/batch", body, "application/json"),
    )
    assert concurrent
    assert r.status_code == 413


def test_big_cbor_decode_does_not_block_checkpoint(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = huge_cbor_array()
    concurrent, r = _checkpoint_during(
        env,
        monkeypatch,
        tlog.scim.routes,
        "_cbor_array_length",
        lambda: env.post("/v1/scim/events/batch", body, "application/cbor"),
    )
    assert concurrent
    assert r.status_code == 413


def test_valid_big_batch_decodes_off_loop_and_commits(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [b"entry-%06d" % i for i in range(5000)]
    body = b"".join(struct.pack(">H", len(e)) + e for e in entries)
    assert len(body) > OFFLOAD_BYTES
    api = env.client.app.api  # type: ignore[attr-defined]
    concurrent, r = _checkpoint_during(
        env,
        monkeypatch,
        api,
        "_parse_batch",
        lambda: env.post("/v1/entries/batch", body, "application/octet-stream"),
    )
    assert concurrent
    assert r.status_code == 200, r.text
    assert r.json()["indices"] == list(range(5000))


# -- a stalled writer -----------------------------------------------------------------------


def test_writer_stuck_in_commit_leaves_checkpoint_and_healthz(env: Env) -> None:
    assert env.client.post("/v1/entries", content=b"first", headers=env.headers).status_code == 200
    storage = env.log.storage
    original = storage.commit_batch
    entered, release = threading.Event(), threading.Event()

    def stuck(batch: Any) -> None:
        entered.set()
        release.wait(WAIT)
        original(batch)

    storage.commit_batch = stuck  # type: ignore[method-assign]
    out: list[httpx.Response] = []
    t = threading.Thread(
        target=lambda: out.append(
            env.client.post("/v1/entries", content=b"second", headers=env.headers)
        )
    )
    t.start()
    try:
        assert entered.wait(WAIT)
        cp = env.client.get("/checkpoint")
        assert cp.status_code == 200
        assert cp.text.split("\n")[1] == "1"  # the last published size, from memory
        assert env.client.get("/healthz").status_code == 200
        assert env.client.get("/v1/proof/inclusion?index=0").status_code == 200
        assert not out, "the stuck write was acknowledged before it was durable"
    finally:
        release.set()
        t.join(WAIT)
        storage.commit_batch = original  # type: ignore[method-assign]
    assert out and out[0].status_code == 200
    assert out[0].json()["index"] == 1


# -- malformed paths ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/tile/0/" + "x000/" * 60 + "000",
        "/tile/0/" + "x001/" * 7 + "000",
        "/tile/0/" + "x999/" * 30 + "999.p/7",
        "/tile/0/x" + "9" * 5000,
        "/tile/99999999999999999999/000",
        "/tile/0/000.p/0",
        "/tile/0/000.p/99999999999999999999",
        "/tile/entries/" + "x123/" * 50 + "456",
        "/tile//",
        "/v1/entries/" + "9" * 400,
        "/v1/bundle/" + "9" * 400,
        "/v1/proof/inclusion?index=" + "9" * 400,
        "/v1/proof/consistency?old_size=1&tree_size=" + "9" * 40,
        "/v1/proof/inclusion?leaf_hash=%ff%fe",
        "/v1/proof/inclusion?index=1&index=2",
        "/v1/scim/erasures/" + "%00" * 100,
    ],
)
def test_malformed_paths_are_4xx(env: Env, path: str) -> None:
    r = env.client.get(path)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


# -- a real server: slow and idle clients ---------------------------------------------------


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, module_database: str | None
) -> Iterator[ServerProcess]:
    """One guarded server per backend for the module's slow-client tests (a server start
    was most of each test's time): each test opens and closes its own connection, and none
    stores an entry (test_slow_body_is_cut asserts the tree is still empty)."""
    srv = start_server(
        tmp_path_factory.mktemp("guarded") / "data",
        None,
        "--header-timeout",
        "1",
        "--body-timeout",
        "1",
        "--max-connections",
        "60",
        database=module_database,
    )
    try:
        yield srv
    finally:
        srv.stop()


def _connect(srv: ServerProcess) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=WAIT)
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes (bounded by the socket timeout)."""
    got = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            return got
        if not chunk:
            return got
        got += chunk


@pytest.mark.slow
def test_slowloris_head_is_cut_with_408(guarded: ServerProcess) -> None:
    with _connect(guarded) as s:
        s.sendall(b"GET /checkpoint HTTP/1.1\r\nHost: x\r\n")
        closed = False
        s.settimeout(0.2)
        for i in range(int(WAIT / 0.2)):  # one header line every 0.2 s, never the blank line
            try:
                s.sendall(b"X-Slow-%d: y\r\n" % i)
                data = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            assert b"408" in data.split(b"\r\n")[0]
            closed = True
            break
        assert closed, "the server never cut the dribbled head"


@pytest.mark.slow
def test_silent_connection_is_closed(guarded: ServerProcess) -> None:
    with _connect(guarded) as s:
        assert _read_until_closed(s) == b""  # closed by the server, nothing sent


@pytest.mark.slow
def test_slow_body_is_cut(guarded: ServerProcess) -> None:
    token = (guarded.data / "demo-submitter.token").read_text().strip()
    with _connect(guarded) as s:
        s.sendall(
            b"POST /v1/entries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nContent-Length: 100\r\n\r\nonly ten.."
        )
        _read_until_closed(s)
    # The half-sent entry was never acknowledged or stored.
    assert httpx.get(guarded.url + "/checkpoint", timeout=WAIT).text.split("\n")[1] == "0"


@pytest.mark.slow
def test_oversized_head_is_431(guarded: ServerProcess) -> None:
    with _connect(guarded) as s:
        s.sendall(b"GET /checkpoint HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(10):
                s.sendall(b"X-Big: " + b"a" * 8000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 431"), data[:80]


@pytest.mark.slow
def test_refused_body_gets_one_answer(guarded: ServerProcess) -> None:
    """A body refused by its Content-Length is answered 413 once; the rest of it is not
    taken for an oversized next head (no stray 431 after the 413)."""
    token = (guarded.data / "demo-submitter.token").read_text().strip()
    with _connect(guarded) as s:
        s.sendall(
            b"POST /v1/entries HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + token.encode()
            + b"\r\nContent-Length: 200000\r\n\r\n"
        )
        try:
            for _ in range(20):
                s.sendall(b"z" * 10_000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = _read_until_closed(s)
    assert data.startswith(b"HTTP/1.1 413"), data[:80]
    assert data.count(b"HTTP/1.1 ") == 1, data


@pytest.mark.slow
def test_hundreds_of_idle_sockets_do_not_lock_out_a_client(
    tmp_path: Path, database: str | None
) -> None:
    # Long header timeout: the connection limit, not the timeout, must make room.
    srv = start_server(
        tmp_path / "data",
        None,
        "--header-timeout",
        "120",
        "--max-connections",
        "50",
        database=database,
    )
    socks: list[socket.socket] = []
    try:
        for i in range(300):
            s = _connect(srv)
            if i % 2:
                s.sendall(b"GET /checkpoint HTTP/1.1\r\nHost: x\r\nX-Half: ")
            socks.append(s)
        for path in ("/checkpoint", "/healthz", "/v1/log"):
            r = httpx.get(srv.url + path, timeout=WAIT)
            assert r.status_code == 200, (path, r.status_code)
        # A client that keeps its connection and works on it is served throughout.
        with httpx.Client(base_url=srv.url, timeout=WAIT) as c:
            for _ in range(5):
                assert c.get("/checkpoint").status_code == 200
    finally:
        for s in socks:
            s.close()
        srv.stop()


@pytest.mark.slow
def test_scim_proxy_closes_silent_connections(tmp_path: Path, database: str | None) -> None:
    """``tlog scim-proxy`` runs under the same hardened runner."""
    log_srv = start_server(tmp_path / "data", database=database)
    try:
        token = (tmp_path / "data" / "demo-submitter.token").read_text().strip()
        proc, base = start_proxy(
            tmp_path,
            "http://127.0.0.1:9",
            log_srv.url,
            token,
            "default",
            "--header-timeout",
            "1",
            sp_id="sp",
        )
        try:
            address = ("127.0.0.1", httpx.URL(base).port or 80)
            with socket.create_connection(address, timeout=WAIT) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
                assert _read_until_closed(s).startswith(b"HTTP/1.1 408")
        finally:
            stop_processes([proc])
    finally:
        log_srv.stop()


@pytest.mark.slow
def test_client_that_never_reads_a_large_answer_is_reset(
    tmp_path: Path, database: str | None
) -> None:
    """A slow reader: it asks for a ~15 MiB entry bundle and never reads a byte. After the
    write timeout the server resets the connection (dropping the buffered bundle) instead
    of keeping both forever; other clients are served throughout."""
    srv = start_server(tmp_path / "data", None, "--write-timeout", "1", database=database)
    try:
        token = (srv.data / "demo-submitter.token").read_text().strip()
        entry = b"\xff" * 60_000  # 256 of them: one full entry bundle of 15 MB
        body = b"".join(
            struct.pack(">H", len(entry)) + entry[:-3] + i.to_bytes(3, "big") for i in range(256)
        )
        # Generous bounds (a 15 MB batch on a loaded 2-core machine): never a threshold.
        r = httpx.post(
            srv.url + "/v1/entries/batch",
            content=body,
            timeout=3 * WAIT,
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": "application/octet-stream",
            },
        )
        assert r.status_code == 200, r.text
        s = slow_reader(
            ("127.0.0.1", srv.port), b"GET /tile/entries/000 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        with s:
            assert httpx.get(srv.url + "/healthz", timeout=WAIT).status_code == 200
            assert wait_reset(s, 3 * WAIT), "a client that never reads was never disconnected"
        assert httpx.get(srv.url + "/checkpoint", timeout=WAIT).status_code == 200
        log_text = (srv.data.parent / "data-server.log").read_text()
        assert "has not read its response" in log_text
    finally:
        srv.stop()
