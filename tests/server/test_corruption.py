"""Issue 7 part 3: corruption is never served silently, and the store's failure modes say
what they are (flipped bytes, truncation, killed fsck, stale readers, map full, disk full).

Subprocesses are used wherever a failure could be a signal (SIGBUS/SIGSEGV): the test then
sees the exit signal instead of dying with the code under test.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import lmdb
import pytest

from client.formats.merkle import leaf_hash
from client.formats.note import Signature
from tests.server.conftest import Harness, make_signer
from tests.support import ROOT, tlog_argv, tlog_cli, wait_for
from tlog.auth import TokenStore
from tlog.fsck import fsck
from tlog.log import Log
from tlog.storage import (
    Storage,
    StorageCorrupt,
    StorageError,
    StorageFull,
    check_data_file,
    tile_key,
    u64,
)

pytestmark = pytest.mark.lmdb_only(
    "damages LMDB's records and data.mdb directly (byte flips, truncation, map size)"
)

FLIPS = 60
SEED = 20261130
TIMEOUT = 120


def run(*args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout
    )


def build_store(data: Path, entries: int = 1500, batch: int = 100) -> None:
    """A store with many checkpoints, a token and a cosignature (every database in use)."""
    st = Storage(data / "db")
    try:
        log_ = Log(st, make_signer())
        TokenStore(st).create("submitter", tenant="t1", name="probe")
        for i in range(0, entries, batch):
            log_.integrate([b"entry-%d" % j for j in range(i, i + batch)])
        sig = Signature("witness.example/w", 0x01020304, b"\x05" * 72)
        st.put_cosignatures(log_.latest.size, sig.line().encode())
    finally:
        st.close()


# -- the seeded sweep -------------------------------------------------------------------------


@pytest.mark.slow
def test_random_byte_flips_are_refused_or_reported(tmp_path: Path) -> None:
    """Each flip on a fresh copy: start-up refuses, or every served answer is the pristine
    one or a clear error; fsck reports it unless the logical content is unchanged."""
    src = tmp_path / "pristine"
    build_store(src, entries=600)
    p = run(
        "-m",
        "tests.server.store_probe",
        "sweep",
        str(src),
        str(tmp_path),
        str(SEED),
        str(FLIPS),
        timeout=600,
    )
    lines = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert p.returncode == 0, (
        f"the probe died (signal {-p.returncode}) at {lines[-1] if lines else None}: "
        f"{p.stderr[-2000:]}"
    )
    good = lines[0]
    assert good["start"] == "ok" and good["fsck_exit"] == 0, good
    served_good = good["served"]
    results = [r for r in lines[1:] if "fsck_exit" in r]
    assert len(results) == FLIPS
    outcomes = {"refused": 0, "served-error": 0, "unused-space": 0, "fsck-only": 0}
    for res in results:
        where = f"flip {res['k']} at byte {res['offset']} (page {res['offset'] // 4096})"
        fsck_out = str(res["fsck_out"])
        assert "Traceback" not in fsck_out, where
        errors = 0
        if res["start"] != "ok":
            assert str(res["start"]).startswith("refused: "), where
            outcomes["refused"] += 1
        else:
            served = res["served"]
            assert served.keys() == served_good.keys(), where
            for key, value in served.items():
                if isinstance(value, dict) and "error" in value:
                    assert value["error"] == "StorageCorrupt", (where, key, value)
                    errors += 1
                else:
                    assert value == served_good[key], f"{where}: {key} served wrong"
            if errors:
                outcomes["served-error"] += 1
        if res.get("dump") == good["dump"]:
            # The flip landed in unused space (a free page or slack): nothing the log
            # stores changed, so there is nothing for fsck to find.
            assert res["start"] == "ok" and not errors, where
            outcomes["unused-space"] += 1
        else:
            assert res["fsck_exit"] == 2, f"{where}: fsck missed it: {fsck_out}"
            assert "fsck: ERROR " in fsck_out, where
            if res["start"] == "ok" and not errors:
                outcomes["fsck-only"] += 1
    # The sweep must damage served data and hit unused space, or it proves little.
    assert outcomes["served-error"] and outcomes["unused-space"], outcomes
    assert outcomes["refused"] + outcomes["fsck-only"], outcomes


# -- served corruption, in process ------------------------------------------------------------


@pytest.mark.parametrize(
    ("what", "path"),
    [
        ("entry", "/v1/entries/5"),
        ("entry", "/tile/entries/000.p/20"),
        ("tile", "/v1/proof/inclusion?index=2"),
        ("tile", "/tile/0/000.p/20"),
        ("checkpoint", "/v1/proof/inclusion?index=2&tree_size=10"),
        ("tile", "/v1/proof/consistency?old_size=3"),
        ("checkpoint", "/v1/bundle/3?tree_size=10"),
        ("dedup", "/v1/proof/inclusion?leaf_hash={lh}"),
    ],
)
def test_damaged_record_is_a_503_with_a_reason(
    harness: Harness, what: str, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(20):
        assert harness.add(b"e-%d" % i).status_code == 200
    harness.damage(what)
    import base64
    import urllib.parse

    lh = urllib.parse.quote(base64.b64encode(leaf_hash(b"e-4")).decode())
    with caplog.at_level(logging.CRITICAL, logger="tlog"):
        r = harness.client.get(path.format(lh=lh))
    assert r.status_code == 503, (r.status_code, r.text)
    assert "damaged" in r.json()["error"]
    assert any(
        rec.levelno == logging.CRITICAL and "DAMAGED" in rec.getMessage() for rec in caplog.records
    )
    # The rest of the log is still served.
    assert harness.client.get("/v1/entries/11").status_code == 200


def test_reposting_an_entry_with_a_damaged_dedup_index_is_refused(harness: Harness) -> None:
    for i in range(20):
        assert harness.add(b"e-%d" % i).status_code == 200
    harness.damage("dedup")  # e-4 now claims index 6
    r = harness.add(b"e-4")
    assert r.status_code == 503, r.text


# -- fsck over every database -----------------------------------------------------------------


@pytest.mark.parametrize(
    "what",
    [
        "token",
        "cosig-orphan",
        "cosig-garbage",
        "dedup-extra",
        "tile-extra",
        "scim-orphan",
        "scim-garbage",
        "entry-extra",
    ],
)
def test_fsck_reads_every_database(tmp_path: Path, what: str) -> None:
    build_store(tmp_path, entries=300)
    st = Storage(tmp_path / "db")
    with st.env.begin(write=True) as txn:
        if what == "token":
            k, v = next(iter(txn.cursor(db=st.db_tokens)))
            txn.put(k, bytes(v).replace(b'"role"', b'"rolf"'), db=st.db_tokens)
        elif what == "cosig-orphan":
            txn.put(u64(7), b"\xe2\x80\x94 w AQIDBA==\n", db=st.db_cosigs)
        elif what == "cosig-garbage":
            txn.put(u64(300), b"not a signature line\n", db=st.db_cosigs)
        elif what == "dedup-extra":
            txn.put(b"\x07" * 32, u64(3), db=st.db_dedup)
        elif what == "tile-extra":
            txn.put(tile_key(0, 9), b"\x00" * 16320, db=st.db_tiles)
        elif what == "scim-orphan":
            txn.put(b"scim/E" + b"\x09" * 32, b"\xa0", db=st.db_aux)
        elif what == "scim-garbage":
            txn.put(b"scim/T" + b"\x01" * 16, b"\xff\xff", db=st.db_aux)
        elif what == "entry-extra":
            txn.put(u64(300), b"beyond", db=st.db_entries)
    st.close()
    p = tlog_cli("fsck", "--data", str(tmp_path), timeout=TIMEOUT)
    assert p.returncode == 2, p.stdout + p.stderr
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("fsck: ERROR ")]
    assert errors, p.stderr
    assert "Traceback" not in p.stderr


def test_fsck_runs_on_a_live_store(harness: Harness) -> None:
    """One read transaction: writes that land during the check are simply not in it."""
    for i in range(30):
        harness.add(b"live-%d" % i)
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        if not seen:  # the snapshot is taken: the log appends meanwhile
            for j in range(5):
                assert harness.add(b"during-%d" % j).status_code == 200
        seen.append(done)

    rep = fsck(harness.log.storage, progress)
    assert rep.ok, rep.errors
    assert rep.entries == 30


# -- truncation and damaged files: a message, never SIGBUS --------------------------------------


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_truncated_store_gives_a_clear_message(tmp_path: Path, keep: float) -> None:
    data = tmp_path / "tlog-data"
    build_store(data)
    f = data / "db" / "data.mdb"
    os.truncate(f, int(f.stat().st_size * keep) // 4096 * 4096)
    with pytest.raises(StorageCorrupt, match="truncated"):
        check_data_file(f)
    # Every command that opens the store, in a subprocess: a signal would show here.
    key = tmp_path / "log.key"
    from tlog.signer import create_key_file

    create_key_file(key, "test.example/log")
    for cmd in (["serve", "--port", "1", "--key", str(key)], ["token", "list"], ["fsck"]):
        p = tlog_cli(*cmd, "--data", str(data), timeout=TIMEOUT)
        assert p.returncode > 0, (cmd, p.returncode, p.stderr)  # < 0 would be a signal
        assert "truncated" in p.stderr or "ERROR" in p.stderr, (cmd, p.stderr)
        assert "Traceback" not in p.stderr, p.stderr
    p = tlog_cli("fsck", "--data", str(data), timeout=TIMEOUT)
    assert p.returncode == 2
    assert any(ln.startswith("fsck: ERROR ") for ln in p.stderr.splitlines())


def test_reading_a_truncated_store_without_the_check_would_sigbus(tmp_path: Path) -> None:
    """The control: the same file handed straight to LMDB dies with a signal, which is what
    check_data_file prevents (so the test above can fail)."""
    build_store(tmp_path)
    f = tmp_path / "db" / "data.mdb"
    os.truncate(f, f.stat().st_size // 2 // 4096 * 4096)
    code = textwrap.dedent(f"""
        import lmdb
        env = lmdb.open({str(tmp_path / "db")!r}, readonly=True, max_dbs=16, lock=False)
        with env.begin() as txn:
            db = env.open_db(b"entries", txn=txn, create=False)
            for k, v in txn.cursor(db=db):
                bytes(v)
            db = env.open_db(b"tiles", txn=txn, create=False)
            for k, v in txn.cursor(db=db):
                bytes(v)
        """)
    p = run("-c", code)
    assert p.returncode != 0, "LMDB read a truncated file without failing"


# -- stale readers --------------------------------------------------------------------------


def _rewrite(st: Storage, n: int) -> None:
    for i in range(n):
        st.put_aux([(b"test/churn", bytes([i % 256]) * 20000)])


@pytest.mark.slow
def test_fsck_killed_by_sigkill_leaves_no_growing_reader(tmp_path: Path) -> None:
    """A running server (which holds the environment open, so LMDB does not reset the
    reader table) outlives a killed fsck: its sweep clears the dead reader's slot."""
    build_store(tmp_path, entries=3000, batch=1000)
    db = tmp_path / "db"
    st = Storage(db, reader_check_interval=0)  # sweeps by hand below, when the test says
    try:
        proc = subprocess.Popen(
            tlog_argv("fsck", "--data", str(tmp_path)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()  # printed once its read transaction is open
            assert line.startswith("fsck: checking a snapshot"), line
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(TIMEOUT)
        assert proc.returncode == -signal.SIGKILL
        # The control: the dead fsck's slot pins its snapshot, so rewrites only grow the file.
        assert f"{proc.pid} " in st.env.readers()
        before = (db / "data.mdb").stat().st_size
        _rewrite(st, 100)
        assert (db / "data.mdb").stat().st_size - before > 1_000_000
        # The sweep (at start and every reader_check_interval) clears it; pages are reused.
        assert st.check_readers() >= 1
        assert f"{proc.pid} " not in st.env.readers()
        _rewrite(st, 20)
        before = (db / "data.mdb").stat().st_size
        _rewrite(st, 100)
        assert (db / "data.mdb").stat().st_size - before < 200_000
    finally:
        st.close()


def test_periodic_reader_check_clears_readers_of_dead_processes(tmp_path: Path) -> None:
    st = Storage(tmp_path / "db", reader_check_interval=0.05)
    try:
        code = textwrap.dedent(f"""
            import os, lmdb
            env = lmdb.open({str(tmp_path / "db")!r}, readonly=True, max_dbs=16)
            txn = env.begin()
            print("open", flush=True)
            os.kill(os.getpid(), 9)
            """)
        p = run("-c", code)
        assert p.returncode == -signal.SIGKILL and "open" in p.stdout
        wait_for(lambda: st.stale_readers_cleared >= 1, 10, "stale readers cleared")
    finally:
        st.close()


# -- map size and disk full -----------------------------------------------------------------


def test_map_full_grows_the_map_and_retries(tmp_path: Path) -> None:
    st = Storage(tmp_path / "db", map_size=1 << 20)
    try:
        log_ = Log(st, make_signer())
        start = st.map_size
        for i in range(40):
            log_.integrate([b"grow-%d-%d" % (i, j) + b"x" * 2000 for j in range(50)])
        assert st.map_size > start
        assert log_.latest.size == 2000
        assert fsck(st).ok
    finally:
        st.close()


DISK_FULL = textwrap.dedent("""
    import json, resource, signal, sys
    from pathlib import Path
    from tests.server.conftest import make_signer
    from tlog.log import Log
    from tlog.storage import Storage, StorageFull
    if sys.argv[2] == "rlimit":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
    st = Storage(Path(sys.argv[1]))
    log_ = Log(st, make_signer())
    acked, error = [], None
    for i in range(2000):
        batch = [b"full-%d-%d-" % (i, j) + b"y" * 1000 for j in range(20)]
        try:
            res = log_.integrate(batch)
        except StorageFull as exc:
            error = str(exc)
            break
        acked.extend(e.decode() for e in batch)
    # The log keeps its last good state: a smaller write may still fit, or is refused.
    try:
        log_.integrate([b"after"])
        acked.append("after")
    except StorageFull:
        pass
    print(json.dumps({"acked": acked, "error": error, "size": log_.latest.size}))
    """)


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    where.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        timeout=30,
    )
    return p.returncode == 0


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
def test_disk_full_says_disk_full_and_loses_nothing(
    tmp_path: Path, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    mnt = tmp_path / "mnt"
    if how == "tmpfs" and not _can_mount_tmpfs(mnt):
        pytest.skip("mounting a tiny tmpfs needs root (the rlimit case covers the rest)")
    try:
        db = (mnt if how == "tmpfs" else tmp_path) / "db"
        p = run("-c", DISK_FULL, str(db), how)
        assert p.returncode == 0, p.stderr[-2000:]
        res = json.loads(p.stdout)
        assert res["error"] and "disk full" in res["error"], res
        assert "DISK FULL" in p.stderr  # the CRITICAL log line
        assert res["acked"], "the store filled before the first batch"
        # Everything acknowledged is there, and the store is sound.
        st = Storage(db, readonly=True)
        try:
            with st.read() as rv:
                assert rv.tree_size() == res["size"] == len(res["acked"])
                for i, e in enumerate(res["acked"]):
                    assert rv.entry(i) == e.encode()
            assert fsck(st).ok
        finally:
            st.close()
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


def test_storage_errors_name_what_happened() -> None:
    from tlog.storage import storage_fault

    assert isinstance(storage_fault(lmdb.CorruptedError("x")), StorageCorrupt)
    assert isinstance(storage_fault(lmdb.DiskError("x")), StorageFull)
    assert isinstance(storage_fault(OSError(28, "No space left on device")), StorageFull)
    assert storage_fault(ValueError("x")) is None
    assert isinstance(storage_fault(lmdb.ReadersFullError("x")), StorageError)
    assert resource.RLIMIT_FSIZE  # the rlimit case relies on it
