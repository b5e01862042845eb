"""Red team 5: ``tlog backup`` from a damaged source, and killed half way.

The copy was written as ``<dest>/data.mdb`` before it was verified, and left there when the
verification failed or the process died: a backup directory (a cron job's dated one) then
held a ``data.mdb`` that looks like a backup but is a copy of a damaged store, or an
unverified one. Now the copy is made aside and becomes ``<dest>/data.mdb`` only once it
verifies; a re-run after a kill takes over the directory it left."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pgsupport import tamper
from tests.server.conftest import make_signer
from tlog import backup as backup_mod
from tlog.backend import u64
from tlog.cli import main
from tlog.log import Log
from tlog.storage import Storage


class Killed(BaseException):
    """Stands for SIGKILL: the process ends here, nothing after runs."""


def _store(data: Path) -> None:
    storage = Storage(data / "db")
    Log(storage, make_signer()).integrate([f"entry {i}".encode() for i in range(300)])
    storage.close()


def test_backup_of_a_damaged_store_keeps_no_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, dest = tmp_path / "data", tmp_path / "backup"
    _store(data)
    st = Storage(data / "db")
    tamper(st, "entries", u64(7), b"bit flipped")
    st.close()
    assert main(["backup", str(dest), "--data", str(data)]) == 1
    assert "does not verify" in capsys.readouterr().err
    assert not (dest / "data.mdb").exists()
    assert not any(p.name == "data.mdb" for p in dest.rglob("*"))


def test_backup_killed_before_it_verified_then_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, dest = tmp_path / "data", tmp_path / "backup"
    _store(data)

    def dies(*_a: object, **_k: object) -> None:
        raise Killed

    monkeypatch.setattr(backup_mod, "fsck", dies)
    with pytest.raises(Killed):
        main(["backup", str(dest), "--data", str(data)])
    monkeypatch.undo()
    assert not (dest / "data.mdb").exists()  # nothing unverified looks like a backup
    capsys.readouterr()
    assert main(["backup", str(dest), "--data", str(data)]) == 0
    assert "tree size 300" in capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == ["data.mdb"]
