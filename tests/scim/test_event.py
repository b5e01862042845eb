"""The event schema (SCIM.md §3.4): round trips, determinism, and strict rejection."""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import uuid
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim.cbor import EventFormatError, dumps_det
from client.scim.event import (
    BYTES_FIELDS,
    MAX_EVENT_SIZE,
    MAX_JSON_SIZE,
    decode_event,
    encode_event,
    event_from_json,
    event_object,
    event_to_json,
    load_event,
    new_event,
    uuid7,
    validate_event,
)
from tests.scim.helpers import (
    Pairs,
    Raw,
    events,
    failed_event,
    full_event,
    get_in,
    head,
    leaf_paths,
    map_paths,
    minimal_event,
    ref_encode,
    with_change,
    without,
)

SAMPLES = {"full": full_event, "failed": failed_event, "minimal": minimal_event}


def rejects(obj: Any, match: str | None = None) -> None:
    with pytest.raises(EventFormatError, match=match):
        validate_event(obj)


def shuffled(obj: Any, rnd: random.Random) -> Any:
    """The same value with every map's insertion order shuffled."""
    if isinstance(obj, dict):
        items = list(obj.items())
        rnd.shuffle(items)
        return {k: shuffled(v, rnd) for k, v in items}
    if isinstance(obj, list):
        return [shuffled(v, rnd) for v in obj]
    return obj


# --- round trips and determinism ------------------------------------------------------------


@pytest.mark.parametrize("make", SAMPLES.values(), ids=SAMPLES.keys())
def test_round_trips(make: Callable[[], dict[str, Any]]) -> None:
    ev = make()
    assert validate_event(ev) == ev
    data = encode_event(ev)
    assert data == ref_encode(ev)  # the canonical form is plain RFC 8949 §4.2.1
    assert decode_event(data) == ev
    text = event_to_json(ev)
    assert event_from_json(text) == ev
    assert event_from_json(text.encode("utf-8")) == ev
    assert event_to_json(event_from_json(text)) == text
    assert load_event(data) == ev
    assert load_event(text) == ev
    assert load_event(text.encode()) == ev
    assert load_event(b" \n" + text.encode()) == ev


def test_validate_returns_independent_copy() -> None:
    ev = full_event()
    out = validate_event(ev)
    out["actor"]["scope"].append("x")
    assert ev == full_event()


@given(st.randoms(use_true_random=False))
@settings(max_examples=50, deadline=None)
def test_same_event_same_bytes_regardless_of_insertion_order(rnd: random.Random) -> None:
    ev = full_event()
    other = shuffled(ev, rnd)
    assert encode_event(other) == encode_event(ev)
    assert event_to_json(other) == event_to_json(ev)


def test_json_mapping_of_bytes_fields() -> None:
    ev = full_event()
    doc = json.loads(event_to_json(ev))
    assert doc["req"]["dig"] == base64.b64encode(ev["req"]["dig"]).decode()
    assert doc["actor"]["tok_d"] == base64.b64encode(ev["actor"]["tok_d"]).decode()
    assert doc["actor"]["x5t_s256"] == base64.b64encode(ev["actor"]["x5t_s256"]).decode()
    assert doc["patch"][0]["v_d"] == base64.b64encode(ev["patch"][0]["v_d"]).decode()
    assert doc["mods"][1]["old_d"] == base64.b64encode(ev["mods"][1]["old_d"]).decode()
    assert doc["mods"][1]["new_d"] == base64.b64encode(ev["mods"][1]["new_d"]).decode()
    assert doc["refs"][0]["pid"] == base64.b64encode(ev["refs"][0]["pid"]).decode()
    # Exactly the byte-string fields are mapped: every bytes leaf of the sample is listed.
    listed = {re.sub(r"\[\]", "", f) for f in BYTES_FIELDS}
    found = {
        ".".join(str(p) for p in path if not isinstance(p, int))
        for path in leaf_paths(ev)
        if isinstance(get_in(ev, path), bytes)
    }
    # The log's pseudonymous actor ({kind, pid, sd}) cannot sit beside tok_d and x5t_s256:
    # its two byte fields are checked on an event of their own.
    assert found | {"actor.pid", "actor.sd"} == listed
    stored = {**ev, "actor": {"kind": "user", "pid": b"\x01" * 16, "sd": b"\x02" * 32}}
    doc = json.loads(event_to_json(stored))
    assert doc["actor"] == {
        "kind": "user",
        "pid": base64.b64encode(b"\x01" * 16).decode(),
        "sd": base64.b64encode(b"\x02" * 32).decode(),
    }
    assert event_from_json(json.dumps(doc)) == validate_event(stored)


