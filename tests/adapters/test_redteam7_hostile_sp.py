"""Red team 7: a hostile or broken SCIM service provider behind ``tlog scim-proxy``'s
forwarder and the audit middleware. The event must say what the adapter can know and never
invent an effect; the client must never take a broken answer for a whole one.

* an SP that applies a write and breaks its answer off mid-body: a chunked answer reached the
  client as a complete 200 with a truncated body (a silent wrong answer), one with a
  Content-Length as an "Exception in ASGI application" traceback; the event said nothing;
* an answer that names another resource than the one written (a PATCH of A answered with
  B): B's ``active`` became A's resulting state (``x.result``), the effect the log derives;
* a 201 whose body's id is not the one its Location names: the body's silently won;
* a 2xx whose body cannot be read: nothing said the result was not understood.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.adapters.exchange import AuditConfig, Builder, Exchange
from client.adapters.forwarder import Forwarder
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Outbox
from tests.support import UvicornThread, free_port

from .helpers import FakeLog, relay_for
from .hostile import AsyncioUpstream, read_request

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
PATCH_OP = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
DEACTIVATE = {
    "schemas": [PATCH_OP],
    "Operations": [{"op": "replace", "path": "active", "value": False}],
}
BODY = json.dumps({"schemas": [USER], "id": "A", "userName": "ann", "active": False}).encode()


class _BreaksOff(AsyncioUpstream):
    """Answers every request with ``raw`` (the start of an answer) and closes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self.port = free_port()
        self.requests = 0

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await read_request(r)
            self.requests += 1
            w.write(self.raw)
            await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\nTransfer-Encoding: chunked\r\n"
    b"\r\n10\r\n" + BODY[:16] + b"\r\n"
)
SIZED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:16]
)


@pytest.fixture(params=["chunked", "content-length"])
def broken(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, FakeLog]]:
    up = _BreaksOff(CHUNKED if request.param == "chunked" else SIZED).start()
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=lambda _: None)
    fwd = Forwarder(f"http://127.0.0.1:{up.port}/v2", timeout=10.0)
    srv = UvicornThread(AuditMiddleware(fwd, config, outbox, relay, own=True))
    try:
        yield srv.url, log
    finally:
        srv.stop()
        up.stop()


@pytest.mark.slow
def test_a_write_whose_answer_breaks_off_is_a_502_and_says_so(
    broken: tuple[str, FakeLog], caplog: pytest.LogCaptureFixture
) -> None:
    url, log = broken
    caplog.set_level(logging.WARNING)
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.patch("/v2/Users/A", json=DEACTIVATE, headers={"X-Request-Id": "req-broken"})
    # Never the truncated body as if it were the whole answer.
    assert r.status_code == 502, (r.status_code, r.content)
    doc = r.json()
    assert doc["status"] == "502" and "status 200" in doc["detail"]
    assert "broke off" in doc["detail"] and "recorded" in doc["detail"]
    for _ in range(100):
        if log.events:
            break
        asyncio.run(asyncio.sleep(0.05))
    (ev,) = log.events
    assert ev["res"]["st"] == 200 and ev["rid"] == "A"
    assert "broke off" in ev["x"]["answer"]
    assert "result" not in ev["x"]  # nothing taken from a truncated answer
    assert not any("Exception in ASGI application" in r.getMessage() for r in caplog.records)


@pytest.mark.slow
def test_a_read_whose_answer_breaks_off_is_not_passed_on_as_whole(
    broken: tuple[str, FakeLog],
) -> None:
    url, log = broken
    with httpx.Client(base_url=url, timeout=10) as c:
        try:
            r = c.get("/v2/Users/A")
        except httpx.RemoteProtocolError:
            pass  # the client sees the break
        else:
            pytest.fail(f"a broken answer passed on as whole: {r.status_code} {r.content!r}")
    assert not log.events


# -- the event of an answer that contradicts the request (in process) -----------------------


