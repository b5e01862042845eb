"""The direct JCS writing of plain strings, booleans and null (client.scim.actions.jcs) is
byte for byte what RFC 8785 (the ``rfc8785`` package) writes; other values still go there."""

from __future__ import annotations

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim.actions import jcs
from client.scim.cbor import EventFormatError


def reference(value: object) -> str:
    return rfc8785.dumps(value).decode("utf-8")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    ["", "a", "Bench User", "x:y", 'say "hi"', "back\\slash", "tab\there", "\x7f", "é", "\u2028",
     "\x1f", True, False, None, 0, 1.5, [1, "a"], {"b": 1, "a": [True, None]}],
)  # fmt: skip
def test_fixed_values_equal_rfc8785(value: object) -> None:
    assert jcs(value) == reference(value)


@settings(max_examples=500, deadline=None)
@given(st.text() | st.text(alphabet=st.characters(max_codepoint=0x7F)) | st.booleans() | st.none())
def test_direct_values_equal_rfc8785(value: object) -> None:
    try:
        want = reference(value)
    except (rfc8785.CanonicalizationError, ValueError, TypeError):
        with pytest.raises(EventFormatError):
            jcs(value)
        return
    assert jcs(value) == want
