"""The adapter pipeline (outbox -> relay -> log) against a model, in random sequences.

Hypothesis drives an :class:`Outbox` in a temp dir and a :class:`Relay` delivering to a real
in-process log with the SCIM service, through a faulty front between them: answers lost after
the log committed, 503s, timeouts, a tampered answer, a log restart on the same store, a crash
of the adapter (relay and outbox re-opened from the outbox file), an erasure of a subject in the
log between a delivery and its retry. After every step it checks what must always hold:

* an event enqueued is never lost: it is pending in the outbox or in the log (or both, when
  an answer was lost), and the outbox's pending events are the model's, in enqueue order;
* no event is in the log twice: the tree holds exactly one leaf per eid the log took;
* events reach the log in enqueue order (their indices grow with it);
* a receipt is only stored when it verifies (signed checkpoint, inclusion proof from the log,
  the index the log holds the event at); a tampered answer marks nothing;
* the backlog (``backlog()`` and ``counts()``) says what the model says;
* once the log is healthy and the relay ran, the outbox is empty and every event is in the log.

The relay's thread is not started: each step calls one delivery attempt itself, so a step's
outcome is deterministic (the thread's back-off and linger are timing, not logic).
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import httpx
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
from starlette.testclient import TestClient

from client.adapters.outbox import Outbox, OutboxError, OutboxRecord
from client.adapters.relay import BATCH_PATH, Relay, _Backoff, _Unverified
from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import verify_inclusion
from client.scim import event_to_json
from tests.scim_service.conftest import (
    T1,
    URL,
    Harness,
    open_harness,
    reopened_harness,
    user_event,
)

from .receipt_front import CASES

RIDS = ("u-ann", "u-ben", "u-cat")
BATCH = 4  # small batches: a queue of a dozen events takes several rounds
QUOTA = 4000  # the outbox's max_bytes: about 8 events undelivered (500 bytes each)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Front(httpx.BaseTransport):
    """Between the relay and the in-process log: passes requests on, or (``fault``) fails
    the next batch request in one way: ``lose`` (the log commits, the answer is lost),
    ``503`` or ``timeout`` (never reaches the log). While ``tamper`` names one of
    :data:`CASES`, every answer it applies to is rewritten (``rewritten`` counts them)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.fault: str | None = None
        self.tamper: str | None = None
        self.rewritten = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        fault = self.fault if request.url.path == BATCH_PATH else None
        if fault is not None:
            self.fault = None
        if fault == "timeout":
            raise httpx.ConnectTimeout("the log is not reachable", request=request)
        if fault == "503":
            return httpx.Response(503, json={"error": "overloaded"})
        query = request.url.query.decode()
        r = self.client.request(
            request.method,
            request.url.path + ("?" + query if query else ""),
            headers=dict(request.headers),
            content=request.read(),
        )
        if fault == "lose":
            raise httpx.ReadTimeout("the answer was lost", request=request)
        body = r.content
        if self.tamper is not None and r.status_code == 200:
            try:
                new = CASES[self.tamper][0](request, body)
            except (KeyError, IndexError):  # not applicable (e.g. no nonce to change)
                new = body
            if new != body:
                self.rewritten += 1
                body = new
        headers = {k: v for k, v in r.headers.items() if k.lower() != "content-length"}
        return httpx.Response(r.status_code, headers=headers, content=body)


