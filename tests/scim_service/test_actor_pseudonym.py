"""Actors are pseudonymised (docs/design.md, "Actors"): an event names its actor as
``{kind, pid, sd}`` under the actor's own subject keys (tenant, User, actor id), the actor as
sent sealed under that subject's DEK. An admin erased as a data subject is then unlinked
from every event they made about others: those events stay readable and verifiable, name
no admin anywhere, and ``actor=`` finds nothing; live actors read and search as before."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.adapters.receipts import check_commitments
from client.formats.merkle import VerificationError
from client.scim import event_to_json
from client.scim.cbor import dumps_det
from client.scim.event import (
    actor_cbor,
    actor_seal_digest,
    encode_event,
    pseudonymous_actor,
    pseudonymous_actor_cbor,
)
from client.scim.leaf import verify_commitment
from client.tools.ocsf import to_ocsf
from client.tools.scim_cli import actor_text
from tlog.scim.keys import seal_actor
from tlog.scim.service import ScimService

from .actors import ADMIN, ADMIN_NAME, admin_event, commit_of, erase, search_raw
from .conftest import T1, Harness, user_event


def no_admin_in(text: str) -> None:
    for needle in (ADMIN, ADMIN_NAME, base64.b64encode(b"\x07" * 32).decode()):
        assert needle not in text, needle


def test_an_erased_admin_is_unlinked_from_the_events_they_made(harness: Harness) -> None:
    h = harness
    # The admin is a User of the tenant (their own account has events of its own).
    assert h.post_event(user_event(ADMIN, xid=None, req="r-own")).status_code == 200
    # The admin acts on user B.
    d = h.post_event(admin_event("u-bea-1", "r-b1")).json()
    assert set(d["actor"]) == {"pid", "sd", "nonce"}
    aud = h.auditor()
    (got,) = aud.search(rid="u-bea-1").results
    assert got.actor == {"kind": "user", "id": ADMIN, "name": ADMIN_NAME, "tok_d": b"\x07" * 32}
    assert not got.actor_unlinked
    assert [e.event["rid"] for e in aud.search(actor=ADMIN).results] == ["u-bea-1"]  # type: ignore[index]

    erase(h, ADMIN)

    # B's event: still readable and verifiable (inclusion, checkpoint, commitment) ...
    (after,) = aud.search(rid="u-bea-1").results
    assert after.event is not None and after.nonce is not None
    assert after.leaf_hash == got.leaf_hash and after.event == got.event
    verify_commitment(after.leaf, after.event, after.nonce)
    assert after.actor is None and after.actor_unlinked and after.who is None
    # ... names no admin id or name (nor the token digest) anywhere in the answer ...
    raw = search_raw(h, rid="u-bea-1")
    (res,) = raw["results"]
    assert res["actor"] == {"unlinked": True}
    assert res["event"]["actor"]["kind"] == "user" and set(res["event"]["actor"]) == {
        "kind",
        "pid",
        "sd",
    }
    no_admin_in(json.dumps(raw))
    # ... and actor= finds nothing.
    assert search_raw(h, actor=ADMIN)["results"] == []
    assert aud.search(actor=ADMIN).results == []
    # The auditor's views say an actor acted and was unlinked, naming no one.
    assert actor_text(after) == "user:(unlinked)"
    ocsf = json.dumps(to_ocsf(after, origin="o", tenant=T1))
    no_admin_in(ocsf)
    assert "unlinked" in ocsf


def test_an_admin_created_again_after_erasure_is_not_linked_to_the_erased_one(
    harness: Harness,
) -> None:
    h = harness
    h.post_event(admin_event("u-cy-1", "r-c1"))
    erase(h, ADMIN)
    # A new account with the same id acts: a new subject, new keys, a new pid.
    h.post_event(admin_event("u-cy-2", "r-c2"))
    found = h.auditor().search(actor=ADMIN).results
    assert [e.event["rid"] for e in found] == ["u-cy-2"]  # type: ignore[index]
    old = h.auditor().search(rid="u-cy-1").results[0]
    assert old.actor_unlinked and old.event["actor"]["pid"] != found[0].event["actor"]["pid"]  # type: ignore[index]


def test_a_live_actor_reads_and_searches_as_before(harness: Harness) -> None:
    h = harness
    for i in range(3):
        h.post_event(admin_event(f"u-live-{i}", f"r-l{i}"))
    h.post_event(user_event("u-other", req="r-x", actor="admin-eve-1"))
    aud = h.auditor()
    found = aud.search(actor=ADMIN).results
    assert [e.event["rid"] for e in found] == [f"u-live-{i}" for i in range(3)]  # type: ignore[index]
    assert all(e.who is not None and e.who["name"] == ADMIN_NAME for e in found)
    assert actor_text(found[0]) == f"user:{ADMIN} ({ADMIN_NAME})"
    # actor as a secondary filter (point lookups), and as the driving one with another
    assert len(aud.search(rid="u-live-1", actor=ADMIN).results) == 1
    assert aud.search(rid="u-other", actor=ADMIN).results == []
    assert len(aud.search(actor=ADMIN, outcome="success").results) == 3
    # paging
    page = aud.search(actor=ADMIN, limit=2)
    assert len(page.results) == 2 and page.next is not None
    assert len(aud.search(actor=ADMIN, cursor=page.next).results) == 1
    # OCSF names who acted
    rec = to_ocsf(found[0], origin="o", tenant=T1)[0]
    assert rec["actor"]["user"] == {"type": "user", "uid": ADMIN, "name": ADMIN_NAME}


def test_events_stored_with_a_clear_actor_stay_readable_and_found(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events stored before actors were pseudonymised (simulated: the staging of main)
    read and verify as they are, and actor= finds them together with newer ones, in log
    order and across pages."""
    h = harness
    h.post_event(admin_event("u-mix-0", "r-m0"))
    with monkeypatch.context() as m:
        m.setattr(ScimService, "_actor_keys", lambda *a, **k: None)
        d = h.post_event(admin_event("u-mix-1", "r-m1")).json()
        assert "actor" not in d
    h.post_event(admin_event("u-mix-2", "r-m2"))
    aud = h.auditor()
    found = aud.search(actor=ADMIN).results
    assert [e.event["rid"] for e in found] == ["u-mix-0", "u-mix-1", "u-mix-2"]  # type: ignore[index]
    assert found[1].event["actor"]["id"] == ADMIN and found[1].who == found[1].event["actor"]  # type: ignore[index]
    seen, cursor = [], None
    while True:
        page = aud.search(actor=ADMIN, limit=1, cursor=cursor)
        seen += [e.event["rid"] for e in page.results]  # type: ignore[index]
        if page.next is None:
            break
        cursor = page.next
    assert seen == ["u-mix-0", "u-mix-1", "u-mix-2"]
    # What older events keep: their actor in clear, after the admin's erasure too.
    erase(h, ADMIN)
    assert [e.event["rid"] for e in aud.search(actor=ADMIN).results] == ["u-mix-1"]  # type: ignore[index]


