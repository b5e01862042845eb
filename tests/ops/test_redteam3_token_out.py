"""``tlog token create --out FILE`` when FILE cannot be written.

The token was created in the store first and written to FILE afterwards. When the write
failed (its directory missing or unwritable, a symlink planted at the path, a file created
there in between), the command said so and exited 1, but the token stayed in the store,
active, with no expiry if none was asked: a live credential of that role that nobody held,
which the operator believed was never made (and a second try then warned that the person
"already holds" one, which dual control counts as the same officer). Now FILE is created
(exclusively, 0600, never through a symlink) before the token, and a failure leaves no
token behind.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tests.pgsupport import open_store
from tests.support import store_args, tlog_in_process
from tlog.auth import TokenStore


@pytest.fixture
def store(tmp_path: Path, database: str | None) -> Path:
    from tests.server.conftest import make_signer
    from tlog.log import Log

    data = tmp_path / "data"
    data.mkdir()
    storage = open_store(database, data / "db" if database is None else data)
    Log(storage, make_signer())
    storage.close()
    return data


def _tokens(store: Path, database: str | None) -> list[str]:
    storage = open_store(database, store / "db" if database is None else store)
    try:
        return [p.token_id for p in TokenStore(storage).list()]
    finally:
        storage.close()


def _bad_outs(tmp_path: Path) -> dict[str, Path]:
    planted = tmp_path / "planted"
    planted.symlink_to(tmp_path / "victim")  # dangling: exists() is False
    return {"missing-dir": tmp_path / "no" / "such" / "dir" / "t", "planted-symlink": planted}


@pytest.mark.parametrize("case", ["missing-dir", "planted-symlink"])
def test_a_token_file_that_cannot_be_written_leaves_no_token(
    store: Path, database: str | None, tmp_path: Path, case: str
) -> None:
    out = _bad_outs(tmp_path)[case]
    r = tlog_in_process(
        "token", "create", "--role", "admin", "--out", str(out), "--data", str(store),
        *store_args(database),
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "tlog_" not in r.stdout + r.stderr
    assert _tokens(store, database) == [], "a token was created that nobody holds"
    assert not (tmp_path / "victim").exists()  # nothing written through the symlink


def test_a_token_file_under_umask_000_is_0600(
    store: Path, database: str | None, tmp_path: Path
) -> None:
    out = tmp_path / "t.token"
    old = os.umask(0)
    try:
        r = tlog_in_process(
            "token", "create", "--role", "admin", "--out", str(out), "--data", str(store),
            *store_args(database),
        )  # fmt: skip
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().startswith("tlog_")
    assert len(_tokens(store, database)) == 1
