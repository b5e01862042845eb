"""Issue 9 part 1: effects, not only intent. The log keeps each resource's security-relevant
state (encrypted under the subject's keys) and classifies each event against it; searched
through the middleware around a real SCIM SP (scim2-server's ASGI app) into a real log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from client.net.scim_audit import AuditedEvent
from tests.scim_service.conftest import Harness, harness  # noqa: F401
from tlog.scim import store

from .helpers import GROUP, PATCH, SCIM_TOKEN, USER, scim_asgi_app
from .rig import Rig, make_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}


@pytest.fixture
def rig(harness: Harness, tmp_path: Path) -> Iterator[Rig]:  # noqa: F811
    with make_rig(harness, tmp_path, app=scim_asgi_app()) as r:
        yield r


def one(rig: Rig, req: str) -> AuditedEvent:
    (found,) = rig.auditor().search(req=req).results
    return found


def derived(f: AuditedEvent) -> list[str]:
    return [a["a"] for a in (f.effect or {}).get("acts", ())]


def intent(f: AuditedEvent) -> list[str]:
    return [a["a"] for a in (f.event or {}).get("acts", ())]


def put_user(rig: Rig, uid: str, req: str, **attrs: Any) -> int:
    body = {"schemas": [USER], "userName": "okta.user", **attrs}
    r = rig.client.put(f"/v2/Users/{uid}", json=body, headers={**AUTH, "X-Request-Id": req})
    return r.status_code


def test_okta_put_reactivation_is_an_activation(rig: Rig) -> None:
    r = rig.client.post(
        "/v2/Users",
        json={"schemas": [USER], "userName": "okta.user", "active": True},
        headers={**AUTH, "X-Request-Id": "o-create"},
    )
    uid = r.json()["id"]
    # Okta deactivates with a PUT of the whole user, active false ...
    assert put_user(rig, uid, "o-deact", active=False) == 200
    # ... and reactivates with a PUT, active true: the request alone says only "update".
    assert put_user(rig, uid, "o-react", active=True) == 200
    assert put_user(rig, uid, "o-same", active=True) == 200
    deact, react, same = one(rig, "o-deact"), one(rig, "o-react"), one(rig, "o-same")
    assert "user.deactivate" in intent(deact) and derived(deact) == ["user.deactivate"]
    assert intent(react) == ["user.update"]
    assert derived(react) == ["user.activate"]  # re-granted access, flagged
    assert react.effect is not None and react.effect["basis"] == "state"
    assert {"attr": "active", "old": "false", "new": "true"} in react.effect["changes"]
    assert derived(same) == ["user.noop"]  # restating the same values changed nothing
    found = rig.auditor().search(action="user.activate").results
    assert [f.event["corr"]["req"] for f in found if f.event] == ["o-react"]


def test_group_put_names_adds_and_removes(rig: Rig) -> None:
    c = rig.client
    ids = [
        c.post("/v2/Users", json={"schemas": [USER], "userName": n}, headers=AUTH).json()["id"]
        for n in ("ann", "ben", "cat")
    ]
    r = c.post(
        "/v2/Groups",
        json={
            "schemas": [GROUP],
            "displayName": "admins",
            "members": [{"value": ids[0]}, {"value": ids[1]}],
        },
        headers={**AUTH, "X-Request-Id": "g-create"},
    )
    gid = r.json()["id"]
    r = c.put(
        f"/v2/Groups/{gid}",
        json={
            "schemas": [GROUP],
            "displayName": "admins",
            "members": [{"value": ids[1]}, {"value": ids[2]}],
        },
        headers={**AUTH, "X-Request-Id": "g-put"},
    )
    assert r.status_code == 200
    put = one(rig, "g-put")
    assert intent(put) == ["group.update"]
    assert derived(put) == ["group.member.add", "group.member.remove"]
    a = rig.auditor()
    # The removed member's id finds the PUT that removed it (by pseudonym, never in plain).
    got = a.search(ref=ids[0], action="group.member.remove").results
    assert [f.event["corr"]["req"] for f in got if f.event] == ["g-put"]
    assert ids[0] not in json.dumps(put.effect)
    got = a.search(ref=ids[2], action="group.member.add").results
    assert [f.event["corr"]["req"] for f in got if f.event] == ["g-put"]
    # A remove of someone who is not a member changed nothing, and says so.
    body = {
        "schemas": [PATCH],
        "Operations": [{"op": "remove", "path": f'members[value eq "{ids[0]}"]'}],
    }
    r = c.patch(f"/v2/Groups/{gid}", json=body, headers={**AUTH, "X-Request-Id": "g-noop"})
    noop = one(rig, "g-noop")
    assert intent(noop) == ["group.member.remove"]
    assert derived(noop) == ["group.noop"]
    assert noop.effect is not None
    assert noop.effect["noop"] == [{"attr": "members", "op": "remove", "n": 1}]
    # Replacing the member list by PATCH is named adds and removes too.
    body = {
        "schemas": [PATCH],
        "Operations": [{"op": "replace", "path": "members", "value": [{"value": ids[0]}]}],
    }
    c.patch(f"/v2/Groups/{gid}", json=body, headers={**AUTH, "X-Request-Id": "g-repl"})
    repl = one(rig, "g-repl")
    assert derived(repl) == ["group.member.add", "group.member.remove"]
    assert repl.effect is not None
    assert sorted(r["op"] for r in repl.effect["refs"]) == ["add", "remove", "remove"]


def test_roles_granted_and_revoked_by_put(rig: Rig) -> None:
    c = rig.client
    uid = c.post("/v2/Users", json={"schemas": [USER], "userName": "rita"}, headers=AUTH).json()[
        "id"
    ]
    body = {
        "schemas": [PATCH],
        "Operations": [{"op": "add", "path": "roles", "value": [{"value": "admin"}]}],
    }
    c.patch(f"/v2/Users/{uid}", json=body, headers={**AUTH, "X-Request-Id": "r-add"})
    put_user(rig, uid, "r-put", roles=[{"value": "viewer"}])
    add, put = one(rig, "r-add"), one(rig, "r-put")
    assert derived(add) == ["user.role.grant"]
    assert derived(put) == ["user.role.grant", "user.role.revoke", "user.update"]
    assert put.effect is not None
    assert {"attr": "roles", "removed": ["admin"]} in put.effect["changes"]


def test_state_is_shredded_with_the_subject(rig: Rig) -> None:
    h = rig.harness
    c = rig.client
    uid = c.post("/v2/Users", json={"schemas": [USER], "userName": "gone"}, headers=AUTH).json()[
        "id"
    ]
    assert rig.relay.flush(20)

    def has_state() -> bool:
        with h.service.storage.read() as rv:
            return any(
                k.startswith(store.PREFIX + b"F") for k, _ in rv.aux_range(store.PREFIX + b"F")
            )

    assert has_state()
    req = h.request_erasure(uid)
    assert req.status_code in (200, 201), req.text
    r = h.client.post(f"/v1/scim/erasures/{req.json()['id']}/approve", headers=h.h("po_b"))
    assert r.status_code == 200, r.text
    assert not has_state()
