"""gaps9: the log's /metrics counts the reads that met a damaged stored record.

A damaged record is refused where it would be served (503 with a reason, a CRITICAL log
line); now it is also a number a monitoring scrape sees, by kind, while ``/metrics`` itself
keeps answering 200 (it reads no stored record but the tree size).
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import Harness


def _damaged(text: str) -> dict[str, float]:
    return {
        s.labels["kind"]: s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "tlog_store_damaged_reads_total"
    }


@pytest.mark.lmdb_only("damages LMDB records in place")
@pytest.mark.parametrize(
    ("what", "path", "kind"),
    [
        ("checkpoint", "/v1/proof/inclusion?index=2&tree_size=10", "checkpoint"),
        ("entry", "/v1/entries/5", "entry"),
        ("tile", "/v1/proof/inclusion?index=2", "tile"),
    ],
)
def test_damaged_reads_are_counted_on_metrics(
    harness: Harness, what: str, path: str, kind: str
) -> None:
    for i in range(20):
        assert harness.add(b"e-%d" % i).status_code == 200
    r = harness.client.get("/metrics")
    assert r.status_code == 200
    assert _damaged(r.text) == {"checkpoint": 0, "entry": 0, "dedup": 0, "tile": 0}
    harness.damage(what)
    assert harness.client.get(path).status_code == 503
    r = harness.client.get("/metrics")
    assert r.status_code == 200, r.text
    got = _damaged(r.text)
    assert got[kind] >= 1, got
    assert sum(got.values()) == got[kind]
