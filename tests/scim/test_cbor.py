"""Deterministic CBOR: the encoder against an independent oracle, and strict decoding."""

from __future__ import annotations

import datetime
import re
from collections import OrderedDict
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.formats.note import FormatError
from client.scim.cbor import EventFormatError, check_det, dumps_det, loads_det
from tests.scim.helpers import Pairs, Raw, head, ref_encode

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
det_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


@given(det_values)
def test_encoding_matches_rfc8949_oracle(value: Any) -> None:
    assert dumps_det(value) == ref_encode(value)


@given(det_values)
def test_round_trip(value: Any) -> None:
    data = dumps_det(value)
    back = loads_det(data)
    assert ref_encode(back) == data
    assert dumps_det(back) == data


small_ints = st.integers(min_value=-(2**63), max_value=2**63)


@given(st.dictionaries(st.text(max_size=30), small_ints, min_size=2, max_size=8), st.randoms())
def test_insertion_order_does_not_matter(d: dict[str, int], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    assert dumps_det(dict(items)) == dumps_det(d)


def test_known_vectors() -> None:
    # RFC 8949 Appendix A, restricted to our data model.
    vectors = [
        (0, "00"),
        (23, "17"),
        (24, "1818"),
        (100, "1864"),
        (1000, "1903e8"),
        (1000000, "1a000f4240"),
        (1000000000000, "1b000000e8d4a51000"),
        (18446744073709551615, "1bffffffffffffffff"),
        (-18446744073709551616, "3bffffffffffffffff"),
        (-1, "20"),
        (-1000, "3903e7"),
        (False, "f4"),
        (True, "f5"),
        (None, "f6"),
        (b"", "40"),
        (b"\x01\x02\x03\x04", "4401020304"),
        ("", "60"),
        ("IETF", "6449455446"),
        ("\u00fc", "62c3bc"),
        ("\U00010151", "64f0908591"),
        ([], "80"),
        ([1, [2, 3], [4, 5]], "8301820203820405"),
        ({}, "a0"),
        ({"a": 1, "b": [2, 3]}, "a26161016162820203"),
        (
            {"a": "A", "b": "B", "c": "C", "d": "D", "e": "E"},
            "a56161614161626142616361436164614461656145",
        ),
    ]
    for value, hexed in vectors:
        assert dumps_det(value).hex() == hexed
        assert loads_det(bytes.fromhex(hexed)) == value


def test_text_keys_sort_length_first() -> None:
    # Bytewise order of the encoded key: the header carries the length, so "b" < "aa".
    assert list(loads_det(dumps_det({"aa": 1, "b": 2, "": 3}))) == ["", "b", "aa"]


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        float("nan"),
        {"a": 0.0},
        [1, 2.0],
        2**64,
        -(2**64) - 1,
        {1: "int key"},
        {b"k": "bytes key"},
        {("t",): 1},
        (1, 2),
        {1, 2},
        frozenset(),
        bytearray(b"x"),
        memoryview(b"x"),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        datetime.date(2024, 1, 1),
        cbor2.CBORTag(1, 0),
        cbor2.undefined,
        OrderedDict(a=1),
        "\ud800",
        {"\udfff": 1},
        object(),
    ],
    # repr without memory addresses: stable ids, so pytest-xdist workers collect alike
    ids=lambda v: re.sub(r" at 0x[0-9a-f]+", "", repr(v)),
)
def test_encoder_rejects_outside_model(value: Any) -> None:
    with pytest.raises(EventFormatError):
        dumps_det(value)


def test_encoder_rejects_deep_nesting_and_cycles() -> None:
    deep: Any = []
    for _ in range(40):
        deep = [deep]
    with pytest.raises(EventFormatError, match="deeply"):
        dumps_det(deep)
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(EventFormatError):
        dumps_det(loop)


def test_error_type_is_a_format_error() -> None:
    assert issubclass(EventFormatError, FormatError)
    assert issubclass(EventFormatError, ValueError)
    with pytest.raises(EventFormatError, match=r"at \$\.a\[1\]: floats"):
        check_det({"a": [1, 2.5]})


# --- decoder rejections ---------------------------------------------------------------------

