"""Red team 31 found: retention expiry shreds, for good, what the wall clock says is past
its retention; a wall clock stepped forward while the server runs (NTP stepping a clock set
wrong, an operator's ``date -s``, a VM's clock) would shred what is not due, with an
ordinary ``tlog.expiry`` event. Now the wall clock is read with ``CLOCK_BOOTTIME`` at the
first expiry run, and a later run for which the wall clock went more than an hour further
than the time that passed is refused (409, an ERROR line) until a restart; nothing is
shredded. The step is made by holding ``CLOCK_BOOTTIME`` back (the machine's clock is
shared and not touched): the same difference as the wall clock stepped forward.

Both store backends (the ``database`` fixture)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tlog.scim import erasure
from tlog.server import build_app

from ..support import serve_config
from .conftest import T1, make_signer


def test_expiry_after_the_wall_clock_stepped_forward_is_refused(
    tmp_path: Path,
    database: str | None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, log_, tokens = build_app(serve_config(tmp_path, database), make_signer())
    po, _ = tokens.create("privacy-officer", person="Dana")
    admin, _ = tokens.create("admin")
    with TestClient(app) as c:
        r = c.put(
            "/v1/scim/retention",
            json={"tenant": T1, "days": 30},
            headers={"Authorization": f"Bearer {po}"},
        )
        assert r.status_code == 200, r.text
        hs = {"Authorization": f"Bearer {admin}"}
        assert c.post("/v1/scim/expire", json={}, headers=hs).status_code == 200  # the base
        assert c.post("/v1/scim/expire", json={}, headers=hs).status_code == 200  # no step
        real = erasure._boot_ms
        monkeypatch.setattr(erasure, "_boot_ms", lambda: real() - 2 * 3600 * 1000)
        with caplog.at_level(logging.ERROR, logger="tlog"):
            r = c.post("/v1/scim/expire", json={}, headers=hs)
        assert r.status_code == 409, r.text
        assert "wall clock went" in r.text and "restart" in r.text, r.text
        assert any("retention expiry refused" in m for m in caplog.messages), caplog.messages
        # refused until a restart, whatever the clocks say next
        monkeypatch.setattr(erasure, "_boot_ms", real)
        assert c.post("/v1/scim/expire", json={}, headers=hs).status_code == 409
    log_.storage.close()
