"""faith24: a create's location is held to the base path too, not only its endpoint and id.

RFC 7644 §3.1: the location is the resource's URI at this SP, ``<base>/<endpoint>/<id>``.
Before, only the server (faith23), the endpoint and the id were checked, so a create sent to
``/v2/Users`` answered ``/other/Users/x`` recorded the id ``x`` (a resource the SP placed
under a base the request never named, which later requests of ``/v2/Users/x`` may not
reach). Now the path before the endpoint must be a base the SP serves the request's
resources from: the base the request was sent to (its path before the endpoint, or before
``/Bulk``), the configured ``base_path``
(scim2-server names ``/v2/Users/x`` for a create sent to ``/Users``), either under the ASGI
``root_path``, or the configured ``sp_base``'s path (the proxy's upstream); a relative
location resolved against the request's path. Otherwise the id is not known, and
``x.answer`` says why. One rule for a single create and a bulk POST's result."""

from __future__ import annotations

from typing import Any

import pytest

from client.adapters.exchange import AuditConfig, Builder, Exchange

from .recorded import exchange_event, pid

USER = "urn:ietf:params:scim:schemas:core:2.0:User"
ELSEWHERE = "another base path"


@pytest.mark.parametrize(
    ("loc", "want"),
    [
        ("/v2/Users/x", "x"),  # the configured base
        ("/Users/x", "x"),  # the base the request was sent to (none)
        ("Users/x", "x"),  # relative: resolved against /Users
        ("http://sp.example/V2/users/x", "x"),  # case, as the endpoint's
        ("/other/Users/x", None),
        ("http://sp.example/other/Users/x", None),
        ("/v2/other/Users/x", None),
        ("../other/Users/x", None),  # relative, resolved to /other/Users/x
        ("/v2/x/../Users/x", None),  # not resolved: a base /v2/x/..
    ],
)
def test_a_single_create_s_location_names_the_base(loc: str, want: str | None) -> None:
    body = {"schemas": [USER], "userName": "ann"}
    ev = exchange_event("POST", "/Users", body, 201, {**body, "id": "x"}, location=loc)
    if want is None:
        assert ev["rid"] == "-" and ELSEWHERE in ev["x"]["answer"], ev
    else:
        assert ev["rid"] == want and "answer" not in (ev.get("x") or {}), ev


def _answers(path: str, scope: dict[str, Any], **cfg: Any) -> Any:
    config = AuditConfig(tenant="t1", sp_id="sp1", **cfg)
    x = Exchange({**scope, "path": path, "headers": []}, "POST", "/Bulk", "r", None, b"", 0)
    return Builder(config, x, pid).answers


@pytest.mark.parametrize(
    ("path", "scope", "cfg", "loc", "want"),
    [
        ("/scim/v2/Bulk", {}, {"base_path": "/scim/v2"}, "/scim/v2/Users/x", "x"),
        ("/scim/v2/Bulk", {}, {"base_path": "/scim/v2"}, "/v2/Users/x", None),
        ("/scim/v2/Bulk", {}, {"base_path": "/scim/v2"}, "Users/x", "x"),
        # no base configured: the base the request was sent to
        ("/scim/v2/Bulk", {}, {"base_path": ""}, "/scim/v2/Users/x", "x"),
        ("/scim/v2/Bulk", {}, {"base_path": ""}, "/other/Users/x", None),
        # a mounted app: its locations under the mount
        ("/v2/Bulk", {"root_path": "/api"}, {}, "/api/v2/Users/x", "x"),
        ("/v2/Bulk", {"root_path": "/api"}, {}, "/v2/Users/x", "x"),
        ("/v2/Bulk", {"root_path": "/api"}, {}, "/app/v2/Users/x", None),
        # the proxy: the upstream's base, whatever the client's path
        ("/v2/Bulk", {}, {"sp_base": "http://sp.example/tenant/a"}, "/tenant/a/Users/x", "x"),
        ("/v2/Bulk", {}, {"sp_base": "http://sp.example/tenant/a"}, "/tenant/b/Users/x", None),
    ],
)
def test_a_bulk_result_s_location_names_the_base(
    path: str, scope: dict[str, Any], cfg: dict[str, Any], loc: str, want: str | None
) -> None:
    got, why = _answers(path, scope, **cfg).result_id("/Users", {"location": loc})
    assert got == want, why
    assert (why is None) == (want is not None) and (want or ELSEWHERE in (why or ""))
