"""Red team 25: an auditor's listing (``ScimAuditClient.search_all``) against a log whose
``next`` cursor does not move on as the log's cursors do.

Red team 22 ended a listing whose cursor went round, but took the cursor as opaque: a log
answering pages of no results, each under a cursor never named before, had the listing go
on for ever (a hang, one logged access a page); and a log naming as a full page's cursor a
later event than the page's last had the listing skip the events between, silently. The
cursor is read now as the log makes it (``ts ‖ leaf hash`` of the page's last result, or of
the end of a millisecond): a full page's cursor must name its last result, a millisecond's
end must come after everything given, and a listing names no more millisecond ends than
the log's events could make. A genuine log lists as before (``test_search.py``, red team
22's and 24's tests, both backends).
"""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.merkle import VerificationError
from client.net.scim_audit import ScimAuditClient
from client.tools.stream import Sink, stream

from .conftest import URL, Harness, user_event

EVENTS = 6
LIMIT = 2
# The hostile log stops answering after this many pages (a 503): it only ends a test
# before the fix, which went on asking.
REQUESTS_CAP = 5_000


def _forwarding(h: Harness, page: Any, cap: int) -> httpx.Client:
    """The log in process, each search page rewritten by ``page(answer, n, request)`` (``n``:
    the search requests so far, at most ``cap``), everything else as the log answers it."""
    count = itertools.count(1)

    def handler(request: httpx.Request) -> httpx.Response:
        r = h.client.request(request.method, str(request.url), headers=dict(request.headers))
        if request.url.path != "/v1/scim/events" or r.status_code != 200:
            ctype = r.headers.get("content-type", "")
            return httpx.Response(r.status_code, content=r.content, headers={"content-type": ctype})
        n = next(count)
        if n > cap:
            return httpx.Response(503, json={"error": "the test's cap"})
        return httpx.Response(200, json=page(r.json(), n, request))

    return httpx.Client(transport=httpx.MockTransport(handler))


def _ms_end(ts: int) -> str:
    return base64.b64encode(ts.to_bytes(8, "big") + b"\xff" * 32).decode()


def _logged(h: Harness) -> list[int]:
    for i in range(EVENTS):
        assert h.post_event(user_event(f"u-{i}", req=f"req-{i}")).status_code == 200
    return [r.index for r in h.auditor().search_all(limit=LIMIT)]


def test_redteam25_empty_pages_under_fresh_cursors_end_the_listing(harness: Harness) -> None:
    """Each page empty (the log's first answer again, its checkpoint and access record),
    its cursor a millisecond's end one later than the last: before, the listing asked for
    pages until the log stopped answering (here, the test's cap)."""
    h = harness
    _logged(h)
    first: list[httpx.Response] = []
    count = itertools.count(1)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/scim/events" or not first:
            r = h.client.request(request.method, str(request.url), headers=dict(request.headers))
            if request.url.path != "/v1/scim/events":
                ctype = r.headers.get("content-type", "")
                return httpx.Response(
                    r.status_code, content=r.content, headers={"content-type": ctype}
                )
            first.append(r)
        n = next(count)
        if n > REQUESTS_CAP:
            return httpx.Response(503, json={"error": "the test's cap"})
        d = first[0].json()
        return httpx.Response(200, json={**d, "results": [], "next": _ms_end(10**12 + n)})

    a = ScimAuditClient(
        URL, h.tok["aud1"], h.vkey, http=httpx.Client(transport=httpx.MockTransport(handler))
    )
    with pytest.raises(VerificationError, match="millisecond ends"):
        list(a.search_all(limit=LIMIT))


def test_redteam25_a_cursor_past_the_pages_last_result_is_refused(harness: Harness) -> None:
    """The log names as a full page's cursor the cursor of the page after it: the listing
    skipped that page's events, never listed (here it also never ended, the log's own reads
    of the page after adding access records as fast as it skipped them)."""
    h = harness
    honest = _logged(h)
    assert len(honest) > 2 * LIMIT

    def page(d: dict[str, Any], _: int, request: httpx.Request) -> dict[str, Any]:
        if d["next"] is None:
            return d
        url = request.url.copy_set_param("cursor", d["next"])
        after = h.client.get(str(url), headers=dict(request.headers)).json()
        return {**d, "next": after["next"]} if after["next"] is not None else d

    a = ScimAuditClient(URL, h.tok["aud1"], h.vkey, http=_forwarding(h, page, 4 * EVENTS))
    got: list[int] = []
    with pytest.raises(VerificationError, match="last result"):
        got.extend(r.index for r in a.search_all(limit=LIMIT))
    assert set(got) <= set(honest)


class _Kept(Sink):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def send(self, records: Sequence[dict[str, Any]]) -> None:
        self.records.extend(records)


def test_redteam25_a_stream_against_a_log_going_round_ends(
    harness: Harness, tmp_path: Path
) -> None:
    """``tlog stream`` followed the cursor on its own: red team 22's log, naming a page's
    own cursor as its next, had it read the same page for ever (its events not new, so
    nothing delivered and nothing to end the run). It reads its pages as the listing does
    now: the run ends in a VerificationError."""
    h = harness
    _logged(h)

    def page(d: dict[str, Any], _: int, request: httpx.Request) -> dict[str, Any]:
        cursor = request.url.params.get("cursor")
        return {**d, "next": cursor} if cursor is not None else d

    a = ScimAuditClient(URL, h.tok["aud1"], h.vkey, http=_forwarding(h, page, 4 * EVENTS))
    sink = _Kept()
    with pytest.raises(VerificationError, match="cursor"):
        stream(a, sink, tmp_path / "cursor.json", origin="t", page=LIMIT, settle_ms=0)
    assert len(sink.records) == len({json.dumps(r, sort_keys=True) for r in sink.records})
