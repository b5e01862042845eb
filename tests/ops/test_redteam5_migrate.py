"""Red team 5: ``tlog migrate`` killed half way (between two of its transactions), then run
again. The half-made destination must be one no server starts on (not a log that verifies
but lacks the tokens and SCIM records still to come), and the re-run must say what it is
and what to do."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.scim_service.conftest import make_signer as scim_signer
from tlog.backend import StorageError
from tlog.cli import main
from tlog.log import Log
from tlog.storage import Storage

from .support import populate, tables


class Killed(BaseException):
    """Stands for SIGKILL: the process ends here, nothing after runs."""


def test_migrate_killed_half_way_leaves_no_servable_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, dest = tmp_path / "data", tmp_path / "copy"
    populate(data)
    load = Storage.load_raw

    def dies_before_tokens(self: Storage, table: str, items: Iterator[tuple[bytes, bytes]]) -> int:
        if table == "tokens":
            raise Killed
        return load(self, table, items)

    monkeypatch.setattr(Storage, "load_raw", dies_before_tokens)
    with pytest.raises(Killed):
        main(["migrate", "--from", str(data), "--to", str(dest)])
    monkeypatch.setattr(Storage, "load_raw", load)
    capsys.readouterr()

    # No server starts on the half copy (it has no tokens and no SCIM records yet).
    st = Storage(dest / "db")
    try:
        with pytest.raises(StorageError):
            Log(st, scim_signer())
    finally:
        st.close()

    # Running it again says what the destination is and what to do.
    assert main(["migrate", "--from", str(data), "--to", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "interrupted" in err and "empty it" in err, err

    # Emptied, the same command makes a whole, verified copy.
    shutil.rmtree(dest)
    assert main(["migrate", "--from", str(data), "--to", str(dest)]) == 0
    src, dst = Storage(data / "db", readonly=True), Storage(dest / "db", readonly=True)
    try:
        assert tables(dst) == tables(src)
    finally:
        src.close()
        dst.close()