def test_json_output_is_compact_sorted_utf8() -> None:
    ev = with_change(minimal_event(), ("tenant",), "Zürich")
    text = event_to_json(ev)
    assert "Zürich" in text and " " not in text
    assert list(json.loads(text)) == sorted(json.loads(text))


# --- hypothesis: random valid events --------------------------------------------------------


@given(events(), st.randoms(use_true_random=False))
@settings(max_examples=150, deadline=None)  # shared CPU: no flaky deadline
def test_random_events_round_trip_and_are_deterministic(ev: dict[str, Any], rnd: Any) -> None:
    data = encode_event(ev)
    assert data == ref_encode(ev)
    assert decode_event(data) == ev
    assert event_from_json(event_to_json(ev)) == ev
    assert encode_event(shuffled(ev, rnd)) == data


# --- rejection: structure -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [p for p in map_paths(full_event()) if not (p and p[0] == "x")],
    ids=lambda p: ".".join(map(str, p)) or "$",
)
def test_unknown_fields_rejected(path: tuple[Any, ...]) -> None:
    ev = full_event()
    get_in(ev, path)["zz_unknown"] = "1"
    rejects(ev, "unknown field 'zz_unknown'")


def test_unknown_fields_allowed_inside_x() -> None:
    ev = full_event()
    ev["x"]["anything"] = {"goes": ["here", 1, None]}
    assert validate_event(ev) == ev


REQUIRED = [
    ("v",),
    ("eid",),
    ("ts",),
    ("tenant",),
    ("sp",),
    ("op",),
    ("rt",),
    ("actor",),
    ("corr",),
    ("req",),
    ("res",),
    ("outcome",),
    ("sp", "id"),
    ("actor", "kind"),
    ("corr", "req"),
    ("req", "m"),
    ("req", "p"),
    ("req", "dig"),
    ("req", "len"),
    ("patch", 0, "op"),
    ("mods", 0, "attr"),
    ("refs", 0, "rt"),
    ("refs", 0, "pid"),
    ("res", "st"),
    ("acts", 0, "a"),
    ("acts", 0, "ocsf"),
]


@pytest.mark.parametrize("path", REQUIRED, ids=lambda p: ".".join(map(str, p)))
def test_missing_required_rejected(path: tuple[Any, ...]) -> None:
    rejects(without(full_event(), path), "missing")


OPTIONAL = [
    ("dur",),
    ("idp",),
    ("xid",),
    ("ver",),
    ("src",),
    ("patch",),
    ("mods",),
    ("refs",),
    ("x",),
    ("intent",),
    ("sp", "base"),
    ("idp", "id"),
    ("actor", "scope"),
    ("actor", "tok_d"),
    ("corr", "trace"),
    ("corr", "bulk_id"),
    ("req", "if_match"),
    ("patch", 0, "path"),
    ("patch", 0, "v_d"),
    ("mods", 0, "old"),
    ("mods", 0, "new"),
    ("res", "etag"),
    ("res", "loc"),
]


@pytest.mark.parametrize("path", OPTIONAL, ids=lambda p: ".".join(map(str, p)))
def test_optional_fields_may_be_omitted(path: tuple[Any, ...]) -> None:
    ev = without(full_event(), path)
    assert validate_event(ev) == ev


_WRONG = [1.5, None, True, 7, "s", b"b" * 32, [], {}, [1], {"k": 1}]


def _wrong_values(value: Any) -> list[Any]:
    return [w for w in _WRONG if type(w) is not type(value)]


@pytest.mark.parametrize(
    "path",
    [p for p in leaf_paths(full_event()) if p[0] != "x"],
    ids=lambda p: ".".join(map(str, p)),
)
def test_wrong_types_rejected(path: tuple[Any, ...]) -> None:
    ev = full_event()
    for wrong in _wrong_values(get_in(ev, path)):
        rejects(with_change(ev, path, wrong))


