"""The relay's det-CBOR of an outbox record is the log's, for every event the adapters write.

The relay checks each receipt's ``c`` = HMAC(nonce, det_cbor(event)) against the event it
sent (:func:`client.adapters.receipts.check_commitments`), computing det_cbor from the
record's JSON text (:func:`client.adapters.receipts._canonical`). The log computed its ``c``
from the same text, parsed as part of a batch body (``ScimRoutes._parse_batch``: the
compiled batch decoder or the reference path) or alone (``ScimRoutes._parse_event``). If the
two encodings ever differed for a valid event, an honest log's answer would be refused and
the event would stay in the outbox for good (and every event batched with it).

The events are random (``tests.scim.helpers.events``) with text the fast decoders treat
apart: non-ASCII, quotes and backslashes (escapes), control characters (``\\u`` escapes), line
separators, integers at the I-JSON limits, an ``x`` of any JSON-model value and ``mods`` JSON
texts holding floats and escapes. Each is written in both forms the adapters write
(``client.adapters.exchange``: msgspec's sorted encoder for :func:`validated_event`,
:func:`event_json` for an event changed after validation), alone and inside a batch whose
other events push the decoders onto another path.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.adapters.exchange import event_json
from client.adapters.receipts import _canonical
from client.adapters.relay import _batch_body
from client.scim.event import EventFormatError, validate_event
from tlog.scim.routes import JSON, ScimRoutes
from tlog.scim.service import ScimLimits

from ..scim.helpers import events

_SORTED = msgspec.json.Encoder(order="sorted")  # exchange._JSON
_ROUTES: Any = SimpleNamespace(limits=ScimLimits())

_odd = st.sampled_from(
    ['"', "\\", "\n", "\t", "\r", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "é", "😀", "\\u0041"]
)
# Text for fields that take any character (x strings; free text is checked by the schema,
# which refuses what it must: a refused event is no outbox record).
_text = st.lists(st.one_of(_odd, st.characters(blacklist_categories=("Cs",))), max_size=12).map(
    "".join
)
_key = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x85"),
    min_size=1,
    max_size=8,
)
_ints = st.one_of(
    st.integers(-(2**53) + 1, 2**53 - 1), st.sampled_from([2**53 - 1, -(2**53) + 1, 0, -1])
)
_x = st.dictionaries(
    _key,
    st.recursive(
        st.none() | st.booleans() | _ints | _text,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(_key, c, max_size=3),
        max_leaves=8,
    ),
    min_size=1,
    max_size=4,
)
_json_scalar = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**70), 2**70),
    _text,
    st.booleans(),
    st.none(),
)
_json_text = st.one_of(
    _json_scalar.map(json.dumps),
    st.lists(_json_scalar, max_size=3).map(json.dumps),
    st.dictionaries(_key, _json_scalar, max_size=3).map(
        lambda d: json.dumps(d, ensure_ascii=False)
    ),
)


@st.composite
def adapter_events(draw: st.DrawFn) -> dict[str, Any]:
    ev = draw(events())
    if draw(st.booleans()):
        ev["x"] = draw(_x)
    if draw(st.booleans()):
        ev["mods"] = [{"attr": draw(_key), "new": draw(_json_text)}]
        if draw(st.booleans()):
            ev["mods"][0]["old"] = draw(_json_text)
    if draw(st.booleans()):
        ev["err"] = {"reason": draw(_key)} if ev["outcome"] != "success" else ev.get("err")
        if ev["err"] is None:
            del ev["err"]
    return ev


def _forms(ev: dict[str, Any]) -> list[str] | None:
    """The JSON texts the adapters write for ``ev`` (None: the schema refuses it)."""
    try:
        valid = validate_event(ev)
    except EventFormatError:
        return None
    return [_SORTED.encode(valid).decode("utf-8"), event_json(valid)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(adapter_events(), min_size=1, max_size=3), st.integers(0, 1))
def test_relay_canonical_is_the_logs_encoding(evs: list[dict[str, Any]], form: int) -> None:
    bodies = [f[form] for f in map(_forms, evs) if f is not None]
    if not bodies:
        return
    batch = ScimRoutes._parse_batch(_ROUTES, _batch_body(bodies), JSON)
    assert len(batch) == len(bodies)
    for body, (_, logs) in zip(bodies, batch, strict=True):
        ours = _canonical(body)
        assert ours == logs
        assert ScimRoutes._parse_event(body.encode("utf-8"), JSON)[1] == ours


def test_an_event_whose_json_is_over_the_single_event_limit() -> None:
    """Control characters in ``x`` strings are one CBOR byte and six JSON bytes (``\\u0001``):
    an event well within the CBOR limit can have a JSON form over ``MAX_JSON_SIZE``, which
    limits a single event's body, not a batch's events. The log takes it in a batch; the
    relay must encode it too, or it refuses the honest answer forever (and with it every
    event queued behind it)."""
    from client.adapters.exchange import validated_event
    from client.scim.event import MAX_EVENT_SIZE, MAX_JSON_SIZE, encode_event

    ev, body = validated_event(
        tenant="t1",
        sp="sp",
        op="delete",
        rt="User",
        rid="u1",
        actor={"kind": "anonymous"},
        corr="req-1",
        req={"m": "DELETE", "p": "/Users/u1", "dig": b"\0" * 32, "len": 0},
        res=204,
        outcome="success",
        x={f"k{i}": "\x01" * 15000 for i in range(4)},
    )
    assert len(encode_event(ev)) <= MAX_EVENT_SIZE < MAX_JSON_SIZE < len(body.encode())
    ((_, logs),) = ScimRoutes._parse_batch(_ROUTES, _batch_body([body]), JSON)
    assert _canonical(body) == logs == encode_event(ev)
