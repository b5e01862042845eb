"""Red team 19: the auxiliary records of a commit written as ``putmulti`` runs between
deletions (``Storage._aux_into``), on both backends: a key deleted and put again across
run boundaries, an enormous record inside a run, an item the store refuses in the middle
(the commit fails whole: no entry, no record of it, the deletion before it undone; the next
commit works), and on LMDB the map filling in the middle of a run (grown, written once).
Each of these held: the tests guard the promise "a commit's aux ends as its items applied
in order, or not at all"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.pgsupport import open_store
from tlog.log import Log
from tlog.storage import Storage

from .conftest import make_signer

A, B, C, D = (b"\xfftest/" + c for c in (b"A", b"B", b"C", b"D"))


def _aux(log_: Log, *keys: bytes) -> dict[bytes, bytes | None]:
    with log_.storage.read() as rv:
        return {k: (None if (v := rv.aux(k)) is None else bytes(v)) for k in keys}


def _size(log_: Log) -> int:
    with log_.storage.read() as rv:
        return rv.tree_size()


def test_a_key_deleted_and_put_across_runs_ends_as_its_last_item_says(
    tmp_path: Path, database: str | None
) -> None:
    log_ = Log(open_store(database, tmp_path), make_signer())
    try:
        log_.integrate([b"e0"], aux=[(A, b"a1"), (B, b"b1"), (D, b"d1")])
        items: list[tuple[bytes, bytes | None]] = [
            (A, None), (A, b"a2"), (B, b"b2"), (B, None), (C, b"c1"), (C, None),
            (C, b"c2"), (D, b"d2"), (D, b"d3"), (A, None), (A, b"a3"), (A, b"a4"),
        ]  # fmt: skip
        log_.integrate([b"e1"], aux=items)
        assert _aux(log_, A, B, C, D) == {A: b"a4", B: None, C: b"c2", D: b"d3"}
        log_.storage.put_aux([(A, None), (B, b"b3"), (B, None), (B, b"b4"), (C, None)])
        assert _aux(log_, A, B, C, D) == {A: None, B: b"b4", C: None, D: b"d3"}
    finally:
        log_.storage.close()


def test_an_enormous_record_inside_a_run(tmp_path: Path, database: str | None) -> None:
    big = os.urandom(24 << 20)
    store = Storage(tmp_path, map_size=1 << 20) if database is None else None
    log_ = Log(store or open_store(database, tmp_path), make_signer())
    try:
        log_.integrate([b"e0"], aux=[(A, b"a"), (B, None), (C, big), (D, b"d"), (B, big[:9])])
        assert _aux(log_, A, B, C, D) == {A: b"a", B: big[:9], C: big, D: b"d"}
        assert _size(log_) == 1
    finally:
        log_.storage.close()


def test_an_item_refused_mid_run_fails_the_commit_whole(
    tmp_path: Path, database: str | None
) -> None:
    # A key longer than either store takes (LMDB: 511 bytes; PostgreSQL: a btree row).
    bad = b"\xfftest/" + os.urandom(12_000)
    log_ = Log(open_store(database, tmp_path), make_signer())
    try:
        log_.integrate([b"e0"], aux=[(B, b"b1")])
        with pytest.raises(Exception):  # noqa: B017 - each store names it its own way
            log_.integrate([b"e1"], aux=[(A, b"a1"), (B, None), (C, b"c1"), (bad, b"x"), (D, b"d")])
        assert _size(log_) == 1
        assert _aux(log_, A, B, C, D) == {A: None, B: b"b1", C: None, D: None}
        with pytest.raises(Exception):  # noqa: B017
            log_.storage.put_aux([(B, None), (A, b"a1"), (bad, b"x")])
        assert _aux(log_, A, B) == {A: None, B: b"b1"}
        r = log_.integrate([b"e2"], aux=[(B, None), (A, b"a2")])
        assert r.indices == [1] and _size(log_) == 2
        assert _aux(log_, A, B, C, D) == {A: b"a2", B: None, C: None, D: None}
    finally:
        log_.storage.close()


@pytest.mark.lmdb_only("the LMDB map filling up (PostgreSQL has no map)")
def test_the_map_filling_mid_run_grows_it_and_writes_once(tmp_path: Path) -> None:
    log_ = Log(Storage(tmp_path, map_size=256 << 10), make_signer())
    try:
        start = log_.storage.map_size  # type: ignore[attr-defined]
        items: list[tuple[bytes, bytes | None]] = [(A, b"a"), (B, None)]
        items += [(b"\xfftest/n%05d" % i, os.urandom(200)) for i in range(5000)]
        items += [(A, None), (C, os.urandom(3 << 20)), (D, b"d")]
        log_.integrate([b"e0"], aux=items)
        assert log_.storage.map_size > start  # type: ignore[attr-defined]
        assert _size(log_) == 1
        assert _aux(log_, A, B, D) == {A: None, B: None, D: b"d"}
        with log_.storage.read() as rv:
            assert len(list(rv.aux_range(b"\xfftest/n"))) == 5000
    finally:
        log_.storage.close()
