"""Review 9: the relay's "resumed" line names when the failures began, whatever they were.

The line said ``since <the time the relay last became unhealthy>``: that time was set only by
a failed delivery to the log, so a run of outbox errors (a full disk under the outbox) was
reported as ``since `` (nothing), or since an older outage that had long ended.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from client.adapters.outbox import Outbox, OutboxError
from harness.scim import event_record

from .helpers import FakeLog, relay_for


def test_resumed_after_outbox_errors_says_since_when(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "client.adapters.relay")
    outbox = Outbox(tmp_path / "o.sqlite")
    real = outbox.pending
    fails = [OutboxError("disk full"), OutboxError("disk full")]

    def pending(*a: Any, **kw: Any) -> Any:
        if fails:
            raise fails.pop(0)
        return real(*a, **kw)

    outbox.pending = pending  # type: ignore[method-assign]
    outbox.put([event_record(i) for i in range(3)])
    log = FakeLog()
    relay = relay_for(outbox, log)
    relay.start()
    try:
        assert relay.flush(10)
    finally:
        relay.stop()
        outbox.close()
    resumed = [r.getMessage() for r in caplog.records if "resumed" in r.getMessage()]
    assert len(resumed) == 1, resumed
    assert "after 2 failed attempt(s) since 20" in resumed[0], resumed[0]
