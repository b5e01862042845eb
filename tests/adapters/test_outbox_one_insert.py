"""A group of adds committed as one INSERT statement (Outbox._commit_adds) stores exactly
what the general path stores (BEGIN IMMEDIATE, one executemany per add, COMMIT, and one by
one after a failure): the same rows in the same order, the same adds refused over the quota
with the same errors, the same count of queued bytes; a failed statement falls back."""

from __future__ import annotations

import itertools
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.adapters import outbox as outbox_mod
from client.adapters.outbox import Outbox, OutboxRecord, Receipt, _receipts_json


def _rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()


def _run_groups(
    path: Path, groups: list[list[list[OutboxRecord]]], max_bytes: int | None, general: bool
) -> tuple[list[Any], list[tuple[Any, ...]]]:
    """Commit ``groups`` (each a list of adds) as the writer would, on a connection of our
    own; ``general`` forces the general path. Returns each add's outcome and the rows."""
    clock = itertools.count(1_700_000_000_000)
    me = threading.get_ident()

    def now_ms() -> int:
        # The adds' times come from this thread's calls only: a thread another test left
        # running (reading a backlog: Outbox.backlog asks the clock) must not move them,
        # or the two paths differ by where its call fell (a CI run, stop 33).
        return next(clock) if threading.get_ident() == me else 1_700_000_000_000

    outcomes: list[Any] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outbox_mod, "_now_ms", now_ms)
        if general:
            mp.setattr(Outbox, "_commit_adds", lambda self, conn, live: live)
        ob = Outbox(path, max_bytes=max_bytes)
        conn = ob._connect()
        try:
            for group in groups:
                got: list[Any] = [None] * len(group)

                def settle(i: int, got: list[Any] = got) -> Any:
                    def s(res: Any, exc: BaseException | None) -> None:
                        got[i] = ("ok", res) if exc is None else ("error", str(exc))

                    return s

                live = [(ob._add_job(recs), settle(i)) for i, recs in enumerate(group)]
                ob._commit_live(conn, live)
                outcomes.append((got, ob._queued))
        finally:
            conn.close()
            ob.close()
    return outcomes, _rows(path)


records = st.builds(
    lambda i, n, req: OutboxRecord(f"eid-{i}", f"req-{req}", '{"x":"' + "a" * n + '"}'),
    st.integers(0, 12),
    st.integers(0, 3000),
    st.integers(0, 3),
)
groups = st.lists(
    st.lists(st.lists(records, min_size=0, max_size=3), min_size=1, max_size=5),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(groups=groups, max_bytes=st.sampled_from([None, 4000, 9000]))
def test_one_insert_equals_the_general_path(
    groups: list[list[list[OutboxRecord]]], max_bytes: int | None
) -> None:
    with tempfile.TemporaryDirectory() as d:
        fast = _run_groups(Path(d) / "fast.sqlite", groups, max_bytes, general=False)
        slow = _run_groups(Path(d) / "slow.sqlite", groups, max_bytes, general=True)
    assert fast == slow


def test_the_common_group_is_one_statement(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = outbox_mod._insert_sql

    def spy(rows: int) -> str:
        calls.append(f"insert {rows}")
        return real(rows)

    monkeypatch.setattr(outbox_mod, "_insert_sql", spy)
    adds = [[OutboxRecord(f"e{i}", "r", "{}")] for i in range(3)]
    outcomes, rows = _run_groups(tmp_path / "o.sqlite", [adds], None, general=False)
    assert calls == ["insert 3"]
    assert [r[1] for r in rows] == ["e0", "e1", "e2"]
    assert outcomes[0][0] == [("ok", None)] * 3


def test_a_failed_statement_falls_back_to_the_general_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_mod, "_insert_sql", lambda rows: "INSERT INTO nowhere VALUES (?)")
    adds = [[OutboxRecord(f"e{i}", "r", "{}")] for i in range(3)]
    want = _run_groups(tmp_path / "slow.sqlite", [adds], 10_000, general=True)
    got = _run_groups(tmp_path / "fast.sqlite", [adds], 10_000, general=False)
    assert got == want
    assert [r[1] for r in got[1]] == ["e0", "e1", "e2"]


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.builds(
            Receipt,
            eid=texts,
            index=st.one_of(st.integers(-(2**70), 2**70), st.booleans()),
            leaf_hash=texts,
            tree_size=st.integers(0, 2**64),
            checkpoint=st.sampled_from(["log\n12\nq83=\n\n\u2014 log sig==\n", "x"]) | texts,
            duplicate=st.booleans() | st.sampled_from([0, 1, None]),
        ),
        max_size=6,
    )
)
def test_receipts_json_equals_to_json(receipts: list[Receipt]) -> None:
    assert _receipts_json(receipts) == [r.to_json() for r in receipts]
