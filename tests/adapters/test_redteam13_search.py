"""Red team 13: search by a referenced subject, against scim2-server through the audit
middleware. After a member is removed (by a filter, and by a PUT that leaves them out), after
a manager changes, and after the erasure of that manager and of a member, an auditor's
``ref=`` search finds exactly the events that name the subject, and after the erasure
nothing: not the old events (the erased pid no longer links to the user's id) and not the
events written later, which name the still-existing SP user by a new pid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import Harness, harness  # noqa: F401

from .differential import AUTH, ENT, USER
from .helpers import scim_asgi_app
from .rig import Rig, make_rig

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")
pytestmark = pytest.mark.lmdb_only("the log's backend is not what is tested: once is enough")

GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH = "urn:ietf:params:scim:api:messages:2.0:PatchOp"


def _send(rig: Rig, req: str, method: str, path: str, body: Any) -> Any:
    r = rig.client.request(method, "/v2" + path, json=body, headers={**AUTH, "X-Request-Id": req})
    assert 200 <= r.status_code < 300, (req, r.status_code, r.text)
    return r.json() if r.content else None


def _found(rig: Rig, sp_id: str, action: str | None = None) -> set[str]:
    """The request ids of the events a ``ref=`` search for the User ``sp_id`` finds (those
    that name them as a member or manager: not their own, which ``rid=`` finds)."""
    assert rig.relay.flush(30)
    a = rig.harness.auditor()
    return {
        f.event["corr"]["req"]
        for f in a.search_all(ref=sp_id, ref_rt="User", action=action)
        if f.event is not None
    }


def _erase(h: Harness, sp_id: str) -> None:
    req = h.request_erasure(sp_id).json()["id"]
    r = h.client.post(f"/v1/scim/erasures/{req}/approve", headers=h.h("po_b"))
    assert r.status_code == 200 and r.json()["state"] == "done", r.text


def test_search_by_a_removed_member_and_a_changed_manager_then_after_their_erasure(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    with make_rig(harness, tmp_path, app=scim_asgi_app()) as rig:

        def user(req: str, name: str, **more: Any) -> str:
            body = {"schemas": [USER, ENT], "userName": name, **more}
            return str(_send(rig, req, "POST", "/Users", body)["id"])

        a, b, m1, m2 = (user(f"c-{n}", n) for n in ("a", "b", "m1", "m2"))
        u = user("c-u", "u", **{ENT: {"manager": {"value": m1}}})
        members = [{"value": a}, {"value": b}]
        g = _send(
            rig,
            "c-g",
            "POST",
            "/Groups",
            {"schemas": [GROUP], "displayName": "g", "members": members},
        )["id"]
        ops = [{"op": "remove", "path": f'members[value eq "{a}"]'}]
        _send(rig, "rm-a", "PATCH", f"/Groups/{g}", {"schemas": [PATCH], "Operations": ops})
        _send(rig, "put-g", "PUT", f"/Groups/{g}", {"schemas": [GROUP], "displayName": "g"})
        ops = [{"op": "replace", "path": f"{ENT}:manager", "value": {"value": m2}}]
        _send(rig, "mgr-m2", "PATCH", f"/Users/{u}", {"schemas": [PATCH], "Operations": ops})
        # a PUT without the manager: the SP clears it, and the effect names m2 removed
        _send(rig, "put-u", "PUT", f"/Users/{u}", {"schemas": [USER], "userName": "u"})

        assert _found(rig, a) == {"c-g", "rm-a"}
        assert _found(rig, a, "group.member.remove") == {"rm-a"}
        # the PUT named no members: the effect names b removed, so b's search finds it
        assert _found(rig, b) == {"c-g", "put-g"}
        assert _found(rig, b, "group.member.remove") == {"put-g"}
        assert _found(rig, m1) == {"c-u", "mgr-m2"}
        assert _found(rig, m2) == {"mgr-m2", "put-u"}

        _erase(harness, m1)
        _erase(harness, a)
        assert _found(rig, m1) == set() and _found(rig, a) == set()
        assert _found(rig, m2) == {"mgr-m2", "put-u"}  # the others' are as before
        assert _found(rig, b) == {"c-g", "put-g"}

        # The SP still has both users; the IdP names them again. The adapter's cached pids
        # are the erased ones for up to its cache's lifetime (client.adapters.pseudonyms,
        # documented): past it, as here, it asks the log and gets new ones.
        rig.pids._cache.clear()
        ops = [{"op": "replace", "path": f"{ENT}:manager", "value": {"value": m1}}]
        _send(rig, "mgr-m1", "PATCH", f"/Users/{u}", {"schemas": [PATCH], "Operations": ops})
        ops = [{"op": "add", "path": "members", "value": [{"value": a}]}]
        _send(rig, "add-a", "PATCH", f"/Groups/{g}", {"schemas": [PATCH], "Operations": ops})
        # only the new events: nothing links the new pid to the events before the erasure
        assert _found(rig, m1) == {"mgr-m1"}
        assert _found(rig, a) == {"add-a"}
        assert _found(rig, m2) == {"mgr-m2", "put-u"}
