"""Publishing to a real S3-compatible bucket (SeaweedFS): what is written, when, how it is
read back by a tlog-tiles client that sees only the bucket, and the faults: a failing
bucket, a bucket with other bytes, a bucket ahead of (or forked from) the database."""

from __future__ import annotations

import re
import shutil
import struct
from base64 import b64encode
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from client.formats.merkle import (
    HASH_SIZE,
    inclusion_ranges,
    leaf_hash,
    proof_from_ranges,
    verify_inclusion,
)
from client.formats.tiles import (
    TILE_WIDTH,
    TileHashReader,
    entry_bundles_for_size,
    parse_tile_path,
    tiles_for_size,
)
from client.net.logclient import LogClient
from client.tools.auditor import Auditor
from tlog.bucket import (
    BucketConflict,
    BucketError,
    BucketPublisher,
    S3Store,
    tiles_between,
)
from tlog.integrity import RollbackDetected
from tlog.server import build_app

from ..pgsupport import DataBackup, OldCopy, clone_store, recover_into
from ..s3support import SeaweedS3, audit_bucket
from ..support import app_parts, http_get, recompute_tile, serve_config, wait_for
from .support import (
    ANY_SIZE,
    PUBLIC_KEY,
    entries,
    make_signer,
    open_node,
    wait_published,
)


def test_tiles_between_matches_the_tile_sets() -> None:
    for old, new in [(0, 1), (0, 256), (255, 257), (300, 70_000), (65_536, 65_537)]:
        got = {t.path() for t in tiles_between(old, new)}
        want = {t.path() for t in tiles_for_size(new) + entry_bundles_for_size(new)}
        have_old = {
            t.path()
            for t in tiles_for_size(old) + entry_bundles_for_size(old)
            if t.width == TILE_WIDTH
        }
        assert got == want - have_old


