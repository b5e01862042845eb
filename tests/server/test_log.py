"""The log core without HTTP: tree against an oracle, restarts, the signer's guard, fsck."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    root_of_range,
    verify_consistency,
    verify_inclusion,
)
from client.formats.note import Ed25519Signer
from tests.formats import oracle
from tests.pgsupport import open_store, tamper
from tlog.backend import StorageError, tile_key, u64
from tlog.fsck import fsck
from tlog.log import Log
from tlog.signer import CheckpointSigner, ForkRefused, create_key_file, load_key_file
from tlog.tree import NodeReader, RightEdge, slot_offset

from .conftest import ORIGIN, make_signer


def _append(
    edge: RightEdge, store: dict[tuple[int, int], bytes], data: list[bytes], n: int
) -> None:
    """Append ``n`` entries (each its index, as text) to ``data`` and to the tree ``edge``
    builds; write the blobs it made dirty into ``store``."""
    new = [f"{len(data) + i}".encode() for i in range(n)]
    edge.append([leaf_hash(d) for d in new])
    data += new
    for lv, ix, blob in edge.take_dirty():
        store[(lv, ix)] = blob


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 300), min_size=1, max_size=8), st.data())
def test_stored_tree_matches_oracle(batches: list[int], draw: st.DataObject) -> None:
    """Appending in arbitrary batches gives the oracle's roots and proofs at every size."""
    store: dict[tuple[int, int], bytes] = {}
    edge = RightEdge(0, lambda lv, ix: store.get((lv, ix)))
    data: list[bytes] = []
    sizes = []
    for n in batches:
        _append(edge, store, data, n)
        sizes.append(len(data))
        if draw.draw(st.booleans()):  # a restart: rebuild the edge from the store
            edge = RightEdge(len(data), lambda lv, ix: store.get((lv, ix)))
    reader = NodeReader(lambda lv, ix: store.get((lv, ix)))
    for size in sizes:
        assert reader.root(size) == oracle.mth(data[:size])
        i = draw.draw(st.integers(0, size - 1))
        assert reader.inclusion_proof(i, size) == oracle.path(i, data[:size])
        m = draw.draw(st.integers(1, size))
        assert reader.consistency_proof(m, size) == oracle.proof(m, data[:size])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 400), min_size=2, max_size=8), st.data())
def test_a_cached_blob_serves_later_sizes_while_its_tile_holds_no_more_nodes(
    batches: list[int], draw: st.DataObject
) -> None:
    """BlobCache serves a blob cached at one tree size for a larger size when the tile has
    the same width at both (then it holds the same nodes): each stored blob at a size
    equals the blob at a later size of the same width, and proofs built from a cache filled
    at an earlier size are the oracle's whenever the cache answers."""
    from tlog.log import BlobCache
    from tlog.tree import tile_width

    store: dict[tuple[int, int], bytes] = {}
    edge = RightEdge(0, lambda lv, ix: store.get((lv, ix)))
    data: list[bytes] = []
    snapshots: list[tuple[int, dict[tuple[int, int], bytes]]] = []
    for n in batches:
        _append(edge, store, data, n)
        snapshots.append((len(data), dict(store)))
    for k, (s0, blobs0) in enumerate(snapshots):
        for s1, blobs1 in snapshots[k + 1 :]:
            for (lv, ix), blob in blobs0.items():
                if tile_width(s0, lv, ix) == tile_width(s1, lv, ix):
                    assert blobs1[(lv, ix)] == blob, (s0, s1, lv, ix)
    s0, blobs0 = snapshots[draw.draw(st.integers(0, len(snapshots) - 2))]
    cache = BlobCache()
    for (lv, ix), blob in blobs0.items():
        cache.put(lv, ix, s0, blob)
    for s1, _ in snapshots:
        reader = NodeReader(cache.getter(s1))
        for i in {0, s1 - 1, draw.draw(st.integers(0, s1 - 1))}:
            try:
                proof = reader.inclusion_proof(i, s1)
            except Exception as exc:  # the cache does not hold it: a miss, never a wrong one
                assert type(exc).__name__ == "_Miss", exc
                continue
            assert proof == oracle.path(i, data[:s1])
        for (lv, ix), blob in blobs0.items():
            got = cache.get(lv, ix, s1)
            same = s1 <= s0 or tile_width(s0, lv, ix) == tile_width(s1, lv, ix)
            assert got == (blob if same else None)


