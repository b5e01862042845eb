"""The staging path's shortcuts of the restructured rounds (issue 9 part 6) give exactly what
the general code does: the batch pipeline for creates stages the same records with the same
bytes as the per-event path (its create classifier equals :func:`classify`, ``put_many``
equals one ``put`` per record); the effect and state encoders equal ``dumps_det``, the C JSON-text
parse equals ``json.loads``, the batch's random pool hands every byte out once, and a
subject's state carried from event to event of one batch gives the same effects and the same
final state as the events submitted one by one."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from client.scim import encode_event
from client.scim.actions import parse_json_text as reference_parse
from client.scim.cbor import EventFormatError, dumps_det, loads_det
from client.scim.event import event_to_json
from tests.scim_service.conftest import BASE_TS, T1, open_harness, user_event
from tests.scim_service.helpers import create_event, mixed_batch, user_mods
from tlog.scim import store
from tlog.scim.effects import (
    classify,
    classify_create,
    encode_effect,
    encode_state,
    parse_json_text,
)
from tlog.scim.keys import RandomPool, SubjectId, TenantKeys, subject_encoding
from tlog.scim.service import ScimService

# --- JSON text: msgspec first, json.loads for whatever msgspec refuses ----------------------


def _same(a: object, b: object) -> bool:
    """Equal values of equal types all the way down (1 != 1.0 != True here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and str(a) == str(b))  # type: ignore[arg-type]
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)  # type: ignore[index]
    return a == b


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**80), 2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4)
    ),
    max_leaves=12,
)
_JSON_NOISE = st.text(
    alphabet='{}[]",:0123456789.eE+-tfrueanlsNI\\u \t\n\r\x00\ud800é', max_size=30
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        _JSON_VALUES.map(json.dumps),
        _JSON_VALUES.map(lambda v: json.dumps(v, ensure_ascii=False)),
        _JSON_NOISE,
        st.tuples(_JSON_VALUES.map(json.dumps), _JSON_NOISE).map("".join),
        st.tuples(_JSON_NOISE, _JSON_VALUES.map(json.dumps)).map("".join),
        st.integers() | st.none() | st.binary(max_size=4),
    )
)
def test_json_text_parse_equals_json_loads(text: Any) -> None:
    assert _same(parse_json_text(text), reference_parse(text))


def test_json_text_parse_edge_cases() -> None:
    for text in ("NaN", "1e400", '"\\ud800"', '{"a":1,"a":2}', " [1, 2] ", "[1,]", "\ufeff1"):
        assert _same(parse_json_text(text), reference_parse(text)), text


# --- effect and state encoders vs dumps_det over classify's own output ----------------------

_ATTRS = st.sampled_from(
    [
        "active",
        "userName",
        "emails",
        "roles",
        "entitlements",
        "displayName",
        "name.givenName",
        'emails[type eq "work"].value',
        'roles[value eq "admin"]',
        "urn:ietf:params:scim:schemas:core:2.0:User:active",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
        "members",
        "password",
        "é",
    ]
)
# Event strings are valid Unicode (validation refuses lone surrogates); JSON escapes of them
# ("\\ud800" in the text) are allowed and decode to one.
_EVENT_NOISE = st.text(alphabet='{}[]",:0123456789.eE+-tfrueanlsNI\\ud80 \n\x00é✓', max_size=30)
_TEXT_VALUE = _JSON_VALUES.map(json.dumps) | _EVENT_NOISE
_MOD = st.fixed_dictionaries(
    {"attr": _ATTRS},
    optional={
        "op": st.sampled_from(["add", "remove", "replace"]),
        "new": _TEXT_VALUE,
        "old": _TEXT_VALUE,
        "new_d": st.binary(min_size=32, max_size=32),
    },
)
_PIDS = st.binary(min_size=16, max_size=16)
_REF = st.fixed_dictionaries(
    {"rt": st.sampled_from(["User", "Group"]), "pid": _PIDS},
    optional={
        "op": st.sampled_from(["add", "remove", "replace"]),
        "attr": st.sampled_from(["members", "manager"]),
    },
)
_X = st.fixed_dictionaries(
    {},
    optional={
        "parts": st.integers(1, 3),
        "part": st.integers(0, 2),
        "uninterpretable": st.booleans(),
        "result": st.fixed_dictionaries(
            {},
            optional={
                "active": st.sampled_from([True, False, "true", "False", 1, None]),
                "roles": st.lists(st.text(max_size=3), max_size=3),
            },
        ),
    },
)
_EVENT = st.fixed_dictionaries(
    {
        "rt": st.sampled_from(["User", "Group", "Device"]),
        "rid": st.just("r-1"),
        "outcome": st.just("success"),
        "op": st.sampled_from(["create", "replace", "patch", "delete"]),
        "corr": st.fixed_dictionaries({"req": st.sampled_from(["q1", "q2"])}),
    },
    optional={
        "mods": st.lists(_MOD, max_size=5),
        "refs": st.lists(_REF, max_size=4),
        "x": _X,
    },
)


