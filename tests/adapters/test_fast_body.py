"""The body decoder's fast path (msgspec, for the common UTF-8 JSON body) gives exactly what
the general path gives (client.adapters.body): the same value, with the same types and
member order, and no notes; every body it is not sure about goes to the general path."""

from __future__ import annotations

import codecs
import gzip
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from client.adapters.body import _fast, _general, decode_body

MAX = 16 << 20
CT = "application/scim+json"


def typed(v: Any) -> Any:
    """``v`` with every scalar's type made visible (1 == 1.0 == True otherwise) and the
    members' order kept."""
    if isinstance(v, dict):
        return ("dict", [(k, typed(x)) for k, x in v.items()])
    if isinstance(v, list):
        return ("list", [typed(x) for x in v])
    return (type(v).__name__, repr(v))


def same_as_general(raw: bytes, ct: str | None = CT, enc: str | None = None) -> bool:
    """Assert the fast path (when it answers) and decode_body agree with the general path;
    return whether the fast path answered."""
    general = _general(raw, ct, enc, MAX)
    got = decode_body(raw, content_type=ct, content_encoding=enc, max_size=MAX)
    assert (typed(got.value), got.error, got.notes) == (
        typed(general.value),
        general.error,
        general.notes,
    )
    fast = _fast(raw, ct, enc)
    if fast is None:
        return False
    assert general.error is None and general.notes == {}
    assert typed(fast.value) == typed(general.value)
    return True


def test_the_common_bodies_take_the_fast_path() -> None:
    user = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "José@example.com",
        "name": {"givenName": "José", "familyName": 'O\'Brien: "Jr"'},
        "emails": [{"value": "j@example.com", "primary": True, "type": "work"}],
        "active": False,
        "x": [1, -0, 1.5, 2e-7, 12345678901234567890123, None],
    }
    raw = json.dumps(user, ensure_ascii=False).encode()
    assert same_as_general(raw)
    assert same_as_general(raw, "application/scim+json; charset=UTF-8")
    assert same_as_general(b"[]") and same_as_general(b'{"a": {"b": []}}')


def test_everything_else_takes_the_general_path() -> None:
    body = b'{"userName": "a", "active": false}'
    declined = [
        (codecs.BOM_UTF8 + body, CT, None),  # BOM: noted
        (body.decode().encode("utf-16-le"), CT + "; charset=utf-16le", None),
        (gzip.compress(body), CT, "gzip"),
        (body, CT, "identity"),
        (body, CT + "; charset=iso-8859-1", None),
        (b'{"a": "\\u00e9"}', CT, None),  # any \u escape
        (b'{"a": "\\ud800"}', CT, None),  # a lone surrogate the general path accepts
        (b'{"a": 1, "a": 2}', CT, None),  # repeated: last wins, flagged
        (b'{"active": true, "Active": false}', CT, None),  # repeated but for case
        (b'{"a": {"b": 1, "B": 2}}', CT, None),
        (b'[{"x": [{"k": 1, "K": 2}]}]', CT, None),
        (b'{"a": NaN}', CT, None),
        (b'{"a": 1e400}', CT, None),
        (b'{"a": "\xed\xa0\x80"}', CT, None),  # a UTF-8-encoded surrogate
        (b' {"a": 1}', CT, None),  # leading space
        (b'"text"', CT, None),
        (b"", CT, None),
        (b'{"a": 1', CT, None),
        (b'{"a": 1} x', CT, None),
        (b'{"a": [1, {"x": [[{"b": 1, "B": 2}]]}]}', CT, None),  # deep, repeated but for case
        (b'[[], {"c": {}}, [{"u": 1, "U": 1}]]', CT, None),
    ]
    for raw, ct, enc in declined:
        assert not same_as_general(raw, ct, enc), raw


KEYS = st.sampled_from(["a", "A", "b", "userName", "username", "x:y", "é", "ñame", ""])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.lists(st.tuples(KEYS, inner), max_size=5),
    max_leaves=20,
)


def dump(v: Any, ascii_only: bool) -> str:
    """JSON text of ``v``, where a list of (key, value) pairs is an object that may repeat a
    key (what json.dumps of a dict cannot write)."""
    if isinstance(v, list) and v and all(isinstance(x, tuple) for x in v):
        members = [json.dumps(k, ensure_ascii=ascii_only) + ":" + dump(x, ascii_only) for k, x in v]
        return "{" + ",".join(members) + "}"
    if isinstance(v, list):
        return "[" + ",".join(dump(x, ascii_only) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only)


@settings(max_examples=400, deadline=None)
@given(VALUES, st.booleans(), st.sampled_from([CT, None, CT + "; charset=utf-8", "text/plain"]))
def test_fast_path_equals_general_path(v: Any, ascii_only: bool, ct: str | None) -> None:
    raw = dump(v, ascii_only).encode("utf-8", "surrogatepass")
    same_as_general(raw, ct)
    same_as_general(("[" + dump(v, ascii_only) + "]").encode("utf-8", "surrogatepass"), ct)
