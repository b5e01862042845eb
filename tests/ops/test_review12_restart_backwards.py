"""review12: ``tlog migrate --restart`` never clears an interrupted copy of a larger tree than
the source now holds.

The marker names the tree size the copy began at. A source behind it (an older backup of
the same log, a lagging replica, a store that lost entries) is not "the source changed
since": the interrupted copy may hold acknowledged entries the source no longer has, and
clearing it to copy the shorter log would roll the log back. Refused, nothing cleared."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.scim_service.conftest import open_harness, user_event
from tlog.cli import main

from .support import contents_of, copy_of, killed_at, marker_of


@pytest.mark.slow
def test_restart_refuses_a_source_behind_the_marker(
    source_log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    newer = copy_of(source_log, tmp_path)
    older = tmp_path / "older"
    shutil.copytree(newer, older)  # the backup, taken before the last event
    with open_harness(newer) as h:
        assert h.post_event(user_event("u-r12", req="req-r12")).status_code in (200, 201)
    dst = str(tmp_path / "copy")
    killed_at("inside-a-table", str(newer), dst)
    held = contents_of(dst)
    assert marker_of(dst) is not None
    capsys.readouterr()
    assert main(["migrate", "--from", str(older), "--to", dst, "--restart"]) == 1
    err = capsys.readouterr().err
    assert "behind" in err and "not cleared" in err, err
    assert contents_of(dst) == held  # untouched
    # the right source still resumes (or restarts) it
    assert main(["migrate", "--from", str(newer), "--to", dst, "--restart"]) == 0
    assert contents_of(dst) == contents_of(str(newer))
