"""Red team 27: ``tlog-client audit --state`` whose state file sits on a full disk (a real
1 MiB tmpfs, filled).

Found: a log failing verification while the state file could not be written was reported
as a disk error (exit 1, "No space left on device"): the auditor saves its state (the run's
progress dropped) before raising the failure, and the save's ``OSError`` replaced it. The
alarm an operator alerts on (exit 2, ``LOG FAILED VERIFICATION``) was lost. Now the failure
is raised, with a note that the state file could not be updated.

Held (a guard): a clean log audited with the state file unwritable reports nothing verified
(exit 1, the disk error, no "verified" line), and the state file keeps the size last
verified and saved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.formats.tiles import decode_entry_bundle, encode_entry_bundle
from tests.adapters.helpers import fill_disk, tmpfs

from .conftest import Server


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path, "disk")


def _size(state: Path) -> int:
    return int(json.loads(state.read_text())["checkpoint"]["size"])


def _another_entry(body: bytes) -> bytes:
    entries = decode_entry_bundle(body)
    entries[3] = entries[3] + b"!"
    return encode_entry_bundle(entries)


def _audited_then_full(server: Server, disk: Path) -> Path:
    """A state file on ``disk`` saved at 500 entries; the log at 800; ``disk`` full."""
    state = disk / "s.json"
    server.add(500)
    assert server.audit(state) == 0
    server.add(300, tag="b")
    fill_disk(disk / "filler")
    return state


def test_a_log_failing_while_the_state_disk_is_full_still_fails_the_audit(
    server: Server, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _audited_then_full(server, small_disk)
    server.tamper.rewrite["/tile/entries/002"] = _another_entry
    capsys.readouterr()
    assert server.audit(state) == 2
    err = capsys.readouterr().err
    assert "LOG FAILED VERIFICATION" in err, err
    assert "state file could not be updated" in err, err
    assert _size(state) == 500


def test_redteam27_nothing_is_reported_verified_that_the_state_did_not_keep(
    server: Server, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _audited_then_full(server, small_disk)
    capsys.readouterr()
    assert server.audit(state) == 1
    out, err = capsys.readouterr()
    assert "No space left" in err and "800" not in out, (out, err)
    assert _size(state) == 500
    (small_disk / "filler").unlink()
    assert server.audit(state) == 0
    assert _size(state) == 800
