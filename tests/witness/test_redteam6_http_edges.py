"""Red team 6: ``tlog-witness serve`` answers HEAD wherever it answers GET.

``HEAD /healthz``, ``/readyz`` and ``/metrics`` were ``404 not found`` (only GET was routed
to them), so a load balancer probing with HEAD took a healthy witness for a missing one.
"""

from __future__ import annotations

from pathlib import Path

import httpx

from client.net.witness_client import origin_hash
from tests.witness.helpers import ORIGIN, FakeLog, events, make_witness, witness_serving


def test_head_answers_as_get_without_the_body(tmp_path: Path) -> None:
    log = FakeLog(events(5))
    w = make_witness(tmp_path / "w.db", [log.witnessed_log()])
    w.add_checkpoint(log.body(0))
    with witness_serving(w) as srv, httpx.Client(base_url=srv.url) as http:
        for path in (
            "/healthz",
            "/readyz",
            "/metrics",
            "/evidence",
            f"/{origin_hash(ORIGIN)}/checkpoint",
        ):
            got, head = http.get(path), http.head(path)
            assert got.status_code == 200, (path, got.status_code)
            assert head.status_code == 200 and head.content == b"", (path, head.status_code)
            assert head.headers["content-type"] == got.headers["content-type"], path
        assert http.head("/nope").status_code == 404