def _det_or_error(obj: Any) -> bytes | type[Exception]:
    try:
        return dumps_det(obj)
    except EventFormatError:
        return EventFormatError


def _fast_or_error(fn: Any, obj: Any) -> bytes | type[Exception]:
    try:
        out: bytes = fn(obj)
        return out
    except EventFormatError:
        return EventFormatError


@settings(max_examples=400, deadline=None)
@given(st.lists(_EVENT, min_size=1, max_size=6))
def test_effect_and_state_encoders_equal_dumps_det(events: list[dict[str, Any]]) -> None:
    state: dict[str, Any] | None = None
    for ev in events:
        effect, state, _ = classify(state, ev)
        if effect is not None:
            assert _fast_or_error(encode_effect, effect) == _det_or_error(effect)
        if state is not None:
            assert _fast_or_error(encode_state, state) == _det_or_error(state)


def test_encoders_defer_to_dumps_det_for_unknown_shapes() -> None:
    odd: dict[str, Any] = {"basis": "event", "acts": [], "zzz": 1}  # a key outside the table
    assert encode_effect(odd) == dumps_det(odd)
    with pytest.raises(EventFormatError):
        encode_effect({"basis": "event", "acts": [], "changes": [{"attr": "\ud800"}]})
    with pytest.raises(EventFormatError):
        encode_effect({"basis": 1.5, "acts": []})  # float: refused as dumps_det refuses it
    with pytest.raises(EventFormatError):
        encode_state({"rt": "User", "other": {"\ud800": "x"}})
    weird = {"rt": "User", "other": {"b": "1", "aa": "2", "a": "3"}, "new-key": True}
    assert encode_state(weird) == dumps_det(weird)


def test_subject_encoding_equals_dumps_det() -> None:
    for s in (SubjectId("User", "rid", "u-1"), SubjectId("Group", "userName", "é✓")):
        assert s.encode() == dumps_det([s.rt, s.kind, s.value])
    with pytest.raises(EventFormatError):
        SubjectId("User", "userName", "\ud800").encode()


@settings(max_examples=300, deadline=None)
@given(
    rt=st.text(max_size=30),
    kind=st.sampled_from(["rid", "xid", "userName", "sys", "none", "k" * 23, "k" * 24]),
    value=st.text(max_size=30) | st.text(alphabet="aé✓\U0001f600", min_size=5, max_size=9),
)
def test_subject_encoding_equals_dumps_det_at_every_length(rt: str, kind: str, value: str) -> None:
    """The direct encoding of three short texts (each under 24 bytes) and cbor2's for longer
    ones give dumps_det's bytes, around the 23/24-byte boundary and in multi-byte UTF-8;
    a lone surrogate is refused as dumps_det refuses it."""
    try:
        want: bytes | type[Exception] = dumps_det([rt, kind, value])
    except EventFormatError:
        want = EventFormatError
    try:
        got: bytes | type[Exception] = subject_encoding(rt, kind, value)
    except EventFormatError:
        got = EventFormatError
    assert got == want


@settings(max_examples=200, deadline=None)
@given(ik=st.binary(min_size=1, max_size=80), msgs=st.lists(st.binary(max_size=300), max_size=4))
def test_index_hashes_equal_hmac_of_the_index_key(ik: bytes, msgs: list[bytes]) -> None:
    """The tenant's index and subject hashes (a copied keyed HMAC state, the C object under
    the stdlib wrapper where there is one) equal HMAC-SHA256(ik, message)[:16], however
    many times the state is copied and in whatever order."""
    tk = TenantKeys(b"\x00" * 16, b"\x01" * 32, ik)

    def ref(msg: bytes) -> bytes:
        return hmac.new(ik, msg, hashlib.sha256).digest()[:16]

    for m in msgs:
        assert tk._ik_hash16(m) == ref(m)
        fld, value = m[:3], m[3:]
        assert tk.index_hash(fld, value) == ref(b"index\x00" + fld + b"\x00" + value)
    assert tk.subject_hash_of("User", "rid", "u-1") == ref(
        b"subject\x00" + SubjectId("User", "rid", "u-1").encode()
    )
    assert tk.subject_hash(SubjectId("Group", "xid", "é")) == ref(
        b"subject\x00" + SubjectId("Group", "xid", "é").encode()
    )


