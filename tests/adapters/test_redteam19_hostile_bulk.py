"""Red team 19: a hostile or broken SP answering a bulk request, against the pairing of
results with operations by what they name (``exchange._align``, red team 18). The adapter
must never record an outcome it cannot know: a result it cannot place means the answer was
not understood, so an operation left without a result is ``warning``/``unknown``, never
``skipped`` ("stopped before this operation", i.e. not applied). In process, through the
adapter's own event builder (the component under test), as red team 7 did."""

from __future__ import annotations

from typing import Any

from .helpers import DEACTIVATE, USER, bulk_events

SP = "https://sp.test/v2"


def _post(bid: str) -> dict[str, Any]:
    return {"method": "POST", "path": "/Users", "bulkId": bid, "data": {"schemas": [USER]}}


def _unknown(ev: dict[str, Any]) -> bool:
    return ev["outcome"] == "warning" and ev["err"]["code"] == "unknown"


def test_a_result_naming_a_resource_of_another_type_is_not_its_result() -> None:
    # Only the last segment of the location was compared: a PATCH of /Users/a took the
    # success of /Groups/a (by name, then again by the in-order walk).
    ops = [{"method": "PATCH", "path": "/Users/a", "data": DEACTIVATE}]
    (ev,) = bulk_events(ops, [{"method": "PATCH", "location": SP + "/Groups/a", "status": "200"}])
    assert _unknown(ev), ev
    # (A POST's result is its by bulkId: where the SP says it created the resource is
    # its word, as for a create outside a bulk request.)


def test_a_result_naming_a_bulk_id_not_asked_leaves_the_others_unknown() -> None:
    ops = [_post("a"), {"method": "DELETE", "path": "/Users/u1"}]
    results = [
        {"method": "POST", "bulkId": "zz", "location": SP + "/Users/9", "status": "201"},
        {"method": "DELETE", "location": SP + "/Users/u1", "status": "204"},
    ]
    create, delete = bulk_events(ops, results)
    assert _unknown(create), create  # was "skipped": said not applied
    assert delete["outcome"] == "success" and delete["rid"] == "u1"
    assert all("not understood" in ev["x"]["answer"] for ev in (create, delete))


def test_duplicate_and_extra_results_never_stand_for_another_operation() -> None:
    ops = [
        {"method": "PATCH", "path": "/Users/a", "data": DEACTIVATE},
        {"method": "DELETE", "path": "/Users/b"},
    ]
    results = [
        {"method": "PATCH", "location": SP + "/Users/a", "status": "200"},
        {"method": "PATCH", "location": SP + "/Users/a", "status": "400"},
        {"method": "DELETE", "location": SP + "/Users/c", "status": "204"},
    ]
    patch, delete = bulk_events(ops, results)
    assert patch["outcome"] == "success" and patch["res"]["st"] == 200
    assert _unknown(delete), delete


def test_more_results_than_operations_keep_the_ones_that_name_them() -> None:
    # Holds: guards that an extra result changes nothing the named ones say.
    ops = [{"method": "DELETE", "path": "/Users/a"}]
    results = [
        {"method": "DELETE", "location": SP + "/Users/a", "status": "204"},
        {"method": "DELETE", "location": SP + "/Users/a", "status": "404"},
        "not a result",
        {},
    ]
    (ev,) = bulk_events(ops, results)
    assert ev["outcome"] == "success" and ev["res"]["st"] == 204


def test_an_unreadable_status_is_not_a_failure() -> None:
    # A status that is no integer was read as 500: "failure", which the SP never said.
    ops = [{"method": "DELETE", "path": "/Users/a"}, {"method": "DELETE", "path": "/Users/b"}]
    for bad in ("two hundred", None, True, [204], "2e2"):
        results = [
            {"method": "DELETE", "location": SP + "/Users/a", "status": bad},
            {"method": "DELETE", "location": SP + "/Users/b", "status": 204},
        ]
        a, b = bulk_events(ops, results)
        assert _unknown(a), (bad, a)
        assert b["outcome"] == "success"


def test_a_gigantic_bulk_answer_is_paired_in_linear_time() -> None:
    # 20,000 operations answered in order: the pairing looked for each result's operation
    # from the first one (quadratic: 2*10^8 comparisons, minutes); now by a map.
    n = 20_000
    ops = [{"method": "DELETE", "path": f"/Users/u{i}"} for i in range(n)]
    results = [
        {"method": "DELETE", "location": f"{SP}/Users/u{i}", "status": "204"} for i in range(n)
    ][::-1]
    events = bulk_events(ops, results)
    assert len(events) == n
    assert all(ev["outcome"] == "success" for ev in events)
    assert [ev["rid"] for ev in events[:3]] == ["u0", "u1", "u2"]


def test_a_success_whose_response_is_an_error_is_not_known() -> None:
    ops = [{"method": "DELETE", "path": "/Users/a"}, {"method": "DELETE", "path": "/Users/b"}]
    error = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"], "status": "409"}
    for response in (error, {"status": 500, "detail": "no"}):
        results = [
            {
                "method": "DELETE",
                "location": SP + "/Users/a",
                "status": "204",
                "response": response,
            },
            {"method": "DELETE", "location": SP + "/Users/b", "status": "204", "response": {}},
        ]
        a, b = bulk_events(ops, results)
        assert _unknown(a) and "error" in a["err"]["reason"], a
        assert b["outcome"] == "success"  # a response that is no error changes nothing


def test_fewer_results_without_a_cause_to_stop_are_not_known() -> None:
    # RFC 7644 §3.7.3: an SP ends a bulk request early only after failOnErrors errors.
    # Without them, an operation left without a result was recorded "skipped" (not
    # applied), which the adapter cannot know.
    ops = [{"method": "DELETE", "path": f"/Users/{u}"} for u in ("a", "b", "c")]
    ok = {"method": "DELETE", "location": SP + "/Users/a", "status": "204"}
    bad = {**ok, "status": "500"}
    for request, results in (({}, [ok]), ({"failOnErrors": 1}, [ok]), ({"failOnErrors": 2}, [bad])):
        a, b, c = bulk_events(ops, results, **request)
        assert a["res"]["st"] in (204, 500), a
        assert _unknown(b) and _unknown(c), (request, b)
    # Held: where the SP had its cause (failOnErrors 1, one error), the rest is skipped.
    a, b, c = bulk_events(ops, [bad], failOnErrors=1)
    assert a["outcome"] == "failure" and b["outcome"] == c["outcome"] == "skipped", b
    assert b["err"]["code"] == "not_processed"
