"""Red team 24, a guard (held): an auditor's listing (``ScimAuditClient.search_all``, which
since red team 22 ends in a ``VerificationError`` on results out of log order or a cursor
named twice) against a real log while writers land events, several in one millisecond,
on both backends. A genuine log must list cleanly: no ``VerificationError``, no event
twice, and every event acknowledged before the listing began is in it (each page read
also appends the log's own access event, so writes land between every two pages)."""

from __future__ import annotations

import dataclasses
import itertools
import threading

import pytest

from .actors import erase
from .conftest import BASE_TS, Harness, user_event

WRITERS = 3
EACH = 12


@pytest.mark.parametrize("max_scan", [3, 10_000])
def test_redteam24_a_listing_while_writes_land_lists_cleanly(
    harness: Harness, max_scan: int
) -> None:
    h = harness
    ticks = itertools.count()
    h.service.clock = lambda: BASE_TS + next(ticks) // 4  # four stagings a millisecond
    h.service.limits = dataclasses.replace(h.service.limits, max_scan=max_scan)
    for i in range(6):
        assert h.post_event(user_event(f"u-pre-{i}", req=f"pre-{i}")).status_code == 200
    before = {r.index for r in h.auditor().search_all(limit=100)}
    failures: list[str] = []
    start = threading.Barrier(WRITERS + 1)

    def write(w: int) -> None:
        start.wait()
        for i in range(EACH):
            r = h.post_event(user_event(f"u-{w}-{i}", req=f"w{w}-{i}"))
            if r.status_code != 200:
                failures.append(f"{w}/{i}: {r.status_code}")

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    start.wait()
    listings = []
    try:
        while any(t.is_alive() for t in threads):
            listings.append([r.index for r in h.auditor().search_all(limit=2)])
    finally:
        for t in threads:
            t.join(60)
    overlapped = len(listings)
    listings.append([r.index for r in h.auditor().search_all(limit=3)])
    assert not failures, failures
    assert overlapped >= 1, "no listing ran while the writers wrote"
    for got in listings:
        assert len(got) == len(set(got)), "an event given twice"
        assert before <= set(got), "an event acknowledged before the listing is missing"
    final = {r.event["corr"]["req"] for r in h.auditor().search_all(limit=100) if r.event}
    assert {f"w{w}-{i}" for w in range(WRITERS) for i in range(EACH)} <= final


def test_redteam24_events_erased_between_pages_list_cleanly(harness: Harness) -> None:
    """Users erased while a listing is between pages: their events on pages read and on
    pages to come, and the erasure's own events landing: every event listed once, in log
    order, none refused (an erased event lists with no body)."""
    h = harness
    ticks = itertools.count()
    h.service.clock = lambda: BASE_TS + next(ticks) // 3
    for i in range(12):
        assert h.post_event(user_event(f"u-e{i % 4}", req=f"e-{i}")).status_code == 200
    seen: list[int] = []
    erased: set[str] = set()
    for r in h.auditor().search_all(limit=2):
        seen.append(r.index)
        if len(seen) % 2 == 0 and len(erased) < 4:  # between two pages
            rid = f"u-e{len(erased)}"
            erase(h, rid)
            erased.add(rid)
    assert len(seen) == len(set(seen)) and erased == {f"u-e{i}" for i in range(4)}
    listed = {r.event["corr"]["req"] for r in h.auditor().search_all(limit=100) if r.event}
    assert listed.isdisjoint({f"e-{i}" for i in range(12)})  # all four erased
