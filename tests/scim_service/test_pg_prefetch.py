"""PostgreSQL: a group of single SCIM events reads the records its stagings read first (each
event's eid record and subject record) in ONE query before the stagings run
(``ScimService._prefetch``, ``Overlay.prefetch``, ``PgReadView.aux_many``), then the known
subjects' resource state and current DEK in a second one, and stages exactly what it stages
without that read-ahead: same answers, same records, byte for byte, with records staged by
the group itself or by a group in flight still winning."""

from __future__ import annotations

import itertools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.scim_service.conftest import BASE_TS, T1, open_harness
from tests.scim_service.helpers import create_event, mixed_batch, stage_group, user_mods
from tlog.pg import PgReadView
from tlog.scim import store
from tlog.scim.keys import TenantKeys, epoch_of
from tlog.scim.service import ScimService, subject_of
from tlog.scim.store import Overlay


class _Counted:
    """Every key the read views read one at a time (``aux``) and every ``aux_many``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.one: list[bytes] = []
        self.many: list[list[bytes]] = []
        aux, aux_many = PgReadView.aux, PgReadView.aux_many

        def one(rv: PgReadView, key: bytes) -> bytes | None:
            self.one.append(key)
            return aux(rv, key)

        def many(rv: PgReadView, keys: Any) -> dict[bytes, bytes]:
            self.many.append(list(keys))
            return aux_many(rv, keys)

        monkeypatch.setattr(PgReadView, "aux", one)
        monkeypatch.setattr(PgReadView, "aux_many", many)

    def clear(self) -> None:
        self.one.clear()
        self.many.clear()


def _later_reads(svc: ScimService, events: list[Any], now: int) -> set[bytes]:
    """The resource state and DEK (of ``now``'s epoch) record keys of ``events``' subjects
    that the store knows (T1's)."""
    out = set()
    with svc.storage.read() as rv:
        tx = Overlay(rv)
        tk = svc.keys.tenant(tx, T1)
        assert tk is not None
        for ev in events:
            sk = svc.keys.subject(tx, tk, subject_of(ev))
            if sk is not None:
                out |= {store.state_key(sk.kid), store.dek_key(sk.kid, epoch_of(now))}
    return out


def _first_reads(svc: ScimService, events: list[Any]) -> set[bytes]:
    """The eid and subject record keys of ``events`` (T1's, whose keys exist)."""
    with svc.storage.read() as rv:
        tk = svc.keys.tenant(Overlay(rv), T1)
    assert tk is not None
    out = set()
    for ev in events:
        out.add(store.eid_key(tk.tn, ev["eid"]))
        out.add(store.subject_key(tk.tn, tk.subject_hash(subject_of(ev))))
    return out


def test_group_read_ahead_stages_what_the_reads_one_by_one_stage(
    tmp_path: Path, pg_url: str, stream_rand: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group mixing new subjects, a subject the store knows, an eid twice, a retry of an
    eid in the store, an eid reused with another event (refused), two events of one
    subject, and retries of a group in flight (its records pending, not in the store):
    the same answers and records with the read-ahead as without, and with it no eid or
    subject record of the group is read on its own."""
    with open_harness(tmp_path, database=pg_url) as h:
        stored = create_event("u-0", "r0", user_mods("zero@example.org"))
        r = h.post_event(stored)
        assert r.status_code == 200, r.text
        svc = h.service
        events = mixed_batch()
        clash = dict(events[1], mods=user_mods("other@example.org"))  # eid of events[1]
        flight = [create_event(f"f-{i}", f"rf{i}", user_mods(f"f{i}@example.org")) for i in (1, 2)]
        group = [*events[:6], stored, clash, flight[0], *events[6:], flight[1]]
        first = _first_reads(svc, group)
        later = _later_reads(svc, group, BASE_TS + 86_400_000)
        assert len(later) == 2  # the stored subject's
        tenant_key = store.tenant_key(svc.tenant_ref(T1))
        counted = _Counted(monkeypatch)
        results = []
        cached_tenant = svc.keys.cached_tenant
        for mode in ("one by one", "read ahead", "stale guess"):
            prefetch = mode != "one by one"
            if mode == "stale guess":  # the remembered tenant keys are not the record's
                tn = svc.tenant_ref(T1)
                stale = TenantKeys(tn, bytes(32), bytes(range(32)))
                monkeypatch.setattr(svc.keys, "cached_tenant", lambda t, s=stale: s)
            calls = itertools.count()
            svc.clock = lambda c=calls: BASE_TS + 86_400_000 + next(c)
            stream_rand()
            # a group in flight: staged, handed to the sequencer, not durable yet
            _, flying = stage_group(svc, [(T1, ev) for ev in flight])
            pending = dict(flying)
            counted.clear()
            jobs = [(T1, ev) for ev in group]
            results.append(stage_group(svc, jobs, prefetch=prefetch, pending=pending))
            if mode == "read ahead":
                assert len(counted.many) == 2
                in_flight = first & pending.keys()
                assert in_flight  # the retries' eid records: pending, never read from the store
                assert set(counted.many[0]) == (first - in_flight) | {tenant_key}
                assert set(counted.many[1]) == later
                assert not (first | later | {tenant_key}) & set(counted.one)
            elif mode == "stale guess":  # useless keys read ahead: the right ones one by one
                assert len(counted.many) == 1 and first & set(counted.one)
                assert later & set(counted.one)
            else:
                assert not counted.many
        monkeypatch.setattr(svc.keys, "cached_tenant", cached_tenant)
        (want, want_records), *others = results
        assert any(isinstance(x, str) and "Conflict" in x for x in want)
        assert sum(1 for x in want if not isinstance(x, str) and x[0].duplicate) >= 4
        for got, got_records in others:
            assert got == want
            assert got_records == want_records


def test_overlay_read_ahead_keeps_the_reads(tmp_path: Path, pg_url: str) -> None:
    """Overlay.prefetch: a key absent from the store is known absent, a present one gives
    its value; a key staged (before or after the read-ahead) or pending wins over it."""
    with open_harness(tmp_path, database=pg_url) as h:
        st = h.service.storage
        st.put_aux([(b"k1", b"one"), (b"k2", b"two")])
        with st.read() as rv:
            tx = Overlay(rv, {b"k2": b"pending"})
            tx.put(b"k3", b"staged")
            assert tx.prefetch([b"k1", b"k2", b"k3", b"k4", b"k1"]) == 2  # k1, k4
            tx.put(b"k1", b"later")
            assert [tx.get(k) for k in (b"k1", b"k2", b"k3", b"k4")] == [
                b"later",
                b"pending",
                b"staged",
                None,
            ]
            tx.rollback(0)
            assert tx.get(b"k1") == b"one" and tx.get(b"k3") is None


def test_overlay_reads_a_key_once_per_snapshot(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a key read from the snapshot is kept (a staging reads a subject's DEK
    for its event and again for its state): one round trip, the same answer, and a write
    staged afterwards still wins."""
    with open_harness(tmp_path, database=pg_url) as h:
        st = h.service.storage
        st.put_aux([(b"k1", b"one")])
        counted = _Counted(monkeypatch)
        with st.read() as rv:
            tx = Overlay(rv)
            assert [tx.get(b"k1"), tx.get(b"k1"), tx.get(b"k9"), tx.get(b"k9")] == [
                b"one",
                b"one",
                None,
                None,
            ]
            assert counted.one == [b"k1", b"k9"]
            tx.put(b"k1", b"staged")
            assert tx.get(b"k1") == b"staged"
            tx.rollback(0)
            assert tx.get(b"k1") == b"one" and counted.one == [b"k1", b"k9"]


def test_a_group_reads_its_first_records_in_one_query(
    tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the group writer (ScimService._commit_group): single events submitted
    together read their eid and subject records and their tenant's record in one
    ``aux_many`` per group, none one at a time (fails if the read-ahead is removed)."""
    with open_harness(tmp_path, database=pg_url) as h:
        svc = h.service
        first = create_event("u-0", "r0", user_mods("zero@example.org"))
        assert h.post_event(first).status_code == 200
        events = [*mixed_batch()[:10], first]  # an eid twice, a retry of an eid in the store
        reads = _first_reads(svc, events) | {store.tenant_key(svc.tenant_ref(T1))}
        reads |= _later_reads(svc, [first], BASE_TS)  # the stored subject's state and DEK
        counted = _Counted(monkeypatch)
        groups: list[int] = []
        commit_group = svc._commit_group

        def count_group(jobs: list[Any]) -> None:
            groups.append(len(jobs))
            commit_group(jobs)

        monkeypatch.setattr(svc, "_commit_group", count_group)
        with ThreadPoolExecutor(len(events)) as pool:
            with svc._write_lock:  # the writer waits: the submissions gather in a group
                futs = [pool.submit(h.post_event, ev) for ev in events]
                deadline = time.monotonic() + 30
                while sum(groups) + len(svc._group) < len(events):
                    assert time.monotonic() < deadline
                    time.sleep(0.01)
            answers = [f.result() for f in futs]
        assert [r.status_code for r in answers] == [200] * len(events), [
            r.text for r in answers if r.status_code != 200
        ]
        assert answers[-1].json()["duplicate"] is True
        assert sum(groups) == len(events) and len(groups) < len(events)
        # one query per group for the first reads, one more where a known subject is in it
        assert len(groups) <= len(counted.many) <= 2 * len(groups)
        assert reads <= {k for keys in counted.many for k in keys}
        assert not reads & set(counted.one)


def test_lmdb_reads_as_before(tmp_path: Path) -> None:
    """On LMDB (memory-mapped reads) the read-ahead does nothing."""
    with open_harness(tmp_path) as h:
        with h.service.storage.read() as rv:
            tx = Overlay(rv)
            assert tx.prefetch([b"k1"]) == 0
            assert tx.get(b"k1") is None