# --- the random pool -------------------------------------------------------------------------


def test_random_pool_hands_out_each_byte_once() -> None:
    pool = RandomPool()
    sizes = [32, 12, 16, 32, 12, 32, 12] * 200 + [RandomPool.BLOCK + 5, 3]
    parts = [pool(n) for n in sizes]
    assert [len(p) for p in parts] == sizes
    # 32-byte draws never repeat (a repeat would mean bytes handed out twice).
    big = [p for p in parts if len(p) == 32]
    assert len(set(big)) == len(big)
    assert "RandomPool()" == repr(pool)  # nothing of the buffer in its repr


# --- a subject's state carried across the events of one batch --------------------------------


def _history() -> list[dict[str, Any]]:
    create = user_event("u-1", req="r1", op="create", acts=None)
    return [
        create,
        user_event("u-1", req="r2"),  # deactivate
        user_event("u-1", req="r3", active=("false", "true")),  # activate
        user_event("u-1", req="r4", active=("false", "true")),  # no change: noop
        user_event("u-2", req="r5"),
        user_event("u-1", req="r6", active=("true", "false")),
    ]


def _effects_and_state(
    tmp_path: Path, database: str | None, batched: bool
) -> tuple[list[Any], dict[str, Any]]:
    with open_harness(tmp_path, database=database) as h:
        evs = _history()
        if batched:
            body = json.dumps({"events": [json.loads(event_to_json(e)) for e in evs]})
            r = h.post_raw(body.encode(), "application/json", path="/v1/scim/events/batch")
            assert r.status_code == 200, r.text
        else:
            for e in evs:
                h.post_event(e)
        found = sorted(h.auditor().search_all(rid="u-1"), key=lambda f: f.index)
        effects = [f.effect for f in found]
        with h.log.storage.read() as rv:
            tx = store.Overlay(rv)
            tk = h.service.keys.tenant(tx, T1)
            assert tk is not None
            sk = h.service.keys.subject(tx, tk, SubjectId("User", "rid", "u-1"))
            assert sk is not None
            state = h.service.keys.state(tx, tk, sk.kid)
            raw = rv.aux(store.state_key(sk.kid))
            assert raw is not None and dumps_det(loads_det(raw)) == raw
        assert state is not None
        return effects, state


def test_batch_state_cache_gives_the_effects_of_one_by_one(
    tmp_path: Path, database: str | None, new_database: Callable[[], str | None]
) -> None:
    one, state_one = _effects_and_state(tmp_path / "one", database, batched=False)
    many, state_many = _effects_and_state(tmp_path / "many", new_database(), batched=True)
    acts = [[a["a"] for a in (e or {}).get("acts", ())] for e in many]
    assert acts == [
        ["user.create"],
        ["user.deactivate"],
        ["user.activate"],
        ["user.noop"],
        ["user.deactivate"],
    ]
    # basis and changes too: the batched run judged each event against the state the
    # previous event of the same batch left, exactly as separate submissions do.
    assert many == one
    assert state_many == state_one
    assert state_many["active"] is False


# --- the eid record's key: bytes.fromhex for the canonical form, uuid.UUID for the rest -------


@settings(max_examples=300, deadline=None)
@given(
    st.uuids().map(str)
    | st.uuids().map(lambda u: str(u).upper())
    | st.text(alphabet="0123456789abcdefABCDEF- {}urn:", min_size=30, max_size=40)
)
def test_eid_key_equals_the_uuid_reading(eid: str) -> None:
    tn = b"t" * 16
    try:
        want: bytes | type[Exception] = store.PREFIX + b"V" + tn + uuid.UUID(eid).bytes
    except ValueError:
        want = ValueError
    try:
        got: bytes | type[Exception] = store.eid_key(tn, eid)
    except ValueError:
        got = ValueError
    assert got == want


