"""The batch pipeline of the staging (``stage4`` round, issue 9 part 6) writes exactly what
the general per-event path writes: the same records with the same bytes, the same leaves and
answers, for a batch mixing the creates it takes with every event it leaves to the general
path; its create classifier equals :func:`classify`; ``Overlay.put_many`` equals one
``put`` per record, rollback included."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from client.scim import encode_event, new_event
from client.scim.cbor import dumps_det
from tests.scim_service.conftest import BASE_TS, T1, open_harness, user_event
from tests.scim_service.test_stage_fast import _ATTRS, _EVENT, _TEXT_VALUE
from tlog.scim import store
from tlog.scim.effects import classify, classify_create, encode_effect, encode_state
from tlog.scim.keys import RandomPool
from tlog.scim.service import ScimService

# --- the create classifier ------------------------------------------------------------------

_CREATE = st.fixed_dictionaries(
    {
        "rt": st.sampled_from(["User", "Group", "Device"]),
        "rid": st.just("r-1"),
        "outcome": st.just("success"),
        "op": st.just("create"),
        "corr": st.just({"req": "q1"}),
        "mods": st.lists(
            st.fixed_dictionaries(
                {"attr": _ATTRS, "new": _TEXT_VALUE | st.sampled_from(['"a b"', '"é"', "true"])},
                optional={"op": st.sampled_from(["add", "replace", "remove"])},
            ),
            max_size=5,
        ),
    }
)


def _check_create(ev: dict[str, Any]) -> bool:
    fast = classify_create(ev)
    if fast is None:
        return False
    effect, state, changed = classify(None, ev)
    assert changed
    assert (fast[0], fast[2]) == (effect, state)
    assert fast[1] == encode_effect(effect) == dumps_det(effect)
    assert encode_state(fast[2]) == dumps_det(state)
    return True


@settings(max_examples=400, deadline=None)
@given(_CREATE | _EVENT)
def test_create_classifier_equals_classify(ev: dict[str, Any]) -> None:
    note(f"fast path: {_check_create(ev)}")


def test_create_classifier_takes_the_common_shapes() -> None:
    mods = [
        {"attr": "userName", "new": '"alice@example.org"'},
        {"attr": "displayName", "new": '"Alice"'},
        {"attr": "emails", "new": '[{"value":"alice@example.org","primary":true}]'},
        {"attr": "active", "new": "true"},
        {"attr": "password", "new_d": bytes(32)},
    ]
    ev = {"rt": "User", "rid": "u-1", "outcome": "success", "op": "create", "mods": mods}
    assert _check_create(ev)
    for odd in (
        {"attr": "roles", "new": '["admin"]'},  # a set: grants
        {"attr": "userName", "new": '"again"'},  # named twice
        {"attr": "name.givenName", "new": '"A"'},  # not top level
        {"attr": "active", "op": "remove"},
    ):
        assert classify_create({**ev, "mods": [*mods, odd]}) is None
        _check_create({**ev, "mods": [*mods, odd]})
    assert classify_create({**ev, "op": "patch"}) is None
    assert classify_create({**ev, "x": {"result": {"active": False}}}) is None


# --- Overlay.put_many -------------------------------------------------------------------------


def test_put_many_equals_puts_and_rolls_back(tmp_path: Path, database: str | None) -> None:
    with open_harness(tmp_path, database=database) as h:
        with h.log.storage.read() as rv:
            one, many = store.Overlay(rv), store.Overlay(rv)
            for tx in (one, many):
                tx.put(b"scim/Zk1", b"first")
            mark = many.mark()
            items = [(b"scim/Zk1", b"a"), (b"scim/Zk2", b"b"), (b"scim/Zk1", b"c")]
            for k, v in items:
                one.put(k, v)
            many.put_many(items)  # a key twice: still in order
            many.put_many([(b"scim/Zk3", b"d"), (b"scim/Zk2", b"e")])
            one.put(b"scim/Zk3", b"d")
            one.put(b"scim/Zk2", b"e")
            assert many.items() == one.items()
            many.rollback(mark)
            assert many.items() == [(b"scim/Zk1", b"first")]


# --- the whole staging: pipeline vs the general path, byte for byte ---------------------------


@pytest.fixture
def stream_rand(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """RandomPool replaced by a deterministic stream, restarted by calling the fixture's
    value: both stagings then draw the same bytes if they draw in the same order."""
    pos = [0]
    buf = hashlib.shake_256(b"stage4").digest(1 << 20)

    def call(self: RandomPool, n: int) -> bytes:
        p = pos[0]
        pos[0] = p + n
        return buf[p : p + n]

    def restart() -> None:
        pos[0] = 0

    monkeypatch.setattr(RandomPool, "__call__", call)
    yield restart


def _create(rid: str | None, req: str, mods: list[dict[str, Any]], **kw: Any) -> Any:
    return new_event(
        tenant=T1,
        sp="app-1",
        op="create",
        rt=kw.pop("rt", "User"),
        rid=rid,
        actor={"kind": "user", "id": "admin-bob-9921"},
        corr=req,
        req={"m": "POST", "p": "/Users", "dig": bytes(32), "len": 42},
        res=201 if kw.get("outcome", "success") == "success" else 409,
        outcome=kw.pop("outcome", "success"),
        mods=mods,
        **kw,
    )


def _user_mods(name: str, active: str = "true") -> list[dict[str, Any]]:
    return [
        {"attr": "userName", "new": json.dumps(name)},
        {"attr": "displayName", "new": '"Bench"'},
        {"attr": "emails", "new": json.dumps([{"value": name, "primary": True}])},
        {"attr": "active", "new": active},
    ]


def _batch() -> list[Any]:
    evs = [
        _create("u-1", "r1", _user_mods("one@example.org")),
        _create("u-2", "r2", _user_mods("twö@example.org", '"True"')),
        user_event("u-1", req="r3"),  # a patch of a subject created just before
        _create("u-0", "r4", _user_mods("zero@example.org")),  # a subject the store knows
        _create("u-3", "r5", [*_user_mods("three@example.org"), {"attr": "roles", "new": '["a"]'}]),
        _create(
            None,
            "r6",
            _user_mods("failed@example.org"),
            outcome="failure",
            err={"scim_type": "uniqueness", "reason": "exists"},
        ),
        _create("g-1", "r7", [{"attr": "displayName", "new": '"G"'}], rt="Group"),
        _create("u-4", "r8", [{"attr": "userName", "new": '"a\\"b"'}]),
        _create(
            "u-5", "r9", [{"attr": "userName", "new": '"x"'}, {"attr": "userName", "new": '"y"'}]
        ),
    ]
    evs.insert(3, evs[0])  # the same eid twice in one batch
    evs += [_create(f"u-b{i}", f"rb{i}", _user_mods(f"b{i}@example.org")) for i in range(20)]
    return evs


def _stage(svc: ScimService, events: list[Any], *, fast: bool) -> tuple[Any, dict[bytes, Any]]:
    stage = svc._stager(T1, events, [encode_event(e) for e in events], fast=fast)
    with svc.storage.read() as rv:
        tx = store.Overlay(rv)
        out = stage(tx)
        return out, dict(tx.items())


def test_pipeline_stages_what_the_general_path_stages(
    tmp_path: Path, database: str | None, stream_rand: Any
) -> None:
    with open_harness(tmp_path, database=database) as h:
        # the tenant's keys and one known subject, committed
        r = h.post_event(_create("u-0", "r0", _user_mods("zero@example.org")))
        assert r.status_code == 200, r.text
        svc = h.service
        svc.clock = lambda: BASE_TS + 86_400_000
        events = _batch()
        general_calls = [0]
        stage_one = svc._stage

        def counted(*a: Any) -> Any:
            general_calls[0] += 1
            return stage_one(*a)

        stream_rand()
        want, want_records = _stage(svc, events, fast=False)
        svc._stage = counted  # type: ignore[method-assign]
        stream_rand()
        got, got_records = _stage(svc, events, fast=True)
        # the batch pipeline took the 20 bulk creates and the simple ones, not the others
        assert 0 < general_calls[0] <= 9
        assert got == want
        assert got_records.keys() == want_records.keys()
        for k in want_records:
            assert got_records[k] == want_records[k], k[:6]