class PipelineModel(RuleBasedStateMachine):
    """One outbox, one relay, one log, and what they must hold (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.stack = contextlib.ExitStack()
        self.reqs = itertools.count()
        self.queue: list[str] = []  # eids pending in the outbox, enqueue order
        self.order: dict[str, int] = {}  # eid -> its place in enqueue order
        self.subject: dict[str, str] = {}  # eid -> rid
        self.in_log: set[str] = set()  # eids the log has committed
        self.records: dict[str, OutboxRecord] = {}  # eid -> what the adapter wrote
        self.req_of: dict[str, str] = {}  # eid -> corr.req
        self.erased: set[str] = set()  # rids erased at least once
        self.visible: set[str] = set()  # eids in the log whose subject was not erased since
        self.other_leaves = 0  # leaves that are not the adapter's events (erasure records)

    # -- plumbing ----------------------------------------------------------------------

    @initialize()
    def open(self) -> None:
        self.data = Path(tempfile.mkdtemp(dir=self.root))
        self.log_stack = contextlib.ExitStack()
        self.h: Harness = self.log_stack.enter_context(open_harness(self.data / "log"))
        self._clock()
        self.tok = self.h.tok
        self.front = Front(self.h.client)
        self.outbox_path = self.data / "outbox.sqlite"
        self._open_adapter()

    def _clock(self) -> None:
        # The log's own clock (real time), not the harness's ticking one from 2024: the relay
        # dates a leaf answered for an erased retry against the event's time (it must not
        # predate the event by more than the clock skew allowed), so the two clocks agree.
        self.h.service.clock = _now_ms

    def _open_adapter(self) -> None:
        self.outbox = Outbox(self.outbox_path, max_bytes=QUOTA)
        self.relay = self._relay()

    def _relay(self) -> Relay:
        return Relay(
            self.outbox,
            URL,
            self.tok["sub1"],
            batch_size=BATCH,
            transport=self.front,
            log_key=self.h.vkey,
            backoff_min=0.001,
            backoff_max=0.002,
            idle=0.01,
        )

    def _close_adapter(self) -> None:
        self.relay.stop()
        self.outbox.close()

    def teardown(self) -> None:
        if hasattr(self, "relay"):
            self._close_adapter()
        if hasattr(self, "log_stack"):
            self.log_stack.close()

    def _tree_size(self) -> int:
        r = self.h.client.get("/checkpoint")
        assert r.status_code == 200, r.text
        cp, _ = open_checkpoint(r.text, [self.h.signer.verifier])
        return cp.size

    def _attempt(self) -> tuple[int, str | None]:
        """One delivery attempt: (events out of the queue, why it failed or None)."""
        try:
            return self.relay._deliver_once(), None
        except _Unverified as exc:
            return 0, "unverified: " + str(exc)
        except _Backoff as exc:
            return 0, str(exc)

    def _logged(self, eids: list[str]) -> None:
        """The log committed ``eids`` (those it had not taken before become searchable)."""
        self.visible.update(e for e in eids if e not in self.in_log)
        self.in_log.update(eids)

    def _delivered(self, eids: list[str]) -> None:
        self._logged(eids)
        done = set(eids)
        self.queue = [e for e in self.queue if e not in done]

    # -- what the adapter and the world do ---------------------------------------------

    @rule(
        rids=st.lists(st.sampled_from(RIDS), min_size=1, max_size=3),
        same_request=st.booleans(),
    )
    def enqueue(self, rids: list[str], same_request: bool) -> None:
        """A SCIM request's events are written to the outbox (one request id, or a request
        id an earlier request used: a client retrying its own request)."""
        if same_request and self.req_of:
            req = sorted(self.req_of.values())[0]
        else:
            req = f"req-{next(self.reqs)}"
        recs = []
        for rid in rids:
            ev = user_event(rid, tenant=T1, xid=f"{rid}@example.org", req=req)
            recs.append(OutboxRecord(ev["eid"], req, event_to_json(ev)))
        incoming = sum(len(r.body) for r in recs)
        if self._queued_bytes() + incoming > QUOTA:
            # over the quota: refused whole, nothing stored (the adapter answers 503)
            with pytest.raises(OutboxError, match="outbox full"):
                self.outbox.put(recs)
            return
        self.outbox.put(recs)  # within the quota: stored
        for r in recs:
            self.order[r.eid] = len(self.order)
            self.subject[r.eid] = self.records_rid(r)
            self.req_of[r.eid] = req
            self.records[r.eid] = r
        self.queue += [r.eid for r in recs]

    def _head(self) -> list[str]:
        """The batch the relay sends next: the first ``BATCH`` queued events, never cut
        inside one write's events (the outbox's rule: events sharing a request id, here
        with no intent, go in one batch), unless that write alone fills the batch."""
        head = self.queue[:BATCH]
        if len(self.queue) > BATCH:
            keep = len(head)
            nxt = self.req_of[self.queue[BATCH]]
            while keep and self.req_of[head[keep - 1]] == nxt:
                keep -= 1
            if keep:
                head = head[:keep]
        return head

    @staticmethod
    def records_rid(r: OutboxRecord) -> str:
        return str(json.loads(r.body)["rid"])

    def _queued_bytes(self) -> int:
        return sum(len(self.records[e].body) for e in self.queue)

    @precondition(lambda self: bool(self.records))
    @rule(data=st.data())
    def enqueue_again(self, data: st.DataObject) -> None:
        """The adapter writes events it wrote before again (e.g. a write that timed out on
        its caller, still committed): nothing changes, and no quota is used up."""
        eids = data.draw(st.lists(st.sampled_from(sorted(self.records)), min_size=1, max_size=3))
        recs = [self.records[e] for e in eids]
        try:
            self.outbox.put(recs)
        except OutboxError:
            # refusing is allowed only where new events of that size would be refused too
            assert self._queued_bytes() + sum(len(r.body) for r in recs) > QUOTA

    @rule()
    def deliver_once(self) -> None:
        head = self._head()
        n, why = self._attempt()
        assert why is None, why
        assert n == len(head)
        self._delivered(head)

    @rule()
    def deliver_all(self) -> None:
        for _ in range(len(self.queue) + 1):  # batches may be cut short at a write
            head = self._head()
            n, why = self._attempt()
            assert why is None, why
            assert n == len(head)
            self._delivered(head)
        assert self.queue == []

    @rule()
    def relay_thread_drains(self) -> None:
        """The relay's own thread, with the log healthy, empties the queue."""
        self.relay.start()
        try:
            assert self.relay.flush(30), self.relay.last_error
        finally:
            self.relay.stop()  # closes its HTTP client: a new relay on the same outbox
        self._delivered(list(self.queue))
        self.relay = self._relay()

    @precondition(lambda self: bool(self.queue))
    @rule()
    def lose_answer(self) -> None:
        """The log commits the batch; its answer never reaches the relay."""
        head = self._head()
        self.front.fault = "lose"
        n, why = self._attempt()
        assert n == 0 and why is not None and "unreachable" in why, why
        self._logged(head)  # in the log, still pending in the outbox

    @precondition(lambda self: bool(self.queue))
    @rule(fault=st.sampled_from(["503", "timeout"]))
    def log_fails(self, fault: str) -> None:
        self.front.fault = fault
        n, why = self._attempt()
        assert n == 0 and why is not None, why

    @precondition(lambda self: bool(self.queue))
    @rule(case=st.sampled_from(sorted(CASES)))
    def tampered_answer(self, case: str) -> None:
        """A front rewrites the log's answers (the batch's, or the hash tiles the relay reads
        to check it): when anything was rewritten, nothing may be marked delivered (the log
        did commit the batch; only what the relay was told is wrong)."""
        head = self._head()
        self.front.tamper, self.front.rewritten = case, 0
        try:
            n, why = self._attempt()
        finally:
            self.front.tamper = None
        if self.front.rewritten:
            assert n == 0 and why is not None and why.startswith("unverified"), (case, why)
            self._logged(head)
        else:  # nothing to rewrite in these answers (e.g. no tile was read): delivered
            assert why is None and n == len(head), (case, why)
            self._delivered(head)

    @precondition(lambda self: bool(self.queue))
    @rule()
    def erase_between_delivery_and_retry(self) -> None:
        """The log commits a batch, its answer is lost, a subject of it is erased, and the
        relay sends the batch again: the retry is answered as logged before and erased since
        (inclusion only, no nonce to open the commitment), and accepted as such."""
        head = self._head()
        self.lose_answer()
        erased_before = self.relay.erased_retries
        self.erase(self.subject[head[0]])
        self.deliver_once()
        assert self.relay.erased_retries > erased_before

    @rule()
    def crash_adapter(self) -> None:
        """The adapter process dies and starts again: the outbox is re-opened from its file."""
        self._close_adapter()
        self._open_adapter()

    @rule()
    def restart_log(self) -> None:
        self.log_stack.close()
        self.log_stack = contextlib.ExitStack()
        self.h = self.log_stack.enter_context(reopened_harness(self.data / "log", None, self.tok))
        self._clock()
        self.front.client = self.h.client

    @rule(rid=st.sampled_from(RIDS))
    def erase(self, rid: str) -> None:
        """Two officers erase a subject in the log (maybe between a delivery and its retry)."""
        before = self._tree_size()
        r = self.h.request_erasure(rid)
        assert r.status_code == 201, r.text
        r = self.h.client.post(
            f"/v1/scim/erasures/{r.json()['id']}/approve", headers=self.h.h("po_b")
        )
        assert r.status_code == 200, r.text
        self.erased.add(rid)
        self.visible -= {e for e in self.visible if self.subject[e] == rid}
        self.other_leaves += self._tree_size() - before  # the erasure's own records

    # -- what must always hold ---------------------------------------------------------

    @invariant()
    def the_queue_is_the_models(self) -> None:
        if not hasattr(self, "outbox"):
            return
        assert [p.eid for p in self.outbox.pending(10_000)] == self.queue
        counts = self.outbox.counts()
        backlog = self.outbox.backlog()
        assert counts["pending"] == backlog["pending"] == len(self.queue)
        assert backlog["pending_bytes"] == self._queued_bytes()
        assert counts["rejected"] == backlog["rejected"] == 0
        # never lost: every event enqueued is pending, or in the log
        assert set(self.order) == set(self.queue) | self.in_log

    @invariant()
    def one_leaf_per_event_in_enqueue_order_with_verified_receipts(self) -> None:
        if not hasattr(self, "outbox"):
            return
        size = self._tree_size()
        assert size == len(self.in_log) + self.other_leaves, (size, len(self.in_log))
        delivered = sorted(set(self.order) - set(self.queue), key=self.order.__getitem__)
        indices = []
        for eid in delivered:
            rec = self.outbox.receipt(eid)
            assert rec is not None, eid
            indices.append(rec.index)
            self._check_receipt(rec.index, rec.leaf_hash, rec.tree_size, rec.checkpoint)
        assert indices == sorted(indices) and len(set(indices)) == len(indices), indices
        # The auditor finds exactly the events not erased since they were logged, each where
        # its receipt (if stored) says: the leaf commits to that very event. (An auditor's
        # search is itself logged: its access records are leaves too.)
        found = {
            r.event["eid"]: r.index
            for rid in RIDS
            for r in self.h.auditor("aud1").search_all(rid=rid)
            if r.event is not None
        }
        self.other_leaves += self._tree_size() - size
        assert set(found) == self.visible
        for eid in set(delivered) & self.visible:
            rec = self.outbox.receipt(eid)
            assert rec is not None and found[eid] == rec.index, eid

    def _check_receipt(self, index: int, leaf_hash: str, tree_size: int, checkpoint: str) -> None:
        cp, _ = open_checkpoint(checkpoint, [self.h.signer.verifier])
        assert cp.size == tree_size and 0 <= index < tree_size
        r = self.h.client.get(f"/v1/proof/inclusion?index={index}&tree_size={tree_size}")
        assert r.status_code == 200, r.text
        proof = [base64.b64decode(x) for x in r.json()["inclusion_proof"]]
        verify_inclusion(index, tree_size, base64.b64decode(leaf_hash), proof, cp.root_hash)
        # the leaf at that index is the log's one for this receipt
        r = self.h.client.get(
            f"/v1/proof/inclusion?leaf_hash={quote(leaf_hash, safe='')}&tree_size={tree_size}"
        )
        assert r.status_code == 200, r.text
        assert r.json()["index"] == index


