"""``GET /v1/ui/summary`` is public and cost the store a full walk per request.

Each answer reads up to :data:`tlog.ui.HISTORY_POINTS` checkpoints, with an entry and the
cosignatures of each (about 190 statements on PostgreSQL), for anyone, without a token: a
client asking in a loop multiplied its requests by that into the database and kept the
read threads busy, so every tenant's reads waited behind it (and answered 503 after
``--storage-timeout``). The answer depends only on the log's checkpoints and the witnesses'
state, so it is now computed once per published checkpoint and tree size and reused for
:data:`tlog.ui.SUMMARY_TTL` seconds (the witnesses' last errors may lag that much).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

import tlog.ui
from tests.server.conftest import make_signer
from tests.support import serve_config
from tlog.server import build_app


def test_the_summary_is_not_recomputed_per_request(
    tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tlog.ui, "SUMMARY_TTL", 3600.0)  # no expiry during the test
    app, log_, tokens = build_app(serve_config(tmp_path, database, batch_age_ms=0.0), make_signer())
    st = log_.storage
    reads = [0]
    orig = st.read

    def counted():  # type: ignore[no-untyped-def]
        reads[0] += 1
        return orig()

    st.read = counted  # type: ignore[method-assign]
    token, _ = tokens.create("submitter", tenant="t1")
    try:
        with TestClient(app) as c:
            auth = {"Authorization": f"Bearer {token}"}
            for i in range(20):
                assert c.post("/v1/entries", content=b"e%d" % i, headers=auth).status_code == 200
            first = c.get("/v1/ui/summary")
            assert first.status_code == 200 and first.json()["tree_size"] == 20
            before = reads[0]
            for _ in range(10):
                again = c.get("/v1/ui/summary")
                assert again.json() == first.json()
            assert reads[0] == before, f"{reads[0] - before} store reads for 10 summaries"
            # A new checkpoint is shown at once.
            assert c.post("/v1/entries", content=b"new", headers=auth).status_code == 200
            r = c.get("/v1/ui/summary")
            assert r.json()["tree_size"] == 21 and r.json()["latest_size"] == 21
    finally:
        st.read = orig  # type: ignore[method-assign]
        st.close()