@settings(max_examples=500, deadline=None)
@given(
    _JSON_VALUES
    | st.recursive(st.integers(-3, 3), lambda kids: st.lists(kids, max_size=2), max_leaves=40)
    | st.dictionaries(st.integers() | st.text(max_size=2), st.none(), max_size=3)
)
def test_sorted_json_equals_json_dumps(value: object) -> None:
    from tlog.scim.effects import _dumps_sorted

    def outcome(fn: Any) -> object:
        try:
            return fn(value)
        except (TypeError, ValueError, RecursionError) as exc:
            return type(exc)

    assert outcome(_dumps_sorted) == outcome(lambda v: json.dumps(v, sort_keys=True))


def test_sorted_json_refuses_as_json_dumps_and_a_refusal_leaves_nothing_behind() -> None:
    """``_dumps_sorted`` reuses one C encoder across calls: a cycle is the json module's
    ValueError (not a RecursionError of the memo-less encoder), an unencodable value its
    TypeError, and neither changes what a later call of the same objects writes."""
    from tlog.scim.effects import _dumps_sorted

    inner: dict[str, Any] = {"b": [1, None], "a": "x"}
    cyclic: list[Any] = [inner]
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="Circular reference detected"):
        json.dumps(cyclic, sort_keys=True)
    with pytest.raises(ValueError, match="Circular reference detected"):
        _dumps_sorted(cyclic)
    with pytest.raises(TypeError):
        _dumps_sorted([inner, {"k": object()}])
    cyclic.pop()
    for value in (cyclic, inner, [inner, inner], {"z": inner, "y": [inner]}):
        assert _dumps_sorted(value) == json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("part", [b"\x01\x02", bytearray(b"\x03"), memoryview(b"\x04\x05"), b""])
def test_key_functions_are_prefix_tag_and_parts(part: bytes) -> None:
    """The key functions of the staging write their tag's prefix and parts by concatenation:
    the same bytes as ``_k`` joins, and the same TypeError for a part that is not bytes."""
    h = bytes(range(16))
    want = {
        store.tenant_key: (b"T", (part,)),
        store.subject_key: (b"S", (part, h)),
        store.dek_prefix: (b"D", (part,)),
        store.envelope_key: (b"E", (part,)),
        store.subject_events_prefix: (b"L", (part,)),
        store.subject_event_key: (b"L", (part, h)),
        store.tenant_events_prefix: (b"A", (part,)),
        store.index_prefix: (b"X", (part, h)),
        store.state_key: (b"F", (part,)),
        store.request_key: (b"R", (part,)),
    }
    for fn, (tag, parts) in want.items():
        got = fn(*parts)
        assert type(got) is bytes and got == store._k(tag, *parts), fn.__name__
        with pytest.raises(TypeError):
            fn(*(["text"] + list(parts[1:])))
    assert store.dek_key(part, 7) == store._k(b"D", part, (7).to_bytes(4, "big"))
    assert store.eid_key(part, "{12345678-1234-7234-8234-123456789abc}") == store._k(
        b"V", part, uuid.UUID("12345678-1234-7234-8234-123456789abc").bytes
    )


# --- the classifier's per-path decision, worked out once per (prefix, path) -----------------

_PATH_PARTS = st.sampled_from(
    [
        "active",
        "Active",
        "userName",
        "emails",
        'emails[type eq "work"].value',
        "emails.value",
        "roles",
        "entitlements",
        "members",
        "manager",
        "password",
        "displayName",
        "name.givenName",
        "urn:ietf:params:scim:schemas:core:2.0:User:active",
        "urn:ietf:params:scim:schemas:core:2.0:User:emails.value",
        "urn:ietf:params:scim:schemas:core:2.0:Group:members",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:manager.value",
        "urn:x:active",
    ]
)


def _kind_before(prefix: str, attr: str) -> tuple[str, str, bool]:
    """The decision _Run.run took per mod before the table (key, kind, top), inline."""
    from tlog.scim.effects import _SETS, _key_of

    key = _key_of(attr)
    top = "[" not in attr and "." not in attr.rpartition(":")[2]
    if key in ("members", "manager"):
        return key, "ref", top
    if key == "password":
        return key, "password", top
    if (prefix, key) in _SETS:
        return key, "set", top
    if (
        key in ("active", "username", "emails")
        and "[" not in attr
        and ("." not in attr.rpartition(":")[2])
    ):
        return key, "scalar", top
    return key, "other", top


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["user", "group", "device", "x"]),
    _PATH_PARTS | st.text(alphabet='aAemrs.[]:"= nbctiv', max_size=24),
)
def test_attr_kind_table_equals_the_per_mod_decision(prefix: str, attr: str) -> None:
    from tlog.scim.effects import _attr_kind

    assert _attr_kind(prefix, attr) == _kind_before(prefix, attr)
    assert _attr_kind(prefix, attr) == _kind_before(prefix, attr)  # and from the table


