"""``client.scim.event._drop_empty`` (under every event the adapters build) keeps exactly
what it kept before proxy12: the values that are not None, not equal to ``[]`` and not
equal to ``{}``. proxy12 skips the two comparisons (and the empty list and dict they made)
for exact text, bytes and numbers; everything else is compared as before. Held equal to the
previous expression on random maps of awkward values (hypothesis)."""

from __future__ import annotations

import math
import types
from collections import OrderedDict, UserDict
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim.event import _drop_empty


def _reference(obj: Any) -> Any:
    """The body of ``_drop_empty`` before proxy12."""
    if type(obj) is not dict and not isinstance(obj, Mapping):
        return obj
    out = {k: v for k, v in obj.items() if v is not None and v != [] and v != {}}
    return out or None


class _List(list[Any]):
    pass


class _Str(str):
    def __eq__(self, other: object) -> bool:  # equal to anything: an empty list too
        return True

    __hash__ = str.__hash__


class _Int(int):
    def __ne__(self, other: object) -> bool:  # "not unequal" to anything
        return False


_AWKWARD: list[Any] = [
    None,
    [],
    {},
    (),
    "",
    b"",
    0,
    0.0,
    False,
    True,
    math.nan,
    [None],
    {"a": None},
    _List(),
    _List([1]),
    OrderedDict(),
    UserDict(),
    types.MappingProxyType({}),
    _Str("x"),
    _Int(0),
    frozenset(),
]
_values = st.one_of(
    st.sampled_from(_AWKWARD),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(max_size=4), _values, max_size=8))
def test_drop_empty_keeps_what_the_reference_keeps(d: dict[str, Any]) -> None:
    _same(_drop_empty(d), _reference(d))


def _same(got: Any, want: Any) -> None:
    if want is None:
        assert got is None
        return
    assert type(got) is dict
    assert list(got) == list(want)  # the same members, in the same order
    assert all(got[k] is want[k] for k in want)  # the very values (NaN too)


def test_the_awkward_values_one_by_one() -> None:
    for v in _AWKWARD:
        _same(_drop_empty({"k": v, "n": None}), _reference({"k": v, "n": None}))


def test_not_a_map_is_returned_as_is() -> None:
    for v in (None, 3, "x", [1]):
        assert _drop_empty(v) is v  # type: ignore[arg-type]
