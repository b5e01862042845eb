"""gaps9: the log's /metrics counts the reads that met a damaged stored record.

A damaged record is refused where it would be served (503 with a reason, a CRITICAL log
line); now it is also a number a monitoring scrape sees, by kind, while ``/metrics`` itself
keeps answering 200 (it reads no stored record but the tree size).
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import Harness
from tlog.backend import tile_key, u64


def _damage(h: Harness, what: str) -> None:
    """One stored record damaged in place (the caches dropped, so reads meet it)."""
    st = h.log.storage
    with st.env.begin(write=True) as txn:
        if what == "entry":
            txn.put(u64(5), b"tampered", db=st.db_entries)
        elif what == "tile":
            blob = bytearray(txn.get(tile_key(0, 0), db=st.db_tiles))
            blob[3 * 32] ^= 1
            txn.put(tile_key(0, 0), bytes(blob), db=st.db_tiles)
        elif what == "checkpoint":
            note = bytearray(txn.get(u64(10), db=st.db_checkpoints))
            note[-5] ^= 1  # in the signature
            txn.put(u64(10), bytes(note), db=st.db_checkpoints)
    h.log.drop_caches()


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
    _damage(harness, what)
    assert harness.client.get(path).status_code == 503
    r = harness.client.get("/metrics")
    assert r.status_code == 200, r.text
    got = _damaged(r.text)
    assert got[kind] >= 1, got
    assert sum(got.values()) == got[kind]