def test_an_actor_that_is_not_a_user(harness: Harness) -> None:
    h = harness
    svc = {"kind": "oauth_client", "id": "svc-provisioner", "client_id": "c-123", "scope": ["scim"]}
    d = h.post_event(admin_event("u-np-1", "r-np1", actor=svc)).json()
    assert "actor" in d
    (got,) = h.auditor().search(actor="svc-provisioner").results
    assert got.who == svc and actor_text(got) == "oauth_client:svc-provisioner"
    # An actor that names no one (no id, name, client id, token digest or thumbprint: an
    # identity provider and scopes) is kept as sent: nothing to key it under
    # (test_actor_handles.py: the others).
    anon = {"kind": "bearer", "iss": "https://idp.example", "tid": "t-1", "scope": ["scim"]}
    ev = admin_event("u-np-2", "r-np2", actor=anon)
    d = h.post_event(ev).json()
    assert "actor" not in d
    (got,) = h.auditor().search(rid="u-np-2").results
    assert got.event == ev and got.who == anon


def test_the_log_s_own_events_keep_their_actor(harness: Harness) -> None:
    h = harness
    h.post_event(admin_event("u-sys-1", "r-s1"))
    h.auditor().search(rid="u-sys-1")  # appends a tlog.access event
    res = search_raw(h, rid=None or "u-sys-1")["results"]
    assert len(res) == 1
    access = [e for e in h.auditor().search(action="tlog.access.search").results]
    assert access and all("pid" not in e.event["actor"] for e in access)  # type: ignore[index]


