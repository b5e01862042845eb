"""Red team 20: a split request's linked-part numbers (``x.part`` of ``x.parts``) as a
hostile submitter writes them.

Found (each failed before):

* the log's effects compare them as numbers, and ``x`` admits any JSON: ``"parts": "3"``,
  a null, a list, or a part number without a count made the whole submission (a batch
  too) a 500, which a relay retries for ever. Now the log's intake refuses them with a 400
  naming the field, nothing stored (every route: JSON, CBOR, the batch), and takes the
  numbers the adapter makes;
* ``tlog-client scim search``/``show`` named every missing part of an incomplete request on
  one line: a part ``0`` "of 1,000,000" was a line of a million numbers (``x.parts`` may be
  up to 2**53, which the client walked). Now it names the first ten and counts the rest.
"""

from __future__ import annotations

import json
import types
from typing import Any

import pytest

from client.scim import event_to_json
from client.scim.cbor import dumps_det
from client.tools.scim_cli import _Parts

from .actors import search_raw
from .conftest import Harness, group_event

BAD: list[dict[str, Any]] = [
    {"part": 0, "parts": "3"},
    {"part": "0", "parts": 3},
    {"part": 0, "parts": None},
    {"part": 0, "parts": [3]},
    {"part": 1},
    {"parts": 2},
    {"part": 3, "parts": 3},
    {"part": -1, "parts": 2},
    {"part": 0, "parts": 0},
    {"part": True, "parts": 2},
]


@pytest.mark.parametrize("x", BAD, ids=range(len(BAD)))
def test_part_numbers_that_are_not_numbers_are_a_400_on_every_route(
    harness: Harness, x: dict[str, Any]
) -> None:
    h = harness
    ev = group_event([b"\x01" * 16], req="rt20-parts")
    ev["x"] = x
    ok = group_event([b"\x02" * 16], req="rt20-ok")
    sent = [
        h.post_raw(event_to_json(ev).encode(), "application/json"),
        h.post_raw(dumps_det(ev), "application/cbor"),
        h.post_raw(
            json.dumps({"events": [json.loads(event_to_json(ok)), json.loads(event_to_json(ev))]})
            .encode(),
            "application/json",
            path="/v1/scim/events/batch",
        ),
    ]  # fmt: skip
    for r in sent:
        assert r.status_code == 400, (x, r.status_code, r.text)
        assert "$.x.part" in r.json()["error"], r.text
    assert h.log.latest.size == 0
    assert search_raw(h, req="rt20-parts")["results"] == []


def test_the_parts_the_adapter_makes_are_taken(harness: Harness) -> None:
    """Held (a guard): the rule refuses nothing the adapter writes."""
    for i, x in enumerate(({"part": 0, "parts": 2}, {"part": 1, "parts": 2, "first": "e"})):
        ev = group_event([bytes([i + 1]) * 16], req="rt20-split")
        ev["x"] = x
        assert harness.post_event(ev).status_code == 200, x
    assert len(search_raw(harness, req="rt20-split")["results"]) == 2


def test_an_incomplete_request_of_a_million_parts_is_named_in_one_short_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parts = _Parts()
    for part in (0, 5):
        ev = {"corr": {"req": "r-big"}, "x": {"part": part, "parts": 1_000_000}}
        parts.add(types.SimpleNamespace(event=ev))  # type: ignore[arg-type]
    parts.report()
    err = capsys.readouterr().err
    assert "request r-big is incomplete: part(s) 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, ..." in err
    assert "(999998 in all) of its 1000000 not found" in err
    assert len(err) < 1000