def open_log(
    path: Path, signer: CheckpointSigner | None = None, database: str | None = None
) -> Log:
    return Log(open_store(database, path), signer or make_signer())


def test_restart_keeps_everything(tmp_path: Path, database: str | None) -> None:
    log_ = open_log(tmp_path, database=database)
    r1 = log_.integrate([b"a", b"b", b"c"])
    r2 = log_.integrate([b"d", b"a"])
    assert r2.indices == [3, 0] and r2.duplicates == [False, True]
    latest = log_.latest
    log_.storage.close()
    log2 = open_log(tmp_path, database=database)
    assert log2.latest == latest
    assert log2.integrate([b"c"]).indices == [2]
    r3 = log2.integrate([b"e"])
    assert r3.indices == [4]
    v = make_signer().verifier
    old, _ = open_checkpoint(r1.checkpoint.note, [v])
    new, _ = open_checkpoint(r3.checkpoint.note, [v])
    verify_consistency(
        old.size, new.size, old.root_hash, new.root_hash, log2.consistency_proof(old.size, new.size)
    )
    verify_inclusion(1, 5, leaf_hash(b"b"), log2.inclusion_proof(1, 5), new.root_hash)
    assert fsck(log2.storage).ok


def test_refuses_another_key_or_origin(tmp_path: Path, database: str | None) -> None:
    log_ = open_log(tmp_path, database=database)
    log_.integrate([b"x"])
    log_.storage.close()
    other = CheckpointSigner(Ed25519Signer(ORIGIN, b"\x07" * 32), ORIGIN)
    with pytest.raises(StorageError, match="another key"):
        open_log(tmp_path, other, database)
    renamed = CheckpointSigner(
        Ed25519Signer("other.example/log", bytes(range(32))), "other.example/log"
    )
    with pytest.raises(StorageError, match="origin"):
        open_log(tmp_path, renamed, database)


def test_signer_refuses_forks() -> None:
    s = make_signer()
    leaves = [leaf_hash(bytes([i])) for i in range(10)]
    empty = Checkpoint(ORIGIN, 0, EMPTY_ROOT)
    cp5 = Checkpoint(ORIGIN, 5, root_of_range(leaves[:5]))
    cp8 = Checkpoint(ORIGIN, 8, root_of_range(leaves[:8]))
    s.sign(empty, None, [])
    s.sign(cp5, empty, [])
    store: dict[tuple[int, int], bytes] = {}
    edge = RightEdge(0, lambda lv, ix: store.get((lv, ix)))
    edge.append(leaves)
    proof = edge.reader().consistency_proof(5, 8)
    s.sign(cp8, cp5, proof)
    forked = Checkpoint(ORIGIN, 8, root_of_range(leaves[:7] + [leaf_hash(b"evil")]))
    with pytest.raises(ForkRefused):
        s.sign(forked, cp5, proof)
    with pytest.raises(ForkRefused):
        s.sign(cp5, cp8, [])  # backwards
    with pytest.raises(ForkRefused):
        s.sign(Checkpoint(ORIGIN, 8, forked.root_hash), cp8, [])  # same size, other root
    with pytest.raises(ForkRefused):
        s.sign(Checkpoint("other/origin", 9, EMPTY_ROOT), cp8, [])
    with pytest.raises(ForkRefused):
        s.sign(cp5, None, [])  # a new log starts empty
    with pytest.raises(ForkRefused):
        s.sign(Checkpoint(ORIGIN, 9, EMPTY_ROOT, ("ext",)), cp8, [])


