"""Every route the server serves, walked from the app's real route table, against every kind
of caller: no token, a malformed, unknown, revoked or expired one, each role, and a token of
another tenant.

The table below says for each (method, path) who may call it; a route the app serves that is
missing here fails :func:`test_the_table_names_every_route_the_app_serves`, so a route added
later without an entry (and so, likely, without a decision about its check) is caught.
Public-by-design reads must stay public: they answer whatever token is sent, or none.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from client.scim import event_to_json
from tlog.app import LogApp

from .conftest import T1, T2, Harness, open_harness, user_event

PUBLIC = "public"
ALL = ("submitter", "auditor", "privacy-officer", "admin")

# (method, path as the route table spells it) -> the roles that may call it, or PUBLIC.
# Tenant-bound roles act on their own tenant only (see _other_tenant below).
TABLE: dict[tuple[str, str], str | tuple[str, ...]] = {
    ("GET", "/tile/{path:path}"): PUBLIC,
    ("GET", "/v1/proof/inclusion"): PUBLIC,
    ("GET", "/checkpoint"): PUBLIC,
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/v1/proof/consistency"): PUBLIC,
    ("GET", "/v1/log"): PUBLIC,
    ("GET", "/v1/entries/{index}"): PUBLIC,
    ("GET", "/v1/bundle/{index}"): PUBLIC,
    ("GET", "/v1/witnesses"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/ui"): PUBLIC,
    ("GET", "/ui/"): PUBLIC,
    ("GET", "/ui/{name}"): PUBLIC,
    ("GET", "/v1/ui/summary"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("POST", "/v1/entries"): ("submitter",),
    ("POST", "/v1/entries/batch"): ("submitter",),
    ("POST", "/v1/scim/events"): ("submitter",),
    ("GET", "/v1/scim/events"): ("auditor",),
    ("POST", "/v1/scim/events/batch"): ("submitter",),
    ("GET", "/v1/scim/receipts"): ("submitter", "auditor"),
    ("GET", "/v1/scim/tenant-ref"): ("auditor",),
    ("POST", "/v1/scim/pseudonyms"): ("submitter",),
    ("GET", "/v1/scim/whoami"): ALL,
    ("POST", "/v1/scim/erasures"): ("privacy-officer",),
    ("GET", "/v1/scim/erasures"): ("privacy-officer",),
    ("GET", "/v1/scim/erasures/{id}"): ("privacy-officer",),
    ("POST", "/v1/scim/erasures/{id}/approve"): ("privacy-officer",),
    ("GET", "/v1/scim/erasures/{id}/certificate"): ("privacy-officer",),
    ("POST", "/v1/scim/holds"): ("privacy-officer",),
    ("GET", "/v1/scim/holds"): ("privacy-officer",),
    ("POST", "/v1/scim/holds/{id}/release"): ("privacy-officer",),
    ("PUT", "/v1/scim/retention"): ("privacy-officer",),
    ("GET", "/v1/scim/retention"): ("privacy-officer", "admin"),
    ("POST", "/v1/scim/expire"): ("privacy-officer", "admin"),
    ("POST", "/v1/scim/exports"): ("auditor",),
}

# The caller of each role that should succeed (tenant T1, or unbound), and one of the same
# role bound to the other tenant T2.
OWN = {"submitter": "sub1", "auditor": "aud1", "privacy-officer": "po_b", "admin": "admin"}
OTHER = {"submitter": "sub2", "auditor": "aud2", "privacy-officer": "po_t2"}


def _served(app: LogApp) -> set[tuple[str, str]]:
    out = set()
    for r in app.app.routes:
        assert isinstance(r, Route), r  # nothing but plain routes (no mounts hiding others)
        for m in r.methods or ():
            if m != "HEAD":  # Starlette adds HEAD to every GET
                out.add((m, r.path))
    return out


def _table_path(path: str) -> str:
    return path.replace("{path:path}", "{path}")


@dataclass
class Ctx:
    """T1's objects the requests name: an event, a pending erasure (requested by po_a), a
    finished one, a legal hold."""

    eid: str
    index: int
    pending: str
    done: str
    hold: str


def _setup(h: Harness) -> Ctx:
    ev = user_event(rid="u-route-1")
    d = h.post_event(ev).json()
    h.post_event(user_event(rid="u-route-2"))  # a tree of 2+ for consistency proofs
    pending = h.request_erasure("u-route-1").json()["id"]
    done = h.request_erasure("u-route-2").json()["id"]
    r = h.client.post(f"/v1/scim/erasures/{done}/approve", headers=h.h("po_b"))
    assert r.status_code == 200, r.text
    hold = h.client.post(
        "/v1/scim/holds",
        json={"tenant": T1, "reason": "litigation", "rt": "User", "rid": "u-route-3"},
        headers=h.h("po_a"),
    )
    assert hold.status_code == 201, hold.text
    return Ctx(ev["eid"], d["index"], pending, done, hold.json()["id"])


def _request(method: str, path: str, ctx: Ctx, tenant: str = T1) -> tuple[str, dict[str, Any]]:
    """A well-formed request for the route (naming tenant ``tenant``'s objects): the URL and
    httpx keyword arguments (without the Authorization header)."""
    j = {"Content-Type": "application/json"}
    ev = user_event(rid="u-route-new", tenant=tenant)
    bodies: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {
        ("GET", "/tile/{path:path}"): ("/tile/0/000.p/2", {}),
        ("GET", "/v1/proof/inclusion"): (f"/v1/proof/inclusion?index={ctx.index}", {}),
        ("GET", "/v1/proof/consistency"): ("/v1/proof/consistency?old_size=1", {}),
        ("GET", "/v1/entries/{index}"): (f"/v1/entries/{ctx.index}", {}),
        ("GET", "/v1/bundle/{index}"): (f"/v1/bundle/{ctx.index}", {}),
        ("GET", "/ui/{name}"): ("/ui/index.html", {}),
        ("POST", "/v1/entries"): ("/v1/entries", {"content": b"raw entry " + uuid.uuid4().bytes}),
        ("POST", "/v1/entries/batch"): (
            "/v1/entries/batch",
            {"json": {"entries": ["cmF3IGJhdGNoIGVudHJ5"]}},
        ),
        ("POST", "/v1/scim/events"): (
            "/v1/scim/events",
            {"content": event_to_json(ev), "headers": j},
        ),
        ("GET", "/v1/scim/events"): ("/v1/scim/events?rid=u-route-1", {}),
        ("POST", "/v1/scim/events/batch"): (
            "/v1/scim/events/batch",
            {"content": '{"events": [' + event_to_json(ev) + "]}", "headers": j},
        ),
        ("GET", "/v1/scim/receipts"): (f"/v1/scim/receipts?eid={ctx.eid}", {}),
        ("POST", "/v1/scim/pseudonyms"): (
            "/v1/scim/pseudonyms",
            {"json": {"refs": [{"rt": "User", "id": "u-route-1"}]}},
        ),
        ("POST", "/v1/scim/erasures"): (
            "/v1/scim/erasures",
            {"json": {"tenant": tenant, "rt": "User", "rid": "u-x", "reason": "gdpr-art17"}},
        ),
        ("GET", "/v1/scim/erasures/{id}"): (f"/v1/scim/erasures/{ctx.pending}", {}),
        ("POST", "/v1/scim/erasures/{id}/approve"): (
            f"/v1/scim/erasures/{ctx.pending}/approve",
            {},
        ),
        ("GET", "/v1/scim/erasures/{id}/certificate"): (
            f"/v1/scim/erasures/{ctx.done}/certificate",
            {},
        ),
        ("POST", "/v1/scim/holds"): (
            "/v1/scim/holds",
            {"json": {"tenant": tenant, "reason": "audit"}},
        ),
        ("POST", "/v1/scim/holds/{id}/release"): (f"/v1/scim/holds/{ctx.hold}/release", {}),
        ("PUT", "/v1/scim/retention"): (
            "/v1/scim/retention",
            {"json": {"tenant": tenant, "days": 365}},
        ),
        ("GET", "/v1/scim/retention"): (f"/v1/scim/retention?tenant={tenant}", {}),
        ("POST", "/v1/scim/expire"): ("/v1/scim/expire", {"json": {"tenant": tenant}}),
        ("POST", "/v1/scim/exports"): ("/v1/scim/exports", {"json": {"sink": "siem"}}),
    }
    return bodies.get((method, path), (path, {}))


def _call(
    h: Harness, method: str, path: str, ctx: Ctx, auth: dict[str, str], tenant: str = T1
) -> httpx.Response:
    url, kw = _request(method, path, ctx, tenant)
    headers = {**kw.pop("headers", {}), **auth}
    return h.client.request(method, url, headers=headers, **kw)


@pytest.fixture
def rig(tmp_path: Path, database: str | None) -> Iterator[tuple[Harness, Ctx]]:
    with open_harness(tmp_path, database=database) as h:
        yield h, _setup(h)


ROUTES = sorted(TABLE)


def test_the_table_names_every_route_the_app_serves(tmp_path: Path) -> None:
    """The real route table (Starlette's routes, which the fast dispatch is derived from),
    not a list kept by hand: a new route without a row here fails."""
    with open_harness(tmp_path) as h:
        app = h.client.app
        assert isinstance(app, LogApp)
        served = _served(app)
        assert {(m, _table_path(p)) for m, p in served} == {(m, _table_path(p)) for m, p in TABLE}
        # The fast dispatch answers only rows of the same table (tests/server/test_routing).
        for e in app.api.endpoints():
            assert (e.method, e.path) in TABLE


def _bad_tokens(h: Harness, roles: tuple[str, ...]) -> dict[str, dict[str, str]]:
    """Credentials that must all be 401 on a protected route: each built for a role that
    could call it (so only the credential itself is wrong)."""
    role = roles[0]
    tenant = T1 if role in ("submitter", "auditor") else None
    expired, _ = h.tokens.create(role, tenant=tenant, ttl=0)
    revoked, p = h.tokens.create(role, tenant=tenant)
    h.tokens.revoke(p.token_id)
    bearer = {"Authorization": f"Bearer {h.tok[OWN[role]]}"}
    return {
        "none": {},
        "empty bearer": {"Authorization": "Bearer "},
        "garbage": {"Authorization": "Bearer !!not a token!!"},
        "basic": {"Authorization": "Basic dXNlcjpwYXNz"},
        "token without scheme": {"Authorization": h.tok[OWN[role]]},
        "scheme twice": {"Authorization": "Bearer " + bearer["Authorization"]},
        "unknown": {"Authorization": "Bearer tlog_" + "A" * 43},
        "expired": {"Authorization": f"Bearer {expired}"},
        "revoked": {"Authorization": f"Bearer {revoked}"},
    }


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r[0]} {r[1]}")
def test_every_route_against_every_caller(rig: tuple[Harness, Ctx], route: tuple[str, str]) -> None:
    h, ctx = rig
    method, path = route
    allowed = TABLE[route]
    names = ["sub1", "sub2", "aud1", "aud2", "po_a", "po_b", "po_t2", "admin"]
    if allowed == PUBLIC:
        # Public reads stay public: no token, any token, a garbage one.
        for auth in (
            {},
            {"Authorization": "Bearer !!garbage!!"},
            *({"Authorization": f"Bearer {h.tok[n]}"} for n in names),
        ):
            r = _call(h, method, path, ctx, auth)
            assert r.status_code < 400 or r.status_code == 404, (route, auth, r.text)
            assert r.status_code not in (401, 403), (route, r.text)
        return
    assert isinstance(allowed, tuple)
    for what, auth in _bad_tokens(h, allowed).items():
        r = _call(h, method, path, ctx, auth)
        assert r.status_code == 401, (route, what, r.status_code, r.text)
        assert r.headers["www-authenticate"] == 'Bearer realm="tlog"'
        assert "error" in r.json()
    # A valid token of a role without the permission: 403, whatever the tenant.
    for name in names:
        role_of = {
            "sub1": "submitter", "sub2": "submitter", "aud1": "auditor", "aud2": "auditor",
            "po_a": "privacy-officer", "po_b": "privacy-officer", "po_t2": "privacy-officer",
            "admin": "admin",
        }[name]  # fmt: skip
        if role_of in allowed:
            continue
        r = _call(h, method, path, ctx, h.h(name))
        assert r.status_code == 403, (route, name, r.status_code, r.text)
        assert "error" in r.json()
    # A token of another tenant, of a role that may call the route: never T1's data, and
    # never a write into T1.
    for role in allowed:
        if role in OTHER:
            _other_tenant(h, ctx, route, OTHER[role])
    # The allowed callers of the route's own tenant succeed (the table is not just denials).
    for role in allowed:
        r = _call(h, method, path, ctx, h.h(OWN[role]))
        assert 200 <= r.status_code < 300, (route, role, r.status_code, r.text)


def _other_tenant(h: Harness, ctx: Ctx, route: tuple[str, str], name: str) -> None:
    method, path = route
    before = h.log.latest.size
    r = _call(h, method, path, ctx, h.h(name))
    text = r.text
    if route in {
        ("POST", "/v1/entries"),  # raw entries belong to no tenant
        ("POST", "/v1/entries/batch"),
        ("GET", "/v1/scim/events"),
        ("GET", "/v1/scim/tenant-ref"),
        ("POST", "/v1/scim/pseudonyms"),
        ("GET", "/v1/scim/whoami"),
        ("POST", "/v1/scim/exports"),
        ("GET", "/v1/scim/erasures"),
        ("GET", "/v1/scim/holds"),
    }:
        # Scoped by the token: answered for the caller's own tenant, nothing of T1 in it.
        assert r.status_code in (200, 201, 403), (route, r.status_code, text)
        assert T1 not in text and "u-route-1" not in text, (route, text)
        for oid in (ctx.eid, ctx.pending, ctx.done, ctx.hold):
            assert oid not in text, (route, text)
        return
    # Naming T1 (in the body, the query or an object id of T1's): refused, 403 or 404.
    assert r.status_code in (403, 404), (route, name, r.status_code, text)
    assert "error" in r.json()
    if method != "GET":
        # Nothing was logged for T1 by the refusal (an access or erasure event would be a
        # leaf; a refusal before any write adds none).
        assert h.log.latest.size == before, (route, name)


def test_tenant_names_in_bodies_are_checked_against_a_bound_officer(
    rig: tuple[Harness, Ctx],
) -> None:
    """An officer bound to T2 naming T2 in the body is fine (control for _other_tenant)."""
    h, ctx = rig
    for route in (("POST", "/v1/scim/erasures"), ("POST", "/v1/scim/holds"),
                  ("PUT", "/v1/scim/retention"), ("GET", "/v1/scim/retention")):  # fmt: skip
        r = _call(h, *route, ctx, h.h("po_t2"), tenant=T2)
        assert 200 <= r.status_code < 300, (route, r.text)