@pytest.mark.parametrize("top", ["sp", "actor", "corr", "req", "res", "patch", "acts"])
def test_containers_of_wrong_type_rejected(top: str) -> None:
    for wrong in ("x", 1, [], [1], {"a": 1}):
        if type(wrong) is type(full_event()[top]):
            continue
        rejects(with_change(full_event(), (top,), wrong))


def test_top_level_must_be_a_map() -> None:
    for bad in ([], "event", 1, None, b"", [full_event()]):
        rejects(bad)


# --- rejection: sizes, ranges, enumerations, formats ----------------------------------------

BSTR_SIZES = [
    (("req", "dig"), 32),
    (("actor", "tok_d"), 32),
    (("actor", "x5t_s256"), 32),
    (("patch", 0, "v_d"), 32),
    (("mods", 1, "old_d"), 32),
    (("mods", 1, "new_d"), 32),
    (("refs", 0, "pid"), 16),
]


@pytest.mark.parametrize("path,size", BSTR_SIZES, ids=lambda p: str(p))
def test_bstr_sizes(path: tuple[Any, ...], size: int) -> None:
    ev = full_event()
    assert validate_event(with_change(ev, path, b"\x00" * size))
    for n in (0, 1, size - 1, size + 1, 64):
        rejects(with_change(ev, path, b"\x00" * n), f"must be {size} bytes")


BAD_VALUES = [
    (("v",), 2),
    (("v",), 0),
    (("ts",), -1),
    (("ts",), 2**53),
    (("ts",), 2**64 - 1),
    (("dur",), -5),
    (("req", "len"), -1),
    (("corr", "seq"), -1),
    (("res", "st"), 99),
    (("res", "st"), 600),
    (("acts", 0, "ocsf", 0), -1),
    (("acts", 0, "ocsf", 1), 2**31),
    (("acts", 0, "ocsf"), [3001]),
    (("acts", 0, "ocsf"), [3001, 5, 1]),
    (("op",), "update"),
    (("op",), "Patch"),
    (("outcome",), "ok"),
    (("outcome",), "SUCCESS"),
    (("actor", "kind"), "admin"),
    (("patch", 0, "op"), "Replace"),
    (("patch", 0, "op"), "move"),
    (("eid",), EID_UPPER := "0190A3D2-8C4E-7ABC-8DEF-0123456789AB"),
    (("eid",), "0190a3d28c4e7abc8def0123456789ab"),
    (("eid",), "{0190a3d2-8c4e-7abc-8def-0123456789ab}"),
    (("eid",), "urn:uuid:0190a3d2-8c4e-7abc-8def-0123456789ab"),
    (("eid",), "00000000-0000-0000-0000-000000000000"),
    (("eid",), "ffffffff-ffff-ffff-ffff-ffffffffffff"),
    (("eid",), "0190a3d2-8c4e-0abc-8def-0123456789ab"),  # version 0
    (("eid",), "0190a3d2-8c4e-9abc-8def-0123456789ab"),  # version 9
    (("eid",), "0190a3d2-8c4e-7abc-cdef-0123456789ab"),  # Microsoft variant
    (("eid",), "0190a3d2-8c4e-7abc-8def-0123456789ab "),
    (("eid",), "evt-1"),
    (("tenant",), ""),
    (("tenant",), "t" * 257),
    (("tenant",), "é" * 129),  # 258 UTF-8 bytes
    (("tenant",), "a\nb"),
    (("rid",), "a\x00b"),
    (("rid",), "a\x7fb"),
    (("rid",), "a\u0085b"),
    (("tenant",), "\ud800"),
    (("req", "m"), "patch"),
    (("req", "m"), "PATCH "),
    (("req", "m"), "X" * 17),
    (("src", "ip"), "not-an-ip"),
    (("src", "ip"), "256.1.1.1"),
    (("src", "ua"), "a\x00b"),
    (("mods", 0, "new"), "not json"),
    (("mods", 0, "new"), "NaN"),
    (("mods", 0, "new"), '{"a":1,"a":2}'),
    (("mods", 0, "new"), "x" * 16385),
    (("acts", 0, "a"), "User.Update"),
    (("acts", 0, "a"), "update"),
    (("acts", 0, "a"), "user update"),
    (("acts", 0, "a"), ".user"),
    (("err",), {"reason": "x\x1b[31m"}),
    (("idp",), {}),
    (("ver",), {}),
    (("src",), {}),
    (("x",), {}),
    (("mods",), []),
    (("patch",), []),
    (("refs",), []),
    (("acts",), []),
    (("actor", "scope"), []),
    (("actor", "scope"), ["ok", ""]),
    (("intent",), False),
    (("intent",), 1),
    (("x", "f"), 1.5),
    (("x", "b"), b"bytes"),
    (("x", "big"), 2**53),
    (("x", "neg"), -(2**53)),
    (("x", "s"), "\udc00"),
    (("x", "s"), "x" * 16385),
    (("x", "deep"), [[[[[[[[[[1]]]]]]]]]]),
    (("x", "k"), {"": 1}),
    (("x", "k"), {1: 1}),
    (("x", "t"), (1, 2)),
]


