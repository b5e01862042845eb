"""Issue 9 parts 2-4 through the middleware into a real in-process log:

* bodies are read as an SP reads them (content coding, charset, BOM, duplicate keys), and a
  body that cannot be read gives an event that says so, findable by search;
* member references of any number are all recorded (linked events), bulkId references
  resolve, the manager is pseudonymised and searchable, filters in paths are kept;
* pseudonyms come in one batched call per request, off the event loop.
"""

from __future__ import annotations

import base64
import codecs
import gzip
import hashlib
import json
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.adapters.body import decode_body
from tests.scim_service.conftest import T1, URL, Harness, harness  # noqa: F401

from .helpers import BULK, PATCH, USER
from .rig import Rig, Via, make_rig

ENT = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


@pytest.fixture
def rig(harness: Harness, tmp_path: Path) -> Iterator[Rig]:  # noqa: F811
    with make_rig(harness, tmp_path) as r:
        yield r


def deactivate(value: Any = False) -> bytes:
    return json.dumps(
        {"schemas": [PATCH], "Operations": [{"op": "Replace", "path": "active", "value": value}]}
    ).encode()


def acts(ev: dict[str, Any]) -> list[str]:
    return [a["a"] for a in ev.get("acts", ())]


# --- part 2: read bodies like an SP -----------------------------------------------------

ENCODINGS: list[tuple[str, bytes, dict[str, str], dict[str, Any]]] = [
    ("gzip", gzip.compress(deactivate()), {"Content-Encoding": "gzip"}, {"enc": "gzip"}),
    ("deflate", zlib.compress(deactivate()), {"Content-Encoding": "deflate"}, {"enc": "deflate"}),
    (
        "raw-deflate",
        zlib.compress(deactivate())[2:-4],
        {"Content-Encoding": "deflate"},
        {"enc": "deflate"},
    ),
    ("utf8-bom", codecs.BOM_UTF8 + deactivate(), {}, {"bom": True}),
    (
        "utf16le",
        deactivate().decode().encode("utf-16-le"),
        {"Content-Type": "application/scim+json; charset=utf-16le"},
        {"charset": "utf-16le"},
    ),
    (
        "utf16-bom",
        deactivate().decode().encode("utf-16"),
        {},
        {"bom": True, "charset": "utf-16-le"},
    ),
    ("utf32be-nobom", deactivate().decode().encode("utf-32-be"), {}, {"charset": "utf-32-be"}),
    (
        "gzip+utf16",
        gzip.compress(deactivate().decode().encode("utf-16-le")),
        {"Content-Encoding": "gzip", "Content-Type": "application/json; charset=UTF-16LE"},
        {"enc": "gzip", "charset": "utf-16le"},
    ),
    ("string-bool", deactivate("False"), {}, {}),
]


@pytest.mark.parametrize(
    ("name", "body", "headers", "notes"), ENCODINGS, ids=[e[0] for e in ENCODINGS]
)
def test_encoded_deactivation_is_a_deactivation(
    rig: Rig, name: str, body: bytes, headers: dict[str, str], notes: dict[str, Any]
) -> None:
    r = rig.client.patch(
        "/v2/Users/u-alice", content=body, headers={"X-Request-Id": f"req-{name}", **headers}
    )
    assert r.status_code == 204
    (found,) = rig.auditor().search(req=f"req-{name}").results
    ev = found.event
    assert ev is not None
    assert acts(ev) == ["user.deactivate"]
    assert ev["req"]["dig"] == hashlib.sha256(body).digest()  # the bytes as received
    assert ev.get("x", {}).get("body", {}) == notes
    assert "uninterpretable" not in ev.get("x", {})


def test_duplicate_keys_read_last_wins_and_flagged(rig: Rig) -> None:
    body = (
        b'{"schemas": ["%s"], "Operations": [{"op": "replace", "path": "active",'
        b' "value": true, "value": false}]}' % PATCH.encode()
    )
    rig.client.patch("/v2/Users/u-dup", content=body, headers={"X-Request-Id": "req-dup"})
    body2 = (
        b'{"schemas": ["%s"], "Operations": [{"op": "replace", "path": "active",'
        b' "Value": false, "value": true}]}' % PATCH.encode()
    )
    rig.client.patch("/v2/Users/u-dup", content=body2, headers={"X-Request-Id": "req-dup2"})
    a = rig.auditor()
    (ev,) = [f.event for f in a.search(req="req-dup").results]
    assert ev is not None and acts(ev) == ["user.deactivate"]
    assert ev["x"]["body"] == {"dup_keys": ["value"]}
    (ev2,) = [f.event for f in a.search(req="req-dup2").results]
    assert ev2 is not None and acts(ev2) == ["user.activate"]  # case-insensitive names
    assert ev2["x"]["body"] == {"dup_keys": ["value"]}


