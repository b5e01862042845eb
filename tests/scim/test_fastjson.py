"""The compiled JSON decoder (client.scim.fastjson) against the reference (client.scim.event).

The contract: the fast path only ever accepts, and whatever it accepts the reference accepts
too, as the same event (same types, same values) with the same canonical bytes. Checked on
valid events (where the fast path must actually accept, or it would be useless) and on
random mutations of them at the JSON text level: any field replaced by an interesting value,
removed, an unknown field added, a key repeated, non-ASCII and escapes, whitespace.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.formats.note import FormatError, b64decode_strict
from client.scim import fastjson
from client.scim.cbor import EventFormatError
from client.scim.event import adopt_json_text, check_rules, event_to_json
from client.scim.fastjson import decode_batch, decode_event_json
from client.scim.jsonstrict import strict_json
from tests.scim.helpers import events, failed_event, full_event, minimal_event

# A JSON value as a tree whose objects are lists of pairs, so that keys can repeat.
Node = Any


class Obj(list[tuple[str, Any]]):
    pass


def to_node(v: Any) -> Node:
    if isinstance(v, dict):
        return Obj((k, to_node(x)) for k, x in v.items())
    if isinstance(v, list):
        return [to_node(x) for x in v]
    return v


def dump(n: Node, ascii_: bool, sep: str) -> str:
    if isinstance(n, Obj):
        inner = sep.join(
            json.dumps(k, ensure_ascii=ascii_) + ":" + dump(v, ascii_, sep) for k, v in n
        )
        return "{" + inner + "}"
    if isinstance(n, list):
        return "[" + sep.join(dump(x, ascii_, sep) for x in n) + "]"
    return json.dumps(n, ensure_ascii=ascii_)


def paths(n: Node, p: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [p]
    if isinstance(n, Obj):
        for i, (_, v) in enumerate(n):
            out += paths(v, (*p, i))
    elif isinstance(n, list):
        for i, v in enumerate(n):
            out += paths(v, (*p, i))
    return out


def parent_and_slot(root: Node, p: tuple[Any, ...]) -> tuple[Node, int]:
    n = root
    for i in p[:-1]:
        n = n[i][1] if isinstance(n, Obj) else n[i]
    return n, p[-1]


B32 = base64.b64encode(bytes(range(32))).decode()
B16 = base64.b64encode(bytes(range(16))).decode()
INTERESTING: list[Any] = [
    "", "x", "A" * 257, "a" * 2049, "é" * 100, "€" * 70, "\x00", "a\tb", "a\nb", "\x7f", "\x85",
    "\ud800", "😀", "\\u0041", "PATCH", "patch", "user.update", "User", "success",
    "0190a3d2-8c4e-7abc-8def-0123456789ab", "0190A3D2-8c4e-7abc-8def-0123456789ab",
    "2001:db8::1", "10.0.0.1", "not-an-ip", "true", '"q"', "[1,2]", '{"a":1,"a":2}', "1e400",
    "NaN", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    B32, B16, B32[:-2] + "B=", B16[:-3] + "B==", B32.replace("=", ""), "_" + B32[1:],
    B32 + "\n", 0, 1, -1, 99, 100, 599, 600, 2**31, 2**53 - 1, 2**53, 2**64, 10**30,
    1.0, 1.5, -0.0, True, False, None, [], {}, [1], [3001, 1], [3001, 1, 2], {"a": 1},
    {"id": "x"}, {"": 1}, [{"a": "user.x", "ocsf": [1, 2]}],
]  # fmt: skip


@st.composite
def mutated(draw: st.DrawFn) -> str:
    base = draw(
        st.sampled_from([full_event, failed_event, minimal_event]).map(lambda f: f()) | events()
    )
    root = to_node(json.loads(event_to_json(base)))
    for _ in range(draw(st.integers(0, 3))):
        p = draw(st.sampled_from(paths(root)))
        kind = draw(st.sampled_from(["set", "del", "add", "dup"]))
        value = to_node(draw(st.sampled_from(INTERESTING)))
        if not p:
            kind = "add"
        if kind in ("set", "del"):
            parent, i = parent_and_slot(root, p)
            if kind == "del":
                del parent[i]
            elif isinstance(parent, Obj):
                parent[i] = (parent[i][0], value)
            else:
                parent[i] = value
        else:
            parent, _ = parent_and_slot(root, (*p, 0))
            if not isinstance(parent, Obj):
                continue
            if kind == "add":
                parent.append((draw(st.sampled_from(["zz", "v", "x", "id", "é"])), value))
            elif parent:
                k, v = parent[draw(st.integers(0, len(parent) - 1))]
                parent.append((k, draw(st.sampled_from([v, value]))))
    ascii_ = draw(st.booleans())
    sep = draw(st.sampled_from([",", ", ", ",\n"]))
    return dump(root, ascii_, sep)


def reference(text: str) -> tuple[Any, bytes] | None:
    try:
        return adopt_json_text(text.encode("utf-8", "surrogatepass"))
    except EventFormatError:
        return None


def same(fast: tuple[Any, bytes], ref: tuple[Any, bytes]) -> None:
    assert fast[1] == ref[1]
    assert fast[0] == ref[0]
    assert repr(fast[0]) == repr(sorted_like(ref[0], fast[0]))  # same types (list, not tuple)
    assert cbor2.dumps(fast[0]) == ref[1]  # its dict order is the canonical one


def sorted_like(ref: Any, fast: Any) -> Any:
    if isinstance(ref, dict):
        return {k: sorted_like(ref[k], fast[k]) for k in fast}
    if isinstance(ref, list):
        return [sorted_like(a, b) for a, b in zip(ref, fast, strict=True)]
    return ref


@pytest.mark.parametrize("make", [full_event, failed_event, minimal_event])
def test_fast_path_accepts_valid_events_as_the_reference(make: Any) -> None:
    body = event_to_json(make()).encode()
    fast = decode_event_json(body)
    ref = reference(body.decode())
    assert fast is not None and ref is not None
    same(fast, ref)


@given(events())
@settings(max_examples=100, deadline=None)
def test_random_valid_events_same_as_reference(ev: dict[str, Any]) -> None:
    for text in (event_to_json(ev), json.dumps(json.loads(event_to_json(ev)))):
        ref = reference(text)
        fast = decode_event_json(text.encode("utf-8", "surrogatepass"))
        assert ref is not None
        if text.isascii() and "\\u" not in text:
            assert fast is not None  # exact limits: every valid event takes the fast path
        if fast is not None:
            same(fast, ref)


@given(mutated())
@settings(max_examples=600, deadline=None)
def test_fast_path_never_accepts_what_the_reference_refuses(text: str) -> None:
    body = text.encode("utf-8", "surrogatepass")
    fast = decode_event_json(body)
    ref = reference(text)
    if fast is not None:
        assert ref is not None, text
        same(fast, ref)


@given(st.lists(mutated(), min_size=1, max_size=4))
@settings(max_examples=150, deadline=None)
def test_batches_agree_with_the_reference(texts: list[str]) -> None:
    body = ('{"events":[' + ",".join(texts) + "]}").encode("utf-8", "surrogatepass")
    fast = decode_batch(body)
    refs = [reference(t) for t in texts]
    if fast is not None:
        assert all(r is not None for r in refs)
        for f, r in zip(fast, refs, strict=True):
            assert r is not None
            same(f, r)


def test_repeated_keys_fall_back() -> None:
    text = event_to_json(minimal_event())
    dup_top = text[:-1] + ',"rt":"Group"}'
    dup_inner = text.replace('"sp":{"id":"s"}', '"sp":{"id":"s","id":"t"}')
    for t in (dup_top, dup_inner):
        assert decode_event_json(t.encode()) is None
        assert reference(t) is None
    dup_in_json_text = event_to_json(full_event()).replace(
        '"new":"\\"Boss\\""', '"new":"{\\"a\\":1,\\"a\\":2}"'
    )
    assert dup_in_json_text != event_to_json(full_event())
    assert decode_event_json(dup_in_json_text.encode()) is None
    assert reference(dup_in_json_text) is None
    # A repeated key whose surviving value adds a colon written as an escape: the counts
    # would match if escaped colons were not counted.
    hidden = text.replace('"rid":"u"', '"rid":"u","rid":"v\\u003a"')
    assert hidden != text
    assert decode_event_json(hidden.encode()) is None
    assert reference(hidden) is None
    ok = text.replace('"rid":"u"', '"rid":"v\\u003a\\u00e9"')
    fast, ref = decode_event_json(ok.encode()), reference(ok)
    assert fast is not None and ref is not None
    same(fast, ref)


def test_batch_shape() -> None:
    one = event_to_json(minimal_event())
    assert decode_batch(('{"events":[' + one + "]}").encode()) is not None
    for body in ("{}", '{"events":[]}', '{"events":[' + one + '],"x":1}', "[" + one + "]"):
        assert decode_batch(body.encode()) is None


# -- the shortcuts of the batch path (parse4 round), each against what it replaces ----------

_CONTROLS = "".join(map(chr, [*range(0x20), 0x7F]))


@given(
    st.lists(
        st.text(alphabet=st.sampled_from(['"', "\\", "/", "a", "é", ":", *_CONTROLS])), max_size=6
    ),
    st.booleans(),
)
@settings(max_examples=400, deadline=None)
def test_lean_decoder_only_when_no_string_can_hold_a_control(
    strings: list[str], ascii_: bool
) -> None:
    """The lean decoder (no control-character patterns) is chosen only for bodies none of
    whose strings decodes to a C0 control or DEL: what the seven scans it replaces said."""
    body = json.dumps({"s": strings}, ensure_ascii=ascii_).encode()
    chosen = fastjson._decoders(body)
    has_control = any(c in _CONTROLS for s in strings for c in s)
    if chosen is fastjson._LEAN:
        assert not has_control, body
    # and the old rule's choice is never stricter than needed the other way round:
    old = (
        fastjson._UTF8
        if b"\\u" in body or not body.isascii()
        else fastjson._ASCII
        if any(sign in body for sign in fastjson._CONTROL_SIGNS)
        else fastjson._LEAN
    )
    assert chosen is old


@given(
    st.binary(max_size=24)
    | st.lists(
        st.sampled_from([b"\\", b'"', b"u", b"003a", b":", b"n", b"\x7f", b"\xe9"]), max_size=12
    ).map(b"".join)
)
@settings(max_examples=600, deadline=None)
def test_one_scan_for_escapes_decides_as_the_two_counts_did(body: bytes) -> None:
    """Any body, JSON or not: the decoders chosen by one regex scan for a backslash that does
    not start a \\" pair are those the two counts chose (as many backslashes as pairs), and
    a choice other than _UTF8 means the body holds no \\u, so the repeated-key count may
    leave out its search for \\u003a escapes."""
    old = (
        fastjson._UTF8
        if not body.isascii()
        else (fastjson._ASCII if b"\x7f" in body else fastjson._LEAN)
        if body.count(b"\\") == body.count(b'\\"')
        else fastjson._UTF8
        if b"\\u" in body
        else fastjson._ASCII
        if any(sign in body for sign in fastjson._CONTROL_SIGNS)
        else fastjson._LEAN
    )
    chosen = fastjson._decoders(body)
    assert chosen is old
    assert fastjson._colons(body, chosen is fastjson._UTF8) == fastjson._colons(body)


def _rules_outcome(fn: Any, ev: dict[str, Any]) -> bool:
    try:
        fn(ev)
    except ValueError:
        return False
    return True


@given(
    st.fixed_dictionaries(
        {
            "outcome": st.sampled_from(["success", "failure", "skipped", "warning"]),
            "op": st.sampled_from(["create", "replace", "patch", "delete"]),
            "st": st.sampled_from([100, 199, 200, 201, 299, 300, 404, 599]),
        },
        optional={
            "rid": st.just("r"),
            "err": st.just({"code": "x"}),
            "acts": st.lists(st.sampled_from(["a.b", "a.c", "user.x"]), min_size=1, max_size=3),
            "corr": st.sets(st.sampled_from(["bulk_req", "seq", "bulk_id", "job"])),
            "mods": st.lists(
                st.sets(st.sampled_from(["old", "new", "old_d", "new_d", "op"])), max_size=3
            ),
        },
    )
)
@settings(max_examples=500, deadline=None)
def test_fast_rules_equal_the_reference(spec: dict[str, Any]) -> None:
    """fastjson._rules (plus the old/new-or-digest rule in _finish's loop over mods) accepts
    exactly what client.scim.event.check_rules accepts."""
    ev: dict[str, Any] = {"outcome": spec["outcome"], "op": spec["op"], "res": {"st": spec["st"]}}
    ev["corr"] = {"req": "q", **{k: 1 for k in spec.get("corr", ())}}
    if "rid" in spec:
        ev["rid"] = spec["rid"]
    if "err" in spec:
        ev["err"] = spec["err"]
    if "acts" in spec:
        ev["acts"] = [{"a": a, "ocsf": [1, 1]} for a in spec["acts"]]
    if "mods" in spec:
        ev["mods"] = [{"attr": "a", **{k: "1" for k in m}} for m in spec["mods"] if m]
    ref = _rules_outcome(check_rules, ev)
    sides_ok = all(
        not (s in m and f"{s}_d" in m) for m in ev.get("mods", ()) for s in ("old", "new")
    )
    assert ref == (_rules_outcome(fastjson._rules, ev) and sides_ok)


def test_json_text_shortcut_still_refuses_repeated_keys() -> None:
    """A text without an object skips the colon comparison (no key to repeat); one with an
    object, however nested, still has it."""
    for bad in ('{"a":1,"a":2}', '[{"a":1,"a":2}]', '[1,{"b":{"a":1,"a":2}}]'):
        with pytest.raises(ValueError):
            fastjson._json_text(bad)
    for good in ('"a:b"', "[1,2]", '["x:y",true]', '{"a":"b:c"}', "null"):
        fastjson._json_text(good)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x80), max_size=12))
def test_plain_json_string_shortcut_accepts_what_the_reference_accepts(inner: str) -> None:
    """The shortcut of ``_json_text`` (a quoted run of printable ASCII without a quote or a
    backslash) takes only texts the reference reads as JSON; the rest go the long way."""
    text = f'"{inner}"'
    if fastjson._PLAIN_STRING(text) is not None:
        assert strict_json(text, floats=True) == inner
        fastjson._json_text(text)
    else:
        assert any(c in inner for c in '"\\') or not all(" " <= c <= "~" for c in inner)


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@st.composite
def _base64ish(draw: st.DrawFn) -> tuple[str, int]:
    size = draw(st.sampled_from([16, 32]))
    text = base64.b64encode(draw(st.binary(min_size=size - 1, max_size=size + 1))).decode()
    for _ in range(draw(st.integers(0, 2))):  # damage it: a character replaced or dropped
        i = draw(st.integers(0, len(text) - 1))
        c = draw(st.sampled_from([*_B64_ALPHABET[::7], "=", "-", "_", " ", "\n", "é", ""]))
        text = text[:i] + c + text[i + 1 :]
    if draw(st.booleans()):
        text = text.rstrip("=")
    return text, size


@given(_base64ish())
@settings(max_examples=600, deadline=None)
def test_unb64_equals_b64decode_strict(case: tuple[str, int]) -> None:
    """The fast path's base64 check accepts exactly what the reference's does, same bytes."""
    text, size = case
    try:
        want: bytes | None = b64decode_strict(text, size=size)
    except FormatError:
        want = None
    try:
        got: bytes | None = fastjson._unb64(text, size)
    except ValueError:
        got = None
    assert got == want, text
