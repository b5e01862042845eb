"""Rollback caught by witnesses: a real tlog-witness (in-process, HTTP on 127.0.0.1) is asked
at start-up and on every push what it cosigned for the log. On both backends: the "old
backup" is the whole data directory copied (LMDB: the store is in it; PostgreSQL: plus a
``pg_dump`` of the log's schema, restored with ``pg_restore``), and "another history" is
another store under the same key (LMDB: swapped in under ``<data>/db``; PostgreSQL: another
schema)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.formats.cosignature import CosignatureSigner
from client.witness.core import Witness, WitnessedLog
from client.witness.server import WitnessHTTPServer, start_server
from client.witness.store import WitnessStore
from tlog.app import LogApp
from tlog.backend import u64
from tlog.integrity import RollbackDetected
from tlog.log import Log
from tlog.server import build_app

from ..pgsupport import DataBackup, OldCopy, clone_store, open_store, tamper
from ..support import free_port, serve_args, serve_config, store_args, wait_for
from .conftest import ORIGIN, make_signer


@dataclass
class RealWitness:
    name: str
    signer: CosignatureSigner
    db: Path
    port: int
    server: WitnessHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        w = Witness(
            self.signer, [WitnessedLog(ORIGIN, (make_signer().verifier,))], WitnessStore(self.db)
        )
        self.server, _ = start_server(w, port=self.port)

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[RealWitness]:
    w = RealWitness(
        "w1", CosignatureSigner.generate("witness.test/w1"), tmp_path / "w.db", free_port()
    )
    yield w
    w.stop()


def _policy(tmp_path: Path, w: RealWitness) -> Path:
    p = tmp_path / "policy.txt"
    p.write_text(f"log {make_signer().vkey()}\nwitness w1 {w.signer.vkey()} {w.url}\nquorum w1\n")
    return p


def _witnessed_app(
    data: Path, policy: Path, database: str | None
) -> tuple[LogApp, Log, dict[str, str]]:
    """The log's app pushing to the witnesses of ``policy`` at once, its log, and a
    submitter's headers."""
    app, log_, tokens = build_app(
        serve_config(data, database, batch_age_ms=0.0, witnesses=policy, witness_interval=0.0),
        make_signer(),
        scim=False,
    )
    token, _ = tokens.create("submitter", tenant="t")
    return app, log_, {"Authorization": f"Bearer {token}"}


def _grow_and_witness(
    data: Path, policy: Path, sizes: list[int], database: str | None = None
) -> None:
    """Run the app, and after each target size let the witness cosign it."""
    app, log_, h = _witnessed_app(data, policy, database)
    n = 0
    with TestClient(app) as c:
        for target in sizes:
            while n < target:
                assert c.post("/v1/entries", content=b"e%d" % n, headers=h).status_code == 200
                n += 1
            wait_for(lambda t=target: c.get("/v1/witnesses").json()["cosigned_size"] == t)
    log_.storage.close()


@pytest.fixture
def backup(tmp_path: Path, database: str | None, old_copy: Callable[[str], OldCopy]) -> DataBackup:
    return DataBackup(tmp_path / "data", tmp_path / "backup", old_copy("dump"))


def _other_history(
    data: Path, database: str | None, new_database: Callable[[], str | None], n: int, tag: str
) -> str | None:
    """Another store under the same key holding another history of ``n`` entries, and no
    remembered checkpoint: LMDB, swapped in under ``<data>/db``; PostgreSQL, another schema
    (the frontend pointed at the wrong database). Returns its ``database``."""
    other_db = new_database()
    if database is None:
        shutil.rmtree(data / "db")
    (data / "last-checkpoint").unlink()
    other = Log(open_store(other_db, data / "db"), make_signer())
    other.integrate([f"{tag}{i}".encode() for i in range(n)])  # same key, another root
    other.storage.close()
    return other_db


def test_old_backup_refused_by_the_witness(
    tmp_path: Path, witness: RealWitness, database: str | None, backup: DataBackup
) -> None:
    """The whole data dir (remembered checkpoint included) restored from an old backup: only
    the witness knows better, and start-up asks it."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2], database)
    backup.take()
    _grow_and_witness(data, policy, [5], database)
    backup.restore()
    with pytest.raises(RollbackDetected) as e:
        build_app(serve_config(data, database, witnesses=policy), make_signer(), scim=False)
    assert "witness w1 has cosigned tree size 5 of this log, but the store ends at 2" in str(
        e.value
    )
    assert "tlog recover --from" in str(e.value)
    # Without the witness's knowledge the same store would have started: the remembered
    # checkpoint came back with the backup. (That is why the file can live elsewhere.)
    _app, log_, _ = build_app(serve_config(data, database), make_signer(), scim=False)
    assert log_.latest.size == 2
    log_.storage.close()


def test_old_backup_with_the_witness_behind_it_starts(
    tmp_path: Path, witness: RealWitness, database: str | None, backup: DataBackup
) -> None:
    """A witness that only cosigned up to the backup's size has nothing to object to."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2], database)
    backup.take()
    backup.restore()
    _app, log_, _ = build_app(
        serve_config(data, database, witnesses=policy), make_signer(), scim=False
    )
    assert log_.latest.size == 2 and log_.halted is None
    log_.storage.close()


