"""Test helpers: an independent RFC 8949 encoder (the oracle), valid sample events, and
:func:`events`, a hypothesis strategy of random valid events."""

from __future__ import annotations

import copy
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from client.scim.event import uuid7


@dataclass(frozen=True)
class Pairs:
    """A CBOR map given as ordered pairs: encoded as is, unsorted and duplicates allowed."""

    items: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class Raw:
    """Pre-encoded CBOR bytes, spliced in verbatim."""

    data: bytes


def head(major: int, n: int, width: int | None = None) -> bytes:
    """A CBOR head. ``width`` (0, 1, 2, 4, 8) forces an argument size, shortest or not."""
    if width is None:
        width = 0 if n < 24 else 1 if n < 0x100 else 2 if n < 0x10000 else 4 if n < 1 << 32 else 8
    if width == 0:
        return bytes([major << 5 | n])
    ai = {1: 24, 2: 25, 4: 26, 8: 27}[width]
    return bytes([major << 5 | ai]) + n.to_bytes(width, "big")


def ref_encode(obj: Any) -> bytes:
    """RFC 8949 §4.2.1 core deterministic encoding, written from the RFC, not from cbor2.

    Map keys are sorted by the bytewise order of their *encoded* form.
    """
    if isinstance(obj, Raw):
        return obj.data
    if obj is None:
        return b"\xf6"
    if obj is True:
        return b"\xf5"
    if obj is False:
        return b"\xf4"
    if isinstance(obj, int):
        return head(0, obj) if obj >= 0 else head(1, -1 - obj)
    if isinstance(obj, bytes):
        return head(2, len(obj)) + obj
    if isinstance(obj, str):
        b = obj.encode("utf-8")
        return head(3, len(b)) + b
    if isinstance(obj, float):
        return b"\xfb" + struct.pack(">d", obj)
    if isinstance(obj, list):
        return head(4, len(obj)) + b"".join(ref_encode(x) for x in obj)
    if isinstance(obj, Pairs):
        body = b"".join(ref_encode(k) + ref_encode(v) for k, v in obj.items)
        return head(5, len(obj.items)) + body
    if isinstance(obj, dict):
        pairs = sorted((ref_encode(k), ref_encode(v)) for k, v in obj.items())
        return head(5, len(pairs)) + b"".join(k + v for k, v in pairs)
    raise TypeError(type(obj))


EID = "0190a3d2-8c4e-7abc-8def-0123456789ab"


def full_event() -> dict[str, Any]:
    """A valid successful event that uses every field of SCIM.md §3.4 (and ``intent``)."""
    return {
        "v": 1,
        "eid": EID,
        "ts": 1718000000123,
        "dur": 42,
        "tenant": "contoso",
        "sp": {"id": "app-1", "base": "https://sp.example/scim/v2"},
        "idp": {"id": "entra", "name": "Microsoft Entra ID"},
        "op": "patch",
        "rt": "User",
        "rid": "2819c223-7f76-453a-919d-413861904646",
        "xid": "bjensen",
        "ver": {"pre": 'W/"1"', "post": 'W/"2"'},
        "actor": {
            "kind": "oauth_client",
            "id": "svc-provisioning",
            "iss": "https://login.example/tenant/v2.0",
            "client_id": "c1",
            "tid": "t1",
            "name": "Provisioning service",
            "scope": ["scim.write", "scim.read"],
            "tok_d": bytes(range(32)),
            "x5t_s256": bytes(range(32, 64)),
        },
        "src": {"ip": "2001:db8::1", "ua": "Microsoft.AAD.Provisioning/1.0"},
        "corr": {
            "req": "req-1",
            "trace": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "bulk_req": "bulk-9",
            "seq": 3,
            "bulk_id": "qwerty",
            "job": "job-1",
            "cycle": "cycle-1",
            "change": "change-1",
            "tx": "tx-1",
        },
        "req": {
            "m": "PATCH",
            "p": "/Users/2819c223-7f76-453a-919d-413861904646",
            "dig": bytes(range(64, 96)),
            "len": 187,
            "if_match": 'W/"1"',
        },
        "patch": [
            {"op": "replace", "path": "active", "v_d": bytes(range(96, 128))},
            {"op": "add", "v_d": bytes(range(128, 160))},
            {"op": "remove", "path": 'emails[type eq "work"]'},
        ],
        "mods": [
            {"attr": "active", "old": "true", "new": "false"},
            {"attr": "displayName", "old_d": bytes(32), "new_d": b"\x01" * 32},
            {"attr": "password"},
            {"attr": "title", "new": '"Boss"'},
        ],
        "refs": [{"rt": "User", "pid": b"\x09" * 16}],
        "res": {"st": 200, "etag": 'W/"2"', "loc": "https://sp.example/scim/v2/Users/2819c223"},
        "outcome": "success",
        "acts": [
            {"a": "user.deactivate", "ocsf": [3001, 5]},
            {"a": "user.password.set", "ocsf": [3001, 4]},
            {"a": "user.update", "ocsf": [3004, 3]},
        ],
        "x": {"entra": {"steps": ["match", "export"], "n": -5, "ok": True, "none": None}},
        "intent": True,
    }


