"""Red team 20: hostile bulk answers against the adapter's reading of them (``exchange``:
``_align``, ``_created``, ``_run_order``, ``Builder._bulk_op``), in process through the
adapter's own event builder, and the log's judging of what it records (``classify``).

Found (each failed before):

* a create answered at ``.../Users/abc?v=1``: its own event named ``abc`` (the query cut
  off) but the writes naming its ``bulkId:`` were recorded on ``abc?v=1``, a resource the log
  never saw created, judged as its first event;
* a create answered with no location: the writes naming its ``bulkId:`` were recorded as
  successes on the literal id ``bulkId:u0``, which any request may use for another
  resource: the log judged a second request's deactivation of another user against the
  first's state and named it ``user.noop``. Now ``warning``/``unknown`` (which resource it
  wrote is not known).

Held (guards): the pairing stays linear under hostile answers of 1,000 and 2,000
operations (counted calls of the pairing's helpers, not time): results out of order and
naming nothing, every result naming one resource, creates referencing each other in a
chain, duplicated results; a cycle of bulkId references records every operation once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from client.adapters import exchange
from tlog.scim.effects import classify

from .helpers import DEACTIVATE, USER, bulk_events

SP = "https://sp.test/v2"


def _create(bid: str, name: str) -> dict[str, Any]:
    return {
        "method": "POST",
        "path": "/Users",
        "bulkId": bid,
        "data": {"schemas": [USER], "userName": name},
    }


def _deactivate(path: str) -> dict[str, Any]:
    return {"method": "PATCH", "path": path, "data": DEACTIVATE}


def test_a_write_of_a_create_answered_with_a_query_names_the_created_resource() -> None:
    ops = [_create("u0", "n"), _deactivate("/Users/bulkId:u0")]
    results = [
        {"method": "POST", "bulkId": "u0", "location": SP + "/Users/abc?v=1", "status": "201"},
        {"method": "PATCH", "location": SP + "/Users/abc?v=1", "status": "200"},
    ]
    create, patch = bulk_events(ops, results)
    assert create["rid"] == "abc"
    assert patch["rid"] == "abc" and patch["outcome"] == "success", patch


def _judge(states: dict[str, Any], ev: dict[str, Any]) -> dict[str, Any]:
    """The log's judging of ``ev`` against the state of its resource (``rt``/``rid``)."""
    key = f"{ev['rt']}/{ev.get('rid')}"
    effect, state, _ = classify(states.get(key), ev)
    states[key] = state
    assert effect is not None
    return effect


def test_a_write_of_a_create_answered_without_a_location_claims_no_resource() -> None:
    ops = [_create("u0", "n"), _deactivate("/Users/bulkId:u0")]
    results = [
        {"method": "POST", "bulkId": "u0", "status": "201"},
        {"method": "PATCH", "status": "200"},
    ]
    states: dict[str, Any] = {}
    effects = []
    for req in ("req-1", "req-2"):  # two requests, two users, both answered so
        for ev in bulk_events(ops, results, req):
            effects.append((ev, _judge(states, ev)))
    for ev, effect in effects:
        if ev["op"] == "patch":
            assert ev["outcome"] == "warning" and ev["err"]["code"] == "unknown", ev
            assert effect["basis"] == "unknown", effect
            assert not any(a["a"] == "user.noop" for a in effect["acts"]), effect


def test_a_cycle_of_bulk_ids_records_each_operation_once() -> None:
    ops = [
        {"method": "POST", "path": "/Groups", "bulkId": f"g{i}", "data": {
            "displayName": f"g{i}", "members": [{"value": f"bulkId:g{(i + 1) % 3}"}]
        }}
        for i in range(3)
    ]  # fmt: skip
    results = [
        {"method": "POST", "bulkId": f"g{i}", "location": f"{SP}/Groups/G{i}", "status": "201"}
        for i in (2, 0, 1)
    ]
    evs = bulk_events(ops, results)
    assert sorted(ev["rid"] for ev in evs) == ["G0", "G1", "G2"]
    assert all(ev["outcome"] == "success" for ev in evs)


# --- linear pairing, counted -----------------------------------------------------------------

Hostile = Callable[[int], tuple[list[dict[str, Any]], list[dict[str, Any]]]]


def _unnamed_reversed(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ops = [
        _deactivate(f"/Users/u{i}") if i % 3 else {"method": "DELETE", "path": f"/Users/u{i}"}
        for i in range(n)
    ]
    results = [{"method": o["method"], "status": "200"} for o in reversed(ops)]
    return ops, results


def _all_one_resource(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ops = [_deactivate("/Users/same") for _ in range(n)]
    results = [{"method": "PATCH", "location": SP + "/Users/same", "status": "200"}] * (2 * n)
    return ops, results


def _chain(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    # each create's data names the next one's bulkId; each PATCH a create by bulkId:
    ops: list[dict[str, Any]] = []
    for i in range(n // 2):
        op = _create(f"b{i}", f"n{i}")
        op["data"]["x"] = f"bulkId:b{i + 1}" if i + 1 < n // 2 else "end"
        ops.append(op)
    ops += [_deactivate(f"/Users/bulkId:b{i}") for i in range(n // 2)]
    results = [
        {"method": "POST", "bulkId": f"b{i}", "location": f"{SP}/Users/U{i}", "status": "201"}
        for i in reversed(range(n // 2))
    ] + [{"method": "PATCH", "status": "200"} for _ in range(n // 2)]
    return ops, results


def _duplicated(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    ops = [_create(f"c{i}", f"m{i}") for i in range(n)]
    one = [
        {"method": "POST", "bulkId": f"c{i}", "location": f"{SP}/Users/C{i}", "status": "201"}
        for i in range(n)
    ]
    return ops, one + one[::-1] + [{"method": "POST", "status": "201"}] * n


COUNTED = (
    "_name",
    "_compatible",
    "_bid",
    "_res_method",
    "_op_method",
    "get_ci",
    "_created",
    "_bulk_refs",
)


def _calls(monkeypatch: pytest.MonkeyPatch, make: Hostile, n: int) -> int:
    count: Counter[str] = Counter()
    with monkeypatch.context() as mp:
        for name in COUNTED:
            real = getattr(exchange, name)

            def spy(*a: Any, _real: Any = real, _name: str = name, **k: Any) -> Any:
                count[_name] += 1
                return _real(*a, **k)

            mp.setattr(exchange, name, spy)
        ops, results = make(n)
        exchange._align(ops, results)
        exchange._run_order(ops)
    return sum(count.values())


# Calls per operation of the helpers above: ~14-27 in every case here; a pairing that
# looked for each result's operation from the first (red team 19's bug) makes ~n/2 each.
PER_OPERATION = 40


@pytest.mark.parametrize("make", [_unnamed_reversed, _all_one_resource, _chain, _duplicated])
def test_the_pairing_stays_linear_under_hostile_answers(
    monkeypatch: pytest.MonkeyPatch, make: Hostile
) -> None:
    for n in (1000, 4000):
        calls = _calls(monkeypatch, make, n)
        assert calls <= PER_OPERATION * n, (make.__name__, n, calls)
