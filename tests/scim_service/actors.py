"""Actor helpers shared by the SCIM service's actor tests (test modules do not import each
other): an event made by an admin who is a User of the tenant, the two-officer erasure, a raw
search, and what an answer commits the actor to."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from client.scim import new_event

from .conftest import T1, Harness

ADMIN, ADMIN_NAME = "admin-dana-7731", "Dana Quist"


def admin_event(
    rid: str, req: str, actor: dict[str, Any] | None = None, dig: bytes | None = None, **kw: Any
) -> Any:
    """An event about User ``rid`` made by the admin (a User of the tenant)."""
    dig = hashlib.sha256(req.encode()).digest() if dig is None else dig
    return new_event(
        tenant=T1,
        sp="app-1",
        op="patch",
        rt="User",
        rid=rid,
        actor=actor or {"kind": "user", "id": ADMIN, "name": ADMIN_NAME, "tok_d": b"\x07" * 32},
        corr=req,
        req={"m": "PATCH", "p": f"/Users/{rid}", "dig": dig, "len": 9},
        res=200,
        outcome="success",
        mods=[{"attr": "active", "old": "true", "new": "false"}],
        **kw,
    )


def erase(h: Harness, rid: str) -> None:
    """Two officers erase User ``rid`` (as the erasure tests do)."""
    r = h.request_erasure(rid)
    assert r.status_code == 201, r.text
    done = h.client.post(f"/v1/scim/erasures/{r.json()['id']}/approve", headers=h.h("po_b"))
    assert done.status_code == 200, done.text


def search_raw(h: Harness, **params: str) -> dict[str, Any]:
    r = h.client.get("/v1/scim/events", params=params, headers=h.h("aud1"))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def commit_of(d: dict[str, Any]) -> dict[str, Any]:
    """What an answer commits the actor to: its leaf, nonce and (pid, sd, nonce)."""
    a = d["actor"]
    return {
        "leaf": base64.b64decode(d["leaf"]),
        "nonce": base64.b64decode(d["nonce"]),
        "actor": (
            base64.b64decode(a["pid"]),
            base64.b64decode(a["sd"]),
            None if "nonce" not in a else base64.b64decode(a["nonce"]),
        ),
    }