def _run(root: Path, examples: int, steps: int) -> None:
    run_state_machine_as_test(
        lambda: PipelineModel(root),
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            # No shrinking: every step is requests to a real log and SQLite commits, and
            # shrinking a failure takes minutes. A failure prints its steps.
            phases=[Phase.explicit, Phase.reuse, Phase.generate],
        ),
    )


def test_the_pipeline_loses_nothing_and_logs_once_in_any_order(tmp_path: Path) -> None:
    _run(tmp_path, examples=25, steps=20)


def test_the_pipeline_drains_once_healthy(tmp_path: Path) -> None:
    """The same model, ending every example with a healthy log and a relay that ran."""

    class Draining(PipelineModel):
        def teardown(self) -> None:
            try:
                if hasattr(self, "relay"):
                    self.deliver_all()
                    assert self.outbox.counts()["pending"] == 0
                    assert set(self.order) == self.in_log
                    self.one_leaf_per_event_in_enqueue_order_with_verified_receipts()
            finally:
                super().teardown()

    run_state_machine_as_test(
        lambda: Draining(tmp_path),
        settings=settings(
            max_examples=15,
            stateful_step_count=15,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
            phases=[Phase.explicit, Phase.reuse, Phase.generate],  # see _run
        ),
    )


pytestmark = pytest.mark.slow


def test_a_batch_ends_before_a_write_it_would_cut(tmp_path: Path) -> None:
    """The steps a random run drew (CI, stop 33): three events of one request, then two of
    an earlier request id reused (a client retrying): the relay's batch of four holds the
    three only, since the outbox never cuts inside one write's events."""
    model = PipelineModel(tmp_path)
    try:
        model.open()
        model.enqueue(rids=["u-ann"], same_request=False)
        model.deliver_all()
        model.enqueue(rids=["u-ann", "u-ann", "u-ann"], same_request=False)
        model.enqueue(rids=["u-ben", "u-cat"], same_request=True)
        assert len(model._head()) == 3
        model.deliver_once()
        model.deliver_all()
        model.one_leaf_per_event_in_enqueue_order_with_verified_receipts()
    finally:
        model.teardown()