def test_submitters_cannot_send_a_pseudonymous_actor(harness: Harness) -> None:
    ev = admin_event("u-forge", "r-f")
    forged = {**ev, "actor": pseudonymous_actor(ev["actor"], b"\x01" * 16, b"\x02" * 32)}
    r = harness.post_event(forged)
    assert r.status_code == 400 and "set by the log" in r.text


def test_retries_compare_the_actor(harness: Harness) -> None:
    h = harness
    ev = admin_event("u-retry", "r-r")
    d = h.post_event(ev).json()
    again = h.post_event(ev).json()
    assert again["duplicate"] and again["actor"] == d["actor"] and again["leaf"] == d["leaf"]
    other = {**ev, "actor": {**ev["actor"], "name": "Someone Else"}}
    assert h.post_event(other).status_code == 409
    erase(h, ADMIN)
    # After the actor's erasure a retry is still the same event (its actor no longer opens):
    # the answer names the stored actor without the nonce of sd.
    late = h.post_event(ev).json()
    assert late["duplicate"] and late["leaf"] == d["leaf"] and late["nonce"] == d["nonce"]
    assert late["actor"] == {"pid": d["actor"]["pid"], "sd": d["actor"]["sd"]}


def test_the_adapter_check_sees_a_swapped_actor(harness: Harness) -> None:
    from client.adapters.outbox import Receipt

    h = harness
    ev = admin_event("u-adp", "r-a")
    d = h.post_event(ev).json()
    c = commit_of(d)
    rec = Receipt(eid=ev["eid"], index=d["index"], leaf_hash=d["leaf_hash"], tree_size=1,
                  checkpoint=d["checkpoint"], duplicate=False)  # fmt: skip
    body = {ev["eid"]: event_to_json(ev)}
    ok = {ev["eid"]: (c["leaf"], c["nonce"], c["actor"])}
    assert check_commitments([rec], ok, body) == 0
    pid, sd, an = c["actor"]
    for bad in [(pid, sd, b"\x00" * 32), (b"\x00" * 16, sd, an), (pid, b"\x00" * 32, an), None]:
        with pytest.raises(VerificationError):
            check_commitments([rec], {ev["eid"]: (c["leaf"], c["nonce"], bad)}, body)
    other = {ev["eid"]: event_to_json({**ev, "actor": {**ev["actor"], "name": "Mallory"}})}
    with pytest.raises(VerificationError):
        check_commitments([rec], ok, other)


