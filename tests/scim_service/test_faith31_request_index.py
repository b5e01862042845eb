"""faith31: the retry match of an erasure request (``Erasures._same_request``) reads an
index of the tenant's pending requests by subject (``scim/P``), not every request record of
the store; a store made before the index still matches retries (the index is built in the
first request's write, and marked built, ``scim/W/request-index``); an approval deletes its
index record with the subject hash (nothing links back); fsck knows both records.

Both store backends (the ``database`` fixture)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tlog.fsck import fsck
from tlog.scim import erasure, store

from .conftest import T1, Harness, open_harness, user_event


def _request(h: Harness, rid: str) -> Any:
    body = {"tenant": T1, "rt": "User", "rid": rid, "reason": "gdpr"}
    return h.client.post("/v1/scim/erasures", json=body, headers=h.h("po_a"))


def _keys(h: Harness, prefix: bytes) -> list[bytes]:
    with h.log.storage.read() as rv:
        return [k for k, _ in rv.aux_range(prefix)]


def _count_request_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    reads = [0]
    real = store.decode_record

    def counting(raw: bytes, what: str) -> Any:
        if what == "erasure request":
            reads[0] += 1
        return real(raw, what)

    monkeypatch.setattr(erasure.store, "decode_record", counting)
    return reads


def test_a_new_request_reads_only_its_subjects_requests(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_harness(tmp_path, database=database) as h:
        for i in range(12):
            assert h.post_event(user_event(f"u-f31-{i}", req=f"r-{i}")).status_code == 200
            assert _request(h, f"u-f31-{i}").status_code == 201
        reads = _count_request_reads(monkeypatch)
        first = _request(h, "u-f31-new")
        assert first.status_code == 201, first.text
        # none of the 12 other subjects' requests read (before: all 12, for each request)
        assert reads[0] == 0, reads
        again = _request(h, "u-f31-3")  # a retry: its one request read, and answered
        assert again.status_code == 200 and again.json()["state"] == "pending", again.text
        assert reads[0] == 1, reads
        assert len(_keys(h, store.request_key(b""))) == 13
        assert not fsck(h.log.storage).errors


def test_a_store_from_before_the_index_still_matches_retries(
    tmp_path: Path, database: str | None
) -> None:
    with open_harness(tmp_path, database=database) as h:
        assert h.post_event(user_event("u-f31-old", req="r-old")).status_code == 200
        first = _request(h, "u-f31-old")
        assert first.status_code == 201, first.text

        # the store as a version before faith31 left it: no index, no marker
        def strip(tx: Any) -> None:
            for key in _keys(h, store.PREFIX + b"P"):
                tx.delete(key)
            tx.delete(store.request_index_built_key())

        h.service.write(strip)
        assert not _keys(h, store.PREFIX + b"P")
        again = _request(h, "u-f31-old")
        # the retry is found (built at this first look): no second request
        assert again.status_code == 200, again.text
        assert again.json()["id"] == first.json()["id"]
        assert len(_keys(h, store.request_key(b""))) == 1
        assert len(_keys(h, store.PREFIX + b"P")) == 1
        assert _keys(h, store.request_index_built_key())
        # approved: its index record goes with the subject hash (nothing links back)
        r = h.client.post(f"/v1/scim/erasures/{first.json()['id']}/approve", headers=h.h("po_b"))
        assert r.status_code == 200 and r.json()["state"] == "done", r.text
        assert not _keys(h, store.PREFIX + b"P")
        assert not fsck(h.log.storage).errors