UNREADABLE = [
    ("garbage", b"\x00\x01not json", {}),
    ("bad-gzip", b"\x1f\x8b\x08garbage", {"Content-Encoding": "gzip"}),
    ("brotli", b"\x0b\x02\x80{}\x03", {"Content-Encoding": "br"}),
    ("bad-charset", deactivate(), {"Content-Type": "application/json; charset=x-unknown-9"}),
    (
        "latin1-as-utf8",
        b'{"Operations": [{"op": "replace", "path": "displayName", "value": "\xe9"}]}',
        {},
    ),
    ("not-a-patch", b'{"schemas": ["x"]}', {}),
    ("array", b"[1, 2]", {}),
]


@pytest.mark.parametrize(("name", "body", "headers"), UNREADABLE, ids=[u[0] for u in UNREADABLE])
def test_unreadable_body_is_an_event_that_says_so(
    rig: Rig, name: str, body: bytes, headers: dict[str, str]
) -> None:
    r = rig.client.patch(
        "/v2/Users/u-bob", content=body, headers={"X-Request-Id": f"req-{name}", **headers}
    )
    assert r.status_code == 204
    a = rig.auditor()
    (found,) = a.search(action="user.uninterpretable", req=f"req-{name}").results
    ev = found.event
    assert ev is not None
    assert acts(ev) == ["user.uninterpretable"]  # never a silent bare user.update
    assert ev["x"]["uninterpretable"]
    assert ev["req"]["dig"] == hashlib.sha256(body).digest() and ev["req"]["len"] == len(body)
    assert ev["rid"] == "u-bob"


def test_decompression_is_bounded() -> None:
    bomb = gzip.compress(b"{" + b" " * (8 << 20) + b"}")
    got = decode_body(bomb, content_encoding="gzip", max_size=1 << 20)
    assert not got.ok and "larger than" in str(got.error)
    assert decode_body(gzip.compress(b"{}"), content_encoding="gzip").value == {}


# --- part 3: no member dropped ------------------------------------------------------------


def test_five_thousand_members_all_recorded_in_linked_events(rig: Rig) -> None:
    members = [{"value": f"user-{i:05d}"} for i in range(5000)]
    body = json.dumps(
        {"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": members}]}
    ).encode()
    calls = rig.pids.calls
    r = rig.client.patch("/v2/Groups/g-all", content=body, headers={"X-Request-Id": "req-big"})
    assert r.status_code == 204
    assert rig.pids.calls == calls + 1  # one batched pseudonym call for 5000 members
    n = int(r.headers["tlog-event-count"])
    assert n > 1
    a = rig.auditor()
    parts = [f.event for f in a.search_all(req="req-big")]
    assert len(parts) == n and all(p is not None for p in parts)
    ordered = sorted(parts, key=lambda e: e["x"]["part"])  # type: ignore[index]
    first = ordered[0]["eid"]  # type: ignore[index]
    seen: set[bytes] = set()
    for i, p in enumerate(ordered):
        assert p is not None
        assert p["x"]["part"] == i and p["x"]["parts"] == n
        assert p["corr"]["req"] == "req-big" and p["rid"] == "g-all"
        assert i == 0 or p["x"]["first"] == first
        assert acts(p) == ["group.member.add"]
        seen |= {ref["pid"] for ref in p.get("refs", ())}
        assert b"user-0" not in json.dumps(p, default=str).encode()
    assert len(seen) == 5000
    for probe in ("user-00000", "user-02500", "user-04999"):  # any member is findable
        got = a.search(ref=probe, action="group.member.add").results
        assert [g.event["rid"] for g in got if g.event] == ["g-all"]


def test_manager_pseudonymised_searchable_and_filters_kept(rig: Rig) -> None:
    body = json.dumps(
        {
            "schemas": [PATCH],
            "Operations": [
                {"op": "replace", "path": f"{ENT}:manager", "value": {"value": "mgr-9"}},
                {"op": "replace", "path": 'emails[type eq "work"].value', "value": "a@example.org"},
            ],
        }
    ).encode()
    rig.client.patch("/v2/Users/u-carol", content=body, headers={"X-Request-Id": "req-mgr"})
    put = json.dumps(
        {"schemas": [USER, ENT], "userName": "dave", ENT: {"manager": {"value": "mgr-9"}}}
    ).encode()
    rig.client.put("/v2/Users/u-dave", content=put, headers={"X-Request-Id": "req-mgr2"})
    a = rig.auditor()
    (ev,) = [f.event for f in a.search(req="req-mgr").results]
    assert ev is not None
    assert "mgr-9" not in json.dumps(ev, default=str)
    assert {
        "attr": 'emails[type eq "work"].value',
        "op": "replace",
        "new": '"a@example.org"',
    } in ev["mods"]
    assert ev["refs"][0]["attr"] == "manager" and ev["refs"][0]["op"] == "replace"
    got = sorted(f.event["rid"] for f in a.search(ref="mgr-9").results if f.event)
    assert got == ["u-carol", "u-dave"]