def _event(
    method: str,
    path: str,
    body: Any,
    status: int,
    answer: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> dict[str, Any]:
    cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2")
    scope = {"headers": [(b"content-type", b"application/scim+json")], "client": ("10.0.0.1", 1)}
    x = Exchange(scope, method, path, "req-1", None, json.dumps(body).encode(), 0)
    x.status = status
    x.headers = [(b"content-type", b"application/scim+json"), *(headers or [])]
    x.resp_body = answer
    x.t1_ns = 1_800_000_000_000_000_000
    (ev,) = Builder(cfg, x).single().events
    return ev


def _user(uid: str, active: bool) -> bytes:
    return json.dumps({"schemas": [USER], "id": uid, "userName": "u", "active": active}).encode()


def test_an_answer_naming_another_resource_is_not_its_result() -> None:
    ev = _event("PATCH", "/Users/A", DEACTIVATE, 200, _user("B", True))
    assert ev["rid"] == "A"
    assert "result" not in ev.get("x", {}), ev.get("x")  # B's values are not A's state
    assert "another resource" in ev["x"]["answer"]
    # The answer for the resource written is its result, even where it contradicts the
    # request (the SP says what it did).
    ev = _event("PATCH", "/Users/A", DEACTIVATE, 200, _user("A", True))
    assert ev["x"]["result"] == {"active": True} and "answer" not in ev["x"]
    put = {"schemas": [USER], "userName": "u", "active": False}
    ev = _event("PUT", "/Users/A", put, 200, _user("B", True))
    assert "result" not in ev.get("x", {}) and "another resource" in ev["x"]["answer"]


def test_a_created_resource_whose_id_and_location_disagree_says_so() -> None:
    create = {"schemas": [USER], "userName": "u", "active": False}
    loc = [(b"location", b"https://sp.example/v2/Users/A")]
    ev = _event("POST", "/Users", create, 201, _user("B", True), loc)
    assert "result" not in ev.get("x", {})
    assert "Location" in ev["x"]["answer"]
    ev = _event("POST", "/Users", create, 201, _user("A", True), loc)  # agreeing: as before
    assert ev["rid"] == "A" and ev["x"]["result"] == {"active": True}
    assert "answer" not in ev["x"]


def test_a_success_whose_answer_is_not_understood_says_so() -> None:
    ev = _event("PATCH", "/Users/A", DEACTIVATE, 200, b'{"id": "A", "active": tr')
    assert ev["outcome"] == "success" and "not understood" in ev["x"]["answer"]
    ev = _event("PATCH", "/Users/A", DEACTIVATE, 204, b"")  # no body: nothing to understand
    assert "answer" not in ev.get("x", {})


# -- an answer trickled for ever -------------------------------------------------------------


class _Trickles(AsyncioUpstream):
    """Answers with ``head`` and then one byte of a never-ending answer every 0.2 s: never
    ``timeout`` seconds without a byte, so the per-read timeout alone never fires."""

    def __init__(self, head: bytes, drip: bytes, every: float = 0.2) -> None:
        self.head = head
        self.drip = drip
        self.every = every
        self.port = free_port()

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await read_request(r)
            w.write(self.head)
            for _ in range(int(40 / self.every)):  # 40 s, far beyond the deadline
                w.write(self.drip)
                await w.drain()
                await asyncio.sleep(self.every)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            w.close()


def _trickled(tmp_path: Path, up: _Trickles) -> tuple[UvicornThread, FakeLog]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=lambda _: None)
    fwd = Forwarder(f"http://127.0.0.1:{up.port}/v2", timeout=1.0, answer_timeout=1.5)
    return UvicornThread(AuditMiddleware(fwd, config, outbox, relay, own=True)), log


@pytest.mark.slow
@pytest.mark.parametrize("every", [0.2, 0.002])  # a trickle, and a stream that never pauses
def test_an_answer_body_that_never_ends_is_cut_at_the_deadline(
    tmp_path: Path, every: float
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/scim+json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    up = _Trickles(
        head, b"1\r\n \r\n" if every > 0.1 else b"100\r\n" + b" " * 256 + b"\r\n", every
    ).start()
    srv, log = _trickled(tmp_path, up)
    try:
        with httpx.Client(base_url=srv.url, timeout=15) as c:
            r = c.patch("/v2/Users/A", json=DEACTIVATE)
        assert r.status_code == 502, (r.status_code, r.content[:200])
        assert "broke off" in r.json()["detail"]
        for _ in range(100):
            if log.events:
                break
            asyncio.run(asyncio.sleep(0.05))
        (ev,) = log.events
        assert ev["res"]["st"] == 200 and "broke off" in ev["x"]["answer"]
    finally:
        srv.stop()
        up.stop()


@pytest.mark.slow
def test_an_answer_head_that_never_ends_is_a_504(tmp_path: Path) -> None:
    up = _Trickles(b"HTTP/1.1 200 OK\r\n", b"X-Drip: 1\r\n").start()
    srv, _ = _trickled(tmp_path, up)
    try:
        with httpx.Client(base_url=srv.url, timeout=15) as c:
            r = c.get("/v2/Users/A")
        assert r.status_code == 504, (r.status_code, r.content[:200])
    finally:
        srv.stop()
        up.stop()


def test_a_bulk_answer_not_understood_never_says_nothing_was_applied() -> None:
    # A 200 whose body is no BulkResponse (truncated, empty): the operations were recorded
    # as "skipped: the bulk request stopped (failOnErrors) before this operation", i.e.
    # not applied, which the adapter cannot know.
    bulk = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
        "Operations": [
            {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"schemas": [USER]}},
            {"method": "DELETE", "path": "/Users/u1"},
        ],
    }
    for answer in (b'{"schemas": ["urn:ietf:params:scim:api:messages:2.0:Bu', b""):
        cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2")
        scope = {"headers": [(b"content-type", b"application/scim+json")]}
        x = Exchange(scope, "POST", "/Bulk", "req-1", None, json.dumps(bulk).encode(), 0)
        x.status, x.resp_body, x.t1_ns = 200, answer, 1_800_000_000_000_000_000
        events = Builder(cfg, x).bulk().events
        assert [e["op"] for e in events] == ["create", "delete"]
        for ev in events:
            assert ev["outcome"] == "warning", ev
            assert ev["err"]["code"] == "unknown" and "unknown" in ev["err"]["reason"]
            assert "not understood" in ev["x"]["answer"]
