"""The SCIM service against a model, in random sequences of what its users do.

Hypothesis drives one log (LMDB, and PostgreSQL when it can run here) through submissions
(single and batch, new events and retries of acknowledged ones), group events naming members
by pseudonym, legal holds, two-officer erasures, a retention period with days passing and
expiry runs, and restarts of the server on the same store, and checks after every step what
must always hold:

* every checkpoint the log serves is signed and consistent with every earlier one (never a
  fork, never a smaller tree), across restarts;
* every acknowledged event stays in the tree where its receipt put it: a retry of it, at any
  later time, is answered with the same index and leaf hash (as erased once its subject is
  erased or its month expired);
* an auditor finds exactly the events the model says (by `rid`, and by member `ref`), each
  verified by the auditor client (inclusion, commitment, tenant, filters), and nothing of an
  erased subject or of an expired month; the other tenant's auditor never sees them;
* a hold makes approval refuse (409) and keeps expiry off the subject, destroying nothing;
  releasing it lets both go on;
* ``actor=`` finds exactly the live events of that actor (an admin who is one of the Users,
  one who is not, a bare bearer token) made since the actor was last erased, and a retry of
  an event with another actor is a 409 unless the event itself is gone.

The unit tests check each of these alone; this one looks for the sequences that break them
together (an erasure between a submission and its retry, a restart between a hold and an
approval, a member erased after a group event named it, and so on).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import verify_consistency
from client.scim import event_to_json
from client.scim.event import actor_handle
from client.scim.leaf import parse_leaf
from tlog.scim.keys import epoch_of

from .conftest import (
    BASE_TS,
    T1,
    T2,
    Harness,
    group_event,
    open_harness,
    reopened_harness,
    user_event,
)

DAY_MS = 24 * 3600 * 1000
RIDS = ("u-ann", "u-ben", "u-cat")
TENANTS = (T1, T2)
SUBMITTER = {T1: "sub1", T2: "sub2"}
AUDITOR = {T1: "aud1", T2: "aud2"}
# Who acts, by the handle the log keys them by (client.scim.event.actor_handle): a User of
# the tenant (erased with it), an admin who never is, a bearer token (no id).
TOKEN = b"\x33" * 32
ACTORS: dict[str, dict[str, Any]] = {
    "u-ann": {"kind": "user", "id": "u-ann"},
    "admin-bob-9921": {"kind": "user", "id": "admin-bob-9921", "name": "Bob Admin"},
    base64.b64encode(TOKEN).decode(): {"kind": "bearer", "tok_d": TOKEN},
}
GROUP_ACTOR = "admin-carol-1234"  # conftest.group_event's


class ScimModel(RuleBasedStateMachine):
    """One log and what it must answer (see the module docstring)."""

    def __init__(self, new_store: Callable[[], tuple[Path, str | None]]) -> None:
        super().__init__()
        self.new_store = new_store
        self.stack = contextlib.ExitStack()
        self.tick = 0
        self.req = itertools.count()
        # eid -> what the model knows of every acknowledged event, in the order logged
        self.acked: dict[str, Logged] = {}
        self.generation: dict[tuple[str, str], int] = {}  # erasures so far, per subject
        self.holds: dict[str, str] = {}  # rid (T1) -> hold id
        self.offset = 0  # ms the clock was moved on (days passing)
        self.retention: int | None = None  # T1's retention period, days
        self.cp: tuple[int, bytes] | None = None  # the last checkpoint seen (size, root)

    # -- plumbing ----------------------------------------------------------------------

    @initialize()
    def open(self) -> None:
        self.data, self.database = self.new_store()
        self.h: Harness = self.stack.enter_context(open_harness(self.data, database=self.database))
        self._clock()

    def _clock(self) -> None:
        # One clock across restarts: the log time only moves forward, as it must.
        def clock() -> int:
            self.tick += 1
            return BASE_TS + self.offset + 1000 * self.tick

        self.h.service.clock = clock

    def teardown(self) -> None:
        self.stack.close()

    def _new_event(self, tenant: str, rid: str, op: str, actor: str = "admin-bob-9921") -> Any:
        ev = user_event(
            rid,
            tenant=tenant,
            xid=f"{rid}@example.org",
            op=op,
            req=f"req-{next(self.req)}",
        )
        return {**ev, "actor": ACTORS[actor]}

    def _acknowledge(
        self,
        ev: Any,
        got: dict[str, Any],
        subject: tuple[str, str],
        members: tuple[tuple[str, int], ...] = (),
    ) -> None:
        assert got["duplicate"] is False, got
        actor = GROUP_ACTOR if ev["rt"] == "Group" else actor_handle(ev["actor"])
        assert actor is not None
        self.acked[ev["eid"]] = Logged(
            ev,
            got["index"],
            got["leaf_hash"],
            parse_leaf(base64.b64decode(got["leaf"])).ts,
            subject,
            self.generation.get(subject, 0),
            members,
            actor,
            self.generation.get((subject[0], actor), 0),
        )

    def _gone(self, e: Logged) -> bool:
        """Erased (its subject since) or expired."""
        return e.expired or self.generation.get(e.subject, 0) != e.gen

    # -- what users do -----------------------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        rid=st.sampled_from(RIDS),
        op=st.sampled_from(["patch", "create", "delete"]),
        actor=st.sampled_from(sorted(ACTORS)),
    )
    def submit(self, tenant: str, rid: str, op: str, actor: str) -> None:
        ev = self._new_event(tenant, rid, op, actor)
        r = self.h.post_event(ev, SUBMITTER[tenant])
        assert r.status_code == 200, r.text
        self._acknowledge(ev, r.json(), (tenant, rid))

    @rule(
        rids=st.lists(st.sampled_from(RIDS), min_size=1, max_size=4),
        tenant=st.sampled_from(TENANTS),
        actor=st.sampled_from(sorted(ACTORS)),
    )
    def submit_batch(self, rids: list[str], tenant: str, actor: str) -> None:
        evs = [self._new_event(tenant, rid, "patch", actor) for rid in rids]
        body = '{"events":[' + ",".join(event_to_json(e) for e in evs) + "]}"
        r = self.h.post_raw(
            body.encode(), "application/json", SUBMITTER[tenant], "/v1/scim/events/batch"
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["eid"] for x in results] == [e["eid"] for e in evs]
        for ev, got in zip(evs, results, strict=True):
            self._acknowledge(ev, got, (tenant, ev["rid"]))

    @precondition(lambda self: bool(self.acked))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """An adapter sends an acknowledged event again (its answer was lost)."""
        eid = data.draw(st.sampled_from(sorted(self.acked)))
        e = self.acked[eid]
        r = self.h.post_event(e.ev, SUBMITTER[e.subject[0]])
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["duplicate"] is True, got
        assert (got["index"], got["leaf_hash"]) == (e.index, e.leaf_hash)
        # A retry of an erased or expired event proves inclusion only: its nonce is gone
        # with its keys.
        assert ("nonce" not in got) == self._gone(e), got

    @precondition(lambda self: bool(self.acked))
    @rule(data=st.data())
    def retry_as_another(self, data: st.DataObject) -> None:
        """The same eid and event with another actor: a different event (409), unless the
        event is gone (erased or expired: nothing is left to compare it with)."""
        eid = data.draw(st.sampled_from(sorted(self.acked)))
        e = self.acked[eid]
        other = data.draw(st.sampled_from(sorted(a for a in ACTORS if a != e.actor)))
        r = self.h.post_event({**e.ev, "actor": ACTORS[other]}, SUBMITTER[e.subject[0]])
        if self._gone(e):
            assert r.status_code == 200 and r.json()["duplicate"] is True, r.text
        else:
            assert r.status_code == 409, r.text

    @rule(rid=st.sampled_from(RIDS), members=st.sets(st.sampled_from(RIDS), min_size=1))
    def group(self, rid: str, members: set[str]) -> None:
        ordered = sorted(members)
        r = self.h.client.post(
            "/v1/scim/pseudonyms",
            headers=self.h.h("sub1"),
            json={"refs": [{"rt": "User", "id": m} for m in ordered]},
        )
        assert r.status_code == 200, r.text
        pids = [base64.b64decode(x["pid"]) for x in r.json()["refs"]]
        req = f"req-{next(self.req)}"
        ev = group_event(pids, rid=f"g-{rid}", req=req)
        got = self.h.post_event(ev)
        assert got.status_code == 200, got.text
        gens = tuple((m, self.generation.get((T1, m), 0)) for m in ordered)
        self._acknowledge(ev, got.json(), (T1, f"g-{rid}"), gens)

    @precondition(lambda self: len(self.holds) < len(RIDS))
    @rule(rid=st.sampled_from(RIDS))
    def hold(self, rid: str) -> None:
        if rid in self.holds:
            return
        r = self.h.client.post(
            "/v1/scim/holds",
            json={"tenant": T1, "reason": "litigation", "rt": "User", "rid": rid},
            headers=self.h.h("po_a"),
        )
        assert r.status_code == 201, r.text
        self.holds[rid] = r.json()["id"]

    @precondition(lambda self: bool(self.holds))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.holds)))
        r = self.h.client.post(
            f"/v1/scim/holds/{self.holds.pop(rid)}/release", headers=self.h.h("po_b")
        )
        assert r.status_code == 200, r.text

    @rule(rid=st.sampled_from(RIDS))
    def erase(self, rid: str) -> None:
        r = self.h.request_erasure(rid)
        assert r.status_code == 201, r.text
        r = self.h.client.post(
            f"/v1/scim/erasures/{r.json()['id']}/approve", headers=self.h.h("po_b")
        )
        if rid in self.holds:
            assert r.status_code == 409, r.text  # held: nothing destroyed
            return
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "done"
        subject = (T1, rid)
        # Its events go, and its pseudonym key: group events naming it unlink.
        self.generation[subject] = self.generation.get(subject, 0) + 1

    @precondition(lambda self: self.retention is None)
    @rule()
    def set_retention(self) -> None:
        r = self.h.client.put(
            "/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=self.h.h("po_a")
        )
        assert r.status_code == 200, r.text
        self.retention = 30

    @rule(days=st.sampled_from([10, 40]))
    def days_pass(self, days: int) -> None:
        self.offset += days * DAY_MS

    @rule()
    def expire(self) -> None:
        r = self.h.client.post("/v1/scim/expire", json={}, headers=self.h.h("admin"))
        assert r.status_code == 200, r.text
        if self.retention is None:
            return
        now = BASE_TS + self.offset + 1000 * self.tick
        cut = epoch_of(now - self.retention * DAY_MS)
        for e in self.acked.values():
            if e.subject[0] != T1 or self._gone(e) or e.subject[1] in self.holds:
                continue
            if epoch_of(e.ts) < cut:
                e.expired = True

    @rule()
    def restart(self) -> None:
        tok = self.h.tok
        self.stack.close()
        self.stack = contextlib.ExitStack()
        self.h = self.stack.enter_context(reopened_harness(self.data, self.database, tok))
        self._clock()

    # -- what must always hold ---------------------------------------------------------

    @invariant()
    def checkpoints_only_grow(self) -> None:
        if not hasattr(self, "h"):
            return
        r = self.h.client.get("/checkpoint")
        assert r.status_code == 200, r.text
        cp, _ = open_checkpoint(r.text, [self.h.signer.verifier])
        if self.cp is not None:
            old_size, old_root = self.cp
            assert cp.size >= old_size
            if 0 < old_size < cp.size:
                p = self.h.client.get(
                    f"/v1/proof/consistency?old_size={old_size}&tree_size={cp.size}"
                ).json()["consistency_proof"]
                verify_consistency(
                    old_size, cp.size, old_root, cp.root_hash, [base64.b64decode(x) for x in p]
                )
            elif old_size == cp.size:
                assert cp.root_hash == old_root
        self.cp = (cp.size, cp.root_hash)

    def _found(self, tenant: str, **filters: str) -> list[str]:
        found = self.h.auditor(AUDITOR[tenant]).search_all(**filters)
        return [r.event["corr"]["req"] for r in found if r.event is not None]

    @invariant()
    def auditors_find_what_the_model_says(self) -> None:
        if not hasattr(self, "h"):
            return
        live = [e for e in self.acked.values() if not self._gone(e)]
        for tenant in TENANTS:
            for rid in RIDS:
                want = [e.req for e in live if e.subject == (tenant, rid)]
                assert self._found(tenant, rid=rid) == want, (tenant, rid)
        for rid in RIDS:
            gen = self.generation.get((T1, rid), 0)
            want = [e.req for e in live if (rid, gen) in e.members]
            assert self._found(T1, ref=rid) == want, rid
            assert self._found(T2, ref=rid) == []
        for tenant in TENANTS:
            for actor in (*ACTORS, GROUP_ACTOR):
                gen = self.generation.get((tenant, actor), 0)
                want = [
                    e.req
                    for e in live
                    if e.subject[0] == tenant and e.actor == actor and e.actor_gen == gen
                ]
                assert self._found(tenant, actor=actor) == want, (tenant, actor)


@dataclass
class Logged:
    ev: Any
    index: int
    leaf_hash: str
    ts: int  # the leaf's, the log time
    subject: tuple[str, str]
    gen: int  # erasures of the subject before it
    members: tuple[tuple[str, int], ...]  # a group event's (member rid, its generation)
    actor: str  # the handle its actor is keyed by
    actor_gen: int  # erasures of the actor's subject before it
    expired: bool = False

    @property
    def req(self) -> str:
        return str(self.ev["corr"]["req"])


def _run(new_store: Callable[[], tuple[Path, str | None]], examples: int) -> None:
    run_state_machine_as_test(
        lambda: ScimModel(new_store),
        settings=settings(
            max_examples=examples,
            stateful_step_count=12,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # No shrinking: every step is HTTP requests on a real store, and shrinking a
            # failure of a dozen steps took over five minutes. A failure prints its steps.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )


def test_the_service_keeps_its_promises_in_any_order(
    tmp_path: Path, database: str | None, new_database: Callable[[], str | None]
) -> None:
    first = [True]

    def new_store() -> tuple[Path, str | None]:
        data = Path(tempfile.mkdtemp(dir=tmp_path))
        if first[0]:  # the fixture's own schema first, then a fresh one per example
            first[0] = False
            return data, database
        return data, new_database()

    _run(new_store, 12 if database is None else 6)


pytestmark = pytest.mark.slow
