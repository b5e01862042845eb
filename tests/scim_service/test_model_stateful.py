"""The SCIM service against a model, in random sequences of what its users do.

Hypothesis drives one log (LMDB, and PostgreSQL when it can run here) through submissions
(single and batch, new events and retries of acknowledged ones), group events naming members
by pseudonym, legal holds, two-officer erasures and restarts of the server on the same store,
and checks after every step what must always hold:

* every checkpoint the log serves is signed and consistent with every earlier one (never a
  fork, never a smaller tree), across restarts;
* every acknowledged event stays in the tree where its receipt put it: a retry of it, at any
  later time, is answered with the same index and leaf hash (as erased once its subject is);
* an auditor finds exactly the events the model says (by `rid`, and by member `ref`), each
  verified by the auditor client (inclusion, commitment, tenant, filters), and nothing of an
  erased subject; the other tenant's auditor never sees them;
* a hold makes approval refuse (409) and destroys nothing; releasing it lets approval go on.

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

RIDS = ("u-ann", "u-ben", "u-cat")
TENANTS = (T1, T2)
SUBMITTER = {T1: "sub1", T2: "sub2"}
AUDITOR = {T1: "aud1", T2: "aud2"}


class ScimModel(RuleBasedStateMachine):
    """One log and what it must answer (see the module docstring)."""

    def __init__(self, new_store: Callable[[], tuple[Path, str | None]]) -> None:
        super().__init__()
        self.new_store = new_store
        self.stack = contextlib.ExitStack()
        self.ticks = itertools.count()
        self.req = itertools.count()
        # (tenant, rid) -> the corr ids an auditor must find by rid, in order
        self.live: dict[tuple[str, str], list[str]] = {}
        # member rid (T1) -> corr ids of group events naming it with its current pseudonym
        self.refs: dict[str, list[str]] = {}
        # eid -> (event, index, leaf hash, (tenant, rid), generation of the subject then)
        self.acked: dict[str, tuple[Any, int, str, tuple[str, str], int]] = {}
        self.generation: dict[tuple[str, str], int] = {}  # erasures so far, per subject
        self.holds: dict[str, str] = {}  # rid (T1) -> hold id
        self.cp: tuple[int, bytes] | None = None  # the last checkpoint seen (size, root)

    # -- plumbing ----------------------------------------------------------------------

    @initialize()
    def open(self) -> None:
        self.data, self.database = self.new_store()
        self.h: Harness = self.stack.enter_context(open_harness(self.data, database=self.database))
        self._clock()

    def _clock(self) -> None:
        # One clock across restarts: the log time only moves forward, as it must.
        self.h.service.clock = lambda: BASE_TS + 1000 * next(self.ticks)

    def teardown(self) -> None:
        self.stack.close()

    def _new_event(self, tenant: str, rid: str, op: str) -> Any:
        return user_event(
            rid,
            tenant=tenant,
            xid=f"{rid}@example.org",
            op=op,
            req=f"req-{next(self.req)}",
        )

    def _acknowledge(self, ev: Any, got: dict[str, Any], subject: tuple[str, str]) -> None:
        assert got["duplicate"] is False, got
        self.acked[ev["eid"]] = (
            ev,
            got["index"],
            got["leaf_hash"],
            subject,
            self.generation.get(subject, 0),
        )
        self.live.setdefault(subject, []).append(ev["corr"]["req"])

    # -- what users do -----------------------------------------------------------------

    @rule(
        tenant=st.sampled_from(TENANTS),
        rid=st.sampled_from(RIDS),
        op=st.sampled_from(["patch", "create", "delete"]),
    )
    def submit(self, tenant: str, rid: str, op: str) -> None:
        ev = self._new_event(tenant, rid, op)
        r = self.h.post_event(ev, SUBMITTER[tenant])
        assert r.status_code == 200, r.text
        self._acknowledge(ev, r.json(), (tenant, rid))

    @rule(
        rids=st.lists(st.sampled_from(RIDS), min_size=1, max_size=4),
        tenant=st.sampled_from(TENANTS),
    )
    def submit_batch(self, rids: list[str], tenant: str) -> None:
        evs = [self._new_event(tenant, rid, "patch") for rid in rids]
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
        ev, index, leaf_hash, subject, gen = self.acked[eid]
        r = self.h.post_event(ev, SUBMITTER[subject[0]])
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["duplicate"] is True, got
        assert (got["index"], got["leaf_hash"]) == (index, leaf_hash)
        erased = self.generation.get(subject, 0) != gen
        # A retry of an erased event proves inclusion only: its nonce is gone with its keys.
        assert ("nonce" not in got) == erased, got

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
        self._acknowledge(ev, got.json(), (T1, f"g-{rid}"))
        for m in ordered:
            self.refs.setdefault(m, []).append(req)

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
        self.generation[subject] = self.generation.get(subject, 0) + 1
        self.live.pop(subject, None)
        self.refs.pop(rid, None)  # its pseudonym key is gone: old group events unlink

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
        for tenant in TENANTS:
            for rid in RIDS:
                assert self._found(tenant, rid=rid) == self.live.get((tenant, rid), []), (
                    tenant,
                    rid,
                )
        for rid in RIDS:
            assert self._found(T1, ref=rid) == self.refs.get(rid, []), rid
            assert self._found(T2, ref=rid) == []


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
