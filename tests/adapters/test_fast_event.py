"""The adapters' event builder (client.adapters.exchange.validated_event) against the reference.

validated_event checks an event's JSON form with the compiled checker and falls back to the
reference validator; it must give exactly what ``new_event`` + ``event_json`` give: the same
event (same canonical bytes) and the same JSON text, and refuse exactly what they refuse,
including objects whose JSON encoding would hide a wrong Python type (a tuple for a list,
bytes outside the byte fields, a non-text key).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings

from client.adapters.exchange import event_json, validated_event
from client.scim.cbor import EventFormatError
from client.scim.event import encode_event, new_event
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
