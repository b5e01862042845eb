"""Red team 5: ``tlog migrate`` killed half way (between two of its transactions), then run
again. The half-made destination must be one no server starts on (not a log that verifies
but lacks the tokens and SCIM records still to come), and the re-run must finish it."""

from __future__ import annotations

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

    # Running it again finishes the copy (gaps9: it resumes its own interrupted copy, after
    # proving what is there is a prefix of the source; tests/ops/test_gaps9_migrate_resume.py)
    # and makes a whole, verified copy.
    assert main(["migrate", "--from", str(data), "--to", str(dest)]) == 0
    err = capsys.readouterr().err
    assert "resuming the interrupted copy" in err, err
    src, dst = Storage(data / "db", readonly=True), Storage(dest / "db", readonly=True)
    try:
        assert tables(dst) == tables(src)
    finally:
        src.close()
        dst.close()
