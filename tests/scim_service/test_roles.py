"""Every role can do exactly what SCIM.md §5.1 gives it, and nothing more.

401: no token, a malformed, unknown, expired or revoked token. 403: a valid token with the
wrong role, or bound to another tenant. Another tenant's data is never revealed: reads are
scoped to the token's tenant, so they come back empty or 404 rather than leaking existence.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.scim import event_to_json

from .conftest import T1, T2, Harness, user_event

ROLES = ["sub1", "sub2", "aud1", "aud2", "po_a", "po_t2", "admin"]


def _setup(h: Harness) -> dict[str, Any]:
    ev = user_event()
    d = h.post_event(ev).json()
    return {"eid": ev["eid"], "index": d["index"]}


def _call(h: Harness, name: str | None, what: str, ctx: dict[str, Any]) -> httpx.Response:
    hdr = h.h(name)
    j = {**hdr, "Content-Type": "application/json"}
    c = h.client
    if what == "post-event":
        return c.post("/v1/scim/events", content=event_to_json(user_event(rid="u-x")), headers=j)
    if what == "post-batch":
        body = json.dumps({"events": [json.loads(event_to_json(user_event(rid="u-y")))]})
        return c.post("/v1/scim/events/batch", content=body, headers=j)
    if what == "search":
        return c.get("/v1/scim/events", headers=hdr)
    if what == "receipts":
        return c.get(f"/v1/scim/receipts?eid={ctx['eid']}", headers=hdr)
    if what == "tenant-ref":
        return c.get("/v1/scim/tenant-ref", headers=hdr)
    if what == "pseudonyms":
        return c.post(
            "/v1/scim/pseudonyms", json={"refs": [{"rt": "User", "id": "u-1"}]}, headers=hdr
        )
    if what == "erasure":
        body = {"tenant": T1, "rt": "User", "rid": "u-alice-7f3a", "reason": "gdpr-art17"}
        return c.post("/v1/scim/erasures", json=body, headers=hdr)
    raise AssertionError(what)


# Expected status per (endpoint, token). The event posted is for tenant T1.
# fmt: off
EXPECT: dict[str, dict[str, int]] = {
    "post-event": {"sub1": 200, "sub2": 403, "aud1": 403, "aud2": 403, "po_a": 403,
                   "po_t2": 403, "admin": 403},
    "post-batch": {"sub1": 200, "sub2": 403, "aud1": 403, "aud2": 403, "po_a": 403,
                   "po_t2": 403, "admin": 403},
    "search": {"sub1": 403, "sub2": 403, "aud1": 200, "aud2": 200, "po_a": 403,
               "po_t2": 403, "admin": 403},
    "receipts": {"sub1": 200, "sub2": 404, "aud1": 200, "aud2": 404, "po_a": 403,
                 "po_t2": 403, "admin": 403},
    "tenant-ref": {"sub1": 403, "sub2": 403, "aud1": 200, "aud2": 200, "po_a": 403,
                   "po_t2": 403, "admin": 403},
    "pseudonyms": {"sub1": 200, "sub2": 200, "aud1": 403, "aud2": 403, "po_a": 403,
                   "po_t2": 403, "admin": 403},
    "erasure": {"sub1": 403, "sub2": 403, "aud1": 403, "aud2": 403, "po_a": 201,
                "po_t2": 403, "admin": 403},
}
# fmt: on


@pytest.mark.parametrize("what", list(EXPECT))
def test_role_matrix(harness: Harness, what: str) -> None:
    ctx = _setup(harness)
    got = {name: _call(harness, name, what, ctx).status_code for name in ROLES}
    assert got == EXPECT[what]


@pytest.mark.parametrize("what", list(EXPECT))
@pytest.mark.parametrize(
    "bad",
    ["none", "garbage", "unknown", "expired", "revoked", "basic"],
)
def test_bad_credentials_are_401(harness: Harness, what: str, bad: str) -> None:
    ctx = _setup(harness)
    role = {"search": "auditor", "tenant-ref": "auditor", "erasure": "privacy-officer"}.get(
        what, "submitter"
    )
    tenant = None if role == "privacy-officer" else T1
    if bad == "expired":
        token, _ = harness.tokens.create(role, tenant=tenant, ttl=0)
    elif bad == "revoked":
        token, p = harness.tokens.create(role, tenant=tenant)
        harness.tokens.revoke(p.token_id)
    else:
        token = {"none": "", "garbage": "xyz", "unknown": "tlog_" + "A" * 43, "basic": ""}[bad]
    harness.tok["bad"] = token
    make: Callable[[str | None], dict[str, str]] = harness.h
    harness.h = lambda name: (  # type: ignore[method-assign]
        {}
        if bad == "none"
        else {"Authorization": "Basic dXNlcjpwYXNz"}
        if bad == "basic"
        else make(name)
    )
    r = _call(harness, "bad", what, ctx)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == 'Bearer realm="tlog"'
    assert "error" in r.json()


def test_auditor_sees_only_its_tenant(harness: Harness) -> None:
    harness.post_event(user_event(rid="u-acme-only-1"))
    harness.post_event(user_event(tenant=T2, rid="u-globex-only-1"), "sub2")
    a1 = harness.auditor("aud1")
    a2 = harness.auditor("aud2")
    rids1 = {r.event["rid"] for r in a1.search_all() if r.event and r.event["rt"] == "User"}
    rids2 = {r.event["rid"] for r in a2.search_all() if r.event and r.event["rt"] == "User"}
    assert rids1 == {"u-acme-only-1"} and rids2 == {"u-globex-only-1"}
    assert a2.search(rid="u-acme-only-1").results == []
    assert a1.tenant_ref() != a2.tenant_ref()


def test_submitter_cannot_read_bodies_and_receipts_carry_none(harness: Harness) -> None:
    ev = user_event()
    harness.post_event(ev)
    r = harness.client.get(f"/v1/scim/receipts?eid={ev['eid']}", headers=harness.h("sub1"))
    assert r.status_code == 200
    text = r.text
    for ident in (ev["rid"], ev["xid"], ev["actor"]["id"], ev["corr"]["req"]):
        assert ident not in text
    assert (
        harness.client.get(
            f"/v1/scim/events?rid={ev['rid']}", headers=harness.h("sub1")
        ).status_code
        == 403
    )


def test_erasure_roles(harness: Harness) -> None:
    harness.post_event(user_event())
    body = {"tenant": T1, "rt": "User", "rid": "u-alice-7f3a", "reason": "gdpr-art17"}
    r = harness.client.post("/v1/scim/erasures", json=body, headers=harness.h("po_a"))
    assert r.status_code == 201
    rid = r.json()["id"]
    path = f"/v1/scim/erasures/{rid}/approve"
    # The requester cannot approve its own request: dual control.
    r = harness.client.post(path, headers=harness.h("po_a"))
    assert r.status_code == 403 and "dual control" in r.json()["error"]
    for name in ("sub1", "aud1", "admin"):
        assert harness.client.post(path, headers=harness.h(name)).status_code == 403
    # An officer bound to another tenant does not even see the request.
    assert harness.client.post(path, headers=harness.h("po_t2")).status_code == 404
    assert (
        harness.client.get(f"/v1/scim/erasures/{rid}", headers=harness.h("po_t2")).status_code
        == 404
    )
    assert (
        harness.client.get(f"/v1/scim/erasures/{rid}", headers=harness.h("aud1")).status_code == 403
    )
    st = harness.client.get(f"/v1/scim/erasures/{rid}", headers=harness.h("po_b")).json()
    assert st["state"] == "pending" and st["requested_by"] == harness.ids["po_a"]
    r = harness.client.post(path, headers=harness.h("po_b"))
    assert r.status_code == 200 and r.json()["state"] == "done"


def test_token_without_tenant_cannot_submit(harness: Harness) -> None:
    token, _ = harness.tokens.create("submitter", tenant=None)
    # TokenStore binds submitters to "default" when no tenant is given.
    ev = user_event(tenant="default")
    r = harness.client.post(
        "/v1/scim/events",
        content=event_to_json(ev),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    assert r.status_code == 200


def test_dual_control_is_by_person_not_by_token(harness: Harness) -> None:
    """Issue 10 part 3: two officer tokens of the same person cannot request and approve."""
    h = harness
    _setup(h)
    alice1, _ = h.tokens.create("privacy-officer", name="dpo-alice", person="Alice Smith")
    alice2, _ = h.tokens.create("privacy-officer", name="dpo-alice-2", person="  alice   SMITH ")
    bob, _ = h.tokens.create("privacy-officer", name="dpo-bob", person="Bob Jones")
    assert sorted(p.name for p in h.tokens.of_person("ALICE SMITH")) == ["dpo-alice", "dpo-alice-2"]
    body = {"tenant": T1, "rt": "User", "rid": "u-alice-7f3a", "reason": "gdpr-art17"}
    r = h.client.post("/v1/scim/erasures", json=body, headers={"Authorization": f"Bearer {alice1}"})
    assert r.status_code == 201, r.text
    path = f"/v1/scim/erasures/{r.json()['id']}/approve"
    for tok in (alice1, alice2):
        r = h.client.post(path, headers={"Authorization": f"Bearer {tok}"})
        assert r.status_code == 403 and "another person" in r.json()["error"]
    r = h.client.post(path, headers={"Authorization": f"Bearer {bob}"})
    assert r.status_code == 200 and r.json()["state"] == "done"


def test_token_cli_names_the_person(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], database: str | None
) -> None:
    from tests.pgsupport import open_store
    from tests.server.conftest import make_signer
    from tests.support import store_args
    from tlog.cli import main
    from tlog.log import Log

    # token commands need a store holding a log (as 'tlog serve' leaves it)
    storage = open_store(database, tmp_path / "db" if database is None else tmp_path)
    Log(storage, make_signer())
    storage.close()
    data = ["--data", str(tmp_path), *store_args(database)]
    assert main(["token", "create", *data, "--role", "privacy-officer"]) == 2
    assert "--person" in capsys.readouterr().err
    args = ["token", "create", *data, "--role", "privacy-officer", "--person", "Alice Smith"]
    assert main([*args, "--name", "a1"]) == 0
    first = capsys.readouterr()
    assert first.out.startswith("tlog_") and "already" not in first.err
    assert main([*args, "--name", "a2"]) == 0
    second = capsys.readouterr()
    assert "already holds 1 active privacy-officer token" in second.err
    assert second.out.strip() not in second.err  # the token itself is printed once, on stdout
