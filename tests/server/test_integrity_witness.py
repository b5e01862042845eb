"""Rollback caught by witnesses: a real tlog-witness (in-process, HTTP on 127.0.0.1) is asked
at start-up and on every push what it cosigned for the log."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from client.formats.cosignature import CosignatureSigner
from client.witness.core import Witness, WitnessedLog
from client.witness.server import WitnessHTTPServer, start_server
from client.witness.store import WitnessStore
from tlog.integrity import RollbackDetected
from tlog.log import Log
from tlog.server import build_app
from tlog.storage import Storage

from ..support import free_port, serve_config, wait_for
from .conftest import ORIGIN, make_signer

pytestmark = pytest.mark.lmdb_only("restores old copies of the LMDB data directory")


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


def _grow_and_witness(data: Path, policy: Path, sizes: list[int]) -> None:
    """Run the app, and after each target size let the witness cosign it."""
    app, log_, tokens = build_app(
        serve_config(data, batch_age_ms=0.0, witnesses=policy, witness_interval=0.0),
        make_signer(),
        scim=False,
    )
    token, _ = tokens.create("submitter", tenant="t")
    h = {"Authorization": f"Bearer {token}"}
    n = 0
    with TestClient(app) as c:
        for target in sizes:
            while n < target:
                assert c.post("/v1/entries", content=b"e%d" % n, headers=h).status_code == 200
                n += 1
            wait_for(lambda t=target: c.get("/v1/witnesses").json()["cosigned_size"] == t)
    log_.storage.close()


def _backup(data: Path, to: Path) -> None:
    """The whole data directory (store *and* remembered checkpoint), as a careless backup."""
    shutil.copytree(data, to, ignore=shutil.ignore_patterns("tlog.lock"))


def _restore(backup: Path, data: Path) -> None:
    shutil.rmtree(data)
    shutil.copytree(backup, data)


def test_old_backup_refused_by_the_witness(
    tmp_path: Path, witness: RealWitness, database: str | None
) -> None:
    """The whole data dir (remembered checkpoint included) restored from an old backup: only
    the witness knows better, and start-up asks it."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2])
    _backup(data, tmp_path / "backup")
    _grow_and_witness(data, policy, [5])
    _restore(tmp_path / "backup", data)
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
    tmp_path: Path, witness: RealWitness, database: str | None
) -> None:
    """A witness that only cosigned up to the backup's size has nothing to object to."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2])
    _backup(data, tmp_path / "backup")
    _restore(tmp_path / "backup", data)
    _app, log_, _ = build_app(
        serve_config(data, database, witnesses=policy), make_signer(), scim=False
    )
    assert log_.latest.size == 2 and log_.halted is None
    log_.storage.close()


def test_another_history_at_the_witness_size_is_refused(
    tmp_path: Path, witness: RealWitness, database: str | None
) -> None:
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [3])
    shutil.rmtree(data / "db")
    (data / "last-checkpoint").unlink()
    other = Log(Storage(data / "db"), make_signer())
    other.integrate([b"x", b"y", b"z"])  # size 3, another root, same key
    other.storage.close()
    with pytest.raises(
        RollbackDetected, match="holds a different checkpoint of this log at tree size 3"
    ):
        build_app(serve_config(data, database, witnesses=policy), make_signer(), scim=False)


def test_running_log_stops_signing_when_a_witness_is_ahead(
    tmp_path: Path, witness: RealWitness, database: str | None
) -> None:
    """The witness was down at start-up (a warning), so the restored log started; the next
    push round reveals the witness holds a larger size: the log stops signing, says why."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2])
    _backup(data, tmp_path / "backup")
    _grow_and_witness(data, policy, [4])
    _restore(tmp_path / "backup", data)
    witness.stop()
    app, log_, tokens = build_app(
        serve_config(data, database, batch_age_ms=0.0, witnesses=policy, witness_interval=0.0),
        make_signer(),
        scim=False,
    )
    token, _ = tokens.create("submitter", tenant="t")
    h = {"Authorization": f"Bearer {token}"}
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
    tmp_path: Path, witness: RealWitness, capsys: pytest.CaptureFixture[str], database: str | None
) -> None:
    """The whole data dir came back from an old backup (the remembered checkpoint too): the
    witness's cosigned checkpoint is the target, and after recovery the log starts."""
    import os

    from tlog.cli import main as tlog_main

    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [2])
    _backup(data, tmp_path / "backup")
    _grow_and_witness(data, policy, [6])
    mirror = tmp_path / "mirror"
    shutil.copytree(data / "db", mirror, ignore=shutil.ignore_patterns("tlog.lock"))
    _restore(tmp_path / "backup", data)
    with pytest.raises(RollbackDetected, match="cosigned tree size 6"):
        build_app(serve_config(data, database, witnesses=policy), make_signer(), scim=False)
    # The CLI reads the log key from <data>/log.key.
    fd = os.open(data / "log.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, make_signer()._key.skey().encode() + b"\n")
    os.close(fd)
    assert (
        tlog_main(
            ["recover", "--data", str(data), "--from", str(mirror), "--witnesses", str(policy)]
        )
        == 0
    )
    assert "verified against the checkpoint at size 6 (witness w1)" in capsys.readouterr().out
    _app, log_, _ = build_app(
        serve_config(data, database, witnesses=policy), make_signer(), scim=False
    )
    assert log_.latest.size == 6 and log_.halted is None
    log_.storage.close()


def test_running_log_stops_signing_when_a_witness_holds_another_root(
    tmp_path: Path, witness: RealWitness, database: str | None
) -> None:
    """The witness cosigned size 3 of one history; the store (same key) holds another history
    of size 5. Start-up passes (the witness is behind: 409 with size 3), but the first push's
    consistency proof from 3 fails at the witness: the log stops signing."""
    witness.start()
    data, policy = tmp_path / "data", _policy(tmp_path, witness)
    _grow_and_witness(data, policy, [3])
    shutil.rmtree(data / "db")
    (data / "last-checkpoint").unlink()
    other = Log(Storage(data / "db"), make_signer())
    other.integrate([b"o%d" % i for i in range(5)])
    other.storage.close()
    app, log_, _ = build_app(
        serve_config(data, database, witnesses=policy, witness_interval=0.0),
        make_signer(),
        scim=False,
    )
    with TestClient(app) as c:
        wait_for(lambda: c.get("/v1/witnesses").json()["halted"] is not None)
        halted = c.get("/v1/witnesses").json()["halted"]
        assert "inconsistent with this log's checkpoint 5" in halted
        assert "forked" in halted
    log_.storage.close()
