"""The ``tlog`` command's habits: version, usage, help, stores, tokens, backups, banner."""

from __future__ import annotations

import argparse
import functools
import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.pgsupport import open_store
from tests.support import store_args, tlog_argv, tlog_cli, tlog_in_process
from tlog.auth import TokenStore
from tlog.backend import Backend
from tlog.cli import main, parser
from tlog.storage import Storage

# Every command here is quick: a minute bounds each run (tests.support.tlog_cli's default
# is two). ``run`` starts the real ``tlog`` process (the entry point's own tests); ``cli``
# runs the same command in this process, for what a command decides (its rules, refusals
# and output), which needs no new interpreter per call.
run = functools.partial(tlog_cli, timeout=60)
cli = tlog_in_process


@pytest.fixture
def store(tmp_path: Path, database: str | None) -> Path:
    """A data directory holding a store with a log in it (as ``tlog serve`` leaves it), or
    with PostgreSQL the data directory beside the store in ``database`` (the store commands
    of these tests then take ``*store_args(database)``)."""
    from tests.server.conftest import make_signer
    from tlog.log import Log

    data = tmp_path / "data"
    data.mkdir()
    storage = _open(data, database)
    Log(storage, make_signer())  # records the origin and signs the empty checkpoint
    storage.close()
    return data


def test_version_and_usage_without_arguments() -> None:
    r = run("--version")
    assert r.returncode == 0 and r.stdout.startswith("tlog ")
    r = run()
    assert r.returncode == 2
    assert "usage: tlog" in r.stderr and "serve" in r.stderr and "required" not in r.stderr


def _walk(p: argparse.ArgumentParser, name: str) -> list[tuple[str, argparse.Action]]:
    out = []
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub_name, sp in a.choices.items():
                out += _walk(sp, f"{name} {sub_name}")
        else:
            out.append((name, a))
    return out


def test_every_flag_has_help() -> None:
    actions = _walk(parser(), "tlog")
    assert len(actions) > 60
    missing = [
        f"{cmd} {a.option_strings or a.dest}"
        for cmd, a in actions
        if not a.help or a.help == argparse.SUPPRESS
    ]
    assert missing == []


def _open(store: Path, database: str | None) -> Backend:
    return open_store(database, store / "db" if database is None else store)


