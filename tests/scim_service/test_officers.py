"""Issue 10 parts 2 and 5: the officers' workflow (pending list, certificates, CLI), legal
holds, retention expiry, erasure of failed creates by userName, and crash safety of the key
rotation."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.formats.merkle import VerificationError
from client.formats.note import FormatError
from client.scim.erasure import verify_certificate
from client.tools.cli import _parser
from tlog.scim.keys import MASTER_KEY_FILE, read_key_file, write_key_file_in_place
from tlog.server import build_app
from tlog.storage import StorageError

from ..support import app_parts, serve_config, wait_for
from .conftest import BASE_TS, T1, T2, URL, Harness, make_signer, user_event

ALICE = "u-alice-7f3a"
BOB = "u-bob-55c1"
DAY = 24 * 3600 * 1000


def erase_req(h: Harness, name: str = "po_a", **kw: Any) -> Any:
    body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr-art17", **kw}
    return h.client.post("/v1/scim/erasures", json=body, headers=h.h(name))


def approve(h: Harness, rid: str, name: str = "po_b") -> Any:
    return h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h(name))


def test_pending_erasures_are_listed(harness: Harness) -> None:
    h = harness
    h.post_event(user_event(ALICE))
    a = erase_req(h).json()
    b = h.client.post(
        "/v1/scim/erasures",
        json={"tenant": T2, "rt": "User", "xid": "x@example.org", "reason": "dsar"},
        headers=h.h("po_a"),
    ).json()
    r = h.client.get("/v1/scim/erasures", headers=h.h("po_b"))
    assert r.status_code == 200
    listed = r.json()["erasures"]
    assert [e["id"] for e in listed] == [a["id"], b["id"]]
    first = listed[0]
    assert first["requested_by"] == h.ids["po_a"] and first["requester"] == "po_a"
    assert first["expires"] == first["created"] + 7 * DAY and first["state"] == "pending"
    # A tenant-bound officer sees only its tenant; other roles nothing.
    only_t2 = h.client.get("/v1/scim/erasures", headers=h.h("po_t2")).json()["erasures"]
    assert [e["id"] for e in only_t2] == [b["id"]]
    for name in ("aud1", "sub1", "admin"):
        assert h.client.get("/v1/scim/erasures", headers=h.h(name)).status_code == 403
    assert approve(h, a["id"]).status_code == 200
    pending = h.client.get("/v1/scim/erasures", headers=h.h("po_b")).json()["erasures"]
    assert [e["id"] for e in pending] == [b["id"]]
    # Expired requests leave the pending list; ?state=all shows everything.
    now = h.service.clock()
    h.service.clock = lambda: now + 8 * DAY
    assert h.client.get("/v1/scim/erasures", headers=h.h("po_b")).json()["erasures"] == []
    every = h.client.get("/v1/scim/erasures?state=all", headers=h.h("po_b")).json()["erasures"]
    assert [e["state"] for e in every] == ["done", "expired"]
    assert h.client.get("/v1/scim/erasures?state=x", headers=h.h("po_b")).status_code == 400


def _certificate(h: Harness) -> tuple[str, dict[str, Any]]:
    h.post_event(user_event(ALICE))
    rid = erase_req(h).json()["id"]
    r = h.client.get(f"/v1/scim/erasures/{rid}/certificate", headers=h.h("po_a"))
    assert r.status_code == 409  # not approved yet
    assert approve(h, rid).status_code == 200
    h.post_event(user_event(BOB))  # the log grows on; the certificate is against the latest
    r = h.client.get(f"/v1/scim/erasures/{rid}/certificate", headers=h.h("po_a"))
    assert r.status_code == 200, r.text
    return rid, r.json()


def test_erasure_certificate_verifies_offline(harness: Harness) -> None:
    h = harness
    rid, cert = _certificate(h)
    v = verify_certificate(cert, h.vkey)
    assert v.request == rid and v.tenant == T1 and v.subject_rt == "User"
    assert v.requested_by == h.ids["po_a"] and v.approved_by == h.ids["po_b"]
    assert v.tree_size == h.log.latest.size
    text = json.dumps(cert)
    for ident in (ALICE, "alice.liddell@example.org", "admin-bob-9921"):
        assert ident not in text  # no personal data in what is handed out
    # Every tampering is caught.
    bad: list[dict[str, Any]] = []
    c = json.loads(text)
    c["event"]["x"]["reason"] = "other"
    bad.append(c)
    c = json.loads(text)
    c["request"] = "0" * 32
    bad.append(c)
    c = json.loads(text)
    c["nonce"] = base64.b64encode(bytes(32)).decode()
    bad.append(c)
    c = json.loads(text)
    c["index"] = c["index"] + 1
    bad.append(c)
    c = json.loads(text)
    leaf = bytearray(base64.b64decode(c["leaf"]))
    leaf[-1] ^= 1
    c["leaf"] = base64.b64encode(bytes(leaf)).decode()
    bad.append(c)
    for c in bad:
        with pytest.raises((VerificationError, FormatError)):
            verify_certificate(c, h.vkey)
    other = make_signer_other()
    with pytest.raises((VerificationError, FormatError)):
        verify_certificate(cert, other)


def make_signer_other() -> str:
    from client.formats.note import Ed25519Signer
    from tlog.signer import CheckpointSigner

    return CheckpointSigner(Ed25519Signer("scim.example/log", bytes(32)), "scim.example/log").vkey()


def _cli(h: Harness, tmp_path: Path, name: str, *argv: str) -> tuple[int, str]:
    tf = tmp_path / f"{name}.token"
    tf.write_text(h.tok[name])
    args = _parser().parse_args(["scim", "erasure", *argv])
    if getattr(args, "url", None) is not None:
        args.token_file = str(tf)
    return int(args.run(args, h.client)), ""


def test_officer_cli(harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = harness
    h.post_event(user_event(ALICE))
    code, _ = _cli(h, tmp_path, "po_a", "request", URL, "--tenant", T1, "--rid", ALICE,
                   "--reason", "gdpr-art17")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and " pending " in out
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"  # times as ISO 8601 UTC, not raw ms
    assert re.search(f" created={iso} expires={iso}", out), out
    rid = out.split()[0]
    code, _ = _cli(h, tmp_path, "po_b", "list", URL)
    assert code == 0 and rid in capsys.readouterr().out
    code, _ = _cli(h, tmp_path, "po_a", "approve", URL, rid)  # same person
    assert code == 1 and "another person" in capsys.readouterr().err
    code, _ = _cli(h, tmp_path, "po_b", "approve", URL, rid)
    assert code == 0 and " done " in capsys.readouterr().out
    code, _ = _cli(h, tmp_path, "po_b", "status", URL, rid)
    assert code == 0 and "approved_by=" in capsys.readouterr().out
    cert = tmp_path / "cert.json"
    code, _ = _cli(h, tmp_path, "po_a", "certificate", URL, rid, "--out", str(cert),
                   "--vkey", h.vkey)  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "VERIFIED erasure " + rid in out and re.search(f"approved at {iso} ", out)
    code, _ = _cli(h, tmp_path, "po_a", "verify", str(cert), "--vkey", h.vkey)
    assert code == 0 and "VERIFIED" in capsys.readouterr().out
    doc = json.loads(cert.read_text())
    doc["event"]["x"]["approved_by"] = h.ids["po_a"]
    cert.write_text(json.dumps(doc))
    code, _ = _cli(h, tmp_path, "po_a", "verify", str(cert), "--vkey", h.vkey)
    assert code == 2 and "DOES NOT VERIFY" in capsys.readouterr().err
    code, _ = _cli(h, tmp_path, "aud1", "list", URL)
    assert code == 1 and "403" in capsys.readouterr().err


def test_erasure_reaches_failed_creates_by_user_name(harness: Harness) -> None:
    h = harness
    failed = user_event(None, xid=None, op="create", outcome="failure", req="req-409")
    failed["mods"] = [{"attr": "userName", "new": json.dumps("Carl.Nobody@Example.org")}]
    failed["res"] = {"st": 409}
    assert h.post_event(failed).status_code == 200
    a = h.auditor()
    assert len(a.search(req="req-409").results) == 1
    r = erase_req(h, rid=None, userName="carl.nobody@example.org")  # case-insensitive
    assert r.status_code == 400  # rid=None is not a string: body must name one identifier
    body = {"tenant": T1, "rt": "User", "userName": "carl.nobody@example.org", "reason": "dsar"}
    rid = h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a")).json()["id"]
    assert approve(h, rid).status_code == 200
    assert a.search(req="req-409").results == []
    (rc,) = a.receipts(eid=failed["eid"])
    assert rc.erased


def _hold(h: Harness, **kw: Any) -> Any:
    return h.client.post(
        "/v1/scim/holds", json={"tenant": T1, "reason": "litigation-42", **kw}, headers=h.h("po_a")
    )


def test_legal_hold_suspends_erasure_and_expiry(harness: Harness) -> None:
    h = harness
    h.post_event(user_event(ALICE))
    h.post_event(user_event(BOB, xid="bob@example.org", req="req-b"))
    sub_hold = _hold(h, rt="User", rid=ALICE)
    assert sub_hold.status_code == 201 and sub_hold.json()["scope"] == "subject"
    rid_a = erase_req(h).json()["id"]
    r = approve(h, rid_a)
    assert r.status_code == 409 and "legal hold" in r.json()["error"]
    rid_b = erase_req(h, rid=BOB).json()["id"]
    assert approve(h, rid_b).status_code == 200  # the hold covers Alice only
    # Retention: Alice is held, so expiry keeps her; lift the hold and she goes.
    h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=h.h("po_a"))
    now = BASE_TS + 120 * DAY
    h.service.clock = lambda: now
    res = h.client.post("/v1/scim/expire", json={}, headers=h.h("admin")).json()["results"]
    assert res[0]["events"] == 0 and res[0]["held"] == 1
    a = h.auditor()
    assert len(a.search(rid=ALICE).results) == 1
    tenant_hold = _hold(h).json()
    listed = h.client.get("/v1/scim/holds", headers=h.h("po_b")).json()["holds"]
    assert {x["id"] for x in listed} == {sub_hold.json()["id"], tenant_hold["id"]}
    r = h.client.post(f"/v1/scim/holds/{sub_hold.json()['id']}/release", headers=h.h("po_b"))
    assert r.status_code == 200
    res = h.client.post("/v1/scim/expire", json={}, headers=h.h("admin")).json()["results"]
    assert res[0]["events"] == 0 and res[0]["held"] == -1  # the tenant hold still stands
    r = h.client.post(f"/v1/scim/holds/{tenant_hold['id']}/release", headers=h.h("po_b"))
    assert r.status_code == 200
    res = h.client.post("/v1/scim/expire", json={}, headers=h.h("admin")).json()["results"]
    assert res[0]["events"] == 1
    assert a.search(rid=ALICE).results == []
    # Holds are logged, both ways, and the erasure approval still works after the lift.
    acts = [x.event["acts"][0]["a"] for x in a.search(action="tlog.hold.place").results]
    acts += [x.event["acts"][0]["a"] for x in a.search(action="tlog.hold.release").results]
    assert sorted(acts) == ["tlog.hold.place"] * 2 + ["tlog.hold.release"] * 2
    assert approve(h, rid_a).status_code == 409  # expired by now (7 days)
    # releasing it again is answered that release (faith30: a retry; before, 404 for a
    # release that happened), nothing logged again
    r = h.client.post(f"/v1/scim/holds/{tenant_hold['id']}/release", headers=h.h("po_b"))
    assert r.status_code == 200 and "released" in r.json(), r.text
    again = [x.event["acts"][0]["a"] for x in a.search(action="tlog.hold.release").results]
    assert again == ["tlog.hold.release"] * 2
    r = h.client.post("/v1/scim/holds", json={"tenant": T1}, headers=h.h("po_a"))
    assert r.status_code == 400


@pytest.mark.parametrize("days", [0, 29, 3654, "30", 30.5])
def test_retention_bounds(harness: Harness, days: Any) -> None:
    r = harness.client.put(
        "/v1/scim/retention", json={"tenant": T1, "days": days}, headers=harness.h("po_a")
    )
    assert r.status_code == 400


def test_retention_is_set_logged_and_scoped(harness: Harness) -> None:
    h = harness
    r = h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 3653}, headers=h.h("po_a"))
    assert r.status_code == 200 and r.json()["days"] == 3653
    got = h.client.get(f"/v1/scim/retention?tenant={T1}", headers=h.h("admin")).json()
    assert got["days"] == 3653
    assert h.client.get(f"/v1/scim/retention?tenant={T2}", headers=h.h("po_a")).json() == {
        "tenant": T2,
        "days": None,
    }
    r = h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 90}, headers=h.h("po_t2"))
    assert r.status_code == 403
    assert (
        h.client.put(
            "/v1/scim/retention", json={"tenant": T1, "days": 90}, headers=h.h("aud1")
        ).status_code
        == 403
    )
    (ev,) = [x.event for x in h.auditor().search(action="tlog.retention.set").results]
    assert ev["x"]["days"] == 3653


def test_expiry_keeps_the_logs_own_events(harness: Harness) -> None:
    h = harness
    rid, _ = _certificate(h)
    h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=h.h("po_a"))
    h.service.clock = lambda: BASE_TS + 400 * DAY
    res = h.client.post("/v1/scim/expire", json={"tenant": T1}, headers=h.h("po_a")).json()
    assert res["results"][0]["events"] == 1  # Bob's event; the erasure events stay
    r = h.client.get(f"/v1/scim/erasures/{rid}/certificate", headers=h.h("po_a"))
    assert r.status_code == 200
    assert verify_certificate(r.json(), h.vkey).request == rid
    assert h.auditor().search(action="tlog.erasure.approve").results


def test_background_expiry_job(tmp_path: Path, database: str | None) -> None:
    app, log_, tokens = build_app(
        serve_config(tmp_path, database, batch_age_ms=0.0, scim_expiry_interval=0.05), make_signer()
    )
    svc = app_parts(app).scim
    svc.clock = lambda: BASE_TS
    sub, _ = tokens.create("submitter", tenant=T1)
    po, _ = tokens.create("privacy-officer", person="Dana")
    aud, _ = tokens.create("auditor", tenant=T1)
    ev = user_event(ALICE)
    with TestClient(app) as c:
        hs = {"Authorization": f"Bearer {sub}", "Content-Type": "application/json"}
        r = c.post("/v1/scim/events", content=json.dumps(ev_json(ev)), headers=hs)
        assert r.status_code == 200, r.text
        r = c.put("/v1/scim/retention", json={"tenant": T1, "days": 30},
                  headers={"Authorization": f"Bearer {po}"})  # fmt: skip
        assert r.status_code == 200
        svc.clock = lambda: BASE_TS + 90 * DAY

        def expiry_logged() -> bool:
            r = c.get("/v1/scim/events?action=tlog.expiry.run",
                      headers={"Authorization": f"Bearer {aud}"})  # fmt: skip
            return bool(r.json()["results"])

        wait_for(expiry_logged, 20, "the background job expiring something", step=0.05)
    log_.storage.close()


def ev_json(ev: dict[str, Any]) -> Any:
    from client.scim import event_to_json

    return json.loads(event_to_json(ev))


def test_rotation_survives_a_crash_at_any_point(tmp_path: Path, database: str | None) -> None:
    app, log_, tokens = build_app(
        serve_config(tmp_path, database, batch_age_ms=0.0, scim_expiry_interval=0), make_signer()
    )
    svc = app_parts(app).scim
    hdr = {}
    for name, role, tenant, person in [("sub", "submitter", T1, None),
                                       ("a", "privacy-officer", None, "A"),
                                       ("b", "privacy-officer", None, "B")]:  # fmt: skip
        tok, _ = tokens.create(role, tenant=tenant, person=person)
        hdr[name] = {"Authorization": f"Bearer {tok}"}
    path = tmp_path / MASTER_KEY_FILE
    body = {"tenant": T1, "rt": "User", "rid": ALICE, "reason": "gdpr"}
    with TestClient(app, raise_server_exceptions=False) as c:
        for ev in (user_event(ALICE), user_event(BOB, req="req-b")):
            r = c.post("/v1/scim/events", content=json.dumps(ev_json(ev)),
                       headers={**hdr["sub"], "Content-Type": "application/json"})  # fmt: skip
            assert r.status_code == 200
        old, _ = read_key_file(path)
        rid = c.post("/v1/scim/erasures", json=body, headers=hdr["a"]).json()["id"]
        # A commit that fails: the store keeps the old keys, and so does the file.
        real = svc.storage.put_aux

        def boom(items: Any) -> None:
            raise StorageError("disk full (simulated)")

        svc.storage.put_aux = boom
        assert c.post(f"/v1/scim/erasures/{rid}/approve", headers=hdr["b"]).status_code >= 500
        svc.storage.put_aux = real
        assert read_key_file(path) == (old, None)
        assert c.post(f"/v1/scim/erasures/{rid}/approve", headers=hdr["b"]).status_code == 200
    log_.storage.close()
    new, nxt = read_key_file(path)
    assert new != old and nxt is None
    # A crash between the file's writes leaves both keys, in either slot: start-up opens the
    # store with the live one and leaves only that one in the file.
    for cur, nx in ((old, new), (new, old)):
        write_key_file_in_place(path, cur, nx)
        _, log_, _ = build_app(
            serve_config(tmp_path, database, scim_expiry_interval=0), make_signer()
        )
        log_.storage.close()
        assert read_key_file(path) == (new, None)
    write_key_file_in_place(path, old, None)  # the old key alone no longer opens anything
    with pytest.raises(StorageError, match="does not match"):
        build_app(serve_config(tmp_path, database, scim_expiry_interval=0), make_signer())
    write_key_file_in_place(path, new, None)
    app, log_, tokens = build_app(
        serve_config(tmp_path, database, scim_expiry_interval=0), make_signer()
    )
    aud, _ = tokens.create("auditor", tenant=T1)
    with TestClient(app) as c:
        r = c.get(f"/v1/scim/events?rid={BOB}", headers={"Authorization": f"Bearer {aud}"})
        assert [x["event"]["rid"] for x in r.json()["results"]] == [BOB]
    log_.storage.close()
