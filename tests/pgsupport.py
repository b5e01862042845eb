"""PostgreSQL for the tests: skipping with the reason, one server per session, the same test
run on both backends, and records tampered with or restored behind a store's back.

The server itself (``initdb`` + ``pg_ctl`` on 127.0.0.1, its watchdog, reaping the clusters of
dead sessions) is :mod:`harness.pg`, shared with the benchmarks; this module adds the pytest
specifics. Use :func:`require_postgres` (skips with the reason when PostgreSQL cannot be run)
or :func:`running_cluster`; the session fixture ``pg_cluster`` and the per-test ``pg_url`` (a
fresh schema in it) live in ``tests/conftest.py``.
"""

from __future__ import annotations

import contextlib
import shutil
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from harness.pg import SUPERUSER, PgCluster, postgres_missing, reap_stale
from tlog.backend import Backend, open_backend

if TYPE_CHECKING:
    from tlog.recover import Target
    from tlog.signer import CheckpointSigner

T = TypeVar("T")

__all__ = [
    "BACKENDS",
    "DataBackup",
    "OldCopy",
    "backend_database",
    "empty_store",
    "open_store",
    "reading",
    "require_postgres",
    "running_cluster",
    "stored_tree_size",
    "tamper",
]


def require_postgres() -> None:
    reason = postgres_missing()
    if reason is not None:
        pytest.skip(reason)


@contextlib.contextmanager
def running_cluster(
    conf: dict[str, str] | None = None, *, tmp_root: str | None = None
) -> Iterator[PgCluster]:
    """A started cluster, destroyed afterwards (skips when PostgreSQL is unavailable)."""
    require_postgres()
    reap_stale([tmp_root, None])
    cluster = PgCluster(conf, tmp_root=tmp_root).init()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


# -- running the same test on both backends --------------------------------------------------

BACKENDS = ("lmdb", "postgresql")


def backend_database(request: pytest.FixtureRequest) -> str | None:
    """For a fixture parametrised over :data:`BACKENDS` (tests/conftest.py's ``database``):
    the ``database`` setting (None for LMDB; for PostgreSQL a fresh schema in the session
    cluster, or a skip)."""
    if getattr(request, "param", BACKENDS[0]) == BACKENDS[0]:
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


def open_store(database: str | None, path: Path) -> Backend:
    """The store a test names: LMDB in ``path`` (as ``Storage(path)``), or the database."""
    if database is None:
        from tlog.storage import Storage

        return Storage(path)
    return open_backend(database, path)


def reading(database: str | None, path: Path, read: Callable[[Any], T]) -> T:
    """``read`` of a read view of :func:`open_store`'s store, opened and closed around it."""
    st = open_store(database, path)
    try:
        with st.read() as rv:
            return read(rv)
    finally:
        st.close()


def stored_tree_size(database: str | None, path: Path) -> int:
    """The tree size the store holds now (:func:`reading`)."""
    return reading(database, path, lambda rv: rv.tree_size())


def recover_into(
    database: str | None,
    data: Path,
    signer: CheckpointSigner,
    source: str | Path,
    targets: list[Target],
) -> int:
    """``tlog recover`` in process and quietly: the store of data directory ``data`` (LMDB
    in ``data/db``, or ``database``) brought forward from ``source``, checked against the
    checkpoint ``data`` remembers; returns the size reached."""
    from tlog.integrity import CHECKPOINT_FILE, CheckpointFile
    from tlog.recover import recover, recover_database

    remembered = CheckpointFile(data / CHECKPOINT_FILE, signer.verifier, signer.origin)
    try:
        if database is None:
            return recover(data / "db", signer, str(source), remembered, targets, echo=_quiet)
        return recover_database(database, signer, str(source), remembered, targets, echo=_quiet)
    finally:
        remembered.close()


def _quiet(_msg: str) -> None:
    pass


_PG_TABLES = {
    # table: (SQL table, key columns, value column, key decoder)
    "entries": ("tlog_entries", ("idx",), "data"),
    "dedup": ("tlog_dedup", ("leaf_hash",), "idx"),
    "tiles": ("tlog_tiles", ("level", "idx"), "blob"),
    "checkpts": ("tlog_checkpoints", ("size",), "note"),
    "cosigs": ("tlog_cosignatures", ("size",), "lines"),
    "tokens": ("tlog_tokens", ("digest",), "record"),
    "aux": ("tlog_aux", ("key",), "value"),
}


