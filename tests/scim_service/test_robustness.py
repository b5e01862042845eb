"""Junk into every SCIM endpoint: always a 4xx with a JSON reason, never a 500."""

from __future__ import annotations

import random

import pytest

from client.scim import encode_event, event_to_json

from .conftest import Harness, user_event

POSTS = {
    "/v1/scim/events": "sub1",
    "/v1/scim/events/batch": "sub1",
    "/v1/scim/pseudonyms": "sub1",
    "/v1/scim/erasures": "po_a",
    "/v1/scim/erasures/00000000000000000000000000000000/approve": "po_b",
}
GETS = {
    "/v1/scim/events": "aud1",
    "/v1/scim/receipts": "aud1",
    "/v1/scim/tenant-ref": "aud1",
    "/v1/scim/erasures/zz": "po_a",
}


def junk_bodies() -> list[bytes]:
    rng = random.Random(7)
    good_json = event_to_json(user_event()).encode()
    good_cbor = encode_event(user_event())
    out = [
        b"",
        b"null",
        b"0",
        b'"x"',
        b"[]",
        b"{}",
        b'{"refs": null}',
        b'{"refs": [{"rt": 1, "id": []}]}',
        b'{"refs": [{"rt": "User", "id": "a\\u0000b"}]}',
        b'{"events": [{}]}',
        b'{"tenant": [], "rt": {}, "rid": 1, "reason": null}',
        b"[" * 100_000,
        b'{"a":' * 10_000,
        b"\xff\xfe\x00",
        b"\x9f" * 100,
        b"\xbf" * 100,
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\xd9\xd9\xf7" + good_cbor,
    ]
    for base in (good_json, good_cbor):
        for _ in range(15):
            b = bytearray(base)
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            out.append(bytes(b))
            out.append(base[: rng.randrange(len(base))])
    return out


@pytest.mark.parametrize("path", list(POSTS))
@pytest.mark.parametrize("ctype", ["application/json", "application/cbor", "text/plain"])
def test_junk_posts(harness: Harness, path: str, ctype: str) -> None:
    for body in junk_bodies():
        r = harness.client.post(
            path, content=body, headers={**harness.h(POSTS[path]), "Content-Type": ctype}
        )
        assert 400 <= r.status_code < 500 or r.status_code == 200, (path, body[:40], r.text)
        if r.status_code != 200:
            assert isinstance(r.json()["error"], str)


@pytest.mark.parametrize("path", list(GETS))
def test_junk_queries(harness: Harness, path: str) -> None:
    for q in [
        "",
        "x",
        "=",
        "&&",
        "rid=%ff",
        "rid=%00",
        "limit=-1",
        "limit=1e3",
        "since=99999999999999999999999",
        "cursor=%%%",
        "eid=" + "a" * 5000,
        "req=" + "b" * 1500,
        "eid=0190a3d2-8c4e-7abc-8def-0123456789ab&eid=0190a3d2-8c4e-7abc-8def-0123456789ab",
    ]:
        r = harness.client.get(f"{path}?{q}", headers=harness.h(GETS[path]))
        assert r.status_code < 500, (path, q, r.text)
        assert r.status_code == 200 or isinstance(r.json()["error"], str)
