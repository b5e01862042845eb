"""gaps9: the console page alarms on the damaged checkpoints the summary reports.

The summary now leaves a stored checkpoint that does not verify out of its history (one
damaged record no longer fails the whole summary) and counts it in ``damaged.checkpoint``;
before, the page met the damaged note in the history and alarmed. It must still alarm.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Live
from .test_browser import open_console, page  # noqa: F401 - the page fixture

pytestmark = pytest.mark.slow


def test_damaged_checkpoints_reported_by_the_summary_raise_the_alarm(
    page: Any,  # noqa: F811
    live: Live,
) -> None:
    def damaged(q: str, doc: dict[str, Any]) -> dict[str, Any]:
        doc["damaged"] = {"checkpoint": 2}
        return doc

    live.tamper.rules["/v1/ui/summary"] = damaged
    open_console(page, live)
    page.wait_for_selector("#alarm:not([hidden])")
    assert "2 stored checkpoint(s) of this log are damaged" in page.inner_text("#alarm")


def test_no_alarm_without_damage(page: Any, live: Live) -> None:  # noqa: F811
    open_console(page, live)
    assert page.is_hidden("#alarm")
