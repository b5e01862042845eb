"""An outbox that cannot be opened (its directory read-only, missing, or a file; the disk
full) is a clear refusal to start, naming the outbox: never a traceback, never a proxy
that starts without a durable outbox."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.adapters.outbox import Outbox, OutboxError

from .helpers import down_proxy_argv, tmpfs


@pytest.fixture(params=["not-a-directory", "read-only"])
def unwritable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "not-a-directory":
        (tmp_path / "plain-file").write_text("x")
        yield tmp_path / "plain-file" / "outbox.sqlite"
    else:
        yield from (d / "outbox.sqlite" for d in tmpfs(tmp_path, "ro", "ro"))


def test_outbox_that_cannot_be_opened_is_an_outbox_error(unwritable: Path) -> None:
    with pytest.raises(OutboxError, match="outbox"):
        Outbox(unwritable)


def test_proxy_refuses_to_start_on_an_unwritable_outbox(unwritable: Path, tmp_path: Path) -> None:
    p = subprocess.run(
        down_proxy_argv(tmp_path, unwritable),
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