def test_member_filter_names_the_member_by_pseudonym(rig: Rig) -> None:
    body = json.dumps(
        {"schemas": [PATCH], "Operations": [{"op": "remove", "path": 'members[value eq "u-eve"]'}]}
    ).encode()
    rig.client.patch("/v2/Groups/g-1", content=body, headers={"X-Request-Id": "req-rm"})
    a = rig.auditor()
    (ev,) = [f.event for f in a.search(ref="u-eve").results]
    assert ev is not None and acts(ev) == ["group.member.remove"]
    pid = rig.pids("User", "u-eve")
    path = 'members[value eq "pid:' + base64.b64encode(pid).decode() + '"]'
    assert ev["patch"] == [{"op": "remove", "path": path}]
    assert "u-eve" not in json.dumps(ev, default=str)


def test_bulk_id_references_resolve_to_created_ids(rig: Rig) -> None:
    body = json.dumps(
        {
            "schemas": [BULK],
            "Operations": [
                {
                    "method": "POST",
                    "path": "/Users",
                    "bulkId": "newbie",
                    "data": {"schemas": [USER], "userName": "newbie"},
                },
                {
                    "method": "PATCH",
                    "path": "/Groups/g-2",
                    "data": {
                        "schemas": [PATCH],
                        "Operations": [
                            {"op": "add", "path": "members", "value": [{"value": "bulkId:newbie"}]}
                        ],
                    },
                },
            ],
        }
    ).encode()
    # The stand-in SP names every created resource "<its endpoint>/created-<i>".
    r = rig.client.post("/v2/Bulk", content=body, headers={"X-Request-Id": "req-bulk"})
    assert r.status_code == 200
    a = rig.auditor()
    got = [f.event["rid"] for f in a.search(ref="created-0").results if f.event]
    assert got == ["g-2"]
    assert a.search(ref="bulkId:newbie").results == []


# --- part 4: never block the event loop ---------------------------------------------------


def test_slow_pseudonyms_do_not_block_other_requests(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    """While one request waits for its member pseudonyms, another request goes through
    the same middleware completely: ordering, no clock."""
    gate = threading.Event()
    entered = threading.Event()
    with make_rig(harness, tmp_path) as rig:
        rig.pids._core.http = httpx.Client(transport=Via(harness.client, gate, entered))
        order: list[str] = []
        body = json.dumps(
            {
                "schemas": [PATCH],
                "Operations": [
                    {
                        "op": "add",
                        "path": "members",
                        "value": [{"value": f"m{i}"} for i in range(50)],
                    }
                ],
            }
        )

        def big() -> None:
            r = rig.client.patch("/v2/Groups/g-slow", content=body.encode())
            order.append(f"big {r.status_code}")

        t = threading.Thread(target=big)
        t.start()
        assert entered.wait(30)  # the big request is waiting on the log now
        r = rig.client.post("/v2/Users", json={"schemas": [USER], "userName": "x"})
        order.append(f"small {r.status_code}")
        gate.set()
        t.join(30)
        assert order == ["small 201", "big 204"]


def test_log_without_pseudonyms_records_that_it_could_not(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
) -> None:
    with make_rig(harness, tmp_path) as rig:

        def down(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("down")

        rig.pids._core.http = httpx.Client(transport=httpx.MockTransport(down))
        body = json.dumps(
            {
                "schemas": [PATCH],
                "Operations": [{"op": "add", "path": "members", "value": [{"value": "u-zed"}]}],
            }
        ).encode()
        r = rig.client.patch("/v2/Groups/g-3", content=body, headers={"X-Request-Id": "req-nop"})
        assert r.status_code == 204
        (ev,) = [f.event for f in rig.auditor().search(req="req-nop").results]
        assert ev is not None and acts(ev) == ["group.uninterpretable"]
        assert "pseudonym" in ev["x"]["uninterpretable"]
        assert "u-zed" not in json.dumps(ev, default=str)
