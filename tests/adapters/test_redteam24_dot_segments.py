"""Red team 24: a request path's dot segments, as the client sent them.

Red team 22 routes a request from its raw path, split on ``/`` and each segment decoded;
a ``.`` or ``..`` segment (literal, or ``%2E%2E``: RFC 3986 §6.2.2.2 makes them the same)
was taken as a segment like any other, so ``DELETE /Users/../Groups/g1`` was recorded as
the deletion of a User ``..``: a resource no SP holds, while an SP behind anything that
normalises the path (a reverse proxy, RFC 3986 §5.2.4 reference resolution) deleted Group
``g1``, a deletion hidden from the log. Red team 21 already gave a location's ``..`` no id.
The path's dot segments are now removed before routing, as resolution removes them: the
request is recorded on the resource the normalised path names (``/Users/..`` names none).
Through the middleware on a real uvicorn (which hands the path over as sent), a killed
adapter's intent and a bulk operation's path alike.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from client.adapters.exchange import AuditConfig, Exchange
from client.adapters.middleware import intent_doc, unknown_outcome_records

from .helpers import (
    FakeLog,
    answers_204,
    bulk_events,
    routed_deletes,
    serve_middleware,
    serve_proxy,
    standin_sp,  # noqa: F401  (the SP stand-in fixture, "sp")
)

# (path as sent, the (type, id) recorded; None: no event, the path names no resource)
WRITES = [
    ("/v2/Users/../Groups/g1", ("Group", "g1")),  # the finding: a User ".."
    ("/v2/Users/%2E%2E/Groups/g2", ("Group", "g2")),
    ("/v2/Users/%2e./Groups/g3", ("Group", "g3")),
    ("/v2/Users/./u4", ("User", "u4")),  # was a User "."
    ("/v2/Users/x/../u5", ("User", "u5")),  # was user x
    ("/v2/Users/u6/..", None),  # DELETE /Users: no resource (was a User "..")
    ("/v2/Users/a%2F..", ("User", "a/..")),  # one segment, not a dot segment (held)
    ("/v2/Users/...", ("User", "...")),  # not a dot segment (held)
]


def test_redteam24_the_middleware_removes_a_paths_dot_segments(tmp_path: Path) -> None:
    srv = serve_middleware(answers_204, tmp_path / "outbox.sqlite", log := FakeLog())
    got = routed_deletes(srv, log, [p for p, _ in WRITES])
    assert got == {path: want for path, want in WRITES if want is not None}


def test_redteam24_the_proxy_removes_dot_segments_as_the_middleware_does(
    sp: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    """The proxy routes the same bytes to the same resource, and forwards them as sent."""
    upstream, seen = sp
    srv = serve_proxy(upstream, log := FakeLog(), tmp_path / "o.sqlite", "dots")
    want = {path: w for path, w in WRITES if w is not None}
    assert routed_deletes(srv, log, [p for p, _ in WRITES], len(want)) == want
    assert [p for _, p in seen] == [path for path, _ in WRITES]  # forwarded as sent


def test_redteam24_an_intent_and_a_bulk_path_remove_dot_segments_alike() -> None:
    cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=None)
    raw = "/v2/Users/%2E%2E/Groups/g1"
    scope = {"headers": [], "path": "/v2/Users/../Groups/g1", "raw_path": raw.encode()}
    x = Exchange(scope, "DELETE", "/Users/../Groups/g1", "r1", None, b"", 0)
    doc = intent_doc(cfg, x)
    assert doc is not None
    (rec,) = unknown_outcome_records(cfg, json.loads(json.dumps(doc)), "j:1")
    (bulk,) = bulk_events(
        [{"method": "DELETE", "path": "/Users/%2E%2E/Groups/g1"}],
        [{"method": "DELETE", "status": "204"}],
    )
    got = json.loads(rec.body)
    assert (got["rt"], got["rid"]) == (bulk["rt"], bulk["rid"]) == ("Group", "g1")


def test_redteam24_a_recovered_intent_names_the_type_the_request_was_routed_to() -> None:
    """The intent kept the routed id (red team 22) but its type was routed again from the
    decoded ``p`` at recovery: ``/Users%2Fx/a`` (an endpoint ``Users/x``, no type) came
    back as User ``a``, and ``/Users/a%2F..%2FGroups%2Fg1`` (one User id) as a Group with
    that User's id. The intent now keeps the path as sent, and recovery routes it as the
    live request was routed."""
    cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=None)
    for raw in ("/v2/Users%2Fx/a", "/v2/Users/a%2F..%2F..%2FGroups%2Fg1", "/v2/Users/%2E/b"):
        path = urllib.parse.unquote(raw)
        scope = {"headers": [], "path": path, "raw_path": raw.encode()}
        x = Exchange(scope, "DELETE", path.removeprefix("/v2"), "r1", None, b"", 0)
        live = x.target(cfg)
        doc = intent_doc(cfg, x)
        assert doc is not None
        (rec,) = unknown_outcome_records(cfg, json.loads(json.dumps(doc)), "j:1")
        got = json.loads(rec.body)
        assert (got["rt"], got["rid"]) == (live.rt, live.rid), raw
