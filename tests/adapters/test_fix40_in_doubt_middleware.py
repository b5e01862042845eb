"""fix40: what the proxy's writes do once its outbox found a commit in doubt (ops31: the
file system read-only right after an fsync that answered success). Found (review 40): once
the file system took writes again, the middleware's probe of the outbox worked, writes were
forwarded to the SP again and their events acknowledged, appended after the in-doubt WAL
frame that SQLite's recovery may drop at the next start.

Expected: the failed add is answered as any failed add (the SP applied it: a direct
delivery, here the log is down, so 503 "could not be recorded"); from then on, even with the
file system writable again, each write is refused before the SP (503 "not applied") and the
backlog behind ``/.tlog/readyz`` says why, until a restart. The same for a durable intent
found in doubt (the journal's state says why: ``intent_journal_in_doubt``). Each failed
before the fix (the write after the remount was applied and answered 201)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox, OutboxError
from tests.support import OlderKernel

from .helpers import SCIM_TOKEN, FakeLog, relay_for, scim_asgi_app, user

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}


def test_writes_after_an_outbox_commit_in_doubt_are_refused_before_the_sp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "box").mkdir()
    kernel = OlderKernel(monkeypatch, tmp_path / "box")
    log = FakeLog()
    log.down = True  # nothing drains the outbox, and a direct delivery fails
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    relay = relay_for(outbox, log)
    mw = AuditMiddleware(
        scim_asgi_app(), AuditConfig(tenant="t1", sp_id="sp1"), outbox, relay, own=True
    )
    with TestClient(mw, base_url="http://scim.test") as client:

        def exists(name: str) -> bool:
            found = client.get(
                "/v2/Users", params={"filter": f'userName eq "{name}"'}, headers=AUTH
            ).json()
            return bool(found["totalResults"])

        assert client.post("/v2/Users", json=user("kept"), headers=AUTH).status_code == 201
        kernel.fail()
        r = client.post("/v2/Users", json=user("in-doubt"), headers=AUTH)
        assert r.status_code == 503 and "processed" in r.json()["detail"], r.text
        kernel.failed = False  # the operator remounts read-write, without a restart
        for name in ("after-remount", "again"):
            r = client.post("/v2/Users", json=user(name), headers=AUTH)
            assert r.status_code == 503 and "not applied" in r.json()["detail"], r.text
            assert not exists(name)  # refused before the SP
        with pytest.raises(OutboxError, match="restart"):
            mw.backlog()  # /.tlog/status and /.tlog/readyz: 503 with the reason
        assert mw.writes_taken() is False


def test_writes_after_a_durable_intent_in_doubt_are_refused_before_the_sp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "box").mkdir()
    kernel = OlderKernel(monkeypatch, tmp_path / "box")
    log = FakeLog()
    outbox = Outbox(tmp_path / "box" / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", durable_intents=True)
    mw = AuditMiddleware(scim_asgi_app(), config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test") as client:

        def exists(name: str) -> bool:
            found = client.get(
                "/v2/Users", params={"filter": f'userName eq "{name}"'}, headers=AUTH
            ).json()
            return bool(found["totalResults"])

        assert client.post("/v2/Users", json=user("kept"), headers=AUTH).status_code == 201
        kernel.fail()
        r = client.post("/v2/Users", json=user("in-doubt"), headers=AUTH)
        assert r.status_code == 503 and "not applied" in r.json()["detail"], r.text
        kernel.failed = False  # the operator remounts read-write, without a restart
        for name in ("after-remount", "again"):
            r = client.post("/v2/Users", json=user(name), headers=AUTH)
            assert r.status_code == 503 and "not applied" in r.json()["detail"], r.text
            assert not exists(name)  # refused before the SP
        doubt = mw.journal_state()["intent_journal_in_doubt"]
        assert doubt is not None and "restart" in doubt  # /.tlog/readyz: intent_journal
