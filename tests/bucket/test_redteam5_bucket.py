"""Red team 5: the bucket publisher against a forked standby (split brain on one key) and a
bucket restored to an older state under a running frontend."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.formats.tiles import entry_bundles_for_size, tiles_for_size
from tlog.bucket import BucketConflict, BucketError

from ..s3support import SeaweedS3, audit_bucket
from .support import ANY_SIZE, Node, bucket_checkpoint, entries, open_node, split_brain


def publish(node: Node, rounds: int = 4) -> None:
    """Publication rounds until one completes (a round may ask for another)."""
    for _ in range(rounds - 1):
        try:
            node.publisher.publish_once()
            return
        except BucketConflict:
            raise
        except BucketError:
            continue
    node.publisher.publish_once()


def test_forked_standby_never_replaces_the_bucket_checkpoint(
    tmp_path: Path, seaweedfs: SeaweedS3
) -> None:
    """Split brain: a standby copy at size 50 is promoted (same key, own store) while the
    old primary keeps going to 80 and publishes. The standby takes 40 writes (size 90) before
    its idle check reads the bucket. Its partial tiles have new keys (another width), so no
    immutable object conflicts; its checkpoint compare-and-swap fails, it re-reads the
    bucket's checkpoint (80, another root than its own tree at 80) and must stop, not
    replace the bucket's 80 by a 90 that forks from it (which also halted the good primary,
    whose database then looked behind)."""
    with split_brain(tmp_path, seaweedfs) as (a, b):
        good = bucket_checkpoint(a)
        assert good.size == 80
        assert b.add_batch(entries(40, "standby")).status_code == 200
        assert b.log.latest.size == 90
        with pytest.raises(BucketConflict):
            b.publisher.publish_once()
        assert b.log.halted is not None
        assert b.add_batch([b"would fork further"]).status_code == 503
        # The bucket still holds the primary's history, and the primary goes on.
        assert bucket_checkpoint(a) == good
        assert a.add_batch(entries(5, "after")).status_code == 200
        publish(a)
        assert a.log.halted is None
        assert bucket_checkpoint(a).size == 85


def test_bucket_restored_to_an_older_state_is_published_again(
    tmp_path: Path, seaweedfs: SeaweedS3
) -> None:
    """The bucket is restored from a snapshot taken at size 10 (objects written since are
    gone, the checkpoint is the old one) while the frontend runs at size 300. The next
    rounds must put back every tile the new checkpoint needs: a checkpoint over missing
    full tiles leaves bucket readers unable to prove anything below it."""
    bucket = seaweedfs.bucket()
    with open_node(tmp_path / "a", seaweedfs, bucket) as node:
        node.publisher.check_interval = 0.0
        assert node.add_batch(entries(10)).status_code == 200
        node.publisher.publish_once()
        snapshot = {k: node.store.get(k, ANY_SIZE) for k in node.store.keys()}
        assert node.add_batch(entries(290, "more")).status_code == 200
        node.publisher.publish_once()
        assert node.publisher.bucket_size == 300
        # The restore: what is not in the snapshot goes, the snapshot's objects come back.
        s3 = seaweedfs.client()
        for key in list(node.store.keys()):
            if key not in snapshot:
                s3.delete_object(Bucket=bucket, Key="logs/one/" + key)
        old = snapshot["checkpoint"]
        assert old is not None
        s3.put_object(Bucket=bucket, Key="logs/one/checkpoint", Body=old[0])
        assert node.add_batch(entries(1, "next")).status_code == 200
        publish(node)
        assert bucket_checkpoint(node).size == 301
        keys = set(node.store.keys())
        want = {t.path() for t in tiles_for_size(301) + entry_bundles_for_size(301)}
        assert want - keys == set()
        vkey = node.log.vkey
    result = audit_bucket(seaweedfs, bucket, "logs/one", vkey, tmp_path / "audit.json")
    assert result.checkpoint.size == 301
