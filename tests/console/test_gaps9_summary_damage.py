"""gaps9: one damaged stored checkpoint no longer fails the console summary as a whole.

``GET /v1/ui/summary`` reads up to 64 stored checkpoints for its chart. On main one
checkpoint record that was not UTF-8 any more made the whole answer a 503 ("the console
summary could not be read"), and one whose signature no longer verified was handed to the
page as if it were the log's. Now a stored checkpoint that does not verify under the log's
key is left out of the chart and counted (``"damaged": {"checkpoint": n}``), logged once at
ERROR, and stays refused where it is served (the proofs at that size answer 503) and
reported by ``tlog fsck``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.server.conftest import make_signer
from tests.support import serve_config
from tlog.fsck import fsck
from tlog.server import build_app
from tlog.storage import u64


@pytest.mark.parametrize("how", ["not-utf8", "signature", "other-size"])
def test_one_damaged_checkpoint_leaves_the_rest_of_the_summary(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, log_, tokens = build_app(serve_config(tmp_path, None, batch_age_ms=0.0), make_signer())
    st = log_.storage
    token, _ = tokens.create("submitter", tenant="t1")
    try:
        with TestClient(app) as c:
            auth = {"Authorization": f"Bearer {token}"}
            for i in range(20):
                assert c.post("/v1/entries", content=b"e%d" % i, headers=auth).status_code == 200
            with st.read() as rv:
                sizes = [n for n, _ in rv.checkpoints()]
                victim = sizes[len(sizes) // 2]
                good = rv.checkpoint(victim)
                other = rv.checkpoint(sizes[1])
            assert good is not None and other is not None
            bad = {
                "not-utf8": good[:10] + b"\xff\xfe" + good[12:],
                "signature": good[:-6] + bytes([good[-6] ^ 1]) + good[-5:],
                "other-size": other,  # a valid note, of another size
            }[how]
            with st.env.begin(write=True) as txn:
                txn.put(u64(victim), bad, db=st.db_checkpoints)
            log_.drop_caches()
            with caplog.at_level(logging.ERROR, logger="tlog"):
                r = c.get("/v1/ui/summary")
                assert r.status_code == 200, r.text
                doc = r.json()
                assert doc["tree_size"] == 20
                shown = [p["size"] for p in doc["history"]]
                assert victim not in shown and 20 in shown and len(shown) >= 10
                assert doc["damaged"] == {"checkpoint": 1}
                # again (a new checkpoint: the summary is computed again): logged once
                assert c.post("/v1/entries", content=b"more", headers=auth).status_code == 200
                r = c.get("/v1/ui/summary")
                assert r.status_code == 200 and r.json()["damaged"] == {"checkpoint": 1}
            logged = [
                rec
                for rec in caplog.records
                if rec.levelno >= logging.ERROR and "left out of the console summary" in rec.msg
            ]
            assert len(logged) == 1, [rec.getMessage() for rec in caplog.records]
            # a number for the monitoring too (the log's /metrics answers 200 with it)
            m = c.get("/metrics")
            assert m.status_code == 200
            assert 'tlog_store_damaged_reads_total{kind="checkpoint"}' in m.text
            assert 'tlog_store_damaged_reads_total{kind="checkpoint"} 0.0' not in m.text
            # never hidden: that checkpoint is still refused where served, fsck reports it
            r = c.get(f"/v1/proof/inclusion?index=0&tree_size={victim}")
            assert r.status_code == 503, (r.status_code, r.text)
    finally:
        st.close()
    rep = fsck(st.__class__(st.path))
    assert not rep.ok
