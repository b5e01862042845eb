"""Review 9: ``tlog migrate`` into a destination that holds records but no log.

The destination check looks at the origin and the signed checkpoints only. A store with
other records and neither (SCIM records or tokens of another installation, e.g. a reused
directory or database whose log tables were emptied) passed it; the copy was then loaded
on top of them, checkpoints included, and only the final comparison failed, leaving a
servable log with records that are not the source's. Now any record refuses the
destination before anything is copied.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tlog.cli import main
from tlog.storage import Storage

from .support import populate


@pytest.mark.parametrize("table", ["aux", "tokens"])
def test_a_destination_with_foreign_records_is_refused_before_the_copy(
    tmp_path: Path, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data, dest = tmp_path / "data", tmp_path / "copy"
    populate(data)
    st = Storage(dest / "db")
    try:
        st.load_raw(table, iter([(b"\xffforeign-record", b"not this log's")]))
    finally:
        st.close()
    assert main(["migrate", "--from", str(data), "--to", str(dest)]) == 1
    err = capsys.readouterr().err
    assert "holds records" in err and table in err, err
    st = Storage(dest / "db", readonly=True)
    try:
        with st.read() as rv:
            assert rv.latest_checkpoint() is None  # nothing copied: no servable log
            assert list(rv.raw("entries")) == []
    finally:
        st.close()
