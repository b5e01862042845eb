"""An outbox that cannot be opened (its directory read-only, missing, or a file; the disk
full) is a clear refusal to start, naming the outbox: never a traceback, never a proxy
that starts without a durable outbox."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox, OutboxError
from tests.support import free_port, tlog_argv


def _read_only_dir(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a read-only mount needs root")
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,ro", "tmpfs", str(mnt)],
        capture_output=True,
        timeout=30,
    )
    if p.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)


@pytest.fixture(params=["not-a-directory", "read-only"])
def unwritable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "not-a-directory":
        (tmp_path / "plain-file").write_text("x")
        yield tmp_path / "plain-file" / "outbox.sqlite"
    else:
        yield from (d / "outbox.sqlite" for d in _read_only_dir(tmp_path))


def test_outbox_that_cannot_be_opened_is_an_outbox_error(unwritable: Path) -> None:
    with pytest.raises(OutboxError, match="outbox"):
        Outbox(unwritable)


def test_proxy_refuses_to_start_on_an_unwritable_outbox(unwritable: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("tlog_" + "A" * 43 + "\n")
    token.chmod(0o600)
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: the log is "down" at start
    p = subprocess.run(
        tlog_argv(
            "scim-proxy",
            "--upstream",
            dead + "/v2",
            "--log",
            dead,
            "--token-file",
            str(token),
            "--tenant",
            "t1",
            "--sp-id",
            "sp1",
            "--log-key-tofu",
            "--outbox",
            str(unwritable),
            "--listen",
            f"127.0.0.1:{free_port()}",
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "refusing to start" in p.stderr and str(unwritable) in p.stderr


def test_an_outbox_readable_by_others_is_made_owner_only(tmp_path: Path) -> None:
    """An outbox file (and its WAL) left group- or world-readable, e.g. restored from a
    backup or created by hand, holds personal data in plaintext: opening makes it 0600."""
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    for p in tmp_path.iterdir():
        p.chmod(0o644)
    ob = Outbox(path)
    try:
        for p in tmp_path.iterdir():
            assert p.stat().st_mode & 0o777 == 0o600, p.name
    finally:
        ob.close()
