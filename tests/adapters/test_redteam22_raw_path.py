"""Red team 22: a request's id is routed from the path as the client sent it.

Red team 21 took a request's id as all of its path after the endpoint, because the ASGI
server decodes ``/Users/a%2Fb`` to ``/Users/a/b``: that made a sub-path ``/Users/a/password``
a request on a resource ``a/password``. uvicorn hands the undecoded path over too
(``scope["raw_path"]``): the adapter now splits it on its ``/`` and decodes each segment, so
``/Users/a%2Fb`` is id ``a/b`` and ``/Users/a/password`` a request on user ``a`` (the event's
``req.p`` keeps the whole path), through the middleware and through the proxy, live and
recovered from a write-ahead intent, and a bulk operation's path alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from client.adapters.exchange import AuditConfig, Exchange
from client.adapters.middleware import intent_doc, unknown_outcome_records
from tests.support import wait_for

from .helpers import (
    DEACTIVATE,
    FakeLog,
    answers_204,
    bulk_events,
    serve_middleware,
    serve_proxy,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

# (method, path as sent, the id recorded, the event's req.p)
WRITES = [
    ("DELETE", "/v2/Users/a%2Fb", "a/b", "/Users/a/b"),
    ("PATCH", "/v2/Users/a/password", "a", "/Users/a/password"),  # the finding
    ("DELETE", "/v2/Users/c%2Fd.scim", "c/d", "/Users/c/d"),
    ("DELETE", "/v2/Users/e%20f/x", "e f", "/Users/e f/x"),  # the finding
]


def _send_writes(url: str) -> None:
    with httpx.Client(base_url=url, timeout=10) as c:
        for method, path, _, _ in WRITES:
            body = None if method == "DELETE" else json.dumps(DEACTIVATE).encode()
            r = c.request(method, path, content=body, headers={"X-Request-Id": path})
            assert r.status_code < 300, (path, r.status_code)


def _check(events: list[dict[str, Any]]) -> None:
    got = {ev["corr"]["req"]: (ev["rid"], ev["req"]["p"]) for ev in events}
    assert got == {path: (rid, p) for _, path, rid, p in WRITES}


def test_redteam22_the_middleware_routes_the_path_as_sent(tmp_path: Path) -> None:
    log = FakeLog()
    srv = serve_middleware(answers_204, tmp_path / "outbox.sqlite", log)
    try:
        _send_writes(srv.url)
    finally:
        assert srv.serving.stop(15), "the server did not stop"
    _check(log.events)  # drained at the shutdown


def test_redteam22_the_proxy_routes_the_path_as_sent(
    sp: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    upstream, seen = sp
    log = FakeLog()
    srv = serve_proxy(upstream, log, tmp_path / "o.sqlite", "raw")
    try:
        _send_writes(srv.url)
        wait_for(lambda: len(log.events) == len(WRITES), 10, "every event delivered")
    finally:
        srv.stop()
    _check(log.events)
    assert [p for _, p in seen] == [path for _, path, _, _ in WRITES]  # forwarded as sent


def test_redteam22_a_recovered_intent_and_a_bulk_name_the_id_the_request_names() -> None:
    """A write whose answer was never recorded is on the resource its answered event names
    (the intent keeps the routed id: its ``p`` is the decoded path), and a bulk operation's
    path (as sent) is split as a request's raw path is."""
    cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=None)
    scope = {"headers": [], "path": "/v2/Users/a/password", "raw_path": b"/v2/Users/a/password"}
    x = Exchange(scope, "DELETE", "/Users/a/password", "r1", None, b"", 0)
    doc = intent_doc(cfg, x)
    assert doc is not None
    (rec,) = unknown_outcome_records(cfg, json.loads(json.dumps(doc)), "j:1")
    (bulk,) = bulk_events(
        [{"method": "DELETE", "path": "/Users/a/password"}], [{"method": "DELETE", "status": "204"}]
    )
    assert json.loads(rec.body)["rid"] == bulk["rid"] == "a"


def test_redteam22_a_path_the_server_rewrote_is_routed_decoded() -> None:
    """Held (a guard of the fallback): a ``raw_path`` that does not decode to ``path`` (a
    layer before the adapter rewrote the path) is not taken; the decoded path is routed as
    red team 21 routes it."""
    cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=None)
    scope = {"headers": [], "path": "/v2/Users/a/b", "raw_path": b"/v2/Users/zz"}
    x = Exchange(scope, "DELETE", "/Users/a/b", "r1", None, b"", 0)
    assert x.target(cfg).rid == "a/b"