@pytest.mark.parametrize("path,value", BAD_VALUES, ids=lambda p: repr(p)[:40])
def test_bad_values_rejected(path: tuple[Any, ...], value: Any) -> None:
    ev = full_event()
    if path[0] == "err":
        ev = failed_event()
    rejects(with_change(ev, path, value))


GOOD_VALUES = [
    (("eid",), "0190a3d2-8c4e-1abc-8def-0123456789ab"),  # v1
    (("eid",), "0190a3d2-8c4e-4abc-bdef-0123456789ab"),  # v4
    (("eid",), "0190a3d2-8c4e-8abc-9def-0123456789ab"),  # v8
    (("ts",), 2**53 - 1),
    (("res", "st"), 299),
    (("tenant",), "t" * 256),
    (("tenant",), "ü" * 128),
    (("tenant",), "名前"),
    (("src", "ip"), "192.0.2.1"),
    (("src", "ua"), "a\tb"),
    (("mods", 0, "new"), '{"n": 1.5e3}'),
    (("mods", 0, "new"), "null"),
    (("acts", 0, "a"), "device.noop"),
    (("acts", 0, "a"), "my-rt.custom_verb"),
    (("x", "big"), 2**53 - 1),
    (("x", "neg"), -(2**53) + 1),
    (("x", "deep"), [[[[[[[[1]]]]]]]]),
    (("x", "empty"), {}),
    (("x", "empty_list"), []),
    (("x", "s"), ""),
]


@pytest.mark.parametrize("path,value", GOOD_VALUES, ids=lambda p: repr(p)[:40])
def test_good_edge_values_accepted(path: tuple[Any, ...], value: Any) -> None:
    ev = with_change(full_event(), path, value)
    assert validate_event(ev) == ev


# --- rejection: conditional rules (SCIM.md §3.4) --------------------------------------------


def test_rid_required_unless_failed_create() -> None:
    assert validate_event(failed_event())  # failed create, no rid
    for outcome in ("skipped", "warning"):
        assert validate_event(with_change(failed_event(), ("outcome",), outcome))
    ok_create = with_change(without(minimal_event(), ("rid",)), ("op",), "create")
    rejects(ok_create, "rid")
    for op in ("replace", "patch", "delete"):
        rejects(with_change(failed_event(), ("op",), op), "rid")
        assert validate_event(with_change(with_change(failed_event(), ("op",), op), ("rid",), "r"))


def test_err_required_iff_not_success() -> None:
    for outcome in ("failure", "skipped", "warning"):
        rejects(with_change(without(failed_event(), ("err",)), ("outcome",), outcome), "err")
    success_with_err = with_change(minimal_event(), ("err",), {"reason": "x"})
    rejects(success_with_err, "err")


def test_acts_required_on_success_optional_otherwise() -> None:
    rejects(without(minimal_event(), ("acts",)), "acts")
    ev = with_change(failed_event(), ("acts",), [{"a": "group.create", "ocsf": [3006, 6]}])
    assert validate_event(ev) == ev


