"""ops10: split brain on a bucket is prevented where the store honours conditional writes,
and the gap is named where it does not.

Two frontends that both believe they are the sequencer, each on its own store, publish to
one bucket prefix. The checkpoint is written with ``If-None-Match: *`` (first write) or
``If-Match`` on the ETag last written or read: the loser's write gets 412, and it stops
publishing and signing, loudly (CRITICAL ``BUCKET CONFLICT``, ``tlog_bucket_conflict 1``),
whatever the sizes: before, a loser whose own tree was smaller than the winner's checkpoint
took it for another frontend of its database and went on. The store's support is probed
once at start with real requests on a probe object (removed after); a store that ignores
the conditions keeps working as before, with a WARNING naming the gap and
``tlog_bucket_conditional_writes 0``. All against the real SeaweedFS of the other bucket
tests."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tlog.bucket import (
    PROBE_PREFIX,
    BucketConflict,
    PreconditionFailed,
    S3Store,
    probe_conditional_writes,
)

from ..s3support import SeaweedS3
from .stores import IgnoringStore
from .support import (
    Node,
    bucket_checkpoint,
    entries,
    make_signer,
    open_node,
    split_brain,
    wait_published,
)


def _metric(node: Node, name: str) -> float:
    for line in node.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def test_seaweedfs_honours_both_conditions_with_real_requests(seaweedfs: SeaweedS3) -> None:
    bucket = seaweedfs.bucket()
    store = S3Store(f"s3://{bucket}/p", client=seaweedfs.client())
    assert probe_conditional_writes(store) is None
    assert not [k for k in store.keys() if k.startswith(PROBE_PREFIX)]  # removed after
    # and what the probe relies on, asked directly
    e1 = store.create("k", b"1", "text/plain", "no-store")
    with pytest.raises(PreconditionFailed):
        store.create("k", b"2", "text/plain", "no-store")
    with pytest.raises(PreconditionFailed):
        store.replace("k", b"3", '"' + "0" * 32 + '"', "text/plain", "no-store")
    store.replace("k", b"4", e1, "text/plain", "no-store")


def test_a_store_ignoring_the_conditions_is_named_at_start_and_publishing_goes_on(
    tmp_path: Path, seaweedfs: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = seaweedfs.bucket()
    store = IgnoringStore(S3Store(f"s3://{bucket}/p", client=seaweedfs.client()))
    assert probe_conditional_writes(store) is not None
    with (
        caplog.at_level(logging.WARNING, logger="tlog.bucket"),
        open_node(tmp_path / "a", seaweedfs, bucket, "p", store=store) as node,
    ):
        warned = [r for r in caplog.records if "does NOT honour" in r.getMessage()]
        assert len(warned) == 1, caplog.text
        text = warned[0].getMessage()
        assert "If-None-Match" in text and "If-Match" in text and "split brain" in text, text
        assert node.publisher.conditional is False
        assert _metric(node, "tlog_bucket_conditional_writes") == 0
        assert node.add_batch(entries(20)).status_code == 200
        wait_published(node)  # today's behaviour: it publishes
        assert bucket_checkpoint(node).size == 20
        assert not [k for k in node.store.keys() if k.startswith(PROBE_PREFIX)]


def test_a_store_honouring_them_says_so_in_the_metrics(
    tmp_path: Path, seaweedfs: SeaweedS3
) -> None:
    bucket = seaweedfs.bucket()
    with open_node(tmp_path / "a", seaweedfs, bucket, "p") as node:
        assert node.publisher.conditional is True
        assert _metric(node, "tlog_bucket_conditional_writes") == 1
        assert not [k for k in node.store.keys() if k.startswith(PROBE_PREFIX)]


def test_the_smaller_loser_of_a_split_brain_stops_loudly(
    tmp_path: Path, seaweedfs: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    """A standby copy at 50 is promoted (own store, same key) while the old primary goes on
    to 80 and publishes; the standby takes only 10 writes (60). Its checkpoint write names
    the ETag of the 50 it read: 412. The bucket's 80 is beyond its own database, so it is not
    another frontend of its database: it stops (on main it took the 80 for one and went
    on publishing, caught only by a later comparison)."""
    with split_brain(tmp_path, seaweedfs) as (a, b):
        good = bucket_checkpoint(a)
        assert good.size == 80
        assert b.add_batch(entries(10, "standby")).status_code == 200
        with (
            caplog.at_level(logging.CRITICAL, logger="tlog.bucket"),
            pytest.raises(BucketConflict, match="lost the bucket's checkpoint"),
        ):
            b.publisher.publish_once()
        assert any(
            r.levelno == logging.CRITICAL and "BUCKET CONFLICT" in r.getMessage()
            for r in caplog.records
        ), caplog.text
        assert b.publisher.stopped is not None and b.log.halted is not None
        assert _metric(b, "tlog_bucket_conflict") == 1
        assert b.add_batch([b"would fork further"]).status_code == 503
        with pytest.raises(BucketConflict):
            b.publisher.publish_once()  # stays stopped
        # the bucket's checkpoint is the primary's, never overwritten; it goes on
        assert bucket_checkpoint(a) == good
        assert a.add_batch(entries(5, "after")).status_code == 200
        a.publisher.publish_once()
        assert a.log.halted is None and bucket_checkpoint(a).size == 85


def test_two_first_writers_one_checkpoint(tmp_path: Path, seaweedfs: SeaweedS3) -> None:
    """Two frontends on their own stores start on an empty bucket (both see no checkpoint,
    so both write the first one with If-None-Match: *). The first wins; the second, whose
    tree is smaller, gets 412 and stops instead of publishing beside it."""
    bucket = seaweedfs.bucket()
    signer = make_signer()
    with open_node(tmp_path / "b", seaweedfs, bucket, signer=signer) as b:
        b.publisher.check_interval = 3600.0
        with open_node(tmp_path / "a", seaweedfs, bucket, signer=signer) as a:
            assert a.add_batch(entries(10, "a")).status_code == 200
            a.publisher.publish_once()
            first = bucket_checkpoint(a)
            assert b.add_batch(entries(5, "b")).status_code == 200
            with pytest.raises(BucketConflict):
                b.publisher.publish_once()
            assert b.log.halted is not None
            assert bucket_checkpoint(a) == first