def tamper(storage: Backend, table: str, key: bytes, value: bytes | None) -> None:
    """Overwrite (or with None delete) one record behind the backend's back, as a damaged
    disk or a hand edit would: LMDB through its environment, PostgreSQL through SQL."""
    if storage.kind == "lmdb":
        from tlog.storage import Storage

        assert isinstance(storage, Storage)
        with storage.env.begin(write=True) as txn:
            if value is None:
                txn.delete(key, db=storage.dbs[table])
            else:
                txn.put(key, value, db=storage.dbs[table])
        return
    import psycopg

    from tlog.pg import PgStorage

    assert isinstance(storage, PgStorage)
    with psycopg.connect(storage._url, autocommit=True) as conn:
        if table == "meta":
            if key == b"tree_size":
                assert value is not None
                conn.execute(
                    "UPDATE tlog_state SET tree_size = %s", (struct.unpack(">Q", value)[0],)
                )
            else:
                conn.execute(
                    "INSERT INTO tlog_meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                    "SET value = EXCLUDED.value",
                    (key.decode(), value),
                )
            return
        name, cols, vcol = _PG_TABLES[table]
        if table == "tiles":
            kvals: tuple[object, ...] = (key[0], struct.unpack(">Q", key[1:])[0])
        elif table in ("entries", "checkpts", "cosigs"):
            kvals = (struct.unpack(">Q", key)[0],)
        else:
            kvals = (key,)
        val: object = value
        if table == "dedup" and value is not None:
            val = struct.unpack(">Q", value)[0]
        where = " AND ".join(f"{c} = %s" for c in cols)
        conn.execute(f"DELETE FROM {name} WHERE {where}".encode(), kvals)
        if value is not None:
            ph = ", ".join(["%s"] * (len(cols) + 1))
            conn.execute(
                f"INSERT INTO {name} ({', '.join(cols)}, {vcol}) VALUES ({ph})".encode(),
                (*kvals, val),
            )


# -- an old copy of a store, put back (a restored backup) ------------------------------------


def url_schema(url: str) -> str:
    """The schema a test URL's search_path names (``options=-csearch_path=<schema>``)."""
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(url).query).rsplit("=", 1)[1]


