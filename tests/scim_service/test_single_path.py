"""The single-event path's shortcuts (``single5`` round) give exactly what the code they
replace gave: the answer's bytes, the tenant reference, the random bytes of a staging."""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.formats.proof_bundle import TlogProof
from client.scim.leaf import tenant_ref
from tests.scim_service.conftest import BASE_TS, T1, T2, open_harness, user_event
from tests.scim_service.helpers import create_event, mixed_batch, stage_group, user_mods
from tlog.log import Published
from tlog.metrics import Metrics
from tlog.scim import keys as keys_mod
from tlog.scim import store
from tlog.scim.keys import RandomPool
from tlog.scim.routes import ScimRoutes, _json_encode, _receipt_answer, _tlog_proof
from tlog.scim.service import Submitted

_hashes = st.lists(st.binary(min_size=32, max_size=32), max_size=63)
_submitted = st.builds(
    Submitted,
    eid=st.text(max_size=40),
    leaf=st.binary(max_size=200),
    leaf_hash=st.binary(min_size=32, max_size=32),
    ts=st.integers(0, 2**63 - 1),
    duplicate=st.booleans(),
    index=st.integers(0, 2**62),
    nonce=st.none() | st.binary(min_size=32, max_size=32),
)


def _routes(proof: list[bytes], note: str, cached: bool) -> ScimRoutes:
    """ScimRoutes over a stand-in API that hands out ``proof`` and ``note``, from memory
    (``cached``) or only through the awaited reads."""

    async def inclusion_proof(index: int, size: int, leaf: bytes | None) -> list[bytes]:
        return list(proof)

    async def note_of(pub: Published) -> str:
        return note

    api: Any = SimpleNamespace(
        inclusion_proof=inclusion_proof,
        note=note_of,
        log=SimpleNamespace(
            cached_inclusion_proof=lambda i, n, lh: list(proof) if cached else None
        ),
        published=SimpleNamespace(cached_note=lambda pub: note if cached else None),
    )
    service: Any = SimpleNamespace(limits=None)
    return ScimRoutes(service, api)


@settings(max_examples=200, deadline=None)
@given(s=_submitted, proof=_hashes, note=st.text(max_size=300), extra=st.integers(0, 5),
       cached=st.booleans())  # fmt: skip
def test_single_answer_is_the_submitted_dicts_json(
    s: Submitted, proof: list[bytes], note: str, extra: int, cached: bool
) -> None:
    """add_event's answer (a struct encoded in C) is the JSON of the dict _submitted builds
    (what it answered before), for any receipt, from memory or through the reads."""
    pub = Published(s.index + 1 + extra, note)
    r = _routes(proof, note, cached)
    old = _json_encode(asyncio.run(r._submitted(s, pub)))
    assert asyncio.run(r._submitted_json(s, pub)) == old
    assert _receipt_answer(s, pub.size, note, proof) == old


@settings(max_examples=200, deadline=None)
@given(index=st.integers(0, 2**63 - 1), proof=_hashes, note=st.text(max_size=300))
def test_tlog_proof_is_the_bundle_format(index: int, proof: list[bytes], note: str) -> None:
    assert _tlog_proof(index, proof, note) == TlogProof(index, tuple(proof), note).format()


def test_tenant_ref_is_remembered_and_equal(tmp_path: Path) -> None:
    with open_harness(tmp_path) as h:
        ring = h.service.keys
        key = ring._tn_key
        for t in (T1, "other", "é✓"):
            assert ring.tenant_ref(t) == tenant_ref(key, t)
            assert ring.tenant_ref(t) == tenant_ref(key, t)  # from the cache
        assert ring._refs[T1] == tenant_ref(key, T1)
        for bad in ("", None, 5):
            with pytest.raises(ValueError):
                ring.tenant_ref(bad)  # type: ignore[arg-type]
        ring._refs.clear()
        for i in range(keys_mod.MAX_CACHED_REFS + 10):  # bounded
            ring.tenant_ref(f"t{i}")
        assert len(ring._refs) <= keys_mod.MAX_CACHED_REFS


