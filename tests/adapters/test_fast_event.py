"""The adapters' event builder (client.adapters.exchange.validated_event) against the reference.

validated_event checks an event's JSON form with the compiled checker and falls back to the
reference validator; it must give exactly what ``new_event`` + ``event_json`` give: the same
event (same canonical bytes) and the same JSON text, and refuse exactly what they refuse,
including objects whose JSON encoding would hide a wrong Python type (a tuple for a list,
bytes outside the byte fields, a non-text key).
"""

from __future__ import annotations

import uuid
from typing import Any
from unittest import mock

import cbor2
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.adapters.exchange import (
    Exchange,
    _resulting_values,
    event_json,
    header,
    validated_event,
)
from client.scim import event as event_module
from client.scim.cbor import EventFormatError
from client.scim.event import MAX_EVENT_SIZE, encode_event, event_object, new_event
from client.scim.fastjson import CBOR_PER_JSON_BYTE, check_event_json, decode_event_json
from tests.scim.helpers import events, failed_event, full_event, minimal_event, with_change


def _fields(ev: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in ev.items() if k != "v"}


def _same(fields: dict[str, Any]) -> None:
    try:
        want = new_event(**fields)
    except EventFormatError as exc:
        with pytest.raises(EventFormatError) as got:
            validated_event(**fields)
        assert str(got.value) == str(exc)
        return
    ev, text = validated_event(**fields)
    assert ev == want
    assert encode_event(ev) == encode_event(want)
    assert text == event_json(want)


@pytest.mark.parametrize("make", [full_event, failed_event, minimal_event])
def test_same_event_and_text_as_the_reference(make: Any) -> None:
    _same(_fields(make()))


@settings(max_examples=150, deadline=None)
@given(events())
def test_random_events_same_as_the_reference(ev: dict[str, Any]) -> None:
    _same(_fields(ev))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("x",), {"k": b"bytes are not a JSON value"}),
        (("x",), {1: "a key that is not text"}),
        (("x",), {"t": (1, 2)}),
        (("actor", "scope"), ("scim.write",)),
        (("req", "len"), True),
        (("res", "st"), 200.0),
        (("tenant",), "bad\x00tenant"),
        (("x",), {"f": float("nan")}),
        (("req", "dig"), "not bytes"),
    ],
)
def test_wrong_python_types_refused_as_the_reference(path: tuple[Any, ...], value: Any) -> None:
    fields = _fields(with_change(full_event(), path, value))
    with pytest.raises(EventFormatError):
        new_event(**fields)
    _same(fields)


def test_too_large_refused_as_the_reference() -> None:
    ev = full_event()
    ev["mods"] = [{"attr": f"a{i}", "new": '"' + "v" * 500 + '"'} for i in range(200)]
    _same(_fields(ev))


# --- the adapter's checker (client.scim.fastjson.check_event_json) -------------------------

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=300),
    lambda c: st.lists(c, max_size=30) | st.dictionaries(st.text(max_size=20), c, max_size=30),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_cbor_at_most_three_bytes_per_json_byte(value: Any) -> None:
    # check_event_json skips the CBOR size check below MAX_EVENT_SIZE / 3 bytes of JSON
    # text: that is sound only if CBOR never takes more than 3 bytes per byte of JSON.
    text = msgspec.json.encode(value)
    assert len(cbor2.dumps(value)) <= CBOR_PER_JSON_BYTE * len(text)
    assert len(cbor2.dumps(value, canonical=True)) <= CBOR_PER_JSON_BYTE * len(text)


@settings(max_examples=150, deadline=None)
@given(events())
def test_event_cbor_within_the_bound(ev: dict[str, Any]) -> None:
    want = new_event(**_fields(ev))
    assert len(encode_event(want)) <= CBOR_PER_JSON_BYTE * len(event_json(want).encode())


@settings(max_examples=150, deadline=None)
@given(events())
def test_check_event_json_gives_what_decode_event_json_gives(ev: dict[str, Any]) -> None:
    obj = event_object(**_fields(ev))
    text = msgspec.json.Encoder(order="sorted").encode(obj)
    full = decode_event_json(text)
    got = check_event_json(text)
    if full is None:
        # Only the repeated-key count or the CBOR may be what refused it.
        assert got is None or got != obj or len(text) > MAX_EVENT_SIZE // CBOR_PER_JSON_BYTE
    else:
        assert got == full[0]


