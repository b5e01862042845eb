"""Red team 21: the proof reader the log keeps for one tree size
(``Log.cached_inclusion_proof``, its proof tails) against the RFC 6962 oracle, with the
tree growing, commits failing (refused, outcome unknown and not done, outcome unknown but
done), the log reopened, and readers at different sizes on several threads; and what it
holds stays bounded however many sizes and indices are asked (objects counted). Held: a
guard of the promise that a proof served from memory is the tree's."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.formats import oracle
from tlog.backend import CommitConflict, CommitUnknown
from tlog.log import PROOF_READER_BLOBS, Log
from tlog.storage import Storage
from tlog.tree import RANGE_CACHE_SIZE

from .conftest import make_signer

FAILURES = ["conflict", "unknown-not-done", "unknown-done", "crash"]


def _failing_once(log_: Log, how: str) -> None:
    """The store's next commit fails ``how`` (the store, not the log under test)."""
    storage = log_.storage
    real = storage.commit_batch

    def commit(batch: Any) -> None:
        storage.commit_batch = real  # type: ignore[method-assign]
        if how == "conflict":
            raise CommitConflict("injected: another writer")
        if how == "unknown-not-done":
            raise CommitUnknown("injected: connection lost before the commit")
        if how == "crash":
            raise RuntimeError("injected: the store failed")
        real(batch)
        raise CommitUnknown("injected: connection lost after the commit")

    storage.commit_batch = commit  # type: ignore[method-assign]


step = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 40)),
    st.tuples(st.just("fail"), st.sampled_from(FAILURES), st.integers(1, 40)),
    st.tuples(st.just("ask"), st.integers(0, 10_000), st.integers(0, 10_000)),
    st.tuples(st.just("reopen")),
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(step, min_size=1, max_size=25))
def test_redteam21_kept_proofs_are_the_trees_through_failures_and_restarts(
    tmp_path_factory: Any, steps: list[tuple[Any, ...]]
) -> None:
    path: Path = tmp_path_factory.mktemp("log")
    log_ = Log(Storage(path), make_signer())
    data: list[bytes] = []
    sizes = [0]  # every size committed
    n = 0
    try:
        for s in steps:
            if s[0] == "add":
                batch = [b"e%d" % (n + i) for i in range(s[1])]
                n += s[1]
                log_.integrate(batch)
                data += batch
                sizes.append(len(data))
            elif s[0] == "fail":
                batch = [b"f%d" % (n + i) for i in range(s[2])]
                n += s[2]
                _failing_once(log_, s[1])
                try:
                    log_.integrate(batch)
                except Exception:
                    assert s[1] != "unknown-done"
                else:
                    assert s[1] == "unknown-done"
                    data += batch
                    sizes.append(len(data))
            elif s[0] == "reopen":
                log_.storage.close()
                log_ = Log(Storage(path), make_signer())
            else:
                if len(sizes) == 1:
                    continue
                size = sizes[1 + s[2] % (len(sizes) - 1)]
                i = s[1] % size
                got = log_.cached_inclusion_proof(i, size, oracle.leaf_hash(data[i]))
                if got is not None:  # not in memory (after a reopen): a miss, never wrong
                    assert got == oracle.path(i, data[:size]), (i, size)
                # what it kept answers the neighbours alike (a group's receipts)
                for j in (i - 1, i + 1):
                    if 0 <= j < size:
                        near = log_.cached_inclusion_proof(j, size)
                        assert near is None or near == oracle.path(j, data[:size]), (j, size)
        # the latest size is in memory once written, whatever happened before
        if data:
            r = log_.integrate([b"last%d" % n])
            data.append(b"last%d" % n)
            for i in range(len(data)):
                got = log_.cached_inclusion_proof(i, len(data))
                assert got == oracle.path(i, data), i
            assert r.checkpoint.size == len(data)
    finally:
        log_.storage.close()


def test_redteam21_the_kept_reader_stays_bounded(tmp_path: Path) -> None:
    """However many indices at one size and however many sizes are asked, the log keeps one
    reader, of at most PROOF_READER_BLOBS blobs (plus one proof's), and the tails and range
    hashes it remembers stay under their bound."""
    log_ = Log(Storage(tmp_path), make_signer())
    try:
        sizes = []
        for k in range(40):
            log_.integrate([b"%d-%d" % (k, i) for i in range(1 + 997 * (k % 5))])
            sizes.append(log_.latest.size)
        size = sizes[-1]
        most = 0
        for i in range(0, size, 7):  # every level-0 tile of the last size
            assert log_.cached_inclusion_proof(i, size) is not None
            memo = log_._proof_reader
            assert memo is not None and memo[0] == size
            most = max(most, memo[1].held())
        assert most <= PROOF_READER_BLOBS + 8, most
        readers = set()
        for size in sizes * 3:
            for i in (0, size // 2, size - 1):
                assert log_.cached_inclusion_proof(i, size) is not None
                memo = log_._proof_reader
                assert memo is not None
                readers.add(id(memo[1]))
                tails = memo[1]._tails
                assert tails is not None and len(tails) <= RANGE_CACHE_SIZE
                assert memo[1].held() <= PROOF_READER_BLOBS + 8
        assert len(log_._vranges) <= RANGE_CACHE_SIZE
        assert len(readers) > 1  # a reader per size asked, each dropped for the next
    finally:
        log_.storage.close()


def test_redteam21_readers_at_different_sizes_on_many_threads(tmp_path: Path) -> None:
    """Threads asking proofs at different sizes at once (each replacing the log's kept
    reader under the others) each get the oracle's proof or a miss, never another size's."""
    log_ = Log(Storage(tmp_path), make_signer())
    data: list[bytes] = []
    sizes = []
    try:
        for k in range(12):
            batch = [b"t%d-%d" % (k, i) for i in range(3 + 41 * k)]
            log_.integrate(batch)
            data += batch
            sizes.append(len(data))
        want = {(i, z): oracle.path(i, data[:z]) for z in sizes for i in range(0, z, 5)}
        wrong: list[tuple[int, int]] = []
        start = threading.Barrier(4)

        def ask(t: int) -> None:
            start.wait()
            for _ in range(3):
                for (i, z), proof in want.items():
                    if (i + z + t) % 4 == 0:
                        got = log_.cached_inclusion_proof(i, z)
                        if got is not None and got != proof:
                            wrong.append((i, z))

        threads = [threading.Thread(target=ask, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert wrong == []
    finally:
        log_.storage.close()
