"""The public leaf, the commitment and pseudonyms (SCIM.md §4.3)."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.formats.merkle import VerificationError, leaf_hash
from client.scim.cbor import EventFormatError, dumps_det
from client.scim.event import OPS, OUTCOMES, encode_event, validate_event
from client.scim.leaf import (
    MAX_LEAF_SIZE,
    Leaf,
    commitment,
    make_leaf,
    new_nonce,
    parse_leaf,
    pid,
    tenant_ref,
    verify_commitment,
)
from tests.scim.helpers import (
    ROOT,
    full_event,
    get_in,
    head,
    leaf_paths,
    minimal_event,
    ref_encode,
    with_change,
    without,
)

NONCE = bytes(range(32))
TN = b"\x11" * 16
C = b"\x22" * 32


def test_commitment_is_hmac_over_canonical_cbor() -> None:
    ev = full_event()
    expect = hmac.new(NONCE, ref_encode(ev), hashlib.sha256).digest()
    assert commitment(NONCE, ev) == expect
    assert commitment(NONCE, encode_event(ev)) == expect
    assert commitment(NONCE, dict(reversed(list(ev.items())))) == expect


def test_commitment_rejects_bad_input() -> None:
    for nonce in (b"", b"\x00" * 31, b"\x00" * 33, bytearray(32), "0" * 32):
        with pytest.raises(EventFormatError, match="nonce"):
            commitment(nonce, full_event())  # type: ignore[arg-type]
    with pytest.raises(EventFormatError):
        commitment(NONCE, without(full_event(), ("tenant",)))
    with pytest.raises(EventFormatError):
        commitment(NONCE, encode_event(full_event()) + b"\x00")
    with pytest.raises(EventFormatError):
        commitment(NONCE, dumps_det({"not": "an event"}))


def test_leaf_round_trip_and_vector() -> None:
    data = make_leaf(1718000000123, TN, C)
    assert data == ref_encode({"v": 1, "ts": 1718000000123, "tn": TN, "c": C})
    # Keys in §4.2.1 order: "c", "v", "tn", "ts" (length first, then bytewise).
    assert data[:4].hex() == "a4616358"
    assert data.hex() == (
        "a4"
        + "6163"
        + "5820"
        + "22" * 32
        + "6176"
        + "01"
        + "62746e"
        + "50"
        + "11" * 16
        + "627473"
        + "1b0000019000c79c7b"
    )
    leaf = parse_leaf(data)
    assert leaf == Leaf(ts=1718000000123, tn=TN, c=C)
    assert leaf.encode() == data
    assert len(make_leaf(2**53 - 1, TN, C)) <= MAX_LEAF_SIZE
    assert leaf_hash(data) == hashlib.sha256(b"\x00" + data).digest()


@given(
    st.integers(min_value=0, max_value=2**53 - 1),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=32, max_size=32),
)
def test_leaf_round_trip_property(ts: int, tn: bytes, c: bytes) -> None:
    data = make_leaf(ts, tn, c)
    assert parse_leaf(data) == Leaf(ts, tn, c)
    assert data == ref_encode({"v": 1, "ts": ts, "tn": tn, "c": c})


@pytest.mark.parametrize(
    "args",
    [
        (-1, TN, C),
        (2**53, TN, C),
        (True, TN, C),
        (1.0, TN, C),
        (0, TN[:15], C),
        (0, TN + b"\x00", C),
        (0, TN, C[:31]),
        (0, TN, C + b"\x00"),
        (0, "x" * 16, C),
        (0, TN, bytearray(C)),
    ],
    ids=repr,
)
def test_make_leaf_rejects(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(EventFormatError):
        make_leaf(*args)


LEAF_REJECT = {
    "extra field": {"v": 1, "ts": 1, "tn": TN, "c": C, "e": 0},
    "missing c": {"v": 1, "ts": 1, "tn": TN},
    "missing v": {"ts": 1, "tn": TN, "c": C},
    "v 2": {"v": 2, "ts": 1, "tn": TN, "c": C},
    "v true": {"v": True, "ts": 1, "tn": TN, "c": C},
    "v text": {"v": "1", "ts": 1, "tn": TN, "c": C},
    "negative ts": {"v": 1, "ts": -1, "tn": TN, "c": C},
    "ts too big": {"v": 1, "ts": 2**53, "tn": TN, "c": C},
    "ts text": {"v": 1, "ts": "1", "tn": TN, "c": C},
    "tn 15": {"v": 1, "ts": 1, "tn": TN[:15], "c": C},
    "tn text": {"v": 1, "ts": 1, "tn": "x" * 16, "c": C},
    "c 33": {"v": 1, "ts": 1, "tn": TN, "c": C + b"\x00"},
    "array": [1, 1, TN, C],
    "nested": {"v": 1, "ts": 1, "tn": TN, "c": C, "x": {"a": 1}},
}


@pytest.mark.parametrize("value", LEAF_REJECT.values(), ids=LEAF_REJECT.keys())
def test_parse_leaf_rejects(value: Any) -> None:
    with pytest.raises(EventFormatError):
        parse_leaf(ref_encode(value))


def test_parse_leaf_rejects_non_deterministic() -> None:
    good = make_leaf(1000, TN, C)
    for bad in (
        good + b"\x00",
        good[:-1],
        good.replace(
            bytes.fromhex("627473") + head(0, 1000), bytes.fromhex("627473") + head(0, 1000, 4)
        ),
        bytes.fromhex("c1") + good,
        bytes.fromhex("bf") + good[1:] + b"\xff",
        b"",
        b"\xa0",
        bytearray(good),
        good * 2,
    ):
        with pytest.raises(EventFormatError):
            parse_leaf(bad)  # type: ignore[arg-type]


def test_every_one_byte_change_of_a_leaf() -> None:
    ev = full_event()
    c = commitment(NONCE, ev)
    data = make_leaf(1718000000123, TN, c)
    event_bytes = encode_event(ev)
    for i in range(len(data)):
        verified = False
        for flip in range(1, 256):
            mutated = bytearray(data)
            mutated[i] ^= flip
            try:
                leaf = parse_leaf(bytes(mutated))
            except EventFormatError:
                continue
            assert leaf.encode() == bytes(mutated)
            if leaf.c != c and not verified:  # one verification per position is plenty
                verified = True
                with pytest.raises(VerificationError):
                    verify_commitment(bytes(mutated), event_bytes, NONCE)
    for cut in range(len(data)):
        with pytest.raises(EventFormatError):
            parse_leaf(data[:cut])


# --- verification ---------------------------------------------------------------------------


def test_verify_commitment_accepts() -> None:
    ev = full_event()
    nonce = new_nonce()
    leaf = make_leaf(5, TN, commitment(nonce, ev))
    verify_commitment(leaf, ev, nonce)
    verify_commitment(leaf, encode_event(ev), nonce)
    verify_commitment(parse_leaf(leaf), ev, nonce)


def test_verify_commitment_wrong_nonce() -> None:
    ev = full_event()
    leaf = make_leaf(5, TN, commitment(NONCE, ev))
    for i in range(32):
        nonce = bytearray(NONCE)
        nonce[i] ^= 1
        with pytest.raises(VerificationError):
            verify_commitment(leaf, ev, bytes(nonce))
    with pytest.raises(VerificationError):
        verify_commitment(leaf, ev, new_nonce())
    with pytest.raises(EventFormatError):
        verify_commitment(leaf, ev, NONCE[:16])


def _changed_values(path: tuple[Any, ...], value: Any) -> list[Any]:
    """Candidate replacements for one field; the caller keeps those that still validate."""
    if path == ("op",):
        return [o for o in OPS if o != value]
    if path == ("outcome",):
        return [o for o in OUTCOMES if o != value]
    if value is None:
        return [True, 0]
    if isinstance(value, bool):
        return [not value]
    if isinstance(value, int):
        return [value + 1, value - 1]
    if isinstance(value, bytes):
        return [bytes([value[0] ^ 1]) + value[1:]]
    if isinstance(value, str):
        swaps = {"0": "1", "1": "2", "a": "b", "e": "f", "t": "u", "r": "s", "s": "t", "o": "p"}
        out = [value + "x"]
        for i in range(len(value) - 1, -1, -1):
            if value[i] in swaps:
                out.append(value[:i] + swaps[value[i]] + value[i + 1 :])
                break
        out += ["add", "remove", "replace", "user", "system", "bearer", "PUT"]
        return [v for v in out if v != value]
    raise AssertionError(path)


@pytest.mark.parametrize("make", [full_event, minimal_event], ids=["full", "minimal"])
def test_verify_fails_on_any_changed_field(make: Any) -> None:
    ev = make()
    leaf = make_leaf(1, TN, commitment(NONCE, ev))
    checked = 0
    for path in leaf_paths(ev):
        variants = [with_change(ev, path, v) for v in _changed_values(path, get_in(ev, path))]
        if len(path) > 1 or path[0] not in ("v",):
            variants.append(without(ev, path))
        valid = []
        for other in variants:
            try:
                valid.append(validate_event(other))
            except EventFormatError:
                continue
        if path not in (("v",), ("outcome",)):  # outcome: see test_verify_fails_on_outcome
            assert valid, f"no valid change found for {path}"
        for other in valid:
            with pytest.raises(VerificationError):
                verify_commitment(leaf, other, NONCE)
            checked += 1
    assert checked > 20


def test_verify_fails_on_outcome() -> None:
    ev = minimal_event()
    leaf = make_leaf(1, TN, commitment(NONCE, ev))
    for outcome in ("failure", "skipped", "warning"):
        other = with_change(ev, ("outcome",), outcome)
        other["err"] = {"code": "x"}
        with pytest.raises(VerificationError):
            verify_commitment(leaf, other, NONCE)


def test_verify_fails_on_added_field() -> None:
    ev = minimal_event()
    leaf = make_leaf(1, TN, commitment(NONCE, ev))
    with pytest.raises(VerificationError):
        verify_commitment(leaf, with_change(ev, ("xid",), "x"), NONCE)
    with pytest.raises(VerificationError):
        verify_commitment(leaf, with_change(ev, ("x",), {"a": None}), NONCE)


def test_verify_malformed_inputs_are_format_errors() -> None:
    ev = minimal_event()
    leaf = make_leaf(1, TN, commitment(NONCE, ev))
    with pytest.raises(EventFormatError):
        verify_commitment(leaf[:-1], ev, NONCE)
    with pytest.raises(EventFormatError):
        verify_commitment(leaf, without(ev, ("rid",)), NONCE)
    assert not issubclass(EventFormatError, VerificationError)
    assert not issubclass(VerificationError, EventFormatError)


# --- tenant refs and pseudonyms -------------------------------------------------------------

KEY = b"k" * 32


def test_tenant_ref_and_pid_known_answers() -> None:
    assert tenant_ref(KEY, "contoso") == hmac.new(KEY, b"contoso", hashlib.sha256).digest()[:16]
    assert pid(KEY, "2819c223") == hmac.new(KEY, b"2819c223", hashlib.sha256).digest()[:16]
    assert (
        tenant_ref(KEY, "Zürich") == hmac.new(KEY, "Zürich".encode(), hashlib.sha256).digest()[:16]
    )
    # Fixed vector, so that a change of construction is noticed.
    assert tenant_ref(b"\x00" * 16, "t").hex() == "ab87a52b90aac117e33ea5805efb5028"


def test_tenant_ref_and_pid_separate_inputs() -> None:
    assert tenant_ref(KEY, "a") != tenant_ref(KEY, "b")
    assert tenant_ref(KEY, "a") != tenant_ref(b"j" * 32, "a")
    assert pid(KEY, "u1") != pid(b"j" * 32, "u1")
    assert len(pid(KEY, "u1")) == 16 and len(tenant_ref(KEY, "a")) == 16


@pytest.mark.parametrize("fn", [tenant_ref, pid])
def test_tenant_ref_and_pid_reject(fn: Any) -> None:
    for key in (b"", b"k" * 15, "k" * 32, bytearray(32)):
        with pytest.raises(EventFormatError):
            fn(key, "x")
    for ident in ("", "\ud800", b"x", None):
        with pytest.raises(EventFormatError):
            fn(KEY, ident)


def test_new_nonce() -> None:
    a, b = new_nonce(), new_nonce()
    assert len(a) == 32 and a != b


# --- layering -------------------------------------------------------------------------------


def test_client_scim_imports_no_server_code() -> None:
    code = (
        "import sys, client.scim, client.scim.actions, client.scim.cbor, client.scim.event, "
        "client.scim.leaf\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'tlog', 'starlette', 'uvicorn', 'lmdb'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def _strict(data: bytes) -> Leaf | None:
    """The strict parser alone (what parse_leaf did before its fast path)."""
    from client.scim import leaf as leaf_mod

    real = leaf_mod._leaf_fast
    leaf_mod._leaf_fast = lambda _data: None  # type: ignore[assignment]
    try:
        return parse_leaf(data)
    except EventFormatError:
        return None
    finally:
        leaf_mod._leaf_fast = real  # type: ignore[assignment]


_leaves = st.builds(
    make_leaf,
    st.integers(0, 2**53 - 1),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=32, max_size=32),
    st.none() | st.binary(min_size=32, max_size=32),
)


@given(
    leaf=_leaves,
    edits=st.lists(st.tuples(st.integers(0, 107), st.integers(0, 255)), max_size=3),
    cut=st.integers(0, 120),
    junk=st.binary(max_size=8),
)
def test_parse_leaf_fast_path_is_the_strict_parser(
    leaf: bytes, edits: list[tuple[int, int]], cut: int, junk: bytes
) -> None:
    """For valid leaves and for leaves with bytes changed, cut or extended: the fast path
    gives what the strict parser gives, or declines (never accepts what it refuses)."""
    from client.scim.leaf import _leaf_fast

    data = bytearray(leaf)
    for i, b in edits:
        if i < len(data):
            data[i] = b
    for cand in (leaf, bytes(data), bytes(data[:cut]), bytes(data) + junk):
        fast = _leaf_fast(cand)
        strict = _strict(cand)
        if fast is not None:
            assert fast == strict
        if cand == leaf:
            assert fast is not None and fast == strict
