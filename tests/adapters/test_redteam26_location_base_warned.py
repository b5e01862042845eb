"""Red team 26: a reverse proxy rewriting the path prefix, against faith24's location base check.

A common deployment: the proxy serves ``https://scim.example/api/scim/v2`` and strips
``/api`` before the app (``Host`` kept), and the SP builds its locations from its public
URL, so a create the app sees at ``/scim/v2/Users`` is answered
``https://scim.example/api/scim/v2/Users/u-1``. The base ``/api/scim/v2`` is none the
request was served from, so every create of the deployment is recorded with its id not
known. Found: it was silent (the once-a-server warning only covers another server), so an
operator never learned why. Now the base is named once (escaped, cut, at most 64 of them
with the servers), with the remedy, and ``sp_base`` naming the public base keeps the ids.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

import client.adapters.exchange as exchange
from client.adapters.exchange import AuditConfig, Builder, Exchange

from .recorded import pid

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
BODY = {"schemas": [USER], "userName": "ann"}


def _create(loc: str, **cfg: Any) -> dict[str, Any]:
    """The event of a create the app sees at ``/scim/v2/Users`` (base ``/scim/v2``, the
    proxy having stripped ``/api``), answered 201 at ``loc``."""
    config = AuditConfig(tenant="t1", sp_id="sp1", base_path="/scim/v2", **cfg)
    scope = {
        "path": "/scim/v2/Users",
        "headers": [(b"host", b"scim.example"), (b"content-type", b"application/scim+json")],
    }
    x = Exchange(scope, "POST", "/Users", "req-1", None, json.dumps(BODY).encode(), 0)
    x.status = 201
    x.headers = [(b"content-type", b"application/scim+json"), (b"location", loc.encode())]
    x.resp_body = json.dumps({**BODY, "id": "u-1"}).encode()
    x.t1_ns = 1_800_000_000_000_000_000
    (ev,) = Builder(config, x, pid).single().events
    return dict(ev)


def _said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "client.adapters.exchange"]


@pytest.mark.parametrize(
    "loc",
    ["/api/scim/v2/Users/u-1", "/api/scim/v2/Users/u-1/", "/api/scim%2Fv2/Users/u-1"],
)
def test_redteam26_a_prefix_rewritten_by_a_proxy_is_told_once(
    loc: str, caplog: pytest.LogCaptureFixture
) -> None:
    exchange._warned_servers.clear()
    caplog.set_level("WARNING", logger="client.adapters.exchange")
    for _ in range(3):
        ev = _create(loc)
        assert ev["rid"] == "-", ev  # held: not the base the request was served from
    said = _said(caplog)
    assert len(said) == 1 and "sp_base" in said[0] and "/api/scim" in said[0], said


def test_redteam26_sp_base_naming_the_public_base_keeps_the_ids(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange._warned_servers.clear()
    caplog.set_level("WARNING", logger="client.adapters.exchange")
    for loc in ("/api/scim/v2/Users/u-1", "https://scim.example/api/scim/v2/Users/u-1"):
        ev = _create(loc, sp_base="https://scim.example/api/scim/v2")
        assert ev["rid"] == "u-1", ev
    assert _said(caplog) == []


def test_redteam26_a_hostile_base_is_warned_bounded_and_printable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exchange._warned_servers.clear()
    caplog.set_level("WARNING", logger="client.adapters.exchange")
    bases = ["/evil%85WARNING%0aforged", "/" + "b" * 6000] + [f"/b{i}" for i in range(80)]
    for base in bases:
        assert _create(base + "/Users/u-1")["rid"] == "-"
    said = _said(caplog)
    assert 0 < len(said) <= 64
    assert all(m.isascii() and m.isprintable() for m in said), said[:2]
    assert all(len(m) < 1000 for m in said), [len(m) for m in said][:2]