def test_another_history_at_the_witness_size_is_refused(
    tmp_path: Path,
    witness: RealWitness,
    database: str | None,
    new_database: Callable[[], str | None],
) -> None:
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [3], database)
    other_db = _other_history(data, database, new_database, 3, "x")  # size 3, another root
    with pytest.raises(
        RollbackDetected, match="holds a different checkpoint of this log at tree size 3"
    ):
        build_app(serve_config(data, other_db, witnesses=policy), make_signer(), scim=False)


def test_running_log_stops_signing_when_a_witness_is_ahead(
    tmp_path: Path, witness: RealWitness, database: str | None, backup: DataBackup
) -> None:
    """The witness was down at start-up (a warning), so the restored log started; the next
    push round reveals the witness holds a larger size: the log stops signing, says why."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2], database)
    backup.take()
    _grow_and_witness(data, policy, [4], database)
    backup.restore()
    witness.stop()
    app, log_, h = _witnessed_app(data, policy, database)
    witness.start()
    with TestClient(app) as c:
        wait_for(lambda: c.get("/v1/witnesses").json()["halted"] is not None)
        halted = c.get("/v1/witnesses").json()["halted"]
        assert "witness w1 cosigned tree size 4, but this log is at 2" in halted
        r = c.post("/v1/entries", content=b"next", headers=h)
        assert r.status_code == 503
        assert "the log is not signing" in r.json()["error"]
        assert c.get("/checkpoint").status_code == 200  # reads keep working
    assert log_.latest.size == 2  # nothing signed at the sizes the witness already holds
    log_.storage.close()


def test_recover_to_what_the_witness_cosigned(
    tmp_path: Path,
    witness: RealWitness,
    capsys: pytest.CaptureFixture[str],
    database: str | None,
    backup: DataBackup,
    new_database: Callable[[], str | None],
) -> None:
    """The whole data dir came back from an old backup (the remembered checkpoint too): the
    witness's cosigned checkpoint is the target, and after recovery the log starts. The copy
    recovered from is a replica of the store at size 6 (LMDB: a copy of the store's files;
    PostgreSQL: another database holding the log)."""
    import os

    from tlog.cli import main as tlog_main

    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2], database)
    backup.take()
    _grow_and_witness(data, policy, [6], database)
    mirror = clone_store(database, data, new_database(), tmp_path / "mirror")
    backup.restore()
    with pytest.raises(RollbackDetected, match="cosigned tree size 6"):
        build_app(serve_config(data, database, witnesses=policy), make_signer(), scim=False)
    # The CLI reads the log key from <data>/log.key.
    fd = os.open(data / "log.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, make_signer()._key.skey().encode() + b"\n")
    os.close(fd)
    assert (
        tlog_main(
            ["recover", "--data", str(data), *serve_args(database), "--from", mirror]
            + ["--witnesses", str(policy)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "verified against the checkpoint at size 6 (witness w1)" in out
    assert "with 1 witness cosignature(s)" in out
    # The cosignatures gathered after the backup were lost with it; the witness's own
    # cosignature on the target came back with the recovery (verified under the policy's
    # key), so the log is cosigned at once, even with the witness down at start-up...
    st = open_store(database, data / "db")
    with st.read() as rv:
        lines = rv.cosignatures(6)
    st.close()
    assert lines is not None and "\u2014 witness.test/w1 ".encode() in lines
    witness.stop()
    app, log_, _ = build_app(
        serve_config(data, database, witnesses=policy), make_signer(), scim=False
    )
    assert log_.latest.size == 6 and log_.halted is None
    cosigned = app.api.published.cosigned
    assert cosigned is not None and cosigned.size == 6
    log_.storage.close()
    assert tlog_main(["fsck", "--data", str(data), *store_args(database)]) == 0


def test_start_up_gathers_the_witnesses_cosignatures_again(
    tmp_path: Path, witness: RealWitness, database: str | None
) -> None:
    """...and without them (recovered from a checkpoint that carries none), the start-up
    check gathers them: a witness at the store's size cosigns it again."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [3], database)
    st = open_store(database, data / "db")
    tamper(st, "cosigs", u64(3), None)  # as if lost
    st.close()
    app, log_, _ = build_app(
        serve_config(data, database, witnesses=policy), make_signer(), scim=False
    )
    with log_.storage.read() as rv:
        lines = rv.cosignatures(3)
    assert lines is not None and "\u2014 witness.test/w1 ".encode() in lines
    cosigned = app.api.published.cosigned
    assert cosigned is not None and cosigned.size == 3
    log_.storage.close()


def test_running_log_stops_signing_when_a_witness_holds_another_root(
    tmp_path: Path,
    witness: RealWitness,
    database: str | None,
    new_database: Callable[[], str | None],
) -> None:
    """The witness cosigned size 3 of one history; the store (same key) holds another history
    of size 5. Start-up passes (the witness is behind: 409 with size 3), but the first push's
    consistency proof from 3 fails at the witness: the log stops signing."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [3], database)
    other_db = _other_history(data, database, new_database, 5, "o")
    app, log_, _ = build_app(
        serve_config(data, other_db, witnesses=policy, witness_interval=0.0),
        make_signer(),
        scim=False,
    )
    with TestClient(app) as c:
        wait_for(lambda: c.get("/v1/witnesses").json()["halted"] is not None)
        halted = c.get("/v1/witnesses").json()["halted"]
        assert "inconsistent with this log's checkpoint 5" in halted
        assert "forked" in halted
    log_.storage.close()