def test_log_refuses_to_sign_over_a_tampered_store(tmp_path: Path, database: str | None) -> None:
    """If the stored tree no longer matches the last checkpoint, start-up fails."""
    log_ = open_log(tmp_path, database=database)
    log_.integrate([b"%d" % i for i in range(20)])
    log_.storage.close()
    st_ = open_store(database, tmp_path)
    with st_.read() as rv:
        blob = bytearray(rv.raw_get("tiles", tile_key(0, 0)) or b"")
    blob[slot_offset(4, 0)] ^= 1  # node [0, 16): part of the root of size 20
    tamper(st_, "tiles", tile_key(0, 0), bytes(blob))
    st_.close()
    with pytest.raises(StorageError, match="does not match"):
        open_log(tmp_path, database=database)


def test_corrupt_edge_cannot_get_a_signature(tmp_path: Path, database: str | None) -> None:
    """A bug or bit flip in the right edge makes the signer refuse, and nothing is stored."""
    log_ = open_log(tmp_path, database=database)
    log_.integrate([b"%d" % i for i in range(20)])
    before = log_.latest
    blob = log_._edge._blobs[(0, 0)]
    off = slot_offset(2, 4)  # node [16, 20), which the proof 20 -> 21 uses
    blob[off] ^= 1
    with pytest.raises(ForkRefused):
        log_.integrate([b"new"])
    assert log_.latest == before
    # The edge was rebuilt from the store, so the next batch is honest and accepted.
    assert log_.integrate([b"new"]).indices == [20]
    assert fsck(log_.storage).ok


@pytest.mark.parametrize("what", ["entry", "tile", "checkpoint", "dedup", "size"])
def test_fsck_detects_corruption(tmp_path: Path, what: str, database: str | None) -> None:
    log_ = open_log(tmp_path, database=database)
    for i in range(0, 600, 150):
        log_.integrate([b"fsck-%d" % j for j in range(i, i + 150)])
    assert fsck(log_.storage).ok
    st_ = log_.storage
    with st_.read() as rv:
        blob = bytearray(rv.raw_get("tiles", tile_key(0, 1)) or b"")
        note = (rv.raw_get("checkpts", u64(300)) or b"").replace(b"\n300\n", b"\n301\n")
    blob[-1] ^= 0x80
    if what == "entry":
        tamper(st_, "entries", u64(300), b"tampered")
    elif what == "tile":
        tamper(st_, "tiles", tile_key(0, 1), bytes(blob))
    elif what == "checkpoint":
        tamper(st_, "checkpts", u64(300), note)
    elif what == "dedup":
        tamper(st_, "dedup", leaf_hash(b"fsck-7"), None)
    else:
        tamper(st_, "meta", b"tree_size", u64(599))
    rep = fsck(st_)
    assert not rep.ok, what
    assert rep.errors