def test_success_needs_2xx() -> None:
    for st_ in (100, 304, 404, 412, 500):
        rejects(with_change(minimal_event(), ("res", "st"), st_), "2xx")
    for st_ in (100, 200, 204, 304, 500):
        assert validate_event(with_change(failed_event(), ("res", "st"), st_))


def test_bulk_correlation_needs_request_and_index() -> None:
    ev = full_event()
    rejects(without(ev, ("corr", "bulk_req")), "bulk")
    rejects(without(ev, ("corr", "seq")), "bulk")
    only_id = with_change(minimal_event(), ("corr",), {"req": "r", "bulk_id": "b"})
    rejects(only_id, "bulk")


def test_value_or_digest_not_both() -> None:
    ev = full_event()
    rejects(with_change(ev, ("mods", 0, "old_d"), bytes(32)), "value or digest")
    rejects(with_change(ev, ("mods", 1, "new"), "1"), "value or digest")


def test_duplicate_actions_rejected() -> None:
    ev = full_event()
    ev["acts"].append(copy.deepcopy(ev["acts"][0]))
    rejects(ev, "duplicate action")


def test_oversized_event_rejected() -> None:
    ev = full_event()
    ev["mods"] = [{"attr": f"a{i}", "new": json.dumps("v" * 16000)} for i in range(5)]
    data = dumps_det(ev)
    assert len(data) > MAX_EVENT_SIZE
    rejects(ev, "limit")
    with pytest.raises(EventFormatError, match="limit"):
        decode_event(data)
    with pytest.raises(EventFormatError):
        event_from_json(
            json.dumps(json.loads(event_to_json(full_event())) | {"x": {"p": "v" * MAX_JSON_SIZE}})
        )


def test_list_lengths_bounded() -> None:
    ev = full_event()
    ev["acts"] = [{"a": f"user.v{i}", "ocsf": [3004, 3]} for i in range(33)]
    rejects(ev, "more than 32")


# --- JSON input -----------------------------------------------------------------------------


def _json(ev: dict[str, Any] | None = None) -> str:
    return event_to_json(ev or full_event())


JSON_REJECT = {
    "not json": "{",
    "empty": "",
    "array": "[]",
    "string": '"event"',
    "trailing garbage": _json() + "x",
    "two documents": _json() + _json(),
    "duplicate top key": _json().replace('{"actor"', '{"v":1,"actor"', 1),
    "duplicate nested key": _json().replace('"sp":{', '"sp":{"id":"dup",', 1),
    "float ts": _json().replace('"ts":1718000000123', '"ts":1718000000123.0'),
    "exponent ts": _json().replace('"ts":1718000000123', '"ts":1.718e12'),
    "float in x": _json().replace('"n":-5', '"n":-5.5'),
    "NaN": _json().replace('"n":-5', '"n":NaN'),
    "Infinity": _json().replace('"n":-5', '"n":Infinity'),
    "huge int": _json().replace('"n":-5', '"n":' + "9" * 5000),
    "int beyond 64 bits": _json().replace('"ts":1718000000123', '"ts":18446744073709551616'),
    "bool as int": _json().replace('"len":187', '"len":true'),
    "base64 urlsafe": _json(with_change(full_event(), ("req", "dig"), b"\xfb" * 32)).replace(
        "+", "-"
    ),
    "base64 unpadded": _json().replace(
        base64.b64encode(b"\x09" * 16).decode(), base64.b64encode(b"\x09" * 16).decode().rstrip("=")
    ),
    "base64 non-canonical bits": _json().replace(
        base64.b64encode(b"\x09" * 16).decode(),
        base64.b64encode(b"\x09" * 16).decode()[:-3] + "R==",
    ),
    "base64 wrong size": _json().replace(
        base64.b64encode(b"\x09" * 16).decode(), base64.b64encode(b"\x09" * 15).decode()
    ),
    "base64 with space": _json().replace(
        base64.b64encode(b"\x09" * 16).decode(), " " + base64.b64encode(b"\x09" * 16).decode()
    ),
    "bytes field as number": _json().replace(
        '"' + base64.b64encode(b"\x09" * 16).decode() + '"', "9"
    ),
    "bytes field as array": _json().replace(
        '"' + base64.b64encode(b"\x09" * 16).decode() + '"', "[9]"
    ),
    "deep nesting": _json().replace('"n":-5', '"n":' + "[" * 100000 + "]" * 100000),
    "lone surrogate escape": _json().replace('"tenant":"contoso"', '"tenant":"\\ud800"'),
    "unknown field": _json().replace('{"actor"', '{"zz":1,"actor"', 1),
}


