"""An in-process log server with the SCIM service, tokens for every role, and event makers."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from client.formats.note import Ed25519Signer
from client.net.scim_audit import ScimAuditClient
from client.scim import encode_event, event_to_json, new_event
from tlog.auth import TokenStore
from tlog.log import Log
from tlog.scim.service import ScimService
from tlog.server import build_app
from tlog.signer import CheckpointSigner

from ..support import app_parts, serve_config

ORIGIN = "scim.example/log"
T1 = "tenant-acme"
T2 = "tenant-globex"
BASE_TS = 1_717_200_000_000  # 2024-06-01T00:00:00Z
URL = "http://testserver"


def make_signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519Signer(ORIGIN, bytes(range(32))), ORIGIN)


@dataclass
class Harness:
    client: TestClient
    log: Log
    tokens: TokenStore
    signer: CheckpointSigner
    data: Path
    service: ScimService
    tok: dict[str, str] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)  # token name -> token id

    def h(self, name: str | None) -> dict[str, str]:
        return {} if name is None else {"Authorization": f"Bearer {self.tok[name]}"}

    def post_event(
        self, ev: dict[str, Any], name: str = "sub1", *, cbor: bool = False
    ) -> httpx.Response:
        if cbor:
            body, ctype = encode_event(ev), "application/cbor"
        else:
            body, ctype = event_to_json(ev).encode(), "application/json"
        return self.client.post(
            "/v1/scim/events", content=body, headers={**self.h(name), "Content-Type": ctype}
        )

    def post_raw(
        self, body: bytes, ctype: str, name: str = "sub1", path: str = "/v1/scim/events"
    ) -> httpx.Response:
        return self.client.post(path, content=body, headers={**self.h(name), "Content-Type": ctype})

    def request_erasure(self, rid: str, name: str = "po_a", **body: Any) -> httpx.Response:
        """Officer ``name`` asks to erase User ``rid`` of :data:`T1` (``body`` adds to or
        overrides the request's fields)."""
        b = {"tenant": T1, "rt": "User", "rid": rid, "reason": "gdpr-art17", **body}
        return self.client.post("/v1/scim/erasures", json=b, headers=self.h(name))

    def auditor(self, name: str = "aud1", **kw: Any) -> ScimAuditClient:
        return ScimAuditClient(URL, self.tok[name], self.signer.vkey(), http=self.client, **kw)

    @property
    def vkey(self) -> str:
        return self.signer.vkey()


def user_event(
    rid: str | None = "u-alice-7f3a",
    *,
    tenant: str = T1,
    xid: str | None = "alice.liddell@example.org",
    actor: str = "admin-bob-9921",
    req: str = "req-0001",
    active: tuple[str, str] = ("true", "false"),
    outcome: str = "success",
    op: str = "patch",
    **kw: Any,
) -> dict[str, Any]:
    """A User event; ``active`` gives the mods old/new (true→false derives user.deactivate)."""
    extra: dict[str, Any] = {}
    if outcome != "success":
        extra["err"] = {"scim_type": "invalidValue", "reason": "rejected"}
    return new_event(
        tenant=tenant,
        sp="app-1",
        op=op,
        rt="User",
        rid=rid,
        xid=xid,
        actor={"kind": "user", "id": actor, "name": "Bob Admin"},
        corr=req,
        req={
            "m": {"patch": "PATCH", "create": "POST", "delete": "DELETE"}.get(op, "PUT"),
            "p": f"/Users/{rid}" if rid else "/Users",
            "dig": hashlib.sha256(req.encode()).digest(),
            "len": 42,
        },
        res=200 if outcome == "success" else 400,
        outcome=outcome,
        mods=[{"attr": "active", "old": active[0], "new": active[1]}] if op == "patch" else None,
        **extra,
        **kw,
    )


def group_event(pids: list[bytes], *, rid: str = "g-engineering-42", req: str = "req-g1") -> Any:
    return new_event(
        tenant=T1,
        sp="app-1",
        op="patch",
        rt="Group",
        rid=rid,
        actor={"kind": "user", "id": "admin-carol-1234"},
        corr=req,
        req={"m": "PATCH", "p": f"/Groups/{rid}", "dig": bytes(32), "len": 10},
        res=204,
        outcome="success",
        refs=[{"rt": "User", "pid": p} for p in pids],
        acts=[{"a": "group.member.add", "ocsf": [3006, 3]}],
    )


ROLES = [
    ("sub1", "submitter", T1),
    ("sub2", "submitter", T2),
    ("aud1", "auditor", T1),
    ("aud2", "auditor", T2),
    ("po_a", "privacy-officer", None),
    ("po_b", "privacy-officer", None),
    ("po_t2", "privacy-officer", T2),
    ("admin", "admin", None),
]


@contextlib.contextmanager
def open_harness(
    tmp_path: Path, roles: list[tuple[str, str, str | None]] = ROLES, **build: Any
) -> Iterator[Harness]:
    """An in-process log with a SCIM service on a ticking clock and one token per role."""
    signer = make_signer()
    app, log_, tokens = build_app(serve_config(tmp_path, batch_age_ms=0.0, **build), signer)
    service: ScimService = app_parts(app).scim  # type: ignore[assignment]
    ticks = itertools.count()
    service.clock = lambda: BASE_TS + 1000 * next(ticks)
    tok: dict[str, str] = {}
    ids: dict[str, str] = {}
    for name, role, tenant in roles:
        tok[name], p = tokens.create(role, tenant=tenant, name=name)
        ids[name] = p.token_id
    try:
        with TestClient(app) as client:
            yield Harness(client, log_, tokens, signer, tmp_path, service, tok, ids)
    finally:
        log_.storage.close()


@contextlib.contextmanager
def reopened_harness(data: Path, database: str | None, tok: dict[str, str]) -> Iterator[Harness]:
    """The log in ``data`` (and ``database``) opened again, as ``tlog serve`` would after a
    restart or a restore, with the tokens ``tok`` made when it was first opened."""
    signer = make_signer()
    app, log_, tokens = build_app(serve_config(data, database), signer)
    try:
        service: ScimService | None = app_parts(app).scim  # type: ignore[assignment]
        assert service is not None
        with TestClient(app) as client:
            yield Harness(client, log_, tokens, signer, data, service, tok)
    finally:
        log_.storage.close()


@pytest.fixture
def harness(tmp_path: Path, database: str | None) -> Iterator[Harness]:
    with open_harness(tmp_path, database=database) as h:
        yield h


@pytest.fixture
def stream_rand(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """RandomPool (and the draws of a new tenant's keys) replaced by a deterministic stream,
    restarted by calling the fixture's value: two stagings that draw in the same order then
    draw the same bytes, so their records can be compared byte for byte. (Sealing a tenant's
    record draws an IV of its own, not from here.)"""
    from tlog.scim import keys as keys_mod
    from tlog.scim.keys import RandomPool

    pos = [0]
    buf = hashlib.shake_256(b"stream_rand").digest(1 << 20)

    def call(self: RandomPool, n: int) -> bytes:
        p = pos[0]
        pos[0] = p + n
        return buf[p : p + n]

    def restart() -> None:
        pos[0] = 0

    monkeypatch.setattr(RandomPool, "__call__", call)
    monkeypatch.setattr(keys_mod.secrets, "token_bytes", lambda n: call(RandomPool(), n))
    yield restart
