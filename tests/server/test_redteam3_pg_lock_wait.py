"""A frontend's commit waits for a lock another session holds (a frontend frozen or cut
off in the middle of its commit keeps the state row locked until the database ends its
session; docs/operations.md, "SCIM writes on any frontend").

Every other frontend's commits then wait, and their clients get 503 "the log's store has
not answered a commit within 10 s (a stalled or frozen disk?)", which points the operator
at the disks; nothing said which session held the log up, although the database knows.
Now a write that has not returned after ``lock_report_after`` seconds (5 s) is reported
once, at ERROR, with what PostgreSQL says it waits for: the blocking session's pid,
application and time in its transaction, and how to end it; or, with no lock, its wait
event (a synchronous standby not confirming, a slow disk).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tlog.log import Log
from tlog.pg import PgStorage

from .conftest import make_signer


def _wait_for(caplog: pytest.LogCaptureFixture, text: str) -> logging.LogRecord | None:
    for _ in range(600):  # a hang detector (60 s), not a timing bar
        for r in caplog.records:
            if text in r.getMessage():
                return r
        time.sleep(0.1)
    return None


def test_a_commit_waiting_for_another_sessions_lock_names_it(
    pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tlog.pg")
    st = PgStorage(pg_url)
    try:
        st.lock_report_after = 0.2
        log_ = Log(st, make_signer())
        log_.integrate([b"a"])
        # Another frontend, frozen after locking the state row in its commit.
        frozen = psycopg.connect(pg_url, application_name="tlog")
        frozen.execute("SELECT 1 FROM tlog_state WHERE id = 1 FOR UPDATE")
        pid = frozen.info.backend_pid
        done: list[object] = []
        t = threading.Thread(target=lambda: done.append(log_.integrate([b"b"])), daemon=True)
        t.start()
        rec = _wait_for(caplog, "waited")
        frozen.rollback()  # the frozen frontend's session ends
        frozen.close()
        t.join(60)
        assert rec is not None, [r.getMessage() for r in caplog.records]
        msg = rec.getMessage()
        assert f"pid {pid}" in msg and "pg_terminate_backend" in msg and "'tlog'" in msg
        assert done and log_.latest.size == 2  # the commit went through once released
        assert sum("waited" in r.getMessage() for r in caplog.records) == 1  # once per write
    finally:
        st.close()