@pytest.mark.parametrize(
    "x",
    [
        {1: "a", "1": "b"},  # two keys that write the same JSON text: one is lost
        {"1": "a", 1: "b"},
        {"a": {2: 1, "2": 1}},
    ],
)
def test_keys_that_would_write_the_same_text_are_refused_as_the_reference(
    x: dict[Any, Any],
) -> None:
    # check_event_json does not count colons for repeated keys: the JSON of a dict cannot
    # repeat one, since the sorted encoder takes text keys only (distinct texts) and
    # refuses the rest, which then take the reference path.
    fields = _fields(with_change(full_event(), ("x",), x))
    with pytest.raises(TypeError):
        msgspec.json.Encoder(order="sorted").encode(event_object(**fields))
    _same(fields)


def test_large_events_still_size_checked() -> None:
    # Over the no-CBOR bound: the CBOR is encoded and its size checked.
    ev = full_event()
    ev["mods"] = [{"attr": f"a{i}", "new": '"' + "v" * 200 + '"'} for i in range(120)]
    fields = _fields(ev)
    text = msgspec.json.Encoder(order="sorted").encode(event_object(**fields))
    assert len(text) > MAX_EVENT_SIZE // CBOR_PER_JSON_BYTE
    _same(fields)
    ev["mods"] = [{"attr": f"a{i}", "new": '"' + "v" * 500 + '"'} for i in range(140)]
    _same(_fields(ev))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**48 - 1), st.integers(0, 2**74 - 1))
def test_uuid7_text_is_the_uuid7_printed(ts: int, rand: int) -> None:
    # event_object writes eids with uuid7_text: the same text as str(uuid7()) for the same
    # timestamp and random bits.
    with mock.patch.object(event_module, "_randbits74", return_value=rand):
        got = event_module.uuid7_text(ts)
        want = str(event_module.uuid7(ts))
    assert got == want
    assert uuid.UUID(got).version == 7


def test_uuid7_text_range() -> None:
    with pytest.raises(ValueError):
        event_module.uuid7_text(1 << 48)
    assert uuid.UUID(event_module.uuid7_text()).version == 7


_names = st.sampled_from([b"etag", b"ETag", b"Location", b"location", b"content-type", b"x-a"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_names, st.binary(max_size=8)), max_size=8))
def test_exchange_headers_as_header_finds_them(headers: list[tuple[bytes, bytes]]) -> None:
    # Exchange.req_header/resp_header look names up in header_map: the first of repeated
    # names, any case, as header() scans for it; a new header list is seen.
    x = Exchange({"headers": headers}, "POST", "/Users", "r", None, b"", 0)
    x.headers = list(reversed(headers))
    for name in (b"etag", b"location", b"content-type", b"x-a", b"absent"):
        assert x.req_header(name) == header(headers, name)
        assert x.resp_header(name) == header(x.headers, name)
    x.headers = headers
    assert x.resp_header(b"etag") == header(headers, b"etag")


def test_exchange_headers_with_bytearray_names() -> None:
    # A server may hand byte sequences other than bytes (as the forwarder's test says):
    # header() compares them; the header map must take them too, not raise TypeError
    # (which loses the exchange's audit event: 503 or "unrecorded").
    headers: Any = [(bytearray(b"ETag"), bytearray(b'"1"')), (bytearray(b"x-a"), b"v")]
    x = Exchange({"headers": headers}, "POST", "/Users", "r", None, b"", 0)
    x.headers = headers
    for name in (b"etag", b"x-a", b"absent"):
        assert x.req_header(name) == header(headers, name)
        assert x.resp_header(name) == header(headers, name)


def test_resulting_values_bounded_as_before() -> None:
    # Only a result with role or entitlement lists is measured (json.dumps > 4096 bytes
    # keeps "active" alone); "active" by itself is always kept.
    base = {"id": "u1", "active": False}
    assert _resulting_values("User", base) == {"active": False}
    assert _resulting_values("User", {"id": "u1"}) is None
    small = {**base, "roles": [{"value": "admin"}], "entitlements": ["e"]}
    assert _resulting_values("User", small) == {
        "active": False,
        "roles": ["admin"],
        "entitlements": ["e"],
    }
    big = {**base, "roles": [{"value": "r" * 200 + str(i)} for i in range(30)]}
    assert _resulting_values("User", big) == {"active": False}
    assert _resulting_values("User", {"id": "u1", "roles": big["roles"]}) is None