def test_store_commands_refuse_a_missing_store(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    for args in (
        ["token", "list"],
        ["token", "create", "--role", "admin", "--tenant", "a"],
        ["token", "revoke", "abcdef", "--yes"],
        ["fsck"],
        ["backup", str(tmp_path / "b")],
    ):
        r = cli(*args, "--data", str(nowhere))
        assert r.returncode == 1, args
        assert "no log store" in r.stderr
    assert not nowhere.exists()  # nothing was created
    r = run("serve", "--no-init", "--data", str(nowhere), "--port", "1")
    assert r.returncode == 1 and "no log store" in r.stderr
    assert not nowhere.exists()


def test_token_create_rules(store: Path, database: str | None, tmp_path: Path) -> None:
    def create(*args: str) -> subprocess.CompletedProcess[str]:
        return cli("token", "create", *args, "--data", str(store), *store_args(database))

    r = create("--role", "auditor")
    assert r.returncode == 2 and "--tenant" in r.stderr
    for bad in ("a b/../c", "A", "x-", "x" * 65, "ü", "a/b"):
        r = create("--role", "submitter", "--tenant", bad)
        assert r.returncode != 0 and "tenant names" in r.stderr, bad
    out = tmp_path / "sub" / "t.token"
    out.parent.mkdir()
    r = create("--role", "submitter", "--tenant", "acme-1", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the token went to the file only
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    token = out.read_text().strip()
    assert token.startswith("tlog_") and token not in r.stderr
    r = create("--role", "submitter", "--tenant", "acme", "--out", str(out))
    assert r.returncode == 1 and "exists" in r.stderr
    assert out.read_text().strip() == token


def test_token_list_shows_dates_and_state(store: Path, database: str | None) -> None:
    storage = _open(store, database)
    ts = TokenStore(storage)
    _, active = ts.create("submitter", tenant="acme", name="adapter")
    _, gone = ts.create("auditor", tenant="acme", name="old", ttl=1)
    _, revoked = ts.create("admin", name="root")
    ts.revoke(revoked.token_id)
    storage.close()
    time.sleep(1.1)  # let the 1 s token expire
    r = cli("token", "list", "--data", str(store), *store_args(database))
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln for ln in r.stdout.splitlines()[1:]}
    assert " active " in rows[active.token_id] and "never" in rows[active.token_id]
    assert " expired " in rows[gone.token_id]
    assert " revoked " in rows[revoked.token_id]
    created = rows[active.token_id].split()[3]
    assert "T" in created and created.endswith("Z")


def test_revoke_by_prefix_with_confirmation(store: Path, database: str | None) -> None:
    storage = _open(store, database)
    ts = TokenStore(storage)
    made = [ts.create("submitter", tenant="t", name=str(i))[1] for i in range(40)]
    storage.close()
    p = made[0]
    assert (
        cli(
            "token", "revoke", p.token_id[:3], "--yes", "--data", str(store), *store_args(database)
        ).returncode
        == 1
    )
    # Without --yes and without a terminal: refused, nothing revoked.
    r = cli(
        "token", "revoke", p.token_id[:8], "--data", str(store), *store_args(database), stdin="y\n"
    )
    assert r.returncode == 1 and "--yes" in r.stderr
    r = cli("token", "revoke", p.token_id[:8], "--yes", "--data", str(store), *store_args(database))
    assert r.returncode == 0 and p.token_id in r.stdout
    storage = _open(store, database)
    state = {q.token_id: q.revoked for q in TokenStore(storage).list()}
    storage.close()
    assert state[p.token_id] is True
    assert sum(state.values()) == 1


def _log_tables(database: str) -> list[str]:
    import psycopg

    with psycopg.connect(database, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() AND table_name LIKE 'tlog%'"
        ).fetchall()
    return sorted(r[0] for r in rows)


def test_store_commands_refuse_a_store_without_a_log(tmp_path: Path, database: str | None) -> None:
    """A store that holds no log yet (an empty LMDB file, an empty schema) and a database
    with no tlog tables at all answer alike on both backends: "no log store", exit 1, and
    the command creates nothing (only ``tlog serve`` starts a log)."""
    data = tmp_path / "data"
    data.mkdir()
    args = ["--data", str(data), *store_args(database)]
    commands = (
        ["token", "create", "--role", "admin"],
        ["token", "list"],
        ["token", "revoke", "abcdef12", "--yes"],
        ["fsck"],  # not "OK" (nothing was checked), not "FAILED" (nothing is damaged)
    )
    if database is not None:  # no tables yet: nothing is created by asking
        for cmd in commands:
            r = cli(*cmd, *args)
            assert r.returncode == 1 and "no log store" in r.stderr, (cmd, r.stderr)
            assert "tlog serve" in r.stderr
        assert _log_tables(database) == []
    _open(data, database).close()  # the store exists now, but holds no log
    for cmd in commands:
        r = cli(*cmd, *args)
        assert r.returncode == 1, (cmd, r.stderr)
        assert "no log store" in r.stderr and "holds no log yet" in r.stderr, (cmd, r.stderr)
    storage = _open(data, database)
    try:
        assert storage.is_empty()
        assert list(TokenStore(storage).list()) == []  # no token was made
    finally:
        storage.close()


def test_fsck_fails_a_store_with_records_but_no_log(tmp_path: Path, database: str | None) -> None:
    """Emptiness is "no record at all": a store holding an entry but no origin and no
    checkpoint (what is left after damage) is checked and fails, on both backends, rather
    than pass as a store that holds no log."""
    from tests.pgsupport import tamper
    from tlog.backend import u64

    data = tmp_path / "data"
    data.mkdir()
    storage = _open(data, database)
    tamper(storage, "entries", u64(0), b"stray")
    storage.close()
    r = cli("fsck", "--data", str(data), *store_args(database))
    assert r.returncode == 2, r.stderr
    assert "fsck: ERROR store has no origin or verifier key" in r.stderr
    assert "fsck: FAILED" in r.stdout


@pytest.mark.lmdb_only("tlog backup copies the LMDB file (PostgreSQL: pg_dump or PITR)")
def test_backup_is_private_compact_and_verified(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.server.conftest import make_signer
    from tlog.log import Log

    storage = Storage(store / "db")
    log_ = Log(storage, make_signer())
    log_.integrate([f"entry {i}".encode() for i in range(300)])
    storage.close()
    dest = tmp_path / "backup"
    assert main(["backup", str(dest), "--data", str(store)]) == 0
    out = capsys.readouterr().out
    assert "tree size 300" in out and "fsck OK" in out
    copy = dest / "data.mdb"
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert main(["fsck", "--data", str(tmp_path / "restored")]) == 1  # not there yet
    (tmp_path / "restored").mkdir()
    os.rename(dest, tmp_path / "restored" / "db")
    assert main(["fsck", "--data", str(tmp_path / "restored")]) == 0
    # Never over an existing copy.
    dest.mkdir()
    (dest / "x").write_text("keep")
    assert main(["backup", str(dest), "--data", str(store)]) == 1
    assert (dest / "x").read_text() == "keep"


@pytest.mark.slow
def test_serve_banner_after_bind_only(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = run(
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--port",
            str(port),
            "--log-level",
            "warning",
            timeout=60,
        )
    assert r.returncode != 0
    assert "listening" not in r.stdout
    assert "address already in use" in r.stderr
    # A fresh store announced its key files and asked for a backup.
    assert "log.key (log signing key)" in r.stdout
    assert "scim-master.key (SCIM master key" in r.stdout and "BACK UP" in r.stdout


def test_an_os_error_at_start_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """An operator's mistake the commands do not check one by one (here the remembered
    checkpoint's path is a directory) ends ``tlog serve`` with the OS's reason on one line
    and exit status 1, never a Python traceback."""
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "last-checkpoint").mkdir()
    r = subprocess.run(
        [*tlog_argv("serve", "--data", str(data)), "--port", "0", "--origin", "x.example/log"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("TLOG_")},
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.rstrip().splitlines()[-1] == (
        f"tlog: [Errno 21] Is a directory: '{data / 'last-checkpoint'}'"
    )