def test_fsck_counts(tmp_path: Path, database: str | None) -> None:
    log_ = open_log(tmp_path, database=database)
    log_.integrate([b"%d" % i for i in range(70000 // 100)])
    rep = fsck(log_.storage)
    assert rep.ok, rep.errors
    assert rep.entries == 700
    assert rep.checkpoints_checked == 2


def test_key_files(tmp_path: Path) -> None:
    p = tmp_path / "k" / "log.key"
    s = create_key_file(p, ORIGIN)
    assert os.stat(p).st_mode & 0o777 == 0o600
    assert load_key_file(p).vkey() == s.vkey()
    with pytest.raises(FileExistsError):
        create_key_file(p, ORIGIN)
    os.chmod(p, 0o644)
    with pytest.raises(PermissionError):
        load_key_file(p)
    # The key never appears in what we print about it.
    assert s.skey().split("+", 4)[4] not in s.vkey()


def test_new_entries_prove_from_memory(tmp_path: Path) -> None:
    """After each batch, the proof of every entry it added comes from the writer's trusted
    blobs, including the upper strata the batch did not touch (a miss would go to the store
    and its verification on the read pool for every POST)."""
    log_ = open_log(tmp_path)
    log_.integrate([b"%d" % i for i in range(600)])  # three level-0 tiles, a level-1 blob
    v = make_signer().verifier
    for k in range(5):  # small batches: only the right-most level-0 blob changes
        r = log_.integrate([b"small-%d" % k])
        cp, _ = open_checkpoint(r.checkpoint.note, [v])
        index = r.indices[0]
        proof = log_.cached_inclusion_proof(index, cp.size, r.leaf_hashes[0])
        assert proof is not None, f"batch {k}: proof of {index} not in memory"
        verify_inclusion(index, cp.size, r.leaf_hashes[0], proof, cp.root_hash)
        old = log_.cached_inclusion_proof(3, cp.size)  # an old entry at the new size
        assert old is not None
        verify_inclusion(3, cp.size, leaf_hash(b"3"), old, cp.root_hash)
    log_.storage.close()


def test_a_reader_kept_for_many_proofs_proves_what_fresh_readers_prove(tmp_path: Path) -> None:
    """cached_inclusion_proof keeps one reader per tree size, which remembers each proof's
    part above its fork: for every index at every size asked in any order, sizes coming
    back, old entries between new ones, each proof is the one a fresh reader reads, and it
    verifies against the signed root."""
    import random

    log_ = open_log(tmp_path)
    v = make_signer().verifier
    sizes: list[tuple[int, bytes]] = []
    for k, n in enumerate([1, 5, 250, 7, 600, 1, 20, 300]):
        r = log_.integrate([b"%d-%d" % (k, i) for i in range(n)])
        cp, _ = open_checkpoint(r.checkpoint.note, [v])
        sizes.append((cp.size, cp.root_hash))
    reads = [0]
    getter = log_.blobs.getter

    def counted(size: int) -> Any:
        get = getter(size)

        def count(level: int, index: int) -> bytes:
            reads[0] += 1
            return get(level, index)

        return count

    log_.blobs.getter = counted  # type: ignore[method-assign]
    rng = random.Random(7)
    asks = [(i, size, root) for size, root in sizes for i in range(size)]
    rng.shuffle(asks)
    asks += [(i, size, root) for size, root in sizes for i in range(size)]  # in order too
    fresh = NodeReader(log_.blobs.getter(sizes[-1][0]))
    for i, size, root in asks:
        got = log_.cached_inclusion_proof(i, size)
        assert got is not None, (i, size)
        want = NodeReader(log_.blobs.getter(size)).inclusion_proof(i, size)
        assert got == want, (i, size)
        verify_inclusion(i, size, fresh.node(0, i), got, root)
        got.append(b"x")  # the caller's list: what the reader remembers is not touched
    # a group's receipts at one size: the blobs are read once, for the first of them
    size, _ = sizes[-1]
    reads[0] = 0
    first = [log_.cached_inclusion_proof(i, size) for i in range(size - 20, size)]
    once = reads[0]
    assert [log_.cached_inclusion_proof(i, size) for i in range(size - 20, size)] == first
    assert reads[0] == once
    log_.storage.close()


def test_a_reader_remembering_tails_reads_the_proofs_of_a_fresh_reader() -> None:
    """NodeReader(tails=True), asked for many proofs at many sizes in any order, gives each
    time what a fresh reader gives (client.formats.merkle's ranges, tested elsewhere)."""
    import hashlib
    import random

    blobs: dict[tuple[int, int], bytes] = {}

    def get(tl: int, ti: int) -> bytes | None:
        return blobs.get((tl, ti))

    edge = RightEdge(0, get)
    sizes = []
    for n in (3, 1, 254, 2, 700, 65_536 - 960, 5):
        edge.append([hashlib.sha256(b"%d-%d" % (n, i)).digest() for i in range(n)])
        for tl, ti, b in edge.take_dirty():
            blobs[(tl, ti)] = b
        sizes.append(edge.size)
    rng = random.Random(3)
    asks = [(rng.randrange(size), size) for size in sizes for _ in range(300)]
    asks += [(i, size) for size in sizes[:3] for i in range(size)]
    rng.shuffle(asks)
    kept = NodeReader(get, {}, tails=True)
    for i, size in asks:
        want = NodeReader(get).inclusion_proof(i, size)
        assert kept.inclusion_proof(i, size) == want, (i, size)