@pytest.mark.parametrize("text", JSON_REJECT.values(), ids=JSON_REJECT.keys())
def test_json_rejects(text: str) -> None:
    with pytest.raises(EventFormatError):
        event_from_json(text)
    with pytest.raises(EventFormatError):
        event_from_json(text.encode("utf-8", "surrogatepass"))


def test_json_rejects_bad_encodings() -> None:
    text = _json()
    for data in (
        b"\xef\xbb\xbf" + text.encode(),  # UTF-8 BOM
        text.encode("utf-16"),
        text.encode().replace(b"contoso", b"cont\xffso"),
        text.encode().replace(b"contoso", b"cont\xed\xa0\x80so"),  # encoded surrogate
    ):
        with pytest.raises(EventFormatError):
            event_from_json(data)
        with pytest.raises(EventFormatError):
            load_event(data)


def test_json_errors_name_the_field() -> None:
    bad = _json().replace(base64.b64encode(b"\x09" * 16).decode(), "AAAA")
    with pytest.raises(EventFormatError, match=r"\$\.refs\[0\]\.pid"):
        event_from_json(bad)


# --- CBOR input -----------------------------------------------------------------------------


def _cbor_with(path: tuple[Any, ...], raw: bytes) -> bytes:
    """The canonical encoding of the full event with one value replaced by raw CBOR."""
    return ref_encode(with_change(full_event(), path, Raw(raw)))


CBOR_REJECT: dict[str, bytes] = {
    "tag on ts": _cbor_with(("ts",), b"\xc1" + ref_encode(1718000000123)),
    "half float dur": _cbor_with(("dur",), b"\xf9\x51\x40"),
    "double ts": ref_encode(with_change(full_event(), ("ts",), 1718000000123.0)),
    "non-shortest ts": _cbor_with(("ts",), head(0, 1_000_000, 8)),
    "non-shortest dur": _cbor_with(("dur",), head(0, 42, 2)),
    "non-shortest length": _cbor_with(("tenant",), b"\x78\x07contoso"),
    "indefinite acts": _cbor_with(
        ("acts",), b"\x9f" + b"".join(ref_encode(a) for a in full_event()["acts"]) + b"\xff"
    ),
    "indefinite text": _cbor_with(("tenant",), b"\x7f\x63con\x64toso\xff"),
    "undefined": _cbor_with(("xid",), b"\xf7"),
    "tagged bytes": _cbor_with(("req", "dig"), b"\xd8\x40" + ref_encode(bytes(32))),
    "bignum len": _cbor_with(("req", "len"), b"\xc2\x41\xbb"),
    "unsorted top": cbor2.dumps(dict(reversed(list(full_event().items())))),
    "unsorted nested": ref_encode(
        with_change(full_event(), ("sp",), Pairs((("base", "https://b"), ("id", "app-1"))))
    ),
    "duplicate key": ref_encode(
        Pairs((*sorted(full_event().items(), key=lambda kv: ref_encode(kv[0])), ("v", 1)))
    ),
    "duplicate nested key": ref_encode(
        with_change(full_event(), ("sp",), Pairs((("id", "a"), ("id", "b"))))
    ),
    "trailing byte": encode_event(full_event()) + b"\x00",
    "array top": ref_encode([full_event()]),
    "bytes where text": ref_encode(with_change(full_event(), ("tenant",), b"contoso")),
    "text where bytes": ref_encode(with_change(full_event(), ("req", "dig"), "x" * 32)),
    "int key": ref_encode(Pairs(((1, 1),))),
}


@pytest.mark.parametrize("data", CBOR_REJECT.values(), ids=CBOR_REJECT.keys())
def test_cbor_rejects(data: bytes) -> None:
    with pytest.raises(EventFormatError):
        decode_event(data)
    if data[:1] and 0xA0 <= data[0] <= 0xBF:
        with pytest.raises(EventFormatError):
            load_event(data)


