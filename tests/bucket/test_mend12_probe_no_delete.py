"""mend12 (found by review13): the bucket probe left one object per start when the writer
may not delete (``tlog-probe/<random>``, the delete refused). It now asks first whether the
writer may delete (a delete of a key that does not exist: 204 or 403, nothing written):
one that may probes an object of its own and removes it, as before; one that may not probes
the one fixed object ``tlog-probe/kept``, overwritten at each start. The probe still finds
both gaps on a store that ignores the conditions, and still fails (the start's WARNING,
``conditional`` unknown) when the writer cannot write the probe or cannot read it back.

Against the real SeaweedFS of the other bucket tests, with writers whose IAM policy leaves
out DeleteObject (or PutObject, or GetObject): the server refuses those requests itself."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tlog.bucket import (
    PROBE_KEPT_KEY,
    PROBE_PREFIX,
    BucketError,
    S3Store,
    probe_conditional_writes,
)

from ..s3support import SeaweedS3
from .stores import DELETE, LIST, READ, WRITE, IgnoringStore, OwnEtagRefusingStore, limited_store
from .support import bucket_checkpoint, entries, open_node, wait_published


def _probe_objects(s3: SeaweedS3, bucket: str, prefix: str = "p") -> list[str]:
    """Every object under the probe's prefix, read with the full writer's credentials."""
    admin = S3Store(f"s3://{bucket}/{prefix}", client=s3.client())
    return sorted(k for k in admin.keys() if k.startswith(PROBE_PREFIX))


def test_a_writer_that_may_not_delete_leaves_one_object_however_many_starts(
    seaweedfs: SeaweedS3,
) -> None:
    bucket = seaweedfs.bucket()
    store = limited_store(seaweedfs, bucket, "p", [READ, WRITE, LIST])
    with pytest.raises(BucketError):
        store.delete("anything")  # the server refuses it: no DeleteObject in the policy
    for _ in range(3):
        assert probe_conditional_writes(store) is None
    # main left tlog-probe/<random> three times here
    assert _probe_objects(seaweedfs, bucket) == [PROBE_KEPT_KEY]


def test_probes_racing_on_the_kept_object_all_see_the_conditions_honoured(
    seaweedfs: SeaweedS3,
) -> None:
    """Frontends that start together (no delete permission) write the one kept object at
    once: none reads another's write as a gap, and one object is left."""
    bucket = seaweedfs.bucket()
    stores = [limited_store(seaweedfs, bucket, "p", [READ, WRITE, LIST]) for _ in range(2)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(probe_conditional_writes, stores * 4))
    assert got == [None] * 8
    assert _probe_objects(seaweedfs, bucket) == [PROBE_KEPT_KEY]


def test_a_writer_that_may_delete_leaves_nothing(seaweedfs: SeaweedS3) -> None:
    bucket = seaweedfs.bucket()
    store = limited_store(seaweedfs, bucket, "p", [READ, WRITE, LIST, DELETE])
    for _ in range(2):
        assert probe_conditional_writes(store) is None
    assert _probe_objects(seaweedfs, bucket) == []


def test_a_store_ignoring_the_conditions_is_named_without_delete_too(
    seaweedfs: SeaweedS3,
) -> None:
    bucket = seaweedfs.bucket()
    store = IgnoringStore(limited_store(seaweedfs, bucket, "p", [READ, WRITE, LIST]))
    for _ in range(2):  # the kept object absent, then there
        gap = probe_conditional_writes(store)
        assert gap is not None and "If-None-Match" in gap and "If-Match (" in gap, gap
    assert _probe_objects(seaweedfs, bucket) == [PROBE_KEPT_KEY]


@pytest.mark.parametrize("may_delete", [True, False], ids=["delete", "no-delete"])
def test_a_store_refusing_a_replace_on_the_objects_own_etag_is_named(
    seaweedfs: SeaweedS3, may_delete: bool
) -> None:
    """Red team 25: a store refusing every replace (the publisher's compare-and-swap of the
    checkpoint could never succeed) passed the probe of a first start, and the next start's
    probe said the kept object "kept changing" after twelve tries. Both starts now name the
    gap, at once."""
    bucket = seaweedfs.bucket()
    actions = [READ, WRITE, LIST, DELETE] if may_delete else [READ, WRITE, LIST]
    store = OwnEtagRefusingStore(limited_store(seaweedfs, bucket, "p", actions))
    for _ in range(2):  # without delete: the kept object absent, then there
        gap = probe_conditional_writes(store)
        assert gap is not None and "own ETag was refused" in gap, gap
        assert "If-None-Match" not in gap, gap  # the create-only write was refused
    assert _probe_objects(seaweedfs, bucket) == ([] if may_delete else [PROBE_KEPT_KEY])


@pytest.mark.parametrize(
    "actions",
    [
        pytest.param([READ, LIST, DELETE], id="cannot-write"),
        pytest.param([READ, LIST], id="cannot-write-nor-delete"),
        pytest.param([WRITE, LIST, DELETE], id="cannot-read-back"),
        pytest.param([WRITE, LIST], id="cannot-read-back-nor-delete"),
    ],
)
def test_a_writer_that_cannot_write_or_read_back_the_probe_fails_it(
    seaweedfs: SeaweedS3, actions: list[str]
) -> None:
    bucket = seaweedfs.bucket()
    store = limited_store(seaweedfs, bucket, "p", actions)
    with pytest.raises(BucketError):
        probe_conditional_writes(store)
    if DELETE in actions:
        assert _probe_objects(seaweedfs, bucket) == []


def test_a_frontend_without_delete_starts_and_publishes_leaving_one_probe_object(
    tmp_path: Path, seaweedfs: SeaweedS3, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = seaweedfs.bucket()
    for i in range(2):
        store = limited_store(seaweedfs, bucket, "p", [READ, WRITE, LIST])
        with (
            caplog.at_level(logging.INFO, logger="tlog.bucket"),
            open_node(tmp_path / "a", seaweedfs, bucket, "p", store=store) as node,
        ):
            assert node.publisher.conditional is True
            assert node.add_batch(entries(5, f"s{i}")).status_code == 200
            wait_published(node)
            assert bucket_checkpoint(node).size == 5 * (i + 1)
    assert "may not delete" in caplog.text
    assert _probe_objects(seaweedfs, bucket) == [PROBE_KEPT_KEY]


def test_many_frontends_starting_at_once_all_finish_their_probe(seaweedfs: SeaweedS3) -> None:
    """Sixteen frontends (no delete permission) probe the kept object at the same moment,
    twice over: each finishes with the conditions honoured, none gives up with "kept changing"
    (five tries without pauses lost all five to seven racing probes in a loaded CI run: a
    frontend refusing to start for nothing)."""
    bucket = seaweedfs.bucket()
    stores = [limited_store(seaweedfs, bucket, "p", [READ, WRITE, LIST]) for _ in range(4)]
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(probe_conditional_writes, stores * 8))
    assert got == [None] * 32
    assert _probe_objects(seaweedfs, bucket) == [PROBE_KEPT_KEY]
