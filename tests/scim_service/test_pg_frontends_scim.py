"""Several frontends on one PostgreSQL database, SCIM writes on each: the SCIM writer fence.

Each frontend here is a whole in-process app (``open_harness``) on the same database, as
two ``tlog serve --database`` processes are. The races are made deterministic: frontend A
stages a submission (it has read the store) and is held right before it hands the group
to its sequencer; frontend B then does its write and commits; then A goes on. Without the
fence, A would commit records staged on what B has just changed (a new tenant's keys
overwritten, one eid as two leaves, an erased subject's keys written back); with it, A's
commit is refused whole (nothing written), A claims the fence again and stages the
submission again from a fresh read, and both answers are true."""

from __future__ import annotations

import base64
import hashlib
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from client.formats.merkle import leaf_hash
from tlog.backend import AuxFenced, BatchWrite
from tlog.pg import PgStorage
from tlog.scim import keys as keys_module
from tlog.scim import store
from tlog.scim.keys import KeyRing, MasterKey, read_key_file

from .conftest import T1, T2, Harness, open_harness, user_event
from .helpers import KEY, caught_up, check_receipt, frontends, readable


def held_at_hand_off(
    a: Harness, first: Callable[[], httpx.Response], between: Callable[[], Any]
) -> tuple[httpx.Response, Any, int]:
    """Run ``first`` (a request to A) in a thread; once A's group writer has staged it, and
    before it hands the group to be committed, run ``between`` (another frontend's write)
    to its end; then let A go on. Returns A's answer, ``between``'s result and how many
    times A handed a group off (2: refused once, staged again).

    A claims the writer fence first, with a write that stages nothing: the first group
    staged under a claim holds A's write turn until it is committed (no other frontend can
    claim the fence in between), so only a later group of A's can lose the fence."""
    svc = a.service
    svc.write(lambda tx: None)
    real = svc.seq.enqueue
    staged, go = threading.Event(), threading.Event()
    calls: list[int] = []

    def enqueue(*args: Any, **kw: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            staged.set()
            assert go.wait(60), "the test did not let the writer go on"
        real(*args, **kw)

    answer: list[httpx.Response] = []
    svc.seq.enqueue = enqueue  # type: ignore[method-assign]
    try:
        t = threading.Thread(target=lambda: answer.append(first()), daemon=True)
        t.start()
        assert staged.wait(60), "A never handed its group off"
        try:
            got = between()
        finally:
            go.set()
        t.join(60)
        assert not t.is_alive(), "A's request did not end"
    finally:
        del svc.seq.enqueue
    return answer[0], got, len(calls)


def tree_size(h: Harness) -> int:
    with h.log.storage.read() as rv:
        return rv.tree_size()


@pytest.mark.slow
def test_a_new_tenants_first_events_on_two_frontends(tmp_path: Path, pg_url: str) -> None:
    """A and B both take the first event of a tenant the store has no keys for. Each
    creates the tenant's keys in its staging; B commits first. A's commit is refused (its
    keys would overwrite B's and leave B's event unreadable), A stages again on B's keys:
    both events are readable through both frontends, one tenant record, two leaves."""
    with frontends(tmp_path, pg_url) as (a, b):
        ev_a = user_event("u-from-a", req="req-a", xid="a@example.org")
        ev_b = user_event("u-from-b", req="req-b", xid="b@example.org")
        size = tree_size(a)
        ra, rb, handed = held_at_hand_off(a, lambda: a.post_event(ev_a), lambda: b.post_event(ev_b))
        assert rb.status_code == 200, rb.text
        assert ra.status_code == 200, ra.text
        assert handed == 2, "A's first staging was not refused and staged again"
        metrics = a.client.get("/metrics", headers=a.h("admin")).text
        assert 'tlog_scim_writer_fence_claims_total{why="taken"} 1.0' in metrics
        assert 'tlog_scim_writer_fence_claims_total{why="start"} 1.0' in metrics
        assert ra.json()["duplicate"] is False and rb.json()["duplicate"] is False
        check_receipt(a, ra.json())
        check_receipt(b, rb.json())
        assert tree_size(a) == size + 2
        with a.log.storage.read() as rv:
            assert len(list(rv.aux_range(store.tenant_key(b"")))) == 1
        caught_up(b, size + 2)
        for h in (a, b):
            assert readable(h, ev_a) and readable(h, ev_b)


@pytest.mark.slow
def test_a_staging_that_lost_the_fence_commits_at_its_next_attempt(
    tmp_path: Path, pg_url: str
) -> None:
    """A's submission loses the fence to B's write and is staged again under a new claim.
    That claim holds A's write turn until the new staging is committed, so B cannot take
    the fence back in between: B's next write waits for the turn instead, and A's
    submission is handed off exactly twice. Before, B's write committed at once, A's second
    staging lost the fence again, and two frontends under load kept undoing each other's
    stagings until a submission's retries ran out (503)."""
    with frontends(tmp_path, pg_url) as (a, b):
        assert b.post_event(user_event("u-b0", req="req-b0")).status_code == 200
        svc = a.service
        svc.write(lambda tx: None)  # A claims; its next staging carries no turn
        real = svc.seq.enqueue
        calls: list[int] = []
        second, go = threading.Event(), threading.Event()

        def enqueue(*args: Any, **kw: Any) -> None:
            calls.append(1)
            if len(calls) == 1:
                # A's first staging, under its first claim: B takes the fence meanwhile.
                assert b.post_event(user_event("u-b1", req="req-b1")).status_code == 200
            elif len(calls) == 2:
                second.set()
                assert go.wait(60), "the test did not let the writer go on"
            real(*args, **kw)

        answers: dict[str, httpx.Response] = {}
        svc.seq.enqueue = enqueue  # type: ignore[method-assign]
        try:
            ta = threading.Thread(
                target=lambda: answers.update(a=a.post_event(user_event("u-a", req="req-a")))
            )
            ta.start()
            assert second.wait(60), "A's submission was not staged again"
            # A is held between its second claim and that staging's commit: B's write waits.
            tb = threading.Thread(
                target=lambda: answers.update(b=b.post_event(user_event("u-b2", req="req-b2")))
            )
            tb.start()
            tb.join(1.5)
            waited = tb.is_alive()
            go.set()
            ta.join(60)
            tb.join(60)
            assert not ta.is_alive() and not tb.is_alive()
        finally:
            go.set()
            del svc.seq.enqueue
        assert answers["a"].status_code == 200, answers["a"].text
        assert answers["b"].status_code == 200, answers["b"].text
        assert len(calls) == 2, f"A's submission was handed off {len(calls)} times"
        assert waited, "B committed while A held its turn between claim and commit"
        check_receipt(a, answers["a"].json())
        check_receipt(b, answers["b"].json())


def test_a_direct_write_does_not_keep_the_turn_its_claim_took(tmp_path: Path, pg_url: str) -> None:
    """An erasure or an expiry stages for as long as its tenant's keys take to rewrap: while
    it stages, another frontend can still take the write turn (its batches go on)."""
    with frontends(tmp_path, pg_url) as (a, b):
        other = b.log.storage
        assert isinstance(other, PgStorage)
        other.turn_timeout = 0.3
        taken: list[bool] = []

        def stage(tx: Any) -> None:
            with other.write_turn():
                taken.append(True)

        a.service.write(stage)  # A's first write: a claim
        assert taken == [True]


@pytest.mark.slow
def test_one_eid_on_two_frontends_is_one_leaf(tmp_path: Path, pg_url: str) -> None:
    """The same event (one eid) sent to A and to B at the same moment (an adapter's retry
    through another frontend): one leaf, and both answers name it."""
    with frontends(tmp_path, pg_url) as (a, b):
        assert a.post_event(user_event("u-first", req="req-0")).status_code == 200
        ev = user_event("u-twice", req="req-twice")
        size = tree_size(a)
        ra, rb, handed = held_at_hand_off(a, lambda: a.post_event(ev), lambda: b.post_event(ev))
        assert ra.status_code == 200 and rb.status_code == 200, (ra.text, rb.text)
        assert handed == 2
        assert rb.json()["duplicate"] is False
        assert ra.json()["duplicate"] is True
        assert ra.json()["leaf_hash"] == rb.json()["leaf_hash"]
        assert ra.json()["index"] == rb.json()["index"] == size
        assert tree_size(a) == size + 1
        assert readable(a, ev) and readable(b, ev)


def _post_users(h: Harness, *names: str) -> list[dict[str, Any]]:
    """A User event per name (rid ``u-<name>``, request ``req-<name>``, external id
    ``<name>@example.org``), each posted to ``h`` and answered 200."""
    events = [user_event(f"u-{n}", req=f"req-{n}", xid=f"{n}@example.org") for n in names]
    for ev in events:
        assert h.post_event(ev).status_code == 200
    return events


def _erase(h: Harness, rid: str) -> httpx.Response:
    r = h.request_erasure(rid)
    assert r.status_code == 201, r.text
    return h.client.post(f"/v1/scim/erasures/{r.json()['id']}/approve", headers=h.h("po_b"))


@pytest.mark.slow
def test_an_erasure_on_one_frontend_while_the_other_stages(tmp_path: Path, pg_url: str) -> None:
    """A stages a new event of Alice (on her existing keys); meanwhile B erases Alice (her
    keys are shredded and the master key rotated, into the key file both frontends read).
    A's commit is refused, A adopts the new master key and stages again: the new event
    is on new keys and readable, the erased events stay erased, and no DEK of the erased
    subject is back in the store."""
    with frontends(tmp_path, pg_url) as (a, b):
        old = user_event("u-alice", req="req-old", xid="alice@example.org")
        assert a.post_event(old).status_code == 200
        new = user_event(
            "u-alice", req="req-new", xid="alice@example.org", active=("false", "true")
        )
        ra, erased, handed = held_at_hand_off(
            a, lambda: a.post_event(new), lambda: _erase(b, "u-alice")
        )
        assert erased.status_code == 200 and erased.json()["state"] == "done", erased.text
        assert ra.status_code == 200, ra.text
        assert handed == 2
        caught_up(b, ra.json()["index"] + 1)
        caught_up(a, erased.json()["receipt"]["index"] + 1)
        for h in (a, b):
            found = h.auditor().search(rid="u-alice").results
            assert [r.event["eid"] for r in found if r.event is not None] == [new["eid"]]
        # A holds the rotated master key now, and it opens the store.
        assert a.service.keys.master.raw() == b.service.keys.master.raw()


@pytest.mark.slow
def test_a_stale_copy_of_the_master_key_is_refused_loudly(tmp_path: Path, pg_url: str) -> None:
    """B has a copy of the key file, not the shared one: after B's erasure rotates the
    master key, A cannot open the store's keys. A refuses (503 naming the key file) and
    writes nothing; once its key file holds the store's key, A serves again."""
    with frontends(tmp_path, pg_url, shared_key=False) as (a, b):
        assert a.post_event(user_event("u-alice", req="req-1")).status_code == 200
        assert (
            b.post_event(user_event("u-bob", req="req-2", xid="bob@example.org")).status_code == 200
        )
        assert _erase(b, "u-alice").json()["state"] == "done"
        size = tree_size(a)
        ev = user_event("u-carol", req="req-3", xid="carol@example.org")
        r = a.post_event(ev)
        assert r.status_code == 503, r.text
        assert "master key" in r.text and "no longer opens the store" in r.text
        assert tree_size(a) == size
        with a.log.storage.read() as rv:
            assert rv.aux(store.eid_key(a.service.tenant_ref(T1), ev["eid"])) is None
        shutil.copy2(b.data / KEY, a.data / KEY)  # the operator fixes the deployment
        r = a.post_event(ev)
        assert r.status_code == 200, r.text
        caught_up(b, r.json()["index"] + 1)
        assert readable(a, ev) and readable(b, ev)


def test_records_under_a_taken_fence_are_refused_whole(pg_url: str, tmp_path: Path) -> None:
    """The storage contract: once another process claims the fence, a record write (alone or
    with a batch's leaves) under the old one is refused and writes nothing, and the batch's
    leaves are not stored either; a write without a fence (a one-writer tool) is not
    checked; the new fence writes."""
    with open_harness(tmp_path / "a", database=pg_url) as h:
        st = h.log.storage
        assert isinstance(st, PgStorage)
        other = PgStorage(pg_url, replication="none")
        try:
            old = st.claim_aux_writer()
            new = other.claim_aux_writer()
            assert old is not None and new is not None and old != new
            with pytest.raises(AuxFenced):
                st.put_aux([(b"\xfftest-a", b"1")], fence=old)
            with st.read() as rv:
                assert rv.aux(b"\xfftest-a") is None
            with st.read() as rv:
                size, base = rv.tree_size(), rv.latest_checkpoint()
            assert base is not None
            leaf = b"leaf-under-old"
            batch = BatchWrite(
                size,
                [leaf],
                [hashlib.sha256(b"\x00" + leaf).digest()],
                [],
                size + 1,
                b"a checkpoint that must not be stored",
                base[1],
                [(b"\xfftest-b", b"2")],
                old,
            )
            # The compare-and-swap would pass: the fence alone refuses the batch, whole.
            with pytest.raises(AuxFenced):
                st.commit_batch(batch)
            with st.read() as rv:
                assert rv.tree_size() == size and rv.aux(b"\xfftest-b") is None
                assert rv.checkpoint(size + 1) is None and rv.entry(size) is None
            other.put_aux([(b"\xfftest-c", b"3")], fence=new)
            st.put_aux([(b"\xfftest-d", b"4")])  # unfenced
            with st.read() as rv:
                assert [rv.aux(k) for k in (b"\xfftest-c", b"\xfftest-d")] == [b"3", b"4"]
        finally:
            other.close()


def test_a_claim_waits_for_a_record_write_in_progress(pg_url: str, tmp_path: Path) -> None:
    """A record write holds the fence row (FOR SHARE) until it commits, so a claim by
    another process waits for it: a read opened after the claim sees those records."""
    with open_harness(tmp_path / "a", database=pg_url) as h:
        st = h.log.storage
        assert isinstance(st, PgStorage)
        fence = st.claim_aux_writer()
        assert fence is not None
        other = PgStorage(pg_url, replication="none")
        claimed: list[bytes | None] = []
        try:
            with psycopg.connect(pg_url) as writer:  # a record write, held open
                writer.execute(
                    "SELECT 1 FROM tlog_aux_writer WHERE id = 1 AND fence = %s FOR SHARE", (fence,)
                )
                writer.execute(
                    "INSERT INTO tlog_aux (key, value) VALUES (%s, %s)", (b"\xfftest-held", b"x")
                )
                t = threading.Thread(target=lambda: claimed.append(other.claim_aux_writer()))
                t.start()
                waiting = False
                with psycopg.connect(pg_url, autocommit=True) as watch:
                    for _ in range(600):
                        row = watch.execute(
                            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                            "'Lock' AND query LIKE 'UPDATE tlog_aux_writer%%'"
                        ).fetchone()
                        if row is not None and row[0] > 0:
                            waiting = True
                            break
                        threading.Event().wait(0.05)
                assert waiting, "the claim did not wait for the record write"
                assert not claimed
                writer.commit()
            t.join(30)
            assert claimed and claimed[0] not in (None, fence)
            with other.read() as rv:
                assert rv.aux(b"\xfftest-held") == b"x"
        finally:
            other.close()


def test_lmdb_needs_no_fence(tmp_path: Path) -> None:
    """One process writes an LMDB store (its lock file): no fence, nothing checked."""
    with open_harness(tmp_path) as h:
        assert h.log.storage.claim_aux_writer() is None
        assert h.post_event(user_event()).status_code == 200


@pytest.mark.slow
def test_both_frontends_under_load_lose_and_mix_nothing(tmp_path: Path, pg_url: str) -> None:
    """Submissions spread over both frontends at once (new subjects, updates of shared ones,
    and every eid sent twice, once to each): each acknowledged event is one leaf, at the
    index its answer names, and readable through both frontends; a refusal is at worst a
    503 (other frontends kept taking the fence), never a wrong answer."""
    with frontends(tmp_path, pg_url) as (a, b):
        events = [
            user_event(f"u-{i % 7}", req=f"req-load-{i}", xid=f"user{i % 7}@example.org")
            for i in range(48)
        ]
        answers: dict[str, list[httpx.Response]] = {ev["eid"]: [] for ev in events}
        lock = threading.Lock()

        def post(h: Harness, evs: list[dict[str, Any]]) -> None:
            for ev in evs:
                r = h.post_event(ev)
                with lock:
                    answers[ev["eid"]].append(r)

        size = tree_size(a)
        threads = [
            threading.Thread(target=post, args=(h, events[k::3])) for h in (a, b) for k in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads)
        statuses = [r.status_code for rs in answers.values() for r in rs]
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= len(statuses) // 2, statuses
        acked: dict[str, tuple[int, str]] = {}
        for eid, rs in answers.items():
            for r in rs:
                if r.status_code == 200:
                    got = (r.json()["index"], r.json()["leaf_hash"])
                    assert acked.setdefault(eid, got) == got, "one eid, two leaves"
        end = tree_size(a)
        assert end - size == len(acked)  # one leaf per acknowledged eid, nothing else
        caught_up(b, end)
        with a.log.storage.read() as rv:
            stored = rv.entries(size, end)
        by_index = {i: h for i, h in acked.values()}
        assert sorted(by_index) == list(range(size, end))
        for i, leaf in enumerate(stored, start=size):
            assert base64.b64encode(leaf_hash(leaf)).decode() == by_index[i]
        for h in (a, b):
            for rid in {ev["rid"] for ev in events}:
                found = {r.event["eid"] for r in h.auditor().search(rid=rid).results if r.event}
                want = {ev["eid"] for ev in events if ev["rid"] == rid and ev["eid"] in acked}
                assert found == want, rid


@pytest.mark.slow
def test_erasures_on_two_frontends_at_once_keep_the_master_key(tmp_path: Path, pg_url: str) -> None:
    """A and B each erase a subject at the same moment; both rotate the master key in the
    one key file they share. A has staged its erasure (under the master key it holds) and
    is held right before it writes its next key into the file; meanwhile B's erasure is
    done: the store and the file hold B's new key. A must not write the key file over with
    a rotation of the key B has just replaced (nor put its old key back when its commit is
    refused): the file must still open the store, else every SCIM key is lost once the
    frontends restart. A stages again on B's key and its erasure is done too."""
    with frontends(tmp_path, pg_url) as (a, b):
        alice, bob, carol = _post_users(a, "alice", "bob", "carol")
        keys = a.service.keys
        real = keys.commit_rotation
        staged, go = threading.Event(), threading.Event()
        calls: list[int] = []

        def commit_rotation(new: Any, commit: Callable[[], None]) -> None:
            calls.append(1)
            if len(calls) == 1:
                staged.set()
                assert go.wait(60), "the test did not let A go on"
            real(new, commit)

        answer: list[httpx.Response] = []
        keys.commit_rotation = commit_rotation  # type: ignore[method-assign]
        try:
            t = threading.Thread(target=lambda: answer.append(_erase(a, "u-alice")), daemon=True)
            t.start()
            assert staged.wait(60), "A never staged its erasure"
            try:
                erased_b = _erase(b, "u-bob")
            finally:
                go.set()
            t.join(60)
            assert not t.is_alive(), "A's erasure did not end"
        finally:
            del keys.commit_rotation
        assert erased_b.status_code == 200 and erased_b.json()["state"] == "done", erased_b.text
        erased_a = answer[0]
        # The key file opens the store (what a restart of either frontend reads).
        path = a.data / KEY
        cur, nxt = read_key_file(path)
        with a.log.storage.read() as rv:
            check = rv.aux(store.check_key())
        assert check is not None
        assert KeyRing._opens(MasterKey(cur, path), check), "the key file lost the store's key"
        assert nxt is None
        assert erased_a.status_code == 200 and erased_a.json()["state"] == "done", erased_a.text
        assert a.service.keys.master.raw() == cur
        size = erased_a.json()["receipt"]["index"] + 1
        caught_up(a, size)
        caught_up(b, size)
        for h in (a, b):
            assert readable(h, carol)
            assert not readable(h, alice) and not readable(h, bob)
        assert b.service.keys.master.raw() == cur  # B followed A's rotation on its read


@pytest.mark.slow
def test_an_erasure_after_another_frontends_erasure(tmp_path: Path, pg_url: str) -> None:
    """B erases Alice (the master key is rotated, in the key file both read); then Bob's
    erasure is asked for and approved on A, with no other SCIM traffic on A in between. A's
    direct writes (erasure request, approval) must follow B's rotation as its submissions
    do, not fail on tenant keys its old master key cannot open."""
    with frontends(tmp_path, pg_url) as (a, b):
        _post_users(a, "alice", "bob")
        assert _erase(b, "u-alice").json()["state"] == "done"
        erased = _erase(a, "u-bob")
        assert erased.status_code == 200 and erased.json()["state"] == "done", erased.text
        cur, _ = read_key_file(a.data / KEY)
        assert a.service.keys.master.raw() == cur


def _queued(svc: Any, n: int) -> None:
    """Wait until ``n`` submissions wait for the group writer of ``svc``."""
    for _ in range(1200):
        with svc._group_lock:
            if len(svc._group) >= n:
                return
        time.sleep(0.01)
    raise AssertionError(f"{n} submissions never queued")


@pytest.mark.slow
def test_a_group_staged_on_a_refused_group_in_one_batch_is_refused(
    tmp_path: Path, pg_url: str
) -> None:
    """B's erasure rotates the master key while A still holds its old fence. A's next group
    has an event of T1 (its keys no longer open under A's old master: A follows the rotation,
    that event is staged again under a new claim) and the first event of a new tenant T2,
    handed under the old fence. A's following group, under the new fence, stages T2's next
    event on the T2 keys of the first group (not durable yet). Both groups reach A's
    sequencer in one batch (its writer was busy): the first is refused by its old fence,
    so the second, staged on top of it, must be refused too, not committed with a T2 event
    whose tenant keys were never written (unreadable for ever)."""
    with frontends(tmp_path, pg_url) as (a, b):
        _zed, alice = _post_users(a, "zed", "alice")
        svc = a.service
        t1_next = user_event(
            "u-alice", req="req-alice-2", xid="alice@example.org", active=("false", "true")
        )
        t2_first = user_event("u-g1", tenant=T2, req="req-g1", xid="g1@example.org")
        t2_next = user_event("u-g2", tenant=T2, req="req-g2", xid="g2@example.org")
        answers: dict[str, httpx.Response] = {}

        def post(ev: dict[str, Any], name: str) -> threading.Thread:
            t = threading.Thread(
                target=lambda: answers.__setitem__(ev["eid"], a.post_event(ev, name)), daemon=True
            )
            t.start()
            return t

        # A's group writer is parked after its first group; meanwhile two submissions
        # queue up (its second group) and B's erasure rotates the master key. After the
        # second group is handed off, the writer is parked again until T2's next event has
        # queued up behind the T1 event staged again: they are the third group (the fourth
        # is T2's first event staged again).
        real_group = svc._commit_group
        parked, go = threading.Event(), threading.Event()
        parked2, go2 = threading.Event(), threading.Event()
        groups: list[int] = []

        def commit_group(jobs: Any) -> None:
            groups.append(len(jobs))
            if len(groups) == 4:
                # The first event of T2, staged again: its claim of the fence waits until
                # both groups of the batch are answered (else the claim could refuse the
                # second group's commit by chance, hiding what this test is about).
                for _ in range(6000):
                    with svc._chain:
                        if svc._inflight == 0:
                            break
                    time.sleep(0.01)
            real_group(jobs)
            if len(groups) == 1:
                parked.set()
                assert go.wait(60), "the test did not let the group writer go on"
            elif len(groups) == 2:
                parked2.set()
                assert go2.wait(60), "the test did not let the group writer go on"

        # A's sequencer writer is busy: the group handed under the old fence is still
        # queued when the next one is handed, and both are taken as one batch.
        real_enqueue = svc.seq.enqueue
        held: list[Any] = []  # the group handed under the old fence, until the next one
        handed = threading.Event()

        def enqueue(*args: Any, **kw: Any) -> None:
            if not args[2]:  # no records: not a group of this test
                real_enqueue(*args, **kw)
                return
            if not held:
                held.append((args, kw))
                handed.set()
                return
            with svc.seq._cond:
                if held[0] is not None:
                    real_enqueue(*held[0][0], **held[0][1])
                    held[0] = None
                real_enqueue(*args, **kw)

        svc._commit_group = commit_group  # type: ignore[method-assign]
        svc.seq.enqueue = enqueue  # type: ignore[method-assign]
        threads = []
        try:
            threads.append(post(alice, "sub1"))  # a retry: the group that parks the writer
            assert parked.wait(60)
            threads.append(post(t1_next, "sub1"))
            _queued(svc, 1)
            threads.append(post(t2_first, "sub2"))
            _queued(svc, 2)
            assert _erase(b, "u-zed").json()["state"] == "done"
            go.set()
            assert parked2.wait(60) and handed.is_set(), "A never handed T2's first event"
            threads.append(post(t2_next, "sub2"))
            _queued(svc, 2)
            go2.set()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
        finally:
            go.set()
            go2.set()
            del svc._commit_group
            del svc.seq.enqueue
        for ev in (t1_next, t2_first, t2_next):
            assert answers[ev["eid"]].status_code == 200, answers[ev["eid"]].text
        size = max(answers[ev["eid"]].json()["index"] for ev in (t1_next, t2_first, t2_next))
        caught_up(a, size + 1)
        assert readable(a, t1_next)
        for ev in (t2_first, t2_next):
            found = a.auditor("aud2").search(rid=ev["rid"]).results
            eids = [r.event["eid"] for r in found if r.event is not None]
            assert eids == [ev["eid"]], f"{ev['rid']} is not readable"


@pytest.mark.slow
def test_a_frontend_starting_during_a_rotation_keeps_the_new_key(
    tmp_path: Path, pg_url: str
) -> None:
    """A rotates the master key (an erasure): its next key is in the shared key file's
    second slot while it commits. C starts meanwhile and finds the two keys (what a rotation
    cut short by a crash leaves): it must not settle the file on the key the store held
    when C looked, after A's rotation has committed and A has settled the file on the new
    key; the file must still open the store."""
    with frontends(tmp_path, pg_url) as (a, _b):
        assert a.post_event(user_event("u-alice", req="req-alice")).status_code == 200
        keys = a.service.keys
        real_commit_rotation = keys.commit_rotation
        in_commit, go_a = threading.Event(), threading.Event()

        def commit_rotation(new: Any, commit: Callable[[], None]) -> None:
            def held() -> None:  # the key file has both keys now
                in_commit.set()
                assert go_a.wait(60), "the test did not let A commit"
                commit()

            real_commit_rotation(new, held)

        # C is held right before it writes the key file at its start, until A is done.
        real_write = keys_module.write_key_file_in_place
        c_writes, a_done = threading.Event(), threading.Event()
        c_thread: list[threading.Thread] = []

        def write_key_file(path: Path, current: bytes, nxt: bytes | None) -> None:
            if c_thread and threading.current_thread() is c_thread[0]:
                c_writes.set()
                assert a_done.wait(60), "A's erasure did not end"
            real_write(path, current, nxt)

        erased: list[httpx.Response] = []
        keys.commit_rotation = commit_rotation  # type: ignore[method-assign]
        try:
            with ExitStack() as stack:
                t = threading.Thread(target=lambda: erased.append(_erase(a, "u-alice")))
                t.start()
                assert in_commit.wait(60), "A never reached its commit"
                stack.callback(go_a.set)
                stack.callback(a_done.set)
                started: list[Harness] = []

                def start_c() -> None:
                    started.append(
                        stack.enter_context(
                            open_harness(
                                tmp_path / "c", database=pg_url, scim_master_key=a.data / KEY
                            )
                        )
                    )

                keys_module.write_key_file_in_place = write_key_file  # type: ignore[assignment]
                stack.callback(setattr, keys_module, "write_key_file_in_place", real_write)
                c_thread.append(threading.Thread(target=start_c, daemon=True))
                c_thread[0].start()
                # C reaches its write of the key file (the defect) or waits for A's lock.
                c_writes.wait(5)
                go_a.set()
                t.join(60)
                assert erased and erased[0].status_code == 200, erased
                a_done.set()
                c_thread[0].join(60)
                assert started, "C did not start"
                cur, nxt = read_key_file(a.data / KEY)
                with a.log.storage.read() as rv:
                    check = rv.aux(store.check_key())
                assert check is not None
                assert KeyRing._opens(MasterKey(cur, None), check), "the key file lost the key"
                assert nxt is None
                c = started[0]
                assert c.post_event(user_event("u-bob", req="req-bob")).status_code == 200
        finally:
            del keys.commit_rotation


def test_lmdb_keys_that_do_not_open_are_answered_as_before(tmp_path: Path) -> None:
    """LMDB (one writer process, no fence): a tenant record the master key cannot open is
    not another frontend's rotation (there is none). The submission is answered with that
    error once, as before the fence, not staged again nine times and answered as if another
    frontend had rotated the keys; and a read does not look at the key file."""
    with open_harness(tmp_path) as h:
        assert h.post_event(user_event(req="req-1")).status_code == 200
        svc = h.service
        tn = svc.tenant_ref(T1)
        bad = KeyRing._tenant_record(MasterKey.fresh(None), tn, bytes(32), bytes(32))
        h.log.storage.put_aux([(store.tenant_key(tn), bad)])
        svc.keys._tenants.clear()
        stagings: list[int] = []
        real_tenant = svc.keys.tenant

        def tenant(tx: Any, name: str) -> Any:
            stagings.append(1)
            return real_tenant(tx, name)

        follows: list[int] = []
        real_follow = svc.keys.follow_rotation

        def follow_rotation() -> None:  # an LMDB store has no other frontend to follow
            follows.append(1)
            real_follow()

        svc.keys.tenant = tenant  # type: ignore[method-assign]
        svc.keys.follow_rotation = follow_rotation  # type: ignore[method-assign]
        r = h.post_event(user_event(req="req-2"))
        assert r.status_code == 503, r.text
        assert "rotated during this read" in r.text and "another frontend" not in r.text
        assert len(stagings) <= 2  # the group's read ahead and the one staging
        found = h.client.get("/v1/scim/events", params={"rid": "u-alice-7f3a"}, headers=h.h("aud1"))
        assert found.status_code == 503, found.text
        assert not follows


@pytest.mark.slow
def test_a_retry_staged_on_a_fenced_group_is_not_committed_alone(
    tmp_path: Path, pg_url: str
) -> None:
    """A stages a new event (its records and leaf: one group), and the adapter's retry of it
    (the same eid: a duplicate of that group's leaf, no records of its own: the next group).
    Both reach A's sequencer in one batch, after B has claimed the fence. The commit is
    refused by the fence; the retry, staged on the refused group's records, must not be
    committed on its own (its leaf in the log without the event's records, and the event
    then staged again as a second leaf): one leaf, both answers name it, readable."""
    with frontends(tmp_path, pg_url) as (a, b):
        assert a.post_event(user_event("u-first", req="req-0")).status_code == 200
        svc = a.service
        ev = user_event("u-twice", req="req-twice", xid="twice@example.org")
        real_enqueue = svc.seq.enqueue
        held: list[Any] = []
        first_held, second, go = threading.Event(), threading.Event(), threading.Event()

        def retry_queued() -> bool:
            with svc._group_lock:
                return bool(svc._group)

        def enqueue(*args: Any, **kw: Any) -> None:
            if not held:  # the event's group: held until the retry's is handed too
                held.append((args, kw))
                first_held.set()
                # The group writer goes on only once the retry is queued for it: were the
                # writer to find nothing within its linger, it would end, and on its way
                # out wait (holding the writer lock) for this held group to commit, which
                # never comes before the retry's group is handed: no retry would ever be
                # staged. Unlike the test's hold, a real hand-off commits on its own.
                deadline = time.monotonic() + 60
                while not retry_queued():
                    assert time.monotonic() < deadline, "the retry was never queued"
                    time.sleep(0.005)
                return
            second.set()
            assert go.wait(60), "the test did not let A go on"
            with svc.seq._cond:  # one batch: the sequencer's writer was busy
                real_enqueue(*held[0][0], **held[0][1])
                real_enqueue(*args, **kw)
            svc.seq.enqueue = real_enqueue  # type: ignore[method-assign]

        answers: list[httpx.Response] = []
        lock = threading.Lock()

        def post() -> None:
            r = a.post_event(ev)
            with lock:
                answers.append(r)

        size = tree_size(a)
        svc.seq.enqueue = enqueue  # type: ignore[method-assign]
        threads = [threading.Thread(target=post, daemon=True) for _ in range(2)]
        try:
            threads[0].start()
            assert first_held.wait(60), "A never handed the event's group"
            threads[1].start()
            assert second.wait(60), "A never handed the retry's group"
            other = user_event("u-other", req="req-other", xid="other@example.org")
            assert b.post_event(other).status_code == 200  # B claims the fence
            go.set()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads)
        finally:
            go.set()
            svc.seq.enqueue = real_enqueue  # type: ignore[method-assign]
            del svc.seq.enqueue
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        assert len({r.json()["leaf_hash"] for r in answers}) == 1, "one eid, two leaves"
        assert sorted(r.json()["duplicate"] for r in answers) == [False, True]
        caught_up(a, size + 2)
        caught_up(b, size + 2)
        assert tree_size(a) == size + 2  # the event and B's
        assert readable(a, ev) and readable(b, ev)