def test_cbor_must_be_bytes() -> None:
    with pytest.raises(EventFormatError):
        decode_event(bytearray(encode_event(full_event())))  # type: ignore[arg-type]


def test_every_one_byte_change_of_an_event_is_clean() -> None:
    data = encode_event(full_event())
    accepted = 0
    for i in range(len(data)):
        for flip in (0x01, 0x02, 0x80):
            mutated = bytearray(data)
            mutated[i] ^= flip
            try:
                ev = decode_event(bytes(mutated))
            except EventFormatError:
                continue
            accepted += 1
            assert encode_event(ev) == bytes(mutated) != data
    assert accepted > 0  # e.g. flips inside digests give different valid events
    for cut in range(len(data)):
        with pytest.raises(EventFormatError):
            decode_event(data[:cut])


def test_every_truncation_of_json_is_clean() -> None:
    text = _json(minimal_event())
    for cut in range(len(text)):
        with pytest.raises(EventFormatError):
            event_from_json(text[:cut])


# --- builder --------------------------------------------------------------------------------


def _builder_args(**over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "tenant": "contoso",
        "sp": "app-1",
        "op": "patch",
        "rt": "User",
        "rid": "u1",
        "actor": {"kind": "bearer", "tok_d": bytes(32)},
        "corr": "req-1",
        "req": {"m": "PATCH", "p": "/Users/u1", "dig": bytes(32), "len": 10},
        "res": 204,
        "outcome": "success",
    }
    args.update(over)
    return args


def test_new_event_defaults() -> None:
    ev = new_event(**_builder_args(mods=[{"attr": "active", "old": "true", "new": "false"}]))
    u = uuid.UUID(ev["eid"])
    assert u.version == 7 and str(u) == ev["eid"]
    assert (u.int >> 80) == ev["ts"]
    assert ev["sp"] == {"id": "app-1"} and ev["corr"] == {"req": "req-1"}
    assert ev["res"] == {"st": 204}
    assert ev["acts"] == [{"a": "user.deactivate", "ocsf": [3001, 5]}]
    assert "intent" not in ev
    assert validate_event(ev) == ev


def test_new_event_drops_empty_and_keeps_explicit() -> None:
    ev = new_event(
        **_builder_args(
            idp={"id": None},
            src={},
            mods=[],
            refs=None,
            ver={"pre": 'W/"1"', "post": None},
            eid="0190a3d2-8c4e-7abc-8def-0123456789ab",
            ts=5,
            acts=[{"a": "user.noop", "ocsf": [3004, 99]}],
            intent=True,
        )
    )
    assert "idp" not in ev and "src" not in ev and "mods" not in ev
    assert ev["ver"] == {"pre": 'W/"1"'}
    assert ev["eid"] == "0190a3d2-8c4e-7abc-8def-0123456789ab" and ev["ts"] == 5
    assert ev["intent"] is True


def test_new_event_validates() -> None:
    with pytest.raises(EventFormatError):
        new_event(**_builder_args(op="upsert"))
    with pytest.raises(EventFormatError, match="err"):
        new_event(**_builder_args(outcome="failure", res=400))
    ev = new_event(**_builder_args(outcome="failure", res=400, err={"scim_type": "invalidPath"}))
    assert "acts" not in ev


def test_builders_refuse_unknown_and_missing_keywords() -> None:
    # new_event and event_object take **EventFields: a misspelt or missing field is a
    # TypeError naming it, as an explicit signature would raise, never silently dropped.
    for build in (new_event, event_object):
        with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\): tennant$"):
            build(**_builder_args(tennant="contoso"))
        args = _builder_args()
        del args["actor"], args["res"]
        with pytest.raises(TypeError, match=r"missing required keyword argument\(s\): actor, res$"):
            build(**args)


def test_uuid7() -> None:
    seen = set()
    for _ in range(1000):
        u = uuid7(0x0123456789AB)
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert u.int >> 80 == 0x0123456789AB
        seen.add(u)
    assert len(seen) == 1000
    assert validate_event(with_change(minimal_event(), ("eid",), str(uuid7())))
    assert uuid7(1) < uuid7(2)
    with pytest.raises(ValueError):
        uuid7(1 << 48)
    with pytest.raises(ValueError):
        uuid7(-1)