def pg_tool(cluster: PgCluster, program: str, *args: str) -> None:
    """Run ``pg_dump``/``pg_restore``/... of the cluster's installation against it over TCP
    (skips when the program is not installed beside ``initdb``)."""
    exe = cluster.bin / program
    if not exe.exists():
        pytest.skip(f"{program} is not installed beside initdb ({cluster.bin})")
    r = subprocess.run(
        [str(exe), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", SUPERUSER, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, f"{program} failed: {r.stdout}{r.stderr}"


class OldCopy:
    """A copy of a store taken now and put back later in place of the live store, as an
    operator restoring an old backup would, on either backend: LMDB, the environment copied
    (what ``mdb_copy`` does) and copied over ``<data>/db``; PostgreSQL, ``pg_dump -Fc`` of
    the store's schema, and later the schema dropped and restored with ``pg_restore``."""

    def __init__(self, database: str | None, cluster: PgCluster | None, dest: Path) -> None:
        self.database = database
        self.cluster = cluster
        self.dest = dest

    def take(self, storage: Backend) -> None:
        if self.database is None:
            from tlog.storage import Storage

            assert isinstance(storage, Storage)
            self.dest.mkdir()
            storage.env.copy(str(self.dest))
            return
        assert self.cluster is not None
        schema = url_schema(self.database)
        pg_tool(self.cluster, "pg_dump", "-Fc", "-n", schema, "-f", str(self.dest), "postgres")

    def take_from(self, data: Path) -> None:
        """:meth:`take` from the store of the data directory ``data`` (LMDB: ``<data>/db``;
        PostgreSQL: the schema of ``database``), opened read-only for the copy and closed
        again; the log's server may be running meanwhile (a live backup)."""
        storage = open_backend(self.database, data, readonly=True)
        try:
            self.take(storage)
        finally:
            storage.close()

    def restore(self, data: Path) -> None:
        """Put the copy back as the store of the data directory ``data`` (LMDB: its ``db``;
        PostgreSQL: the schema of ``database``). The store must be closed."""
        if self.database is None:
            shutil.rmtree(data / "db")
            shutil.copytree(self.dest, data / "db")
            return
        assert self.cluster is not None
        self.cluster.sql(f"DROP SCHEMA {url_schema(self.database)} CASCADE")
        pg_tool(self.cluster, "pg_restore", "-d", "postgres", "--exit-on-error", str(self.dest))


@dataclass
class DataBackup:
    """The whole data directory (remembered checkpoint, keys; LMDB: the store) copied to
    ``dest`` and, on PostgreSQL, ``dump`` (an :class:`OldCopy`: a pg_dump of the log's
    schema) taken with it: a careless backup. :meth:`restore` puts both back in place of
    ``data``. The store must be closed for both."""

    data: Path
    dest: Path
    dump: OldCopy

    def take(self) -> None:
        shutil.copytree(self.data, self.dest, ignore=shutil.ignore_patterns("tlog.lock"))
        if self.dump.database is not None:
            self.dump.take_from(self.data)

    def restore(self) -> None:
        shutil.rmtree(self.data)
        shutil.copytree(self.dest, self.data)
        if self.dump.database is not None:
            self.dump.restore(self.data)


def empty_store(data: Path, database: str | None, cluster: Callable[[], PgCluster]) -> str:
    """What a failed copy or restore leaves of the store of data directory ``data``: LMDB, a
    0-byte data.mdb; PostgreSQL, the log's schema dropped and created again empty (a restore
    of nothing; ``cluster`` gives the session cluster). Returns what ``tlog serve`` says of
    it when it refuses to start."""
    if database is None:
        (data / "db" / "data.mdb").write_bytes(b"")
        return "is empty (0 bytes)"
    schema = url_schema(database)
    cluster().sql(f"DROP SCHEMA {schema} CASCADE; CREATE SCHEMA {schema}")
    return "the store is behind the log: it ends at tree size 0"


def clone_store(database: str | None, data: Path, dest_database: str | None, dest: Path) -> str:
    """A second, independent store holding what the store of ``database`` (LMDB: in
    ``<data>/db``) holds now, as a standby or a replica would: LMDB, the store's files copied
    to ``<dest>/db``; PostgreSQL, the log copied with ``tlog migrate`` into the empty store
    ``dest_database`` (another schema of the session cluster). The store must be closed.
    Returns its location as ``tlog recover --from`` takes it (a store directory or a URL)."""
    if database is None:
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copytree(data / "db", dest / "db", ignore=shutil.ignore_patterns("tlog.lock"))
        return str(dest / "db")
    assert dest_database is not None
    from tlog.migrate import migrate, open_location

    with (
        open_location(database, create=False) as src,
        open_location(dest_database, create=True) as dst,
    ):
        migrate(src, dst, echo=lambda _msg: None)
    return dest_database


# -- what a PostgreSQL store leaves on disk (privacy and shredding scans) --------------------


def schema_dump(cluster: PgCluster, database: str, dest: Path) -> bytes:
    """Every row of the log's schema as ``pg_dump --data-only`` (plain SQL, COPY text: bytea
    values appear hex-encoded as ``\\x...``, TOASTed values decompressed)."""
    pg_tool(
        cluster,
        "pg_dump",
        "--data-only",
        "-n",
        url_schema(database),
        "-f",
        str(dest),
        "postgres",
    )
    return dest.read_bytes()


def relation_files(cluster: PgCluster, database: str) -> dict[str, bytes]:
    """The on-disk files of every table of the log's schema, its indexes, TOAST tables and
    their indexes (all forks and segments), read raw after a CHECKPOINT has written every
    dirty page: what a copy of the database's disk holds, dead tuples included."""
    schema = url_schema(database)
    rows = cluster.query(
        """
        WITH own AS (SELECT oid, reltoastrelid FROM pg_class
                     WHERE relnamespace = %s::regnamespace),
             toast AS (SELECT reltoastrelid AS oid FROM own WHERE reltoastrelid <> 0),
             rels AS (SELECT oid FROM own UNION SELECT oid FROM toast
                      UNION SELECT indexrelid FROM pg_index
                      WHERE indrelid IN (SELECT oid FROM toast))
        SELECT pg_relation_filepath(oid) FROM rels WHERE pg_relation_filepath(oid) IS NOT NULL
        """,
        schema,
    )
    cluster.query("CHECKPOINT")
    out: dict[str, bytes] = {}
    for (rel,) in rows:
        base = cluster.data / str(rel)
        for f in [base, *base.parent.glob(base.name + ".*"), *base.parent.glob(base.name + "_*")]:
            if f.is_file():
                out[f"pg:{f.relative_to(cluster.data)}"] = f.read_bytes()
    assert out, f"no relation files found for schema {schema}"
    return out


def wal_position(cluster: PgCluster) -> str:
    """The cluster's current WAL insert position (an LSN), for :func:`wal_since`."""
    return str(cluster.query("SELECT pg_current_wal_insert_lsn()")[0][0])


def wal_since(cluster: PgCluster, start: str) -> bytes:
    """The raw WAL the cluster wrote from the LSN ``start`` to now (after a switch to a new
    segment, so that all of it is in finished segment files): every change made since, in
    the form a WAL archive, a streaming replica or a PITR backup keeps it."""
    # The switch returns the end of the segment it completed: everything up to there is in
    # finished segment files.
    end = cluster.query("SELECT pg_switch_wal()")[0][0]
    ((first, first_off, last, _),) = cluster.query(
        "SELECT a.file_name, a.file_offset, b.file_name, b.file_offset FROM "
        "pg_walfile_name_offset(%s::pg_lsn) a, pg_walfile_name_offset(%s::pg_lsn) b",
        start,
        str(end),
    )
    wal = cluster.data / "pg_wal"
    names = sorted(p.name for p in wal.iterdir() if len(p.name) == 24 and p.is_file())
    chunks = []
    for name in names:
        if str(first) <= name <= str(last):
            raw = (wal / name).read_bytes()
            chunks.append(raw[int(str(first_off)) :] if name == first else raw)
    assert chunks, f"no WAL segment from {first} to {last}"
    return b"".join(chunks)