def test_published_bucket_is_a_complete_tlog_tiles_log(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    bucket = seaweedfs.bucket()
    log_entries = entries(700)
    with open_node(tmp_path / "a", seaweedfs, bucket, database=database) as node:
        # Batches that cross tile boundaries (256, 512) and leave partial tiles behind.
        for lo, hi in [(0, 100), (100, 256), (256, 300), (300, 513), (513, 700)]:
            r = node.add_batch(log_entries[lo:hi])
            assert r.status_code == 200, r.text
            node.publisher.publish_once()
        size = node.log.latest.size
        assert size == 700
        keys = sorted(node.store.keys())
        # Only public objects: the checkpoint, hash tiles and entry bundles.
        assert keys and all(PUBLIC_KEY.fullmatch(k) for k in keys), keys
        want = {t.path() for t in tiles_for_size(size) + entry_bundles_for_size(size)}
        assert want | {"checkpoint"} <= set(keys)
        # Tiles equal a recomputation from the entries; bundles hold the entries.
        for key in keys:
            data = node.store.get(key, ANY_SIZE)
            assert data is not None
            if key == "checkpoint":
                assert data[0].decode() == node.log.latest.note
                continue
            tile = parse_tile_path(key)
            if tile.is_entries:
                first = tile.index * TILE_WIDTH
                chunk = log_entries[first : first + tile.width]
                assert data[0] == b"".join(struct.pack(">H", len(e)) + e for e in chunk)
            else:
                assert len(data[0]) == tile.width * HASH_SIZE
                assert data[0] == recompute_tile(log_entries, tile), key
            # And equal what the frontend serves at the same path.
            assert node.client.get("/" + key).content == data[0]
        # The JSON proof API keeps working on the frontend.
        r = node.client.get("/v1/proof/inclusion", params={"index": "600", "tree_size": "700"})
        assert r.status_code == 200
        frontend_proof = r.json()["inclusion_proof"]
        vkey = node.log.vkey

    # A tlog-tiles client that reads ONLY the bucket's anonymous HTTP endpoint audits it.
    url = seaweedfs.public_url(bucket, "logs/one")
    with httpx.Client(timeout=10) as http, LogClient(url, vkey, http=http) as client:
        result = Auditor(client, state_path=tmp_path / "audit.json").run()
        assert result.checkpoint.size == 700
        assert result.entries == 700
        assert client.entry_bundle(2, 188) == log_entries[512:700]
        # An inclusion proof computed from the bucket's tiles alone verifies, and is the
        # frontend's JSON proof.
        reader = TileHashReader(700, client.fetch_tile)
        proof = proof_from_ranges(inclusion_ranges(600, 700), reader.node)
        verify_inclusion(600, 700, leaf_hash(log_entries[600]), proof, result.checkpoint.root_hash)
        assert [b64encode(p).decode() for p in proof] == frontend_proof


def test_objects_carry_tiles_content_type_and_cache_control(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    bucket = seaweedfs.bucket()
    with open_node(tmp_path / "a", seaweedfs, bucket, "p", database=database) as node:
        assert node.add_batch(entries(300)).status_code == 200
        node.publisher.publish_once()
    base = seaweedfs.public_url(bucket, "p")
    cases = {
        "checkpoint": ("text/plain; charset=utf-8", "public, max-age=5"),
        "tile/0/000": ("application/octet-stream", "public, max-age=31536000, immutable"),
        "tile/entries/000": ("application/octet-stream", "public, max-age=31536000, immutable"),
        "tile/0/001.p/44": ("application/octet-stream", "public, max-age=60"),
        "tile/entries/001.p/44": ("application/octet-stream", "public, max-age=60"),
        "tile/1/000.p/1": ("application/octet-stream", "public, max-age=60"),
    }
    for key, (ctype, cache) in cases.items():
        r = httpx.get(f"{base}/{key}")
        assert r.status_code == 200, key
        assert r.headers["content-type"] == ctype, key
        assert r.headers["cache-control"] == cache, key


def test_background_publisher_follows_commits(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    bucket = seaweedfs.bucket()
    with open_node(tmp_path / "a", seaweedfs, bucket, database=database) as node:
        for i in range(5):
            assert node.add_batch(entries(60, f"b{i}")).status_code == 200
        wait_published(node)
        got = node.store.get("checkpoint", ANY_SIZE)
        assert got is not None and got[0].decode() == node.log.latest.note


class FailingStore:
    """A real S3Store whose writes fail while ``down`` (an outage of the bucket)."""

    def __init__(self, inner: S3Store) -> None:
        self.inner = inner
        self.down = True
        self.refused = 0

    def get(self, key: str, limit: int) -> tuple[bytes, str] | None:
        return self.inner.get(key, limit)

    def keys(self) -> Iterator[str]:
        return self.inner.keys()

    def _check(self) -> None:
        if self.down:
            self.refused += 1
            raise BucketError("simulated outage: connection refused")

    def create(self, key: str, data: bytes, content_type: str, cache_control: str) -> str:
        self._check()
        return self.inner.create(key, data, content_type, cache_control)

    def replace(
        self, key: str, data: bytes, etag: str, content_type: str, cache_control: str
    ) -> str:
        self._check()
        return self.inner.replace(key, data, etag, content_type, cache_control)


def test_bucket_outage_loses_no_acknowledged_entry(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    bucket = seaweedfs.bucket()
    store = FailingStore(S3Store(f"s3://{bucket}/p", client=seaweedfs.client()))
    with open_node(tmp_path / "a", seaweedfs, bucket, "p", store=store, database=database) as node:
        node.publisher.retry_interval = 0.05
        for i in range(3):  # acknowledged although the bucket refuses every write
            assert node.add_batch(entries(100, f"o{i}")).status_code == 200
        with pytest.raises(BucketError):
            node.publisher.publish_once()
        assert store.refused > 0 and node.log.halted is None
        failing = re.search(
            rb"^tlog_bucket_consecutive_failures (\S+)$", node.client.get("/metrics").content, re.M
        )
        assert failing is not None and float(failing.group(1)) >= 1
        assert node.store.get("checkpoint", ANY_SIZE) is None
        store.down = False  # the bucket is back: the publisher catches up from the database
        wait_published(node)
        assert node.publisher.bucket_size == 300
        assert {t.path() for t in tiles_for_size(300)} <= set(node.store.keys())
        metrics = node.client.get("/metrics").text
        assert "tlog_bucket_checkpoint_size 300.0" in metrics
        assert "tlog_bucket_consecutive_failures 0.0" in metrics


def test_start_catches_up_what_was_never_published(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    signer = make_signer()
    app, log_, tokens = build_app(
        serve_config(tmp_path / "a", database, batch_age_ms=0.0), signer, scim=False
    )
    token, _ = tokens.create("submitter", tenant="t1")
    with TestClient(app) as c:
        body = b"".join(struct.pack(">H", len(e)) + e for e in entries(400))
        r = c.post("/v1/entries/batch", content=body, headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    log_.storage.close()
    bucket = seaweedfs.bucket()
    with open_node(tmp_path / "a", seaweedfs, bucket, signer=signer, database=database) as node:
        wait_published(node)  # no new commit: the start-up round alone
        assert node.publisher.bucket_size == 400
        assert "tile/entries/001.p/144" in set(node.store.keys())


def test_existing_identical_objects_are_accepted(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    bucket = seaweedfs.bucket()
    with open_node(tmp_path / "a", seaweedfs, bucket, database=database) as node:
        assert node.add_batch(entries(300)).status_code == 200
        node.publisher.publish_once()
        # A second publisher (another frontend, or a restart that lost its place) writes
        # the same objects again: identical bytes are fine.
        again = BucketPublisher(node.log, node.store)
        assert again.publish_once() == 300
        assert again.stopped is None and node.log.halted is None


def test_other_bytes_in_the_bucket_stop_signing(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    bucket = seaweedfs.bucket()
    planted = S3Store(f"s3://{bucket}/p", client=seaweedfs.client())
    planted.create("tile/entries/000", b"\x00\x05other", "application/octet-stream", "x")
    with open_node(tmp_path / "a", seaweedfs, bucket, "p", database=database) as node:
        assert node.add_batch(entries(300)).status_code == 200
        with pytest.raises(BucketConflict, match="tile/entries/000"):
            node.publisher.publish_once()
        assert node.log.halted is not None
        assert node.publisher.stopped is not None
        r = node.add_batch([b"after the conflict"])
        assert r.status_code == 503
        # No checkpoint in the bucket covers the conflicting tile (the start-up round may
        # have published the empty tree).
        cp = node.store.get("checkpoint", ANY_SIZE)
        assert cp is None or cp[0].split(b"\n")[1] == b"0"
        # The planted object was not overwritten.
        got = planted.get("tile/entries/000", ANY_SIZE)
        assert got is not None and got[0] == b"\x00\x05other"


def test_bucket_ahead_of_the_database_refuses_to_sign(
    tmp_path: Path,
    seaweedfs: SeaweedS3,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
) -> None:
    """The database restored from a backup older than the bucket (LMDB: the data directory
    copied; PostgreSQL: the data directory and a pg_dump of the schema, restored with
    pg_restore) refuses to sign; recovering from the bucket's public copy brings it back."""
    bucket = seaweedfs.bucket()
    signer = make_signer()
    data = tmp_path / "a"
    with open_node(data, seaweedfs, bucket, signer=signer, database=database) as node:
        assert node.add_batch(entries(50)).status_code == 200
        node.publisher.publish_once()
    # A backup at size 50 (store and remembered checkpoint).
    backup = DataBackup(data, tmp_path / "backup", old_copy("dump"))
    backup.take()
    with open_node(data, seaweedfs, bucket, signer=signer, database=database) as node:
        assert node.add_batch(entries(80, "later")).status_code == 200
        node.publisher.publish_once()
        assert node.publisher.bucket_size == 130
    # The database is restored from the older backup: it lost 80 acknowledged entries.
    backup.restore()
    with pytest.raises(RollbackDetected, match=r"tree size 130.*ends at tree size 50") as exc:
        with open_node(data, seaweedfs, bucket, signer=signer, database=database):
            pass
    assert "tlog recover --from" in str(exc.value)
    # What the message says to do: bring the store forward from the bucket's public copy,
    # verified against the bucket's checkpoint (signs nothing); then the log starts again.
    from tlog.recover import checkpoint_file_target

    public = seaweedfs.public_url(bucket, "logs/one")
    cp_file = tmp_path / "bucket-checkpoint"
    cp_file.write_bytes(httpx.get(public + "/checkpoint").content)
    targets = [checkpoint_file_target(cp_file, signer)]
    assert recover_into(database, data, signer, public, targets) == 130
    with open_node(data, seaweedfs, bucket, signer=signer, database=database) as node:
        assert node.log.latest.size == 130
        assert node.add_batch([b"signing again"]).status_code == 200


def test_running_frontend_stops_when_its_database_falls_behind_the_bucket(
    tmp_path: Path,
    seaweedfs: SeaweedS3,
    database: str | None,
    new_database: Callable[[], str | None],
) -> None:
    """A frontend whose database is behind what another frontend published (a failover to a
    standby that missed commits) stops signing once it sees the bucket's checkpoint. The
    stale standby is a copy of the store at size 50 (LMDB: its files; PostgreSQL: the log
    copied into another schema)."""
    bucket = seaweedfs.bucket()
    signer = make_signer()
    with open_node(tmp_path / "a", seaweedfs, bucket, signer=signer, database=database) as a:
        assert a.add_batch(entries(50)).status_code == 200
        a.publisher.publish_once()
    # A standby at size 50: the data directory (remembered checkpoint) and the store.
    shutil.copytree(tmp_path / "a", tmp_path / "stale", ignore=shutil.ignore_patterns("db"))
    standby = new_database()
    clone_store(database, tmp_path / "a", standby, tmp_path / "stale")
    with open_node(tmp_path / "stale", seaweedfs, bucket, signer=signer, database=standby) as stale:
        stale.publisher.check_interval = 0.0
        with open_node(tmp_path / "a", seaweedfs, bucket, signer=signer, database=database) as a:
            assert a.add_batch(entries(30, "more")).status_code == 200
            a.publisher.publish_once()
        wait_for(  # its next idle round reads the bucket
            lambda: stale.log.halted is not None, 30, lambda: f"halt {stale.publisher.status()}"
        )
        assert "database ends at tree size 50" in stale.log.halted
        assert stale.add_batch([b"would fork"]).status_code == 503


def test_bucket_with_another_history_refuses_to_sign(
    tmp_path: Path,
    seaweedfs: SeaweedS3,
    database: str | None,
    new_database: Callable[[], str | None],
) -> None:
    bucket = seaweedfs.bucket()
    signer = make_signer()
    with open_node(tmp_path / "a", seaweedfs, bucket, signer=signer, database=database) as node:
        assert node.add_batch(entries(20, "first")).status_code == 200
        node.publisher.publish_once()
    # Another database with the same key and a different history (a fork, or the wrong
    # database behind this bucket) is refused at start.
    (tmp_path / "b").mkdir()
    other = new_database()
    app, log_, tokens = build_app(
        serve_config(tmp_path / "b", other, batch_age_ms=0.0), signer, scim=False
    )
    token, _ = tokens.create("submitter", tenant="t1")
    with TestClient(app) as c:
        body = b"".join(struct.pack(">H", len(e)) + e for e in entries(40, "second"))
        assert (
            c.post(
                "/v1/entries/batch", content=body, headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 200
        )
    log_.storage.close()
    with pytest.raises(RollbackDetected, match="another root"):
        with open_node(tmp_path / "b", seaweedfs, bucket, signer=signer, database=other):
            pass


def test_bucket_of_another_log_refuses_to_sign(
    tmp_path: Path,
    seaweedfs: SeaweedS3,
    database: str | None,
    new_database: Callable[[], str | None],
) -> None:
    bucket = seaweedfs.bucket()
    with open_node(
        tmp_path / "a", seaweedfs, bucket, signer=make_signer(b"\x01" * 32), database=database
    ) as n:
        assert n.add_batch(entries(3)).status_code == 200
        n.publisher.publish_once()
    with pytest.raises(RollbackDetected, match="not signed by this log's key"):
        with open_node(tmp_path / "b", seaweedfs, bucket, database=new_database()):
            pass


def test_two_frontends_share_one_bucket(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    """Two publishers of the same log race on the checkpoint: it only moves forward."""
    bucket = seaweedfs.bucket()
    with open_node(tmp_path / "a", seaweedfs, bucket, database=database) as node:
        assert node.add_batch(entries(10)).status_code == 200
        slow = BucketPublisher(node.log, node.store)
        slow.check_at_startup()  # sees no checkpoint yet
        node.publisher.publish_once()
        assert node.add_batch(entries(10, "more")).status_code == 200
        node.publisher.publish_once()  # the bucket is at 20
        assert node.publisher.bucket_size == 20
        # The slow publisher's compare-and-swap fails; it re-reads and does not go back.
        slow.checkpoint_source = lambda: node.log.checkpoint_note(10).note
        assert slow.publish_once() == 20
        got = node.store.get("checkpoint", ANY_SIZE)
        assert got is not None and got[0].decode() == node.log.latest.note


def test_scim_service_publishes_nothing_private(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    from ..scim_service.conftest import open_harness, user_event

    bucket = seaweedfs.bucket()
    mp = pytest.MonkeyPatch()
    for k, v in seaweedfs.env().items():
        mp.setenv(k, v)
    try:
        with open_harness(
            tmp_path,
            bucket=f"s3://{bucket}/scim",
            bucket_endpoint=seaweedfs.endpoint,
            database=database,
        ) as h:
            for i in range(5):
                r = h.post_event(user_event(rid=f"u-{i}", req=f"req-{i}"))
                assert r.status_code in (200, 201), r.text
            publisher: BucketPublisher = app_parts(h.client.app).bucket  # type: ignore[assignment]
            publisher.publish_once()
            store = S3Store(f"s3://{bucket}/scim", client=seaweedfs.client())
            keys = list(store.keys())
            assert "checkpoint" in keys
            for key in keys:
                assert PUBLIC_KEY.fullmatch(key), key
                got = store.get(key, ANY_SIZE)
                assert got is not None
                # Exactly what the public tlog-tiles API serves, nothing more.
                assert h.client.get("/" + key).content == got[0]
                assert b"alice.liddell@example.org" not in got[0]
    finally:
        mp.undo()


@pytest.mark.slow
def test_tlog_serve_publishes_with_bucket_flags(
    tmp_path: Path, seaweedfs: SeaweedS3, monkeypatch: pytest.MonkeyPatch, database: str | None
) -> None:
    from tests.support import start_server

    bucket = seaweedfs.bucket()
    for k, v in seaweedfs.env().items():
        monkeypatch.setenv(k, v)
    server = start_server(
        tmp_path / "data",
        None,
        "--bucket",
        f"s3://{bucket}/served",
        "--bucket-endpoint",
        seaweedfs.endpoint,
        database=database,
    )
    try:
        token = (tmp_path / "data" / "demo-submitter.token").read_text().strip()
        r = httpx.post(
            server.url + "/v1/entries",
            content=b"hello bucket",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        note = r.json()["checkpoint"]
        public = seaweedfs.public_url(bucket, "served")
        wait_for(
            lambda: http_get(public + "/checkpoint", timeout=5).text == note,
            30,
            "the checkpoint in the bucket",
            step=0.05,
        )
        assert httpx.get(public + "/tile/entries/000.p/1", timeout=5).content == (
            b"\x00\x0chello bucket"
        )
    finally:
        server.stop()


def test_publishes_the_cosigned_checkpoint(
    tmp_path: Path, seaweedfs: SeaweedS3, database: str | None
) -> None:
    """With witnesses the bucket gets what GET /checkpoint serves: the note with the
    witnesses' cosignature lines (the source the server wires in is the witness pusher's)."""
    from client.formats.cosignature import CosignatureSigner
    from client.formats.note import parse_note

    bucket = seaweedfs.bucket()
    witness = CosignatureSigner("witness.example/w1", b"\x07" * 32)
    with open_node(tmp_path / "a", seaweedfs, bucket, database=database) as node:
        assert node.add_batch(entries(5)).status_code == 200
        note = node.log.latest.note
        cosigned = note + witness.cosign(parse_note(note).text, 1_700_000_000).line()
        publisher = BucketPublisher(node.log, node.store, checkpoint_source=lambda: cosigned)
        assert publisher.publish_once() == 5
        got = node.store.get("checkpoint", ANY_SIZE)
        assert got is not None and got[0].decode() == cosigned
        vkey = node.log.vkey
    url = seaweedfs.public_url(bucket, "logs/one")
    with httpx.Client(timeout=10) as http, LogClient(url, vkey, http=http) as client:
        assert client.checkpoint().size == 5


def test_two_frontends_on_one_database_publish_one_bucket(
    tmp_path: Path, seaweedfs: SeaweedS3, pg_url: str
) -> None:
    """Two ``tlog serve`` frontends of one PostgreSQL log, each publishing to the same
    bucket: the bucket ends at the final checkpoint, and a client reading only the bucket
    audits every entry either frontend acknowledged."""
    bucket = seaweedfs.bucket()
    signer = make_signer()
    with (
        open_node(tmp_path / "a", seaweedfs, bucket, signer=signer, database=pg_url) as a,
        open_node(tmp_path / "b", seaweedfs, bucket, signer=signer, database=pg_url) as b,
    ):
        sent: list[bytes] = []
        for i in range(6):
            node = (a, b)[i % 2]
            batch = entries(90, f"fe{i}")
            r = node.add_batch(batch)
            assert r.status_code == 200, r.text
            sent += batch
        final = max(a.log.latest, b.log.latest, key=lambda p: p.size)
        assert final.size == len(sent)

        # The frontend that signed the final checkpoint publishes it on its next round.
        def published() -> bool:
            got = a.store.get("checkpoint", ANY_SIZE)
            return got is not None and got[0].decode() == final.note

        wait_for(
            published,
            30,
            lambda: f"the final checkpoint ({a.publisher.status()}, {b.publisher.status()})",
            step=0.05,
        )
        assert a.log.halted is None and b.log.halted is None
        vkey = a.log.vkey
    result = audit_bucket(seaweedfs, bucket, "logs/one", vkey, tmp_path / "audit.json")
    assert result.checkpoint.size == len(sent) and result.entries == len(sent)
