"""Red team 22: an auditor's listing (``ScimAuditClient.search_all``) against a log whose
``next`` cursor goes round: the same cursor again, an earlier one, or a fresh cursor over
results already given. Every page verifies (the events are the log's own), so before this
the listing never ended, yielding the same events again and again (a hang, and an audit
report counting each event many times). Now the listing ends in a
:class:`VerificationError` naming the log's broken promise: one page per cursor, results in
log order (by log time, then by index), each once. An honest log's listing is unchanged
(held: ``tests/scim_service/test_search.py``)."""

from __future__ import annotations

import itertools

import httpx
import pytest

from client.formats.merkle import VerificationError
from client.net.scim_audit import ScimAuditClient

from .conftest import URL, Harness, user_event

EVENTS = 6
LIMIT = 2


def _looping(h: Harness, replay: bool) -> httpx.Client:
    """The log in process, its search answers going round: ``replay``, every page is the
    first page again under a fresh cursor; else the page after a cursor's page is named by
    that same cursor."""

    def handler(request: httpx.Request) -> httpx.Response:
        url = request.url
        cursor = url.params.get("cursor")
        if replay and url.path == "/v1/scim/events":
            url = url.copy_remove_param("cursor")
        r = h.client.request(request.method, str(url), headers=dict(request.headers))
        if url.path != "/v1/scim/events" or r.status_code != 200 or cursor is None:
            ctype = r.headers.get("content-type", "")
            return httpx.Response(r.status_code, content=r.content, headers={"content-type": ctype})
        d = r.json()
        d["next"] = cursor + "x" if replay else cursor
        return httpx.Response(200, json=d)

    return httpx.Client(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("replay", [False, True], ids=["same-cursor", "first-page-again"])
def test_redteam22_a_looping_cursor_ends_the_listing(harness: Harness, replay: bool) -> None:
    h = harness
    for i in range(EVENTS):
        assert h.post_event(user_event(f"u-{i}", req=f"req-{i}")).status_code == 200
    honest = list(h.auditor().search_all(limit=LIMIT))
    assert len(honest) > EVENTS  # the events and the log's own access records
    a = ScimAuditClient(URL, h.tok["aud1"], h.vkey, http=_looping(h, replay))
    got: list[int] = []
    with pytest.raises(VerificationError, match=r"cursor|log order"):
        # before: the listing went on for ever (the cap only ends this test)
        got.extend(r.index for r in itertools.islice(a.search_all(limit=LIMIT), 10 * EVENTS))
    assert len(got) == len(set(got)), "no event given twice"