def test_random_pool_first_read_is_small_then_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A staging's first read from the OS is FIRST_BLOCK bytes, later ones BLOCK (or the
    draw, if larger); every byte read is handed out at most once, in order."""
    reads: list[bytes] = []
    real = os.urandom

    def urandom(n: int) -> bytes:
        reads.append(real(n))
        return reads[-1]

    monkeypatch.setattr(keys_mod.os, "urandom", urandom)
    pool = RandomPool()
    sizes = [32, 12, 16, 32, 12, 32, 12] * 200 + [RandomPool.BLOCK + 5, 3, 600]
    parts = [pool(n) for n in sizes]
    assert [len(p) for p in parts] == sizes
    assert len(reads[0]) == RandomPool.FIRST_BLOCK
    assert all(len(b) == max(RandomPool.BLOCK, len(b)) for b in reads[1:])
    # Rebuild which read each part came from: consecutive slices, never overlapping.
    pos, block = 0, 0
    for p in parts:
        if pos + len(p) > len(reads[block]):
            block, pos = block + 1, 0
        assert reads[block][pos : pos + len(p)] == p
        pos += len(p)
    assert block == len(reads) - 1


def _os_reads_after_the_first_event(h: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Post a first event (the tenant's keys exist from then on), then count: the sizes of
    the reads of the OS's randomness by a :class:`RandomPool` from here on (``os.urandom``
    is the whole process's: a CI run counted another thread's 4,096-byte read)."""
    ok = h.post_event(user_event("u-0", op="create"))
    assert ok.status_code == 200, ok.text
    sizes: list[int] = []
    real = os.urandom
    pool_code = RandomPool.__call__.__code__

    def urandom(n: int) -> bytes:
        if sys._getframe(1).f_code is pool_code:
            sizes.append(n)
        return real(n)

    monkeypatch.setattr(keys_mod.os, "urandom", urandom)
    return sizes


