"""Issue 12 part 4: failover tested for real.

Two ``tlog serve`` frontends share one log in PostgreSQL (a primary with a synchronous
streaming standby, both on 127.0.0.1, reached through one multi-host URL with
``target_session_attrs=read-write``) and publish to one SeaweedFS bucket, under concurrent
load from clients that record every acknowledged entry and every checkpoint they were handed
(POST answers and ``GET /checkpoint`` from both frontends). At a seeded random moment the
primary is SIGKILLed, the standby promoted and a new standby made (the frontends are not
restarted: libpq finds the new primary); later one frontend is SIGKILLed mid-load and
started again. Then:

* every acknowledged entry is in the log at the index it was given, and (for a sample) its
  inclusion proof verifies against the final checkpoint;
* every checkpoint ever handed out has the only root of its size and is consistent with the
  final one (consistency proofs checked with ``client.formats.merkle``);
* ``tlog fsck`` on the database is clean;
* the bucket holds the final checkpoint, and every tile and entry bundle in it equals a
  recomputation from the entries.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import leaf_hash, verify_consistency, verify_inclusion
from client.formats.note import Ed25519Verifier, b64decode_strict
from client.formats.tiles import (
    TILE_WIDTH,
    decode_entry_bundle,
    encode_entry_bundle,
    entry_bundles_for_size,
    parse_tile_path,
    tiles_for_size,
)
from harness.pgreplica import Replicated
from tests.s3support import SeaweedS3
from tests.server.conftest import ORIGIN
from tests.support import (
    ServerProcess,
    assert_prefixes,
    checkpoints_by_size,
    recompute_tile,
    start_server,
    tlog_cli,
    wait_for,
)
from tlog.log import Published

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("TLOG_FAILOVER_SEED", "12"))


@dataclass
class Record:
    """What the clients were told, shared by their threads."""

    acked: list[tuple[int, bytes]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: int = 0
    unexpected: list[str] = field(default_factory=list)  # answers other than 200 and 503
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_for(self, n: int, timeout: float, what: str) -> None:
        """Block until ``n`` more entries are acknowledged (fail after ``timeout`` s: a bound
        for a broken cluster, twice what a loaded 2-core machine needs, not a pace)."""
        target = self.count() + n
        wait_for(
            lambda: self.count() >= target,
            timeout,
            lambda: f"{what}: {n} acknowledgements ({self.count()} so far, {self.errors} failed)",
            step=0.05,
        )


def submitter(urls: list[str], token: str, stop: threading.Event, rec: Record, tag: str) -> None:
    """Single and batch POSTs, alternating frontends; a failed request goes to the other."""
    rnd = random.Random(f"{SEED}-{tag}")
    n = 0
    clients = [
        httpx.Client(base_url=u, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        for u in urls
    ]
    try:
        while not stop.is_set():
            c = clients[n % len(clients)]
            try:
                if rnd.random() < 0.3:
                    batch = [f"{tag}-{n + i}".encode() for i in range(rnd.randint(2, 30))]
                    body = b"".join(len(e).to_bytes(2, "big") + e for e in batch)
                    n += len(batch)
                    r = c.post("/v1/entries/batch", content=body)
                    if r.status_code == 200:
                        d = r.json()
                        with rec.lock:
                            rec.acked.extend(zip(d["indices"], batch, strict=True))
                            rec.notes.append(d["checkpoint"])
                        continue
                else:
                    e = f"{tag}-{n}".encode()
                    n += 1
                    r = c.post("/v1/entries", content=e)
                    if r.status_code == 200:
                        d = r.json()
                        with rec.lock:
                            rec.acked.append((d["index"], e))
                            rec.notes.append(d["checkpoint"])
                        continue
                # 503 while the database fails over: nothing of it was acknowledged.
                if r.status_code != 503:
                    with rec.lock:
                        rec.unexpected.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError:
                pass  # a frontend being killed
            with rec.lock:
                rec.errors += 1
            n += 1  # the next attempt goes to the other frontend
            time.sleep(0.02)
    finally:
        for c in clients:
            c.close()


def reader(urls: list[str], stop: threading.Event, rec: Record) -> None:
    """``GET /checkpoint`` from every frontend: each answer is a checkpoint handed out."""
    with httpx.Client(timeout=5) as c:
        while not stop.is_set():
            for u in urls:
                try:
                    r = c.get(u + "/checkpoint")
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    with rec.lock:
                        rec.notes.append(r.text)
            time.sleep(0.02)


@dataclass
class Frontends:
    url: str  # the database
    bucket: str  # s3://bucket/prefix
    endpoint: str

    started: list[ServerProcess] = field(default_factory=list)

    def start(self, data: Path, port: int | None = None) -> ServerProcess:
        srv = start_server(
            data,
            port,
            "--database",
            self.url,
            "--bucket",
            self.bucket,
            "--bucket-endpoint",
            self.endpoint,
            "--batch-age-ms",
            "5",
            timeout=90,
        )
        self.started.append(srv)
        return srv

    def stop_all(self) -> None:
        for srv in self.started:
            srv.stop()


def test_kill_primary_and_a_frontend_under_load(
    pair: Replicated,
    seaweedfs: SeaweedS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    rnd = random.Random(SEED)
    for k, v in seaweedfs.env().items():
        monkeypatch.setenv(k, v)
    bucket = seaweedfs.bucket()
    fe = Frontends(pair.create_database("tlog"), f"s3://{bucket}/log", seaweedfs.endpoint)
    request.addfinalizer(fe.stop_all)  # whatever fails, no frontend outlives the test
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a = fe.start(a_dir)
    # The second frontend signs with the same key and opens the same SCIM key chain.
    b_dir.mkdir(mode=0o700)
    for name in ("log.key", "scim-master.key"):
        shutil.copy2(a_dir / name, b_dir / name)
    b = fe.start(b_dir)
    token = (a_dir / "demo-submitter.token").read_text().strip()
    verifier = Ed25519Verifier.from_vkey(httpx.get(a.url + "/v1/log").json()["vkey"])
    rec = Record()
    stop = threading.Event()
    urls = [a.url, b.url]
    threads = [
        threading.Thread(target=submitter, args=(urls, token, stop, rec, f"t{i}")) for i in range(6)
    ] + [threading.Thread(target=reader, args=(urls, stop, rec))]
    for t in threads:
        t.start()
    try:
        rec.wait_for(60, 180, "before the failover")
        time.sleep(rnd.uniform(0.0, 1.0))
        # The database primary is lost: SIGKILL, no shutdown. Its standby had every commit.
        pair.kill_primary()
        acked_at_kill = rec.count()
        time.sleep(rnd.uniform(0.0, 0.5))
        pair.promote()
        pair.add_standby()  # until it streams, the new primary acknowledges nothing
        rec.wait_for(60, 180, "after the promotion (frontends not restarted)")
        assert rec.count() > acked_at_kill

        # A frontend is lost mid-load; the clients carry on with the other one.
        time.sleep(rnd.uniform(0.0, 1.0))
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait(10)
        rec.wait_for(30, 120, "with one frontend")
        b = fe.start(b_dir, b.port)
        rec.wait_for(30, 120, "after the frontend came back")
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not rec.unexpected, rec.unexpected[:5]
    assert not [t for t in threads if t.is_alive()]
    try:
        final, entries = check_history(a, b, token, verifier, rec)
        check_bucket(seaweedfs.public_url(bucket, "log"), final, entries)
    finally:
        a.stop()
        b.stop()
    fs = tlog_cli("fsck", "--data", str(a_dir), "--database", fe.url)
    assert fs.returncode == 0, fs.stdout + fs.stderr
    assert f"fsck: OK: {final.size} entries" in fs.stdout


def check_history(
    a: ServerProcess, b: ServerProcess, token: str, verifier: Ed25519Verifier, rec: Record
) -> tuple[Published, list[bytes]]:
    """Every acknowledged entry is there; every checkpoint handed out is consistent with the
    final one. Returns the final checkpoint and the log's entries."""
    # One more entry through each frontend (both must still write); B's is the last one, so
    # B is at the database's latest state and its checkpoint is the final one.
    final_notes = []
    for srv in (a, b):
        r = httpx.post(
            srv.url + "/v1/entries",
            content=f"final-{srv.port}".encode(),
            headers={"Authorization": f"Bearer {token}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        final_notes.append(r.json()["checkpoint"])
    rnd = random.Random(SEED)
    with httpx.Client(base_url=b.url, timeout=30) as c:
        latest, _ = open_checkpoint(final_notes[-1], [verifier], origin=ORIGIN)
        assert open_checkpoint(c.get("/checkpoint").text, [verifier], origin=ORIGIN)[0] == latest
        assert len(rec.acked) > 200
        assert len({i for i, _ in rec.acked}) == len(rec.acked)  # no index given twice
        # The whole log, read back as tlog-tiles entry bundles.
        entries: list[bytes] = []
        for tile in entry_bundles_for_size(latest.size):
            r = c.get("/" + tile.path())
            assert r.status_code == 200, tile.path()
            entries += decode_entry_bundle(r.content, tile.width)
        assert len(entries) == latest.size
        for index, entry in rec.acked:
            assert entries[index] == entry, f"acknowledged entry {index} lost or changed"
        for index, entry in rnd.sample(rec.acked, 50):
            d = c.get("/v1/proof/inclusion", params={"index": index}).json()
            verify_inclusion(
                index,
                latest.size,
                leaf_hash(entry),
                [b64decode_strict(h) for h in d["inclusion_proof"]],
                latest.root_hash,
            )
        # Every checkpoint handed out: one root per size, and that root is the root of the
        # final log's first `size` entries (recomputed here for every size) ...
        by_size = checkpoints_by_size([*rec.notes, *final_notes], verifier, ORIGIN)
        assert max(by_size) == latest.size
        assert_prefixes(entries, by_size)
        # ... and, for a sample, the log's own consistency proof to the final one verifies.
        sizes = [n for n in by_size if 0 < n < latest.size]
        for size in rnd.sample(sizes, min(40, len(sizes))):
            d = c.get("/v1/proof/consistency", params={"old_size": size}).json()
            assert d["tree_size"] == latest.size
            verify_consistency(
                size,
                latest.size,
                by_size[size].root_hash,
                latest.root_hash,
                [base64.b64decode(h) for h in d["consistency_proof"]],
            )
    return Published(latest.size, final_notes[-1]), entries


def check_bucket(public: str, final: Published, entries: list[bytes]) -> None:
    """Both frontends published to one bucket: once it has caught up, it holds the final
    checkpoint, and every object in it equals a recomputation from the entries."""
    with httpx.Client(base_url=public, timeout=10) as c:
        deadline = time.monotonic() + 60
        while c.get("/checkpoint").text != final.note:
            assert time.monotonic() < deadline, "the bucket never reached the final checkpoint"
            time.sleep(0.1)
        paths = [t.path() for t in tiles_for_size(final.size) + entry_bundles_for_size(final.size)]
        for path in paths:
            r = c.get("/" + path)
            assert r.status_code == 200, path
            tile = parse_tile_path(path)
            if tile.is_entries:
                first = tile.index * TILE_WIDTH
                assert r.content == encode_entry_bundle(entries[first : first + tile.width])
            else:
                assert r.content == recompute_tile(entries, tile), path