# --- reserved names: each short name normalised once (a bounded memo) -----------------------

_NAME_PARTS = st.sampled_from(
    [
        "tlog",
        "TLOG",
        "tlog.access",
        "tlog\u2024access",
        "tlog\uff0eaccess",
        "t\u200blog.x",
        "tl\u043eg.access",
        "user",
        "User",
        "user.create",
        "group.member.add",
        ".",
        "\u0442log.",
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_NAME_PARTS | st.text(max_size=12), min_size=1, max_size=3).map("".join))
def test_reserved_memo_equals_the_normalisation(name: str) -> None:
    from client.scim.reserved import _is_reserved, is_reserved

    want = _is_reserved(name)
    assert is_reserved(name) is want
    assert is_reserved(name) is want  # the second answer comes from the memo
    long = name + "x" * 300  # beyond the memo's length bound: computed every time
    assert is_reserved(long) is _is_reserved(long)


# --- the batch pipeline (stage4 round): the create classifier ----------------------------

_CREATE = st.fixed_dictionaries(
    {
        "rt": st.sampled_from(["User", "Group", "Device"]),
        "rid": st.just("r-1"),
        "outcome": st.just("success"),
        "op": st.just("create"),
        "corr": st.just({"req": "q1"}),
        "mods": st.lists(
            st.fixed_dictionaries(
                {"attr": _ATTRS, "new": _TEXT_VALUE | st.sampled_from(['"a b"', '"é"', "true"])},
                optional={"op": st.sampled_from(["add", "replace", "remove"])},
            ),
            max_size=5,
        ),
    }
)


def _check_create(ev: dict[str, Any]) -> bool:
    fast = classify_create(ev)
    if fast is None:
        return False
    effect, state, changed = classify(None, ev)
    assert changed
    assert (fast[0], fast[2]) == (effect, state)
    assert fast[1] == encode_effect(effect) == dumps_det(effect)
    assert encode_state(fast[2]) == dumps_det(state)
    assert cbor2.dumps(fast[2]) == dumps_det(state)  # its keys in deterministic order
    return True


@settings(max_examples=400, deadline=None)
@given(_CREATE | _EVENT)
def test_create_classifier_equals_classify(ev: dict[str, Any]) -> None:
    note(f"fast path: {_check_create(ev)}")


def test_create_classifier_takes_the_common_shapes() -> None:
    mods = [
        {"attr": "userName", "new": '"alice@example.org"'},
        {"attr": "displayName", "new": '"Alice"'},
        {"attr": "emails", "new": '[{"value":"alice@example.org","primary":true}]'},
        {"attr": "active", "new": "true"},
        {"attr": "password", "new_d": bytes(32)},
    ]
    ev = {"rt": "User", "rid": "u-1", "outcome": "success", "op": "create", "mods": mods}
    assert _check_create(ev)
    for odd in (
        {"attr": "roles", "new": '["admin"]'},  # a set: grants
        {"attr": "userName", "new": '"again"'},  # named twice
        {"attr": "name.givenName", "new": '"A"'},  # not top level
        {"attr": "active", "op": "remove"},
    ):
        assert classify_create({**ev, "mods": [*mods, odd]}) is None
        _check_create({**ev, "mods": [*mods, odd]})
    assert classify_create({**ev, "op": "patch"}) is None
    assert classify_create({**ev, "x": {"result": {"active": False}}}) is None


# --- Overlay.put_many -------------------------------------------------------------------------


def test_put_many_equals_puts_and_rolls_back(tmp_path: Path, database: str | None) -> None:
    with open_harness(tmp_path, database=database) as h:
        with h.log.storage.read() as rv:
            one, many = store.Overlay(rv), store.Overlay(rv)
            for tx in (one, many):
                tx.put(b"scim/Zk1", b"first")
            mark = many.mark()
            items = [(b"scim/Zk1", b"a"), (b"scim/Zk2", b"b"), (b"scim/Zk1", b"c")]
            for k, v in items:
                one.put(k, v)
            many.put_many([k for k, _ in items], [v for _, v in items])  # a key twice
            many.put_many([b"scim/Zk3", b"scim/Zk2", b"scim/Zk4"], [b"d", b"e", b"f"])
            one.put(b"scim/Zk3", b"d")
            one.put(b"scim/Zk2", b"e")
            one.put(b"scim/Zk4", b"f")
            assert many.items() == one.items()
            assert many.get(b"scim/Zk2") == b"e" and many.staged(b"scim/Zk4")
            many.rollback(mark)
            assert many.items() == [(b"scim/Zk1", b"first")]
            with pytest.raises(ValueError):
                many.put_many([b"scim/Zk5"], [])


