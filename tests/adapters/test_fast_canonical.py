"""The canonical form the adapter hands to the relay (proxy17) is the one the relay decoded.

The event builder (:func:`client.adapters.exchange.validated_event_canonical`) makes each
event's canonical CBOR from the JSON text it queues; the outbox keeps it in memory
(:meth:`Outbox.handed`) and the relay's commitment check uses it instead of decoding the
queued JSON again (:func:`client.adapters.receipts.check_commitments`). Held here: the
handed CBOR and actor are byte for byte what the relay's decode of the same text gives, on
random events and on the events the builder makes for Entra ID's and Okta's request shapes
(``corpus.py``); a handed form that is wrong, stale or for another text never refuses an
honest answer (the decode decides then), a dishonest answer is refused with the right form;
the outbox keeps the forms bounded and forgets delivered ones; the relay really uses them
against a real log, and decodes what has none.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from client.adapters import receipts
from client.adapters.exchange import AuditConfig, Builder, Exchange, validated_event_canonical
from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Canonical, Outbox, OutboxRecord, Receipt
from client.adapters.receipts import _decoded, check_commitments
from client.formats.merkle import VerificationError
from client.scim.cbor import EventFormatError
from client.scim.event import encode_event, new_event

from ..scim.helpers import events, failed_event, full_event, minimal_event
from .corpus import CORPUS
from .logserver import Log
from .receipt_front import Front, drain, relay_behind
from .receipt_tree import honest_answer

CFG = AuditConfig(tenant="t1", sp_id="sp", base_path="")


def _same_as_decoded(text: str, canon: Canonical) -> None:
    ev, cbor = _decoded(text)
    assert canon.cbor == cbor
    assert canon.actor == ev["actor"]


@pytest.mark.parametrize("make", [full_event, failed_event, minimal_event])
def test_handed_form_of_the_usual_events_is_made_and_is_the_decoded_one(make: Any) -> None:
    ev, text, canon = validated_event_canonical(**{k: v for k, v in make().items() if k != "v"})
    assert canon is not None  # the compiled path: the relay skips the decode for these
    _same_as_decoded(text, canon)
    assert canon.cbor == encode_event(ev)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events())
def test_handed_form_of_random_events_is_the_decoded_one(ev: dict[str, Any]) -> None:
    fields = {k: v for k, v in ev.items() if k != "v"}
    try:
        want = new_event(**fields)
    except EventFormatError:
        with pytest.raises(EventFormatError):
            validated_event_canonical(**fields)
        return
    _, text, canon = validated_event_canonical(**fields)
    if canon is not None:
        _same_as_decoded(text, canon)
        assert canon.cbor == encode_event(want)


def _exchange(method: str, path: str, body: Any, n: int) -> Exchange:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/scim+json"),
        (b"authorization", b"Bearer token-" + str(n).encode()),
    ]
    scope: dict[str, Any] = {"type": "http", "headers": headers, "client": ("10.0.0.7", 1)}
    x = Exchange(scope, method, path, f"req-{n}", None, raw, 1_700_000_000_000_000_000)
    answer = dict(body or {}, id=f"id-{n}", meta={"version": f'W/"{n}"'})
    x.status = 204 if method == "DELETE" else (201 if method == "POST" else 200)
    if x.status != 204:
        x.resp_body = json.dumps(answer).encode()
        x.headers = [(b"content-type", b"application/scim+json"), (b"etag", b'W/"1"')]
    x.t1_ns = x.t0_ns + 3_000_000
    return x


def test_handed_forms_of_the_corpus_events_are_the_decoded_ones() -> None:
    """Each request shape of the corpus, answered as the SP would (and refused: 400), built
    into outbox records as the middleware builds them."""
    handed = 0
    for n, (_, _, method, path, body, _, _) in enumerate(CORPUS):
        for status in (None, 400):
            x = _exchange(method, path.replace("{", "").replace("}", ""), body, n)
            if status is not None:
                x.status, x.resp_body = status, b'{"detail": "no"}'
            rec = Builder(CFG, x).single()
            for r in AuditMiddleware._outbox_records(x, rec):
                if r.canon is not None:
                    handed += 1
                    _same_as_decoded(r.body, r.canon)
    assert handed >= len(CORPUS)  # the builder's usual path hands a form for each


def _answer(text: str, *, pseudonymised: bool) -> tuple[Receipt, Any]:
    """An honest answer for the event of ``text`` (its actor pseudonymised when asked, as
    the log does)."""
    pseudonym = (b"\x06" * 16, b"\x07" * 32) if pseudonymised else None
    return honest_answer(_decoded(text)[0], b"\x05" * 32, pseudonym)


@pytest.mark.parametrize("pseudonymised", [False, True])
def test_a_wrong_handed_form_neither_refuses_the_honest_nor_passes_the_dishonest(
    pseudonymised: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, text, canon = validated_event_canonical(
        **{k: v for k, v in full_event().items() if k != "v"}
    )
    assert canon is not None
    r, commit = _answer(text, pseudonymised=pseudonymised)
    decodes: list[str] = []
    real = receipts._decoded
    monkeypatch.setattr(receipts, "_decoded", lambda body: decodes.append(body) or real(body))
    # The right form: passes without a decode.
    assert check_commitments([r], {r.eid: commit}, {r.eid: text}, {r.eid: (text, canon)}) == 0
    assert decodes == []
    # A wrong one (another event's bytes, another actor), or one made from another text:
    # the decode decides, and the honest answer passes.
    other = hashlib.sha256(canon.cbor).digest()
    wrongs = [(text, Canonical(other, canon.actor)), (text + " ", canon)]
    if pseudonymised:  # (the actor is read only to splice the stored one in)
        wrongs.append((text, Canonical(canon.cbor, {"kind": "bearer", "tok_d": other})))
    for wrong in wrongs:
        decodes.clear()
        assert check_commitments([r], {r.eid: commit}, {r.eid: text}, {r.eid: wrong}) == 0
        assert decodes == [text]
    # A dishonest answer (the leaf of another event) is refused with the form handed.
    _, other_text, other_canon = validated_event_canonical(
        **{k: v for k, v in minimal_event().items() if k != "v"}
    )
    assert other_canon is not None
    bad_r, bad_commit = _answer(other_text, pseudonymised=pseudonymised)
    bad_r = Receipt(r.eid, 0, bad_r.leaf_hash, 1, "cp", False)
    # (A form that names the text sent but holds another event's bytes is an adapter bug
    # the equality tests above exclude: the log has no hand in what the outbox keeps.)
    for h in [(text, canon), (other_text, other_canon)]:
        with pytest.raises(VerificationError):
            check_commitments([bad_r], {r.eid: bad_commit}, {r.eid: text}, {r.eid: h})


def test_the_outbox_keeps_handed_forms_bounded_and_forgets_delivered(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from client.adapters import outbox as outbox_module

    monkeypatch.setattr(outbox_module, "_HANDED_MAX", 3)
    ob = Outbox(tmp_path / "o.sqlite")
    try:
        recs = []
        for i in range(5):
            fields = {k: v for k, v in minimal_event().items() if k not in ("v", "eid")}
            ev, text, canon = validated_event_canonical(**fields)
            recs.append(OutboxRecord(str(ev["eid"]), f"r{i}", text, canon))
        ob.put(recs)
        ob.put([OutboxRecord(recs[4].eid, "again", recs[0].body, recs[0].canon)])
        eids = [r.eid for r in recs]
        kept = ob.handed(eids)
        assert sorted(kept) == sorted(eids[2:])  # the oldest dropped first
        assert kept[eids[4]] == (recs[4].body, recs[4].canon)  # the first for an eid stays
        rc = Receipt(eids[3], 0, "x", 1, "cp", False)
        ob.mark_delivered([rc]).result()
        assert sorted(ob.handed(eids)) == sorted([eids[2], eids[4]])
    finally:
        ob.close()


def _records(n: int, *, handed: bool) -> list[OutboxRecord]:
    out = []
    for i in range(n):
        fields = {k: v for k, v in full_event().items() if k not in ("v", "eid", "ts")}
        fields.update(tenant="t1", rid=f"u{i}", corr={"req": f"r{i}"})
        ev, text, canon = validated_event_canonical(**fields)
        assert canon is not None
        out.append(OutboxRecord(str(ev["eid"]), f"r{i}", text, canon if handed else None))
    return out


def test_the_relay_checks_the_real_logs_answers_with_the_handed_forms(
    tmp_path: Path, log: Log, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a real ``tlog serve`` (which pseudonymises these events' actors): events
    queued with their forms are delivered and verified without one decode of their JSON;
    the same kind queued without (an outbox from before a restart) are decoded, and also
    delivered. The forms of delivered events are forgotten."""
    decodes: list[str] = []
    real = receipts._decoded
    monkeypatch.setattr(receipts, "_decoded", lambda body: decodes.append(body) or real(body))
    sub, _ = log.tokens("t1")
    outbox = Outbox(tmp_path / "o.sqlite")
    relay = relay_behind(outbox, log, sub, Front(), batch_size=7)
    relay.start()
    try:
        recs = _records(20, handed=True)
        outbox.put(recs)
        drain(outbox, relay, "the events with their forms delivered")
        assert decodes == []
        assert outbox.handed([r.eid for r in recs]) == {}
        old = _records(5, handed=False)
        outbox.put(old)
        drain(outbox, relay, "the events without forms delivered")
        assert sorted(decodes) == sorted(r.body for r in old)
    finally:
        relay.stop()
        counts = outbox.counts()
        outbox.close()
    assert counts == {"pending": 0, "delivered": 25, "rejected": 0}
    assert relay.unverified == 0
