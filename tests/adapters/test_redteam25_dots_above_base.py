"""Red team 25: a path's ``..`` climbing above the SCIM base and into it again.

Red team 24 removes a path's dot segments (RFC 3986 §5.2.4) before routing, but from the
path already taken relative to the base: a ``..`` reaching above the base was dropped there
instead of removing the base's own segment. ``DELETE /v2/Users/../../v2/Users/u1`` is
``/v2/Users/u1`` once normalised, what an SP behind a normalising proxy deletes, yet it was
recorded as the deletion of a resource of type ``v2`` (id ``Users``), and
``/x/../v2/Users/u2`` (a path outside the base, which normalisation brings into it) as one
of type ``x``: a User's deletion hidden under a type no SP has. The whole path's dot
segments are now removed before it is taken relative to the base: through the middleware
and the proxy on a real uvicorn, a killed adapter's intent with or without the path as
sent, and a bulk operation's path alike.
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

# (path as sent, the (type, id) a normalising SP acts on; the base is /v2)
WRITES = [
    ("/v2/Users/../../v2/Users/u1", ("User", "u1")),  # was type "v2", id "Users"
    ("/x/../v2/Users/u2", ("User", "u2")),  # was type "x", id "v2"
    ("/v2/../v2/Groups/g3", ("Group", "g3")),  # was type "v2", id "Groups"
    ("/v2/Users/%2E%2E/%2e%2e/v2/Users/u4", ("User", "u4")),
    ("/../../v2/Users/u5/.", ("User", "u5")),  # above the root: nothing to remove
]


def test_redteam25_the_middleware_resolves_a_dot_segment_climbing_above_the_base(
    tmp_path: Path,
) -> None:
    srv = serve_middleware(answers_204, tmp_path / "outbox.sqlite", log := FakeLog())
    assert routed_deletes(srv, log, [p for p, _ in WRITES]) == dict(WRITES)


def test_redteam25_the_proxy_resolves_them_as_the_middleware_does(
    sp: tuple[str, list[tuple[str, str]]], tmp_path: Path
) -> None:
    upstream, seen = sp
    srv = serve_proxy(upstream, log := FakeLog(), tmp_path / "o.sqlite", "dots25")
    assert routed_deletes(srv, log, [p for p, _ in WRITES], len(WRITES)) == dict(WRITES)
    assert [p for _, p in seen] == [path for path, _ in WRITES]  # forwarded as sent


def test_redteam25_an_intent_and_a_bulk_path_resolve_them_alike() -> None:
    """A killed adapter's intent names what the live request was routed to, from a scope
    with the path as sent and from one without it (a server that sets no ``raw_path``:
    the decoded path routed); a bulk operation's path is resolved alike."""
    cfg = AuditConfig(tenant="t1", sp_id="sp1", base_path="/v2", on_access=None)
    for raw, want in WRITES:
        path = urllib.parse.unquote(raw)
        rel = path.removeprefix("/v2") if path.startswith("/v2/") else path
        for scope in (
            {"headers": [], "path": path, "raw_path": raw.encode()},
            {"headers": [], "path": path},
        ):
            x = Exchange(scope, "DELETE", rel, "r1", None, b"", 0)
            live = x.target(cfg)
            assert (live.rt, live.rid) == want, (raw, scope)
            doc = intent_doc(cfg, x)
            assert doc is not None
            (rec,) = unknown_outcome_records(cfg, json.loads(json.dumps(doc)), "j:1")
            got = json.loads(rec.body)
            assert (got["rt"], got["rid"]) == want, (raw, scope)
            assert got["req"]["p"] == rel  # the path recorded is still as sent
    (bulk,) = bulk_events(
        [{"method": "DELETE", "path": "/v2/Users/../../v2/Users/u1"}],
        [{"method": "DELETE", "status": "204"}],
    )
    assert (bulk["rt"], bulk["rid"]) == ("User", "u1")