def test_the_auditor_client_refuses_a_forged_actor(harness: Harness) -> None:
    import httpx

    from client.net.scim_audit import ScimAuditClient

    from .conftest import URL

    h = harness
    h.post_event(admin_event("u-forged", "r-fg"))

    def forged(mutate: Any) -> ScimAuditClient:
        def handler(request: httpx.Request) -> httpx.Response:
            r = h.client.get(str(request.url), headers=dict(request.headers))
            if request.url.path != "/v1/scim/events":
                return httpx.Response(r.status_code, content=r.content, headers=r.headers)
            doc = r.json()
            for res in doc["results"]:
                mutate(res)
            return httpx.Response(200, json=doc)

        client = httpx.Client(transport=httpx.MockTransport(handler), base_url=URL)
        return ScimAuditClient(URL, h.tok["aud1"], h.vkey, http=client)

    def other_name(res: dict[str, Any]) -> None:
        res["actor"]["actor"]["name"] = "Mallory"

    def other_id(res: dict[str, Any]) -> None:
        res["actor"]["actor"]["id"] = "admin-mallory"

    def dropped(res: dict[str, Any]) -> None:
        del res["actor"]

    for mutate in (other_name, other_id, dropped):
        with pytest.raises(VerificationError):
            forged(mutate).search(rid="u-forged")
    # "unlinked" for a live actor is not a forgery of who acted: it names no one.
    unlinked = forged(lambda res: res.update(actor={"unlinked": True}))
    assert unlinked.search(rid="u-forged").results[0].who is None


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    aid=_TEXT,
    name=st.one_of(st.none(), _TEXT),
    kind=st.sampled_from(["user", "oauth_client", "bearer", "mtls"]),
    tok=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    scope=st.one_of(st.none(), st.lists(_TEXT, min_size=1, max_size=3)),
    tid=st.one_of(st.none(), _TEXT),
    echo=st.booleans(),
    pid=st.binary(min_size=16, max_size=16),
    an=st.binary(min_size=32, max_size=32),
)
def test_the_spliced_encoding_is_the_stored_event_s(
    aid: str,
    name: str | None,
    kind: str,
    tok: bytes | None,
    scope: list[str] | None,
    tid: str | None,
    echo: bool,
    pid: bytes,
    an: bytes,
) -> None:
    """ScimService._pseudonymous replaces the actor's bytes inside the sent encoding: always
    the canonical encoding of the stored event (also when the actor's bytes occur elsewhere
    in the event, e.g. inside ``req.dig``: then it encodes again)."""
    actor: dict[str, Any] = {"kind": kind, "id": aid}
    if name is not None:
        actor["name"] = name
    if tok is not None:
        actor["tok_d"] = tok
    if scope is not None:
        actor["scope"] = scope
    if tid is not None:
        actor["tid"] = tid
    needle = b"\x65actor" + dumps_det(actor)
    dig = (needle + bytes(32))[:32] if echo and len(needle) <= 32 else None
    ev = admin_event("u-hyp", "r-h", actor=actor, dig=dig)
    svc = ScimService.__new__(ScimService)
    svc._last_actor = None
    stored, encoded, sent = svc._pseudonymous(ev, encode_event(ev), pid, an)
    again = svc._pseudonymous(ev, encode_event(ev), pid, an)  # the memo of the last actor
    assert again == (stored, encoded, sent)
    assert stored["actor"] == {"kind": kind, "pid": pid, "sd": actor_seal_digest(an, actor)}
    assert stored["actor"] == pseudonymous_actor(actor, pid, an)
    assert encoded == encode_event(stored)
    # the fast encodings are the deterministic ones
    assert sent == actor_cbor(actor) == dumps_det(actor)
    assert pseudonymous_actor_cbor(kind, pid, stored["actor"]["sd"]) == dumps_det(stored["actor"])
    # the sealed actor's plaintext is det_cbor({"a": actor, "n": an})
    key = bytes(range(32))
    sealed = seal_actor(AESGCM(key), b"k" * 16, 7, b"h" * 32, sent, an, lambda n: b"\x01" * n)
    pt = AESGCM(key).decrypt(sealed[20:32], sealed[32:], b"tlog-scim/v1/actor" + b"h" * 32)
    assert pt == dumps_det({"a": actor, "n": an})
    assert {k: v for k, v in stored.items() if k != "actor"} == {
        k: v for k, v in ev.items() if k != "actor"
    }


def test_the_actor_s_keys_are_read_once_not_per_event(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Single events by one admin: the admin's subject record and DEK are read by the first
    staging that names them durably, then remembered (no extra read per event), and an
    erasure (a key rotation) forgets them."""
    from tlog.scim.keys import KeyRing

    h = harness
    reads: list[str] = []
    orig = KeyRing.subject_or_create

    def counting(self: KeyRing, tx: Any, tk: Any, subject: Any, *a: Any, **k: Any) -> Any:
        if subject.value == ADMIN:
            reads.append(subject.value)
        return orig(self, tx, tk, subject, *a, **k)

    monkeypatch.setattr(KeyRing, "subject_or_create", counting)
    for i in range(6):
        assert h.post_event(admin_event(f"u-once-{i}", f"r-o{i}")).status_code == 200
    # made by the first, read again by the second (now durable), then remembered
    assert len(reads) == 2
    erase(h, ADMIN)
    assert h.post_event(admin_event("u-once-9", "r-o9")).status_code == 200
    assert len(reads) == 3  # after the rotation: read again (a new subject: made anew)
    (got,) = h.auditor().search(rid="u-once-9").results
    assert got.who is not None and got.who["id"] == ADMIN