# --- the whole staging: pipeline vs the general path, byte for byte ---------------------------


def _stage(svc: ScimService, events: list[Any], *, fast: bool) -> tuple[Any, dict[bytes, Any]]:
    stage = svc._stager(T1, events, [encode_event(e) for e in events], fast=fast)
    with svc.storage.read() as rv:
        tx = store.Overlay(rv)
        out = stage(tx)
        return out, dict(tx.items())


def test_pipeline_stages_what_the_general_path_stages(
    tmp_path: Path, database: str | None, stream_rand: Any
) -> None:
    with open_harness(tmp_path, database=database) as h:
        # the tenant's keys and one known subject, committed
        r = h.post_event(create_event("u-0", "r0", user_mods("zero@example.org")))
        assert r.status_code == 200, r.text
        svc = h.service
        svc.clock = lambda: BASE_TS + 86_400_000
        events = mixed_batch()
        general_calls = [0]
        stage_one = svc._stage

        def counted(*a: Any) -> Any:
            general_calls[0] += 1
            return stage_one(*a)

        stream_rand()
        want, want_records = _stage(svc, events, fast=False)
        svc._stage = counted  # type: ignore[method-assign]
        stream_rand()
        got, got_records = _stage(svc, events, fast=True)
        # the batch pipeline took the 20 bulk creates and the simple ones, not the others
        assert 0 < general_calls[0] <= 9
        assert got == want
        assert got_records.keys() == want_records.keys()
        for k in want_records:
            assert got_records[k] == want_records[k], k[:6]


_B16 = st.binary(min_size=16, max_size=16)
_EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
_UINT = st.sampled_from(_EDGES) | st.integers(0, 2**64 - 1)
_CT = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536]).map(lambda n: b"c" * n) | st.binary(
    max_size=300
)


def _check_envelope(
    tn: bytes, eid: str, ts: int, kid: bytes, epoch: int, iv: bytes, ct: bytes, ix: list[bytes]
) -> None:
    ref = {"v": 1, "tn": tn, "eid": eid, "ts": ts, "kid": kid, "ep": epoch, "iv": iv}
    want = _det_or_error({**ref, "ct": ct, "ix": ix})
    try:
        got: bytes | type[Exception] = store.encode_envelope(tn, eid, ts, kid, epoch, iv, ct, ix)
    except (UnicodeEncodeError, ValueError):
        got = EventFormatError
    assert got == want


@settings(max_examples=400, deadline=None)
@given(
    tn=_B16,
    eid=st.uuids().map(str) | st.text(alphabet="abc-0123 ~", max_size=300),
    ts=_UINT,
    kid=_B16,
    epoch=_UINT,
    iv=st.binary(min_size=12, max_size=12),
    ct=_CT,
    ix=st.lists(st.binary(min_size=17, max_size=17), max_size=25),
)
def test_envelope_encoding_equals_dumps_det(
    tn: bytes, eid: str, ts: int, kid: bytes, epoch: int, iv: bytes, ct: bytes, ix: list[bytes]
) -> None:
    """The log's own shapes, at every CBOR head size (what the concatenation writes)."""
    _check_envelope(tn, eid, ts, kid, epoch, iv, ct, ix)


@settings(max_examples=300, deadline=None)
@given(
    tn=st.binary(max_size=20),
    eid=st.text(max_size=30),
    ts=st.integers(-5, 2**65),
    kid=st.binary(max_size=20),
    epoch=st.integers(-5, 2**65),
    iv=st.binary(max_size=16),
    ct=st.binary(max_size=40),
    ix=st.lists(st.binary(max_size=18), max_size=3),
)
def test_envelope_encoding_of_other_shapes_equals_dumps_det(
    tn: bytes, eid: str, ts: int, kid: bytes, epoch: int, iv: bytes, ct: bytes, ix: list[bytes]
) -> None:
    """Anything else goes to the general encoder, which decides (or refuses)."""
    _check_envelope(tn, eid, ts, kid, epoch, iv, ct, ix)
