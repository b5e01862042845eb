"""The ingestion path's shortcuts produce exactly what the general, validating code does.

Each shortcut (hand-ordered maps encoded without the deterministic-CBOR walk, the JSON
shape check without a Python step per token, validation without a copy, the per-batch key
caches) is compared here with the slow form it replaces.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim.cbor import EventFormatError, dumps_det, loads_det
from client.scim.event import adopt_event, adopt_json_event, event_to_json, validate_event
from client.scim.leaf import make_leaf, parse_leaf
from tests.scim_service.conftest import T1, open_harness, user_event
from tlog.bodies import BodyTooLarge, MalformedBody, check_json_shape
from tlog.scim import store
from tlog.scim.store import Envelope, decode_envelope

_TOKENS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')


def _reference_shape(body: bytes, max_items: int, max_depth: int) -> str | None:
    """The token-by-token walk the fast check replaced: which limit (if any) is hit."""
    depth = items = 0
    worst = 0
    for m in _TOKENS.finditer(body):
        c = body[m.start() : m.start() + 1]
        if c == b'"':
            continue
        if c == b",":
            items += 1
        elif c in (b"[", b"{"):
            depth += 1
            items += 1
            worst = max(worst, depth)
        else:
            depth -= 1
    if items > max_items:
        return "items"
    if worst > max_depth:
        return "depth"
    return None


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(alphabet='ab,[]{}"\\ '),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=3), kids, max_size=4)
        ),
        max_leaves=20,
    ),
    st.integers(0, 30),
    st.integers(0, 6),
)
def test_json_shape_matches_the_token_walk(doc: object, max_items: int, max_depth: int) -> None:
    body = json.dumps(doc).encode()
    want = _reference_shape(body, max_items, max_depth)
    try:
        check_json_shape(body, max_items=max_items, max_depth=max_depth)
        got = None
    except BodyTooLarge:
        got = "items"
    except MalformedBody:
        got = "depth"
    assert got == want


def test_leaf_encoding_is_deterministic_cbor() -> None:
    leaf = make_leaf(1_717_200_000_000, b"t" * 16, b"c" * 32)
    assert leaf == dumps_det({"v": 1, "ts": 1_717_200_000_000, "tn": b"t" * 16, "c": b"c" * 32})
    assert parse_leaf(leaf).ts == 1_717_200_000_000


def test_envelope_encoding_is_deterministic_cbor() -> None:
    env = Envelope(
        b"t" * 16,
        "e" * 36,
        1 << 40,
        b"k" * 16,
        24300,
        b"i" * 12,
        b"x" * 99,
        (b"r" + b"h" * 16, b"c" + b"h" * 16),
    )
    raw = env.encode()
    assert raw == dumps_det(loads_det(raw))
    assert decode_envelope(raw) == env


def test_adopted_event_is_the_validated_event_and_its_encoding() -> None:
    ev = user_event()
    obj = json.loads(event_to_json(ev))
    got, data = adopt_json_event(obj)
    assert got is obj  # no copy
    assert got == validate_event(ev)
    assert data == dumps_det(ev)
    _, data2 = adopt_event(validate_event(ev))
    assert data2 == data
    bad = dict(validate_event(ev))
    bad[1] = "x"  # type: ignore[index]  # a non-text key: refused, not encoded
    with pytest.raises(EventFormatError):
        adopt_event(bad)


def test_batch_records_are_deterministic_cbor(tmp_path: Path, database: str | None) -> None:
    """Subject, state and envelope records written by a batch (several events of one subject,
    so the per-batch caches are used) all decode strictly and re-encode identically."""
    with open_harness(tmp_path, database=database) as h:
        evs = [
            user_event("u-1", req="r1", op="create", outcome="success", acts=None),
            user_event("u-1", req="r2"),
            user_event("u-1", req="r3", active=("false", "true")),
            user_event("u-2", req="r4"),
        ]
        body = json.dumps({"events": [json.loads(event_to_json(e)) for e in evs]})
        r = h.post_raw(body.encode(), "application/json", path="/v1/scim/events/batch")
        assert r.status_code == 200, r.text
        with h.log.storage.read() as rv:
            records = list(rv.aux_range(store.PREFIX))
        checked = 0
        for key, value in records:
            if key[len(store.PREFIX) : len(store.PREFIX) + 1] in (b"S", b"F", b"E"):
                assert dumps_det(loads_det(value)) == value
                checked += 1
        assert checked >= 6
        # One batch shares one log time; the tree order is the batch order.
        found = sorted(h.auditor().search_all(rid="u-1"), key=lambda f: f.index)
        assert [f.event["corr"]["req"] for f in found] == ["r1", "r2", "r3"]
        assert found[2].effect is not None
        assert [a["a"] for a in found[2].effect["acts"]] == ["user.activate"]


def test_overlay_rollback_undoes_only_the_writes_after_the_mark(
    tmp_path: Path, database: str | None
) -> None:
    with open_harness(tmp_path, database=database) as h, h.log.storage.read() as rv:
        tx = store.Overlay(rv)
        tx.put(b"a", b"1")
        m = tx.mark()
        tx.put(b"a", b"2")
        tx.put(b"b", b"3")
        tx.delete(b"c")
        tx.rollback(m)
        assert tx.items() == [(b"a", b"1")]


def test_group_commit_isolates_a_failing_submission(tmp_path: Path, database: str | None) -> None:
    """Two submissions staged in one transaction: the one that raises is rolled back alone
    and gets its exception; the other is committed and answered."""
    from tlog.scim.service import _Job

    with open_harness(tmp_path, database=database) as h:
        svc = h.service
        good = validate_event(user_event("u-good", req="r-good"))
        bad = validate_event(user_event("u-bad", req="r-bad"))
        stage_good = svc._stager(T1, [good], [dumps_det(good)])
        stage_bad_inner = svc._stager(T1, [bad], [dumps_det(bad)])

        def stage_bad(tx: store.Overlay) -> object:
            stage_bad_inner(tx)  # stages records, then fails
            raise RuntimeError("refused after staging")

        async def run() -> object:
            loop = asyncio.get_running_loop()
            f_good: asyncio.Future[object] = loop.create_future()
            f_bad: asyncio.Future[object] = loop.create_future()
            jobs = [_Job(stage_bad, loop, f_bad, False), _Job(stage_good, loop, f_good, False)]
            await asyncio.to_thread(svc._commit_group, jobs)
            with pytest.raises(RuntimeError):
                await asyncio.wait_for(f_bad, 30)
            return await asyncio.wait_for(f_good, 30)

        accepted = asyncio.run(run())
        assert [a.eid for a in accepted] == [good["eid"]]  # type: ignore[attr-defined]
        with h.log.storage.read() as rv:
            tk = svc.keys.tenant(store.Overlay(rv), T1)
            assert tk is not None
            assert rv.aux(store.eid_key(tk.tn, good["eid"])) is not None
            assert rv.aux(store.eid_key(tk.tn, bad["eid"])) is None
