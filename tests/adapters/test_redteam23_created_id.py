"""Red team 23: ``Answers.created_id`` (faith23's one rule for a single create's answer and
a bulk POST's result) against answers whose ids disagree in subtle ways.

Found (failed before): a location's id is percent-decoded (red team 21), and the
comparison of the ids an answer names decoded each of them again, so one decoded twice
matched: a body ``id`` of ``a b`` beside a location ``/Users/a%2520b`` (the resource
``a%20b``), or a ``Location`` of ``/Users/a%2520b`` beside a ``meta.location`` of
``/Users/a%20b`` (the resource ``a b``), named one created id. The ids are compared as
they are now (the body's as given, each location's decoded once): any difference is
"not known". Held (guards): case, a trailing slash, relative and absolute locations, IPv6
literal servers, a host with upper case or a trailing dot."""

from __future__ import annotations

from typing import Any

import pytest

from client.adapters.exchange import Answers

HOSTS = frozenset({("sp.example", None), ("::1", 8080)})
DISAGREE = "name different resources"
ELSEWHERE = "another resource type or server"

# (a create's location (a Location header, a bulk result's location), its body (a single
# create's answer, a bulk result's response)) -> the created id, or why it is not known
CASES: list[tuple[str, str | None, Any, str | None, str | None]] = [
    ("id decoded twice", "/v2/Users/a%2520b", {"id": "a b"}, None, DISAGREE),
    (
        "locations decoded twice",
        "/v2/Users/a%2520b",
        {"meta": {"location": "/v2/Users/a%20b"}},
        None,
        DISAGREE,
    ),
    ("an id with a percent", "/v2/Users/a%2520b", {"id": "a%20b"}, "a%20b", None),
    ("an encoded id", "/v2/Users/a%20b", {"id": "a b"}, "a b", None),
    ("case of the id", "/v2/Users/ABC", {"id": "abc"}, None, DISAGREE),
    ("case of the endpoint", "/v2/users/abc", {"id": "abc"}, "abc", None),
    ("a trailing slash", "/v2/Users/abc/", {"id": "abc"}, "abc", None),
    (
        "relative",
        "Users/abc",
        {"meta": {"location": "https://sp.example/v2/Users/abc"}},
        "abc",
        None,
    ),
    (
        "host upper case, trailing dot",
        "https://SP.Example./v2/Users/abc",
        {"id": "abc"},
        "abc",
        None,
    ),
    ("a dot id", None, {"id": ".."}, None, "names no resource"),
    ("a dot id and its location", "/v2/Users/..", {"id": "."}, None, "names no resource"),
    ("IPv6 literal", "http://[::1]:8080/v2/Users/abc", {"id": "abc"}, "abc", None),
    ("IPv6 default port", "http://[::1]/v2/Users/abc", {"id": "abc"}, None, ELSEWHERE),
    ("another IPv6", "http://[::2]:8080/v2/Users/abc", {"id": "abc"}, None, ELSEWHERE),
]


@pytest.mark.parametrize(("name", "loc", "body", "rid", "why"), CASES, ids=[c[0] for c in CASES])
def test_redteam23_created_ids_compared_as_named(
    name: str, loc: str | None, body: Any, rid: str | None, why: str | None
) -> None:
    answers = Answers(HOSTS)
    for got in (
        answers.created_id("/v2/Users", loc, body, ""),
        answers.result_id("/Users", {"location": loc, "response": body, "status": "201"}),
    ):
        assert got[0] == rid, (name, got)
        assert (got[1] is None) if why is None else (why in (got[1] or "")), (name, got)