@pytest.mark.slow
def test_a_read_follows_two_rotations_in_a_row(tmp_path: Path, pg_url: str) -> None:
    """B rotates the master key twice in a row (two erasures, or a retention expiry over
    two tenants). A read on A meets the first rotation and follows it: it has read the
    store's check value when the second rotation lands, so the key file holds a key that
    does not open the check value it read. That is the store moving on, not a stale key
    file: A reads the check value again and serves the read, rather than answering 503
    "no longer opens the store"."""
    with frontends(tmp_path, pg_url) as (a, b):
        _alice, _bob, carol = _post_users(a, "alice", "bob", "carol")
        caught_up(b, tree_size(a))
        assert _erase(b, "u-alice").json()["state"] == "done"
        real_read = keys_module.read_key_file
        second: list[httpx.Response] = []

        def read_key_file_(path: Path) -> tuple[bytes, bytes | None]:
            if not second and threading.current_thread() is not threading.main_thread():
                second.append(_erase(b, "u-bob"))  # lands between the two reads
            return real_read(path)

        keys_module.read_key_file = read_key_file_  # type: ignore[assignment]
        try:
            found = a.auditor().search(rid="u-carol").results
        finally:
            keys_module.read_key_file = real_read
        assert second and second[0].json()["state"] == "done"
        assert [r.event["eid"] for r in found if r.event is not None] == [carol["eid"]]
        assert a.service.keys.master.raw() == real_read(a.data / KEY)[0]