def failed_event() -> dict[str, Any]:
    """A valid failed create: no rid, an err, no acts."""
    return {
        "v": 1,
        "eid": "0190a3d2-8c4e-4abc-bdef-0123456789ab",
        "ts": 1718000000999,
        "tenant": "contoso",
        "sp": {"id": "app-1"},
        "op": "create",
        "rt": "Group",
        "actor": {"kind": "bearer", "tok_d": b"\xaa" * 32},
        "corr": {"req": "req-2"},
        "req": {"m": "POST", "p": "/Groups", "dig": b"\xbb" * 32, "len": 0},
        "res": {"st": 409},
        "outcome": "failure",
        "err": {"scim_type": "uniqueness", "reason": "Group exists.\nTry another name."},
    }


def minimal_event() -> dict[str, Any]:
    """A valid successful delete with only the required fields."""
    return {
        "v": 1,
        "eid": "0190a3d2-8c4e-7abc-8def-00000000000f",
        "ts": 0,
        "tenant": "t",
        "sp": {"id": "s"},
        "op": "delete",
        "rt": "User",
        "rid": "u",
        "actor": {"kind": "anonymous"},
        "corr": {"req": "r"},
        "req": {"m": "DELETE", "p": "/Users/u", "dig": bytes(32), "len": 0},
        "res": {"st": 204},
        "outcome": "success",
        "acts": [{"a": "user.delete", "ocsf": [3001, 6]}],
    }


def leaf_paths(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths (keys and indices) to every scalar in a nested dict/list."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from leaf_paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaf_paths(v, (*path, i))
    else:
        yield path


def map_paths(obj: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Paths to every map (including the root) in a nested dict/list."""
    if isinstance(obj, dict):
        yield path
        for k, v in obj.items():
            yield from map_paths(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from map_paths(v, (*path, i))


def get_in(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def with_change(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with the item at ``path`` set to ``value``."""
    out = copy.deepcopy(obj)
    get_in(out, path[:-1])[path[-1]] = value
    return out


def without(obj: dict[str, Any], path: tuple[Any, ...]) -> dict[str, Any]:
    """A deep copy of ``obj`` with the item at ``path`` deleted."""
    out = copy.deepcopy(obj)
    del get_in(out, path[:-1])[path[-1]]
    return out


ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


# --- hypothesis: random valid events --------------------------------------------------------

ident = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x85"),
    min_size=1,
    max_size=12,
)
uints = st.integers(min_value=0, max_value=2**53 - 1)
digests = st.binary(min_size=32, max_size=32)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    outcome = draw(st.sampled_from(["success", "failure", "skipped", "warning"]))
    op = draw(st.sampled_from(["create", "replace", "patch", "delete"]))
    ev: dict[str, Any] = {
        "v": 1,
        "eid": str(uuid7(draw(st.integers(min_value=0, max_value=2**48 - 1)))),
        "ts": draw(uints),
        "tenant": draw(ident),
        "sp": {"id": draw(ident)},
        "op": op,
        "rt": draw(ident),
        "actor": {"kind": draw(st.sampled_from(["user", "system", "bearer"]))},
        "corr": {"req": draw(ident)},
        "req": {"m": "POST", "p": draw(ident), "dig": draw(digests), "len": draw(uints)},
        "res": {"st": 200 if outcome == "success" else draw(st.integers(100, 599))},
        "outcome": outcome,
    }
    if outcome != "success":
        ev["err"] = {"reason": draw(ident)}
    if outcome == "success" or draw(st.booleans()):
        ev["acts"] = [{"a": "user.update", "ocsf": [3004, draw(st.integers(0, 99))]}]
    if not (op == "create" and outcome != "success") or draw(st.booleans()):
        ev["rid"] = draw(ident)
    if draw(st.booleans()):
        ev["actor"]["tok_d"] = draw(digests)
    if draw(st.booleans()):
        ev["mods"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"attr": ident}, optional={"new": st.just('"v"'), "old_d": digests}
                ),
                min_size=1,
                max_size=3,
            )
        )
    if draw(st.booleans()):
        ev["refs"] = [{"rt": "User", "pid": draw(st.binary(min_size=16, max_size=16))}]
    if draw(st.booleans()):
        ev["x"] = {
            draw(ident): draw(
                st.recursive(
                    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | ident,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(ident, c, max_size=3),
                    max_leaves=6,
                )
            )
        }
    return ev