def test_a_single_event_reads_one_small_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single new-subject event's staging reads the OS's randomness once, FIRST_BLOCK
    bytes (it used to read BLOCK, 8 KiB, for the few hundred bytes it draws)."""
    with open_harness(tmp_path) as h:
        sizes = _os_reads_after_the_first_event(h, monkeypatch)
        r = h.post_event(user_event("u-1", op="create", req="req-0002"))
        assert r.status_code == 200, r.text
        big = [n for n in sizes if n >= RandomPool.FIRST_BLOCK]
        assert big == [RandomPool.FIRST_BLOCK]


@pytest.mark.parametrize("ticks_per_ms", [1, 3, 1000])
def test_a_group_of_single_events_stages_what_each_alone_stages(
    tmp_path: Path, database: str | None, stream_rand: Any, ticks_per_ms: int
) -> None:
    """One-event stagings sharing the group's memo (ScimService._pipeline) stage exactly
    the records and leaves they stage without it: same bytes, same answers, same refusals,
    with the log time moving within the group, a refused staging rolled back in the
    middle, and a tenant whose keys the group itself creates."""
    with open_harness(tmp_path, database=database) as h:
        r = h.post_event(create_event("u-0", "r0", user_mods("zero@example.org")))
        assert r.status_code == 200, r.text
        svc = h.service
        events = mixed_batch()
        clash = dict(events[1], mods=user_mods("other@example.org"))  # eid of events[1]
        jobs = [(T1, ev) for ev in events[:5]] + [(T1, clash)] + [(T1, ev) for ev in events[5:]]
        t2 = [user_event(f"v-{i}", tenant=T2, op="create", req=f"q{i}") for i in range(3)]
        jobs[8:8] = [(T2, ev) for ev in t2]  # a tenant the group creates, between T1's events
        # the first staging for T2 creates its keys and then fails: rolled back with it
        doomed = t2[0]["eid"]
        stage_new = svc._stage_new

        def failing(tx: Any, tk: Any, ev: Any, *a: Any) -> Any:
            if ev["eid"] == doomed:
                raise RuntimeError("injected")
            return stage_new(tx, tk, ev, *a)

        svc._stage_new = failing  # type: ignore[method-assign]
        reads: list[str] = []
        tenant_or_create = svc.keys.tenant_or_create

        def counted(tx: Any, tenant: str) -> Any:
            reads.append(tenant)
            return tenant_or_create(tx, tenant)

        svc.keys.tenant_or_create = counted  # type: ignore[method-assign]
        results = []
        for memo in (False, True):
            reads.clear()
            calls = itertools.count()
            svc.clock = lambda c=calls: BASE_TS + 86_400_000 + next(c) // ticks_per_ms
            stream_rand()
            results.append(stage_group(svc, jobs, memo=memo))
        # with the memo: T1's keys read once, T2's (staged by the group) every time
        assert reads.count(T1) == 1 and reads.count(T2) == 3
        (want, want_records), (got, got_records) = results
        assert svc._group_memo is None and svc._group_tenants is None
        assert any(isinstance(x, str) and "Conflict" in x for x in want)  # one refused
        assert "RuntimeError: injected" in want
        assert got == want
        assert [k for k, _ in got_records] == [k for k, _ in want_records]
        # every record the same but the new tenant's, whose sealing IV is the OS's own
        differ = {k for (k, a), (_, b) in zip(got_records, want_records, strict=True) if a != b}
        assert differ == {store.tenant_key(svc.tenant_ref(T2))}


def test_events_counter_counts_singles_and_batches_alike() -> None:
    """Metrics.observe_events (its single-event shortcut and remembered labelled
    counters) counts what a Counter over (op, outcome) counts."""
    m = Metrics()
    evs = [
        {"op": "create", "outcome": "success"},
        {"op": "patch", "outcome": "failure"},
        {"op": "create", "outcome": "success"},
        {},  # counted under "?"
    ]
    want: collections.Counter[tuple[str, str]] = collections.Counter()
    for batch in ([evs[0]], evs, [evs[1]], [evs[3]], evs[:2]):
        m.observe_events(batch)
        want.update((str(e.get("op", "?")), str(e.get("outcome", "?"))) for e in batch)
    for (op, outcome), n in want.items():
        got = m.registry.get_sample_value(
            "tlog_scim_events_total", {"action": op, "outcome": outcome}
        )
        assert got == n, (op, outcome)


def test_a_group_counts_its_logged_events_once_before_answering(tmp_path: Path) -> None:
    """on_logged (the events counter) gets each logged event exactly once, a group's at
    once, before any of them is answered; a refused event is not counted (LMDB, where
    records and leaves commit together; PostgreSQL counts per submission as before)."""
    with open_harness(tmp_path) as h:
        svc = h.service
        seen: list[str] = []
        calls: list[int] = []
        hook = svc.on_logged
        assert hook is not None

        def logged(events: Any) -> None:
            calls.append(len(events))
            seen.extend(ev["eid"] for ev in events)
            hook(events)

        svc.on_logged = logged
        singles = [user_event(f"c-{i}", op="create", req=f"r-{i}") for i in range(16)]
        batch = [user_event(f"b-{i}", op="create", req=f"rb-{i}") for i in range(3)]
        clash = dict(singles[0], req=dict(singles[0]["req"], len=1))  # same eid, other event
        answered_before: list[bool] = []

        async def one(events: list[Any]) -> None:
            try:
                await svc.submit(T1, events)
            except Exception:
                return
            answered_before.append(all(ev["eid"] in seen for ev in events))

        async def run() -> None:
            await one([singles[0]])
            await asyncio.gather(*(one([ev]) for ev in singles[1:]), one(batch), one([clash]))

        h.client.portal.call(run)  # type: ignore[union-attr]
        want = [ev["eid"] for ev in singles + batch]
        assert sorted(seen) == sorted(want)  # each once; the clash refused, not counted
        assert answered_before == [True] * 17
        assert len(calls) < 17  # grouped: fewer calls than submissions
        got = svc_metric(h, "create", "success")
        assert got == len(want)


def svc_metric(h: Any, op: str, outcome: str) -> float | None:
    r = h.client.get("/metrics")
    for line in r.text.splitlines():
        if line.startswith("tlog_scim_events_total{") and f'action="{op}"' in line:
            if f'outcome="{outcome}"' in line:
                return float(line.rsplit(" ", 1)[1])
    return None


def test_pipeline_clone_is_a_shallow_copy_with_nothing_pending(tmp_path: Path) -> None:
    """_Pipeline.clone gives what copy.copy gave (then with empty record lists): the same
    attributes, the very same objects (the templates shared with the group's pipeline)."""
    import copy

    from tlog.scim.service import _Pipeline
    from tlog.scim.store import Overlay

    with open_harness(tmp_path) as h:
        svc = h.service
        with svc.storage.read() as rv:
            tk = svc.keys.tenant_or_create(Overlay(rv), T1)
        base = _Pipeline(tk, BASE_TS)
        base.templates[("shape",)] = [b"x"]
        base.keys, base.values = [b"k"], [b"v"]
        want = copy.copy(base)
        want.keys, want.values = [], []
        got = base.clone()
        assert type(got) is _Pipeline and got is not base
        assert vars(got).keys() == vars(want).keys()
        for name, value in vars(want).items():
            if name in ("keys", "values"):
                assert getattr(got, name) == [] and getattr(got, name) is not getattr(base, name)
            else:
                assert getattr(got, name) is value, name
        assert base.keys == [b"k"] and base.values == [b"v"]  # the original keeps its own


def test_pipeline_at_another_time_is_the_pipeline_made_then(tmp_path: Path) -> None:
    """_Pipeline.at(now) (the cut's ``ts`` replaced, the epoch worked out again only on
    another UTC day) has every attribute a pipeline made at ``now`` has, the group's
    templates kept, nothing pending; out of make_leaf's range it refuses as make_leaf does."""
    from client.scim.cbor import EventFormatError
    from tlog.scim.service import _Pipeline
    from tlog.scim.store import Overlay

    with open_harness(tmp_path) as h:
        with h.service.storage.read() as rv:
            tk = h.service.keys.tenant_or_create(Overlay(rv), T1)
    day, month_end = 86_400_000, 1_706_745_600_000  # 2024-02-01T00:00Z
    times = [
        BASE_TS, BASE_TS + 1, BASE_TS + 999, BASE_TS + day - 1, BASE_TS + day, month_end - 1,
        month_end, month_end + 1, 0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32,
        253_402_300_799_999,  # the last ms datetime (epoch_of) takes: 9999-12-31
    ]  # fmt: skip
    for before in times:
        base = _Pipeline(tk, before)
        base.templates[("shape",)] = [b"x"]
        base.keys, base.values = [b"k"], [b"v"]
        for now in times:
            got = base.at(tk, now)
            want = vars(_Pipeline(tk, now))
            assert vars(got).keys() == want.keys()
            for name, value in want.items():
                if name == "templates":
                    assert got.templates is base.templates
                else:
                    assert getattr(got, name) == value, (before, now, name)
            assert base.now == before and base.keys == [b"k"]  # the original unchanged
    for bad in (-1, 2**53):
        with pytest.raises((EventFormatError, ValueError)) as want_exc:
            _Pipeline(tk, bad)
        with pytest.raises(want_exc.type, match=str(want_exc.value)):
            _Pipeline(tk, BASE_TS).at(tk, bad)


def test_a_group_of_single_events_shares_its_reads_of_the_os_randomness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one-event stagings of a group draw from one random pool: the OS's randomness is
    read a few times for the group (FIRST_BLOCK, then BLOCKs), not once per event."""
    with open_harness(tmp_path) as h:
        sizes = _os_reads_after_the_first_event(h, monkeypatch)
        jobs = [(T1, user_event(f"u-{i}", op="create", req=f"req-{i:04}")) for i in range(1, 21)]
        out, _ = stage_group(h.service, jobs)
        assert all(isinstance(got, list) and not got[0].duplicate for got in out), out
        assert sizes[0] == RandomPool.FIRST_BLOCK
        assert len(sizes) <= 3 and sizes[1:] == [RandomPool.BLOCK] * (len(sizes) - 1), sizes
