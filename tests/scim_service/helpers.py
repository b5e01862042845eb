"""Helpers shared by the SCIM service tests (test modules do not import each other)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import leaf_hash, verify_inclusion
from client.formats.note import Ed25519Verifier, b64decode_strict
from client.formats.proof_bundle import TlogProof
from client.scim import encode_event, new_event, parse_leaf
from tlog.scim.store import Overlay

from .conftest import ORIGIN, T1, Harness, open_harness, user_event

KEY = "scim-master.key"


def stored_event(ev: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    """The event the log stored for ``ev``, from an answer to its submission (or a search
    result): with the actor as the answer names it when the log pseudonymised it
    (docs/design.md, "Actors"), else ``ev`` itself."""
    got = answer.get("actor")
    if got is None:
        return ev
    if "pid" in got:
        pid, sd = b64decode_strict(got["pid"], size=16), b64decode_strict(got["sd"], size=32)
    else:
        stored = answer["event"]["actor"]
        pid, sd = b64decode_strict(stored["pid"], size=16), b64decode_strict(stored["sd"])
    return {**ev, "actor": {"kind": ev["actor"]["kind"], "pid": pid, "sd": sd}}


def check_receipt(h: Harness, d: dict[str, Any], index: int | None = None) -> bytes:
    """Verify a submission answer with the client library; return the leaf bytes."""
    leaf = b64decode_strict(d["leaf"])
    lh = b64decode_strict(d["leaf_hash"], size=32)
    assert leaf_hash(leaf) == lh
    if index is not None:
        assert d["index"] == index
    cp, _ = open_checkpoint(d["checkpoint"], [h.signer.verifier], origin=ORIGIN)
    assert cp.size == d["tree_size"] > d["index"]
    proof = [b64decode_strict(x, size=32) for x in d["inclusion_proof"]]
    verify_inclusion(d["index"], cp.size, lh, proof, cp.root_hash)
    TlogProof.parse(d["tlog_proof"]).verify(h.signer.verifier, entry=leaf)
    parsed = parse_leaf(leaf)
    assert parsed.ts == d["ts"]
    assert parsed.tn == h.service.tenant_ref(T1)
    # The public entry at that index is exactly the leaf: nothing else goes into the tree.
    assert h.client.get(f"/v1/entries/{d['index']}").content == leaf
    return leaf


def create_event(rid: str | None, req: str, mods: list[dict[str, Any]], **kw: Any) -> Any:
    return new_event(
        tenant=T1,
        sp="app-1",
        op="create",
        rt=kw.pop("rt", "User"),
        rid=rid,
        actor={"kind": "user", "id": "admin-bob-9921"},
        corr=req,
        req={"m": "POST", "p": "/Users", "dig": bytes(32), "len": 42},
        res=201 if kw.get("outcome", "success") == "success" else 409,
        outcome=kw.pop("outcome", "success"),
        mods=mods,
        **kw,
    )


def user_mods(name: str, active: str = "true") -> list[dict[str, Any]]:
    return [
        {"attr": "userName", "new": json.dumps(name)},
        {"attr": "displayName", "new": '"Bench"'},
        {"attr": "emails", "new": json.dumps([{"value": name, "primary": True}])},
        {"attr": "active", "new": active},
    ]


def mixed_batch() -> list[Any]:
    evs = [
        create_event("u-1", "r1", user_mods("one@example.org")),
        create_event("u-2", "r2", user_mods("twö@example.org", '"True"')),
        user_event("u-1", req="r3"),  # a patch of a subject created just before
        create_event("u-0", "r4", user_mods("zero@example.org")),  # a subject the store knows
        create_event(
            "u-3", "r5", [*user_mods("three@example.org"), {"attr": "roles", "new": '["a"]'}]
        ),
        create_event(
            None,
            "r6",
            user_mods("failed@example.org"),
            outcome="failure",
            err={"scim_type": "uniqueness", "reason": "exists"},
        ),
        create_event("g-1", "r7", [{"attr": "displayName", "new": '"G"'}], rt="Group"),
        create_event("u-4", "r8", [{"attr": "userName", "new": '"a\\"b"'}]),
        create_event(
            "u-5", "r9", [{"attr": "userName", "new": '"x"'}, {"attr": "userName", "new": '"y"'}]
        ),
    ]
    evs.insert(3, evs[0])  # the same eid twice in one batch
    evs += [  # the same shape again and again, half of them with an externalId
        create_event(
            f"u-b{i}", f"rb{i}", user_mods(f"b{i}@example.org"), xid=f"x{i}" if i % 2 else None
        )
        for i in range(20)
    ]
    return evs


def stage_group(
    svc: Any,
    jobs: list[tuple[str, dict[str, Any]]],
    *,
    memo: bool = True,
    prefetch: bool = False,
    pending: dict[bytes, bytes | None] | None = None,
) -> tuple[list[Any], list[tuple[bytes, bytes | None]]]:
    """The group writer's staging (ScimService._commit_group) of one-event stagings of
    ``jobs`` (tenant, event), with or without the group's shared memo and the read-ahead
    (``_prefetch``), on top of ``pending`` (a group in flight): what each staging answered
    (or its error as text), and the records."""
    out: list[Any] = []
    with svc.storage.read() as rv:
        tx = Overlay(rv, pending)
        svc._group_memo, svc._group_tenants = ({}, {}) if memo else (None, None)
        try:
            if prefetch:
                svc._prefetch(tx, [(tenant, [ev]) for tenant, ev in jobs])
            for tenant, ev in jobs:
                stage = svc._stager(tenant, [ev], [encode_event(ev)])
                mark = tx.mark()
                try:
                    out.append(stage(tx))
                except Exception as exc:
                    tx.rollback(mark)
                    out.append(f"{type(exc).__name__}: {exc}")
        finally:
            svc._group_memo = svc._group_tenants = None
        return out, tx.items()


# --- two frontends of one PostgreSQL store ---------------------------------------------------


@contextmanager
def frontends(
    tmp_path: Path, pg_url: str, *, shared_key: bool = True
) -> Iterator[tuple[Harness, Harness]]:
    """Two frontends, A and B, on ``pg_url``. ``shared_key``: B reads A's SCIM master key
    file (one shared secret, as operations.md asks); otherwise B has a copy of it."""
    with ExitStack() as stack:
        a = stack.enter_context(open_harness(tmp_path / "a", database=pg_url))
        if shared_key:
            b = stack.enter_context(
                open_harness(tmp_path / "b", database=pg_url, scim_master_key=a.data / KEY)
            )
        else:
            (tmp_path / "b").mkdir(mode=0o700)
            shutil.copy2(a.data / KEY, tmp_path / "b" / KEY)
            b = stack.enter_context(open_harness(tmp_path / "b", database=pg_url))
        yield a, b


def readable(h: Harness, ev: dict[str, Any]) -> bool:
    """The event's body is found by its rid and decrypts, through frontend ``h``."""
    found = [r for r in h.auditor().search(rid=ev["rid"]).results if r.event is not None]
    return any(r.event is not None and r.event["eid"] == ev["eid"] for r in found)


def caught_up(h: Harness, size: int) -> None:
    """Wait until frontend ``h`` serves a checkpoint of at least ``size`` (an idle frontend
    adopts another's commits within about a second: operations.md, "Several frontends");
    search and receipts answer up to the checkpoint a frontend serves."""
    for _ in range(200):
        verifier = Ed25519Verifier.from_vkey(h.vkey)
        cp, _ = open_checkpoint(h.client.get("/checkpoint").text, [verifier], origin=ORIGIN)
        if cp.size >= size:
            return
        time.sleep(0.05)
    raise AssertionError(f"frontend {h.data.name} did not reach size {size}")