REJECT = {
    # malformed
    "empty": "",
    "truncated uint": "19",
    "truncated string": "6461",
    "truncated array": "8201",
    "truncated map": "a16161",
    "trailing bytes": "0000",
    "reserved ai 28": "1c",
    "reserved ai 30": "5e",
    "lone break": "ff",
    "invalid utf-8": "62c328",
    "huge array count": "9b7fffffffffffffff",
    # non-shortest arguments (RFC 8949 §4.2.1)
    "uint 0 in 1 byte": "1800",
    "uint 23 in 1 byte": "1817",
    "uint 255 in 2 bytes": "1900ff",
    "uint 65535 in 4 bytes": "1a0000ffff",
    "uint 2^32-1 in 8 bytes": "1b00000000ffffffff",
    "nint in 1 byte": "3800",
    "string length in 1 byte": "780161",
    "bytes length in 2 bytes": "59000161",
    "array length in 1 byte": "980100",
    "map length in 1 byte": "b8016161f6",
    # indefinite lengths
    "indefinite array": "9f01ff",
    "indefinite map": "bf6161f6ff",
    "indefinite bytes": "5f4101ff",
    "indefinite text": "7f6161ff",
    # tags
    "tag 0 datetime": "c074323031332d30332d32315432303a30343a30305a",
    "tag 1 epoch": "c11a514b67b0",
    "tag 2 bignum small": "c24101",
    "tag 2 bignum": "c249010000000000000000",
    "tag 24 embedded": "d81841f6",
    "tag 28 shareable": "d81c80",
    "tag 258 set": "d9010280",
    "self-described cbor": "d9d9f7f6",
    # floats and simple values
    "half float": "f93e00",
    "single float": "fa47c35000",
    "double float": "fb3ff8000000000000",
    "float nan": "f97e00",
    "undefined": "f7",
    "simple 16": "f0",
    "simple 255": "f8ff",
    # maps
    "duplicate key": "a2616101616102",
    "unsorted keys": "a2616202616101",
    "length-first violated": "a2626161016162f6",
    "int key": "a10101",
    "bytes key": "a1416101",
    "array key": "a1810101",
    "nested unsorted": "a1616182a2617a01616101",
}


@pytest.mark.parametrize("hexed", REJECT.values(), ids=REJECT.keys())
def test_decoder_rejects(hexed: str) -> None:
    with pytest.raises(EventFormatError):
        loads_det(bytes.fromhex(hexed))


def test_decoder_messages_are_specific() -> None:
    cases = {
        "1817": "shortest",
        "9f01ff": "indefinite",
        "c11a514b67b0": "tags",
        "f93e00": "floats",
        "a2616101616102": "Duplicate",
        "a2616202616101": "not sorted",
        "0000": "trailing",
    }
    for hexed, word in cases.items():
        with pytest.raises(EventFormatError, match=word):
            loads_det(bytes.fromhex(hexed))


def test_decoder_rejects_non_bytes() -> None:
    for bad in (bytearray(b"\x00"), memoryview(b"\x00"), "00"):
        with pytest.raises(EventFormatError):
            loads_det(bad)  # type: ignore[arg-type]


def test_decoder_depth_limit() -> None:
    ok = b"\x81" * 32 + b"\x00"
    assert loads_det(ok) is not None
    with pytest.raises(EventFormatError, match="deeply"):
        loads_det(b"\x81" * 33 + b"\x00")
    with pytest.raises(EventFormatError, match="deeply"):
        loads_det(b"\x81" * 100000 + b"\x00")


@given(st.dictionaries(st.text(max_size=6), small_ints, min_size=2, max_size=6), st.randoms())
def test_unsorted_maps_rejected(d: dict[str, int], rnd: Any) -> None:
    items = list(d.items())
    rnd.shuffle(items)
    data = ref_encode(Pairs(tuple(items)))
    if data == ref_encode(d):
        assert loads_det(data) == d
    else:
        with pytest.raises(EventFormatError):
            loads_det(data)


@given(st.integers(min_value=0, max_value=2**32), st.sampled_from([1, 2, 4, 8]), st.booleans())
def test_non_shortest_integers_rejected(n: int, width: int, negative: bool) -> None:
    if n >= 1 << (8 * width):
        return
    data = head(1 if negative else 0, n, width)
    if data == head(1 if negative else 0, n):
        assert loads_det(data) == (-1 - n if negative else n)
    else:
        with pytest.raises(EventFormatError):
            loads_det(data)


@given(st.lists(st.integers(min_value=0, max_value=100), max_size=4))
def test_indefinite_rejected_even_when_nested(items: list[int]) -> None:
    inner = b"\x9f" + b"".join(ref_encode(i) for i in items) + b"\xff"
    with pytest.raises(EventFormatError):
        loads_det(ref_encode({"a": Raw(inner)}))


@given(det_values)
@settings(max_examples=30, deadline=None)
def test_every_one_byte_change_is_clean(value: Any) -> None:
    data = dumps_det(value)
    for i in range(len(data)):
        for flip in (0x01, 0x20, 0x80, 0xFF):
            mutated = bytearray(data)
            mutated[i] ^= flip
            _decode_cleanly(bytes(mutated))
    for cut in range(len(data)):
        with pytest.raises(EventFormatError):
            loads_det(data[:cut])


@given(st.binary(max_size=64))
def test_arbitrary_bytes_are_clean(data: bytes) -> None:
    _decode_cleanly(data)


def _decode_cleanly(data: bytes) -> None:
    """Either a clean rejection, or a value whose canonical encoding is exactly ``data``."""
    try:
        value = loads_det(data)
    except EventFormatError:
        return
    assert dumps_det(value) == data
    assert ref_encode(value) == data


def test_cbor2_would_have_accepted_these() -> None:
    # Documents why the strict layer exists: cbor2's defaults take all of these.
    assert cbor2.loads(bytes.fromhex("a2616101616102")) == {"a": 2}
    assert cbor2.loads(bytes.fromhex("9f01ff")) == [1]
    assert cbor2.loads(bytes.fromhex("1817")) == 23
    assert cbor2.loads(bytes.fromhex("f93e00")) == 1.5
