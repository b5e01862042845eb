"""The ``tlog`` command: serve, keygen, token, fsck, backup, recover, migrate, config,
log-entry, scim-proxy.

Settings come from one frozen object per program (:mod:`tlog.config`): ``--config FILE``
(TOML), then environment variables, then flags. Commands that only use a store (``token``,
``fsck``, ``backup``) refuse a data directory that holds none; only ``serve`` (unless
``--no-init``) and ``keygen`` create anything.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client.runtime.logs import one_line
from client.runtime.private import check_private_dir, private_umask
from tlog.auth import ROLES, Principal, TokenStore
from tlog.backend import Backend, NoLogStore, StorageError, is_database_url, open_backend
from tlog.config import ConfigError, ProxyConfig, ServeConfig, add_arguments, from_args
from tlog.signer import CheckpointSigner, create_key_file, load_key_file

if TYPE_CHECKING:
    from tlog.fsck import FsckReport
    from tlog.pg import OperatorHold

DEFAULT_ORIGIN = "localhost/tlog-demo"
# Roles whose tokens act for one tenant: they must name it.
TENANT_ROLES = ("submitter", "auditor")
TENANT_RE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?")
MIN_ID_PREFIX = 6


class CliError(Exception):
    """An environment problem, reported as ``tlog: <message>`` with exit 1."""


class UsageError(CliError):
    """A missing or contradictory argument: exit 2, like argparse's own usage errors."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tlog")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


class _VersionAction(argparse._VersionAction):
    """``--version``, the installed version looked up only when asked: importing
    ``importlib.metadata`` cost every start of every command ~20-40 ms of CPU."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        self.version = f"tlog {_version()}"
        super().__call__(parser, namespace, values, option_string)


def _duration(s: str) -> int:
    m = re.fullmatch(r"([1-9][0-9]*)([smhd]?)", s)
    if not m:
        raise argparse.ArgumentTypeError("duration like 3600, 90m, 12h or 30d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _tenant(s: str) -> str:
    if not TENANT_RE.fullmatch(s):
        raise argparse.ArgumentTypeError(
            "tenant names are 1-64 of a-z 0-9 . _ - (starting and ending with a letter or digit)"
        )
    return s


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    try:
        return from_args(ServeConfig, args)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def has_store(data: Path) -> bool:
    return (data / "db" / "data.mdb").is_file()


def _existing_store(cfg: ServeConfig) -> Path:
    data = cfg.data.resolve()
    if not has_store(data):
        raise CliError(
            f"no log store in {data} (give --data or TLOG_DATA; 'tlog serve' creates one)"
        )
    return data / "db"


def _store_exists(cfg: ServeConfig) -> bool:
    """A log is stored where ``cfg`` says (the database, or ``<data>/db``). Asking creates
    nothing: a database without tlog's tables holds no log."""
    if is_database_url(cfg.database):
        try:
            st = open_backend(cfg.database, cfg.data, readonly=True)
        except NoLogStore:
            return False
        try:
            return not st.is_empty()
        finally:
            st.close()
    return has_store(cfg.data.resolve())


def _no_log(where: str) -> CliError:
    return CliError(f"no log store in {where}: it holds no log yet ('tlog serve' creates one)")


def _open_database(cfg: ServeConfig) -> tuple[Backend, str]:
    """The PostgreSQL store ``cfg`` names, read-only, and how to name it in a message; a
    schema the log never initialised is "no log" (nothing is created)."""
    assert cfg.database is not None
    try:
        storage = open_backend(cfg.database, cfg.data, readonly=True)
    except NoLogStore as exc:
        raise CliError(f"{exc} ('tlog serve' creates one)") from None
    return storage, f"the database {storage.location}"


def _open_existing(cfg: ServeConfig, *, readonly: bool = False) -> Backend:
    """The store ``cfg`` names, which must hold a log (commands other than serve).

    Both backends answer alike: no store at all, or a store that holds no log yet (an empty
    LMDB file, an empty schema), is "no log" and nothing is created; only ``tlog serve``
    starts a log (it records the origin and signs the first checkpoint)."""
    if is_database_url(cfg.database):
        probe, where = _open_database(cfg)
    else:
        where = str(cfg.data.resolve())
        probe = open_backend(None, _existing_store(cfg).parent, readonly=True)
    try:
        empty = probe.is_empty()
    except BaseException:
        probe.close()
        raise
    if empty:
        probe.close()
        raise _no_log(where)
    if readonly:
        return probe
    probe.close()
    return open_backend(cfg.database, cfg.data)


def _iso(ts: int | None) -> str:
    if ts is None:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- keygen ------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    cfg = _serve_config(args)
    path = cfg.key_path
    if path.exists():
        raise CliError(f"{path} exists; refusing to overwrite a key")
    signer = create_key_file(path, args.origin)
    print(f"key:    {path} (mode 0600; back it up: it cannot be recreated)")
    print(f"origin: {args.origin}")
    print(f"vkey:   {signer.vkey()}")
    return 0


# --- serve -------------------------------------------------------------------------------


def cmd_log_entry(args: argparse.Namespace) -> int:
    """Print this log's ``logs/v0`` entry, for a witness operator or a witness-network list.

    ``qpd`` is what the push loop can send at most: one round per ``--witness-interval``
    seconds, each at most two requests per witness (one retry after a 409).
    """
    from client.witness.loglist import format_entry

    cfg = _serve_config(args)
    signer = _open_signer(cfg, False, [])
    if cfg.witness_interval <= 0:
        raise UsageError("--witness-interval must be positive")
    qpd = math.ceil(2 * 86400 / cfg.witness_interval)
    sys.stdout.write(format_entry(signer.vkey(), signer.origin, qpd, args.contact))
    return 0


def _open_signer(cfg: ServeConfig, fresh: bool, created: list[str]) -> CheckpointSigner:
    path = cfg.key_path
    if not path.exists():
        if not fresh:
            raise CliError(
                f"no signing key at {path}, but {cfg.data} holds a store: restore the key "
                "(a new one cannot sign for this log)"
            )
        if not cfg.init:
            raise CliError(f"no signing key at {path} (--no-init: not creating one)")
        key = create_key_file(path, cfg.origin or DEFAULT_ORIGIN)
        created.append(f"{path} (log signing key)")
    else:
        key = load_key_file(path)
    return CheckpointSigner(key, cfg.origin or key.name)


def cmd_serve(args: argparse.Namespace) -> int:
    import logging.config

    from client.runtime.logs import uvicorn_log_config

    private_umask()  # every file the log makes is 0600, whatever umask it was started with
    cfg = _serve_config(args)
    trusted = _forwarded_allow_ips(cfg.forwarded_allow_ips, "TLOG_FORWARDED_ALLOW_IPS")
    logs = uvicorn_log_config(cfg.log_level, cfg.log_format)
    logging.config.dictConfig(logs)
    # The sequencer's writer thread and the event loop share the GIL. With the default 5 ms
    # switch interval, a writer whose fsync has returned can wait 5 ms for the GIL before it
    # answers a whole batch; a shorter interval bounds that handoff (latency under load).
    sys.setswitchinterval(cfg.switch_interval_ms / 1000.0)
    data = cfg.data.resolve()
    cfg = dataclasses.replace(cfg, data=data)
    with _store_hold(cfg.database, "tlog serve", exclusive=False) as hold:
        return _serve(cfg, trusted, logs, hold)


def _serve(
    cfg: ServeConfig, trusted: tuple[str, ...], logs: dict[str, Any], hold: OperatorHold | None
) -> int:
    from client.runtime.serving import run_hardened
    from tlog.server import build_app

    data = cfg.data
    fresh = not _store_exists(cfg)
    if fresh and not cfg.init:
        where = "the database" if cfg.database else str(data)
        raise CliError(f"no log store in {where} (--no-init: not creating one)")
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private_dir(data, "data directory")
    created: list[str] = []
    signer = _open_signer(cfg, fresh, created)
    master = cfg.scim_master_key_path
    had_master = master.exists()
    app, log_, tokens = build_app(cfg, signer, hold=hold)
    if not had_master and master.exists():
        created.append(f"{master} (SCIM master key: every event body is wrapped by it)")
    url = f"http://{cfg.host}:{cfg.port}"
    banner = [
        f"tlog: origin  {log_.origin}",
        f"tlog: vkey    {log_.vkey}",
        f"tlog: size    {log_.latest.size}",
    ]
    for what in created:
        banner.append(f"tlog: created {what}, mode 0600")
    if created:
        banner.append(
            "tlog: BACK UP the key file(s) above, apart from the store: they cannot be "
            "recreated, and without them the log cannot sign or its events cannot be read"
        )
    if fresh and cfg.demo_token:
        token_file = data / "demo-submitter.token"
        token, _ = tokens.create("submitter", tenant="default", name="demo")
        _write_secret(token_file, token + "\n", exclusive=False)
        banner.append(f"tlog: demo submitter token written to {token_file} (mode 0600); try:")
        banner.append(
            f'  curl -s -H "Authorization: Bearer $(cat {token_file})" '
            f"--data-binary 'hello' {url}/v1/entries"
        )
    if trusted == ("*",):
        banner.append(
            "tlog: WARNING --forwarded-allow-ips '*': every client's X-Forwarded-For is "
            "believed, so any client chooses the address it is logged under"
        )
    elif trusted:
        banner.append(f"tlog: forwarding headers believed from {', '.join(trusted)}")
    print("\n".join(banner), flush=True)
    started = run_hardened(
        app,
        cfg.host,
        cfg.port,
        cfg.server,
        on_started=lambda: print(f"tlog: listening on {url}", flush=True),
        log_level=cfg.log_level,
        access_log=cfg.access_log,
        log_config=logs,
        server_header=False,
        timeout_graceful_shutdown=10,
        forwarded_allow_ips=trusted,
    )
    return 0 if started else 1


def _forwarded_allow_ips(text: str, env: str) -> tuple[str, ...]:
    """The checked ``forwarded_allow_ips`` setting (exit 2 naming its sources when
    malformed, before anything is opened)."""
    from client.runtime.serving import parse_forwarded_allow_ips

    try:
        return parse_forwarded_allow_ips(text)
    except ValueError as exc:
        raise UsageError(
            f"--forwarded-allow-ips ({env}, forwarded_allow_ips in the config file): {exc}"
        ) from None


# --- token -------------------------------------------------------------------------------


def _open_secret(path: Path, *, exclusive: bool = True) -> int:
    """A secret file opened for writing, mode 0600 whatever the umask, never through a
    symlink; ``exclusive``: created here, never an existing file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_EXCL if exclusive else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; not overwriting it") from None
    os.fchmod(fd, 0o600)
    return fd


def _write_secret(path: Path, text: str, *, exclusive: bool = True) -> None:
    with os.fdopen(_open_secret(path, exclusive=exclusive), "w") as f:
        f.write(text)


def _state(p: Principal, now: float) -> str:
    if p.revoked:
        return "revoked"
    if p.expires is not None and now >= p.expires:
        return "expired"
    return "active"


def _find_token(store: TokenStore, prefix: str) -> Principal:
    prefix = prefix.strip().lower()
    if not re.fullmatch(r"[0-9a-f]+", prefix):
        raise CliError("a token id is hexadecimal (see 'tlog token list')")
    if len(prefix) < MIN_ID_PREFIX:
        raise CliError(f"give at least {MIN_ID_PREFIX} characters of the token id")
    found = [p for p in store.list() if p.token_id.startswith(prefix)]
    if not found:
        raise CliError(f"no token id starts with {prefix!r}")
    if len(found) > 1:
        ids = ", ".join(p.token_id for p in found)
        raise CliError(f"{len(found)} tokens start with {prefix!r} ({ids}): give more of it")
    return found[0]


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise CliError("not a terminal: confirm with --yes")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def cmd_token(args: argparse.Namespace) -> int:
    cfg = _serve_config(args)
    if args.token_cmd == "create":
        if args.role in TENANT_ROLES and args.tenant is None:
            raise UsageError(f"{args.role} tokens act for one tenant: give --tenant")
        if args.role == "privacy-officer" and not (args.person or "").strip():
            raise UsageError("privacy-officer tokens need --person (dual control)")
    storage = _open_existing(cfg)
    store = TokenStore(storage)
    try:
        if args.token_cmd == "create":
            if args.out is not None and args.out.exists():
                raise CliError(f"{args.out} exists; not overwriting it")
            if args.person:
                same = store.of_person(args.person, args.role)
                if same:
                    ids = ", ".join(x.token_id for x in same)
                    print(
                        f"tlog: note: {args.person!r} already holds {len(same)} active "
                        f"{args.role} token(s) ({ids}); this is another token for the SAME "
                        "person, and dual control will treat both as one officer",
                        file=sys.stderr,
                    )
            # The file first: a token is made only once there is where to put it (else a
            # live token nobody holds would stay in the store).
            fd = None if args.out is None else _open_secret(args.out)
            try:
                token, p = store.create(
                    args.role, tenant=args.tenant, name=args.name, ttl=args.ttl, person=args.person
                )
            except BaseException:
                if fd is not None:
                    os.close(fd)
                    args.out.unlink(missing_ok=True)
                raise
            if fd is not None:
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(token + "\n")
                except OSError:  # e.g. the disk is full: the token is held by no one
                    store.revoke(p.token_id)
                    args.out.unlink(missing_ok=True)
                    raise
                print(f"token written to {args.out} (mode 0600)", file=sys.stderr)
            else:
                print(token)
            print(
                f"id {p.token_id} role {p.role} tenant {p.tenant or '*'} expires {_iso(p.expires)}",
                file=sys.stderr,
            )
        elif args.token_cmd == "list":
            now = time.time()
            rows = sorted(store.list(), key=lambda p: p.created)
            print(
                f"{'ID':16}  {'ROLE':15}  {'TENANT':12}  {'CREATED':20}  {'EXPIRES':20}  "
                f"{'STATE':7}  NAME (PERSON)"
            )
            for p in rows:
                who = f"{p.name} ({p.person})" if p.person else p.name
                print(
                    f"{p.token_id:16}  {p.role:15}  {p.tenant or '*':12}  {_iso(p.created):20}  "
                    f"{_iso(p.expires):20}  {_state(p, now):7}  {who}"
                )
        elif args.token_cmd == "revoke":
            p = _find_token(store, args.token_id)
            if p.revoked:
                print(f"{p.token_id} was already revoked")
                return 0
            what = f"token {p.token_id} (role {p.role}, tenant {p.tenant or '*'}, name {p.name!r})"
            if not args.yes and not _confirm(f"revoke {what}?"):
                print("not revoked", file=sys.stderr)
                return 1
            store.revoke(p.token_id)
            print(f"revoked {p.token_id}")
    finally:
        storage.close()
    return 0


# --- fsck, backup ------------------------------------------------------------------------


def cmd_fsck(args: argparse.Namespace) -> int:
    from tlog.fsck import FsckReport, check_structure, fsck, terminal_progress

    cfg = _serve_config(args)
    started = False

    def progress(done: int, total: int) -> None:
        nonlocal started
        if not started:  # the snapshot is taken: say what is being checked
            started = True
            print(f"fsck: checking a snapshot of {total} entries", file=sys.stderr, flush=True)
        terminal_progress(done, total)

    if is_database_url(cfg.database):
        storage, where = _open_database(cfg)
        try:
            rep = fsck(storage, progress)
        finally:
            storage.close()
        return _fsck_result(rep, where)
    db_dir = _existing_store(cfg)
    try:
        # Refuses a truncated file or broken meta pages before mapping it; fsck() walks the
        # structure inside its read transaction (a live store needs no lock).
        storage = open_backend(None, db_dir.parent, readonly=True, verify_limit=0)
    except StorageError as exc:
        rep = FsckReport(errors=[str(exc), *check_structure(db_dir)])
    else:
        try:
            rep = fsck(storage, progress)
        finally:
            storage.close()
    return _fsck_result(rep, str(db_dir.parent))


def _fsck_result(rep: FsckReport, where: str) -> int:
    if rep.empty:
        # Not "OK" (a wrong --data/--database, or a restore that brought back nothing, must
        # not pass a check as clean) and not "FAILED" (nothing is damaged): no log, exit 1,
        # as every store command says it, on either backend.
        raise _no_log(where)
    for f in rep.findings:
        print(f"fsck: FINDING {one_line(f)}", file=sys.stderr)
    for e in rep.errors:
        print(f"fsck: ERROR {one_line(str(e))}", file=sys.stderr)
    if rep.pending:
        print(
            f"fsck: PENDING {rep.pending} event(s) of the log's own (an erasure, an expiry, a "
            "hold or a retention period) committed but not sequenced yet (the process "
            "stopped in between): the next start of tlog serve puts them in the log",
            file=sys.stderr,
        )
    if not rep.ok:
        status = f"FAILED ({len(rep.errors)} errors)"
    elif rep.findings:
        # nothing damaged, but not servable as it is: not "OK" either
        status = f"NOT SERVABLE ({len(rep.findings)} finding{'s' if len(rep.findings) > 1 else ''})"
    else:
        status = "OK"
    print(
        f"fsck: {status}: {rep.entries} entries, {rep.blobs_checked} tiles, "
        f"{rep.checkpoints_checked} checkpoints checked"
    )
    return 2 if not rep.ok else 1 if rep.findings else 0


def cmd_backup(args: argparse.Namespace) -> int:
    from tlog.backup import backup

    cfg = _serve_config(args)
    if is_database_url(cfg.database):
        raise CliError(
            "tlog backup copies the embedded LMDB store; back up a PostgreSQL store with "
            "the database's own tools (pg_dump, pg_basebackup, PITR), or copy it to a new "
            "LMDB store with 'tlog migrate' (see docs/operations.md)"
        )
    rep = backup(_existing_store(cfg), args.dest, verify=args.verify)
    print(f"backup: {rep.path} ({rep.bytes:,} bytes, mode 0600), tree size {rep.tree_size}")
    if rep.fsck is not None:
        print(
            f"backup: verified: fsck OK, {rep.fsck.entries} entries, "
            f"{rep.fsck.checkpoints_checked} checkpoints"
        )
    print("backup: the keys are not in it: keep log.key and scim-master.key backed up apart")
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    from client.formats.policy import Policy
    from tlog.integrity import CHECKPOINT_FILE, CheckpointFile
    from tlog.recover import checkpoint_file_target, recover, recover_database, witness_targets

    cfg = _serve_config(args)
    data = cfg.data.resolve()
    signer = _open_signer(dataclasses.replace(cfg, data=data), False, [])
    targets = []
    policy = Policy.parse(cfg.witnesses.read_text("utf-8")) if cfg.witnesses else None
    if args.checkpoint:
        # With a witness policy, the file's cosignatures (the bucket's /checkpoint) are kept.
        cosigners = tuple(policy.witness_verifiers()) if policy else ()
        targets.append(checkpoint_file_target(Path(args.checkpoint), signer, cosigners))
    if policy:
        targets.extend(witness_targets(policy, signer))
    remembered = CheckpointFile(
        cfg.checkpoint_file or data / CHECKPOINT_FILE, signer.verifier, signer.origin
    )
    try:
        if is_database_url(cfg.database):
            assert cfg.database is not None
            key_file = dataclasses.replace(cfg, data=data).scim_master_key_path
            with (
                _frontends_stopped(key_file, "tlog recover"),
                _store_hold(cfg.database, "tlog recover", exclusive=True),
            ):
                recover_database(
                    cfg.database,
                    signer,
                    args.source,
                    remembered,
                    targets,
                    replication=cfg.replication,
                )
        else:
            recover(data / "db", signer, args.source, remembered, targets)
    finally:
        remembered.close()
    _note_unkeyed_store(cfg.database, data, cfg.scim_master_key_path)
    return 0


@contextlib.contextmanager
def _store_hold(
    database: str | None, what: str, *, exclusive: bool
) -> Iterator[OperatorHold | None]:
    """On a PostgreSQL store, the store's operator lock (:func:`tlog.pg.hold_store`) for
    the whole command: ``tlog serve`` shared (frontends run side by side), ``tlog recover``
    exclusively; ``tlog migrate`` writing into the store holds it exclusively too. Refused
    (StorageError) naming the holder while another process holds it in a mode that
    excludes this one. An LMDB store: nothing here (the data directory's lock does it).

    Shared (``tlog serve``), the lock is kept for the whole run by an
    :class:`~tlog.pg.OperatorHold`, which this yields (the store refuses writes while it
    does not hold the lock); exclusively, None (a lost lock ends the command's own writes:
    they run on the same server, whose restart ends them too)."""
    if not is_database_url(database):
        yield None
        return
    from tlog.pg import OperatorHold, StoreHeld, hold_store

    assert database is not None
    conn: Any = None
    hold: OperatorHold | None = None
    try:
        if exclusive:
            conn = hold_store(database, what, exclusive=True)
        else:
            hold = OperatorHold(database, what)
    except StoreHeld as held:
        if exclusive:
            why = f"{what} needs the store to itself: stop that process first, then run it again"
        else:
            why = (
                f"{what} does not start while a tlog migrate writes into the store or a tlog "
                "recover runs on it: wait for it to end, then start again"
            )
        raise StorageError(f"{held}; {why}; nothing was written") from None
    try:
        yield hold
    finally:
        if hold is not None:
            hold.close()
        if conn is not None:
            conn.close()  # the session's advisory lock goes with it


@contextlib.contextmanager
def _frontends_stopped(key_file: Path, what: str) -> Iterator[None]:
    """For an offline command on a PostgreSQL store that builds no app (``tlog recover``):
    the SCIM key file's lock held exclusively while it runs, refused (StorageError) while a
    ``tlog serve`` of this host holds it shared (it serves a store with this key file), and
    a frontend starting meanwhile is refused. No key file: no SCIM frontend to find."""
    from tlog.scim.keys import KeyFileLock

    if not key_file.exists():
        yield
        return
    lock = KeyFileLock(key_file).acquire(exclusive=False)
    try:
        lock.make_exclusive(what)
        yield
    finally:
        lock.release()


def _note_unkeyed_store(database: str | None, data: Path, key_file: Path) -> None:
    """After ``tlog recover``: a store rebuilt empty holds no SCIM keys (recover restores
    the log only), and ``tlog serve`` refuses the key file of the store it replaced."""
    from tlog.scim.keys import stored_check

    if not key_file.exists():
        return
    st = open_backend(database, data, readonly=True)
    try:
        keyed = stored_check(st) is not None
    finally:
        st.close()
    if not keyed:
        print(
            f"tlog: note: the store holds no SCIM keys (recover restores the log only), so "
            f"tlog serve refuses {key_file}, which belongs to the store this one replaced: "
            "move it aside (keep it only as long as that store's backups) and a new one is "
            "made at the next start",
            flush=True,
        )


def _hold_offline(storage: Backend, what: str) -> None:
    """Refuse (StorageError) unless this command is the only process on the store, before
    it writes anything: on LMDB the data directory's lock (build_app took it) already keeps
    a server out; the frontends of a PostgreSQL store hold the SCIM key file's lock shared
    (tlog.scim.keys.KeyFileLock), which an offline command must hold alone (a frontend
    starting meanwhile is refused)."""
    from tlog.scim.keys import KeyFileLock

    for release in storage.on_close:
        held = getattr(release, "__self__", None)
        if isinstance(held, KeyFileLock):
            held.make_exclusive(what)


def cmd_reapply_erasures(args: argparse.Namespace) -> int:
    """Apply erasure certificates again to a store restored from before them (the server
    stopped): the subjects they name are shredded again (Erasures.reapply)."""
    import asyncio
    import json

    from client.formats.merkle import VerificationError
    from client.formats.note import FormatError
    from client.scim.erasure import verify_certificate
    from tlog.server import build_app

    cfg = _serve_config(args)
    cfg = dataclasses.replace(cfg, data=cfg.data.resolve())
    signer = _open_signer(cfg, False, [])
    verified = []
    for path in args.certificates:
        try:
            doc = json.loads(Path(path).read_text("utf-8"))
            v = verify_certificate(doc, signer.vkey())
        except (OSError, ValueError, FormatError, VerificationError, RecursionError) as exc:
            raise CliError(f"{path}: not an erasure certificate of this log: {exc}") from None
        if v.origin != signer.origin:
            raise CliError(f"{path}: a certificate of another log ({v.origin})")
        verified.append(v)
    if not _store_exists(cfg):
        raise CliError(f"no log store in {cfg.database or cfg.data}")
    # No expiry job in this run: only what the certificates name changes.
    cfg = dataclasses.replace(cfg, scim_expiry_interval=0)
    # On PostgreSQL, the store's operator lock too: the key file's lock is this host's
    # only, and a server of another host (its own copy of the key file) holds it shared.
    with _store_hold(cfg.database, "tlog reapply-erasures", exclusive=True):
        app, log_, _ = build_app(cfg, signer, scim=True)
        try:
            service = app.state.scim
            assert service is not None
            _hold_offline(log_.storage, "reapply-erasures")

            async def run() -> dict[str, int]:
                # The log runs meanwhile (its sequencer signs the events that say so).
                async with app.app.router.lifespan_context(app.app):
                    result: dict[str, int] = await service.erasures.reapply(verified)
                    return result

            n = asyncio.run(run())
        finally:
            log_.storage.close()
    if n["subjects"]:
        print(
            f"reapply-erasures: {len(verified)} certificate(s): {n['subjects']} subject(s) "
            f"shredded again ({n['events']} events, {n['deks']} data keys); the SCIM key "
            "chain and master key were rotated; logged as tlog.erasure.reapply events"
        )
    else:
        print(
            f"reapply-erasures: {len(verified)} certificate(s): no subject of theirs is in "
            "this store; nothing changed"
        )
    return 0


def cmd_reseal_actors(args: argparse.Namespace) -> int:
    """Re-seal the actors of events stored before actors were pseudonymised (the server
    stopped): tlog.scim.reseal. Leaves and checkpoints are not touched."""
    from tlog.scim.reseal import ResealResult, reseal_actors
    from tlog.server import build_app

    cfg = _serve_config(args)
    cfg = dataclasses.replace(cfg, data=cfg.data.resolve(), scim_expiry_interval=0)
    if not _store_exists(cfg):
        raise CliError(f"no log store in {cfg.database or cfg.data}")
    signer = _open_signer(cfg, False, [])
    with _store_hold(cfg.database, "tlog reseal-actors", exclusive=True):  # as reapply
        app, log_, _ = build_app(cfg, signer, scim=True)
        try:
            service = app.state.scim
            if service is None:
                raise CliError("SCIM is switched off in this configuration")
            _hold_offline(log_.storage, "reseal-actors")

            def progress(r: ResealResult) -> None:
                print(
                    f"reseal-actors: batch {r.batches}: {r.examined} examined, {r.resealed} "
                    "re-sealed so far",
                    file=sys.stderr,
                    flush=True,
                )

            n = reseal_actors(service, batch=args.batch, progress=progress)
        finally:
            log_.storage.close()
    print(
        f"reseal-actors: {n.examined} event record(s) examined, {n.resealed} actor(s) "
        "re-sealed as pseudonyms (the tree, its leaves and checkpoints unchanged)"
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from tlog.migrate import migrate, open_location

    if args.source == args.dest:
        raise UsageError("--from and --to name the same store")

    def echo(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with (
        open_location(args.source, create=False) as src,
        open_location(args.dest, create=True) as dst,
    ):
        rep = migrate(src, dst, echo, restart=args.restart)
        where = dst.location
    total = sum(rep.records.values())
    print(
        f"migrate: OK: tree size {rep.tree_size}, {total} records copied to {where}; "
        "verified: fsck clean, the same signed checkpoint, every record equal"
    )
    print(
        "migrate: the keys are not in the store: serve with the same --data (log.key, "
        "scim-master.key) and the new store; the SCIM master key file is bound to the "
        "store's SCIM keys, which moved with it: stop serving the old store (both at once "
        "on one key file are refused), and move the file, not a copy, if it must move"
    )
    return 0


# --- config ------------------------------------------------------------------------------


def cmd_config(args: argparse.Namespace) -> int:
    from tlog.config import describe, from_sources

    cls = ProxyConfig if args.program == "scim-proxy" else ServeConfig
    try:
        cfg = from_sources(cls, file=args.file, env={})
    except ConfigError as exc:
        print(f"tlog: {one_line(str(exc))}", file=sys.stderr)
        return 1
    if isinstance(cfg, ServeConfig):
        from client.runtime.serving import parse_forwarded_allow_ips

        try:
            parse_forwarded_allow_ips(cfg.forwarded_allow_ips)
        except ValueError as exc:
            print(f"tlog: {args.file}: forwarded_allow_ips: {one_line(str(exc))}", file=sys.stderr)
            return 1
    print(f"# {args.file}: OK ({args.program}); every setting, defaults included:")
    sys.stdout.write(describe(cfg))
    return 0


# --- scim-proxy --------------------------------------------------------------------------


def cmd_scim_proxy(args: argparse.Namespace) -> int:
    from client.adapters.proxy import main_proxy

    private_umask()  # the outbox, its WAL and the intent journal: 0600 whatever the umask
    try:
        cfg = from_args(ProxyConfig, args)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    missing = [n for n in ProxyConfig.REQUIRED if getattr(cfg, n) is None]
    if missing:
        flags = ", ".join(
            "--" + ("log" if n == "log_url" else n.replace("_", "-")) for n in missing
        )
        raise CliError(f"scim-proxy needs {flags} (flags, environment or --config)")
    return main_proxy(cfg)


# --- the parser --------------------------------------------------------------------------

# The ServeConfig settings each command takes besides its own flags (``serve`` takes them all).
STORE_SETTINGS = frozenset({"data", "database"})  # token, fsck, backup: which store
KEYGEN_SETTINGS = frozenset({"data", "key"})
LOG_ENTRY_SETTINGS = KEYGEN_SETTINGS | {"origin", "witness_interval"}
# The offline tools that open the store, the log's key and the SCIM keys (server stopped).
OFFLINE_SETTINGS = (
    STORE_SETTINGS
    | KEYGEN_SETTINGS
    | frozenset({"origin", "checkpoint_file", "replication", "scim_master_key"})
)
RECOVER_SETTINGS = OFFLINE_SETTINGS | {"witnesses"}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tlog",
        description="A transparency log for SCIM provisioning audit events.",
        epilog="Settings: flags override environment variables, which override --config "
        "FILE (TOML). 'tlog COMMAND --help' lists each command's flags and variables.",
    )
    p.add_argument("--version", action=_VersionAction)
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def data_opt(sp: argparse.ArgumentParser) -> None:
        add_arguments(sp, ServeConfig, only=STORE_SETTINGS)

    s = sub.add_parser("serve", help="run the log server (creates a store on first start)")
    add_arguments(s, ServeConfig)
    s.set_defaults(func=cmd_serve)

    k = sub.add_parser("keygen", help="create a log signing key (mode 0600)")
    add_arguments(k, ServeConfig, only=KEYGEN_SETTINGS)
    k.add_argument(
        "--origin",
        required=True,
        help="log origin = key name, e.g. log.example.com/audit (it can never change)",
    )
    k.set_defaults(func=cmd_keygen)

    t = sub.add_parser("token", help="create, list and revoke bearer tokens")
    tsub = t.add_subparsers(dest="token_cmd", metavar="ACTION", required=True)
    tc = tsub.add_parser("create", help="create a token (printed once, or written to --out)")
    data_opt(tc)
    tc.add_argument("--role", required=True, choices=ROLES, help="what the token may do")
    tc.add_argument(
        "--tenant",
        type=_tenant,
        default=None,
        help="tenant the token acts for (required for submitter and auditor; "
        "privacy-officer and admin without it act for all tenants)",
    )
    tc.add_argument("--name", default="", help="a label, e.g. who or what holds the token")
    tc.add_argument(
        "--person",
        default=None,
        help="the person the token is issued to (required for privacy-officer: dual control "
        "refuses an approval by the person who requested, whatever token they use)",
    )
    tc.add_argument(
        "--ttl",
        type=_duration,
        default=None,
        help="lifetime, e.g. 3600, 90m, 12h or 90d (default: no expiry)",
    )
    tc.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="write the token to FILE (created with mode 0600, never overwritten) "
        "instead of standard output",
    )
    tl = tsub.add_parser("list", help="list tokens: id, role, tenant, dates, state")
    data_opt(tl)
    tr = tsub.add_parser("revoke", help="revoke a token by its id or a unique id prefix")
    data_opt(tr)
    tr.add_argument(
        "token_id",
        help=f"token id from 'tlog token list', or a unique prefix "
        f"of at least {MIN_ID_PREFIX} characters",
    )
    tr.add_argument("-y", "--yes", action="store_true", help="don't ask for confirmation")
    t.set_defaults(func=cmd_token)

    le = sub.add_parser("log-entry", help="print this log's logs/v0 entry for witness operators")
    add_arguments(le, ServeConfig, only=LOG_ENTRY_SETTINGS)
    le.add_argument("--contact", help="how witness operators reach you (URL or e-mail)")
    le.set_defaults(func=cmd_log_entry)

    rc = sub.add_parser(
        "recover",
        help="bring a restored or emptied store forward from a copy, verified against the "
        "last signed checkpoint (signs nothing)",
    )
    add_arguments(rc, ServeConfig, only=RECOVER_SETTINGS)
    rc.add_argument(
        "--from",
        dest="source",
        required=True,
        help="a tlog-tiles URL or directory (the bucket, an auditor, a mirror), an LMDB "
        "store directory or a postgresql:// database",
    )
    rc.add_argument("--checkpoint", help="a checkpoint note this log signed, to reach")
    rc.set_defaults(func=cmd_recover)

    ra = sub.add_parser(
        "reapply-erasures",
        help="shred again, in a store restored from before them, the subjects erasure "
        "certificates name (server stopped)",
    )
    add_arguments(ra, ServeConfig, only=OFFLINE_SETTINGS)
    ra.add_argument("certificates", nargs="+", help="erasure certificate files (JSON)")
    ra.set_defaults(func=cmd_reapply_erasures)

    rs = sub.add_parser(
        "reseal-actors",
        help="store the actors of events logged before actors were pseudonymised as "
        "pseudonyms, as newer events' (server stopped; resumable, the tree unchanged)",
    )
    add_arguments(rs, ServeConfig, only=OFFLINE_SETTINGS)
    rs.add_argument(
        "--batch", type=int, default=500, help="event records per transaction (default 500)"
    )
    rs.set_defaults(func=cmd_reseal_actors)

    f = sub.add_parser("fsck", help="recompute and check the whole tree (safe while serving)")
    data_opt(f)
    f.set_defaults(func=cmd_fsck)

    b = sub.add_parser(
        "backup", help="consistent online copy of the store, compacted, mode 0600, verified"
    )
    data_opt(b)
    b.add_argument("dest", type=Path, help="directory to create (or an empty one) for the copy")
    b.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip opening the copy and running fsck on it",
    )
    b.set_defaults(func=cmd_backup)

    mg = sub.add_parser(
        "migrate",
        help="copy a log between backends (LMDB <-> PostgreSQL), byte for byte, verified "
        "against the source's signed checkpoint (stop the servers first)",
    )
    mg.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="STORE",
        help="an LMDB data directory (or its db/) or a postgresql:// URL",
    )
    mg.add_argument(
        "--to",
        dest="dest",
        required=True,
        metavar="STORE",
        help="where to copy it: an LMDB data directory or a postgresql:// URL; "
        "it must hold no log yet",
    )
    mg.add_argument(
        "--restart",
        action="store_true",
        help="the destination holds an interrupted tlog migrate of this log (its marker; "
        "tlog fsck reports it) that cannot be resumed because the source changed since: "
        "clear exactly that copy and start again. Never clears a destination without the "
        "marker (empty, a completed migration, another log)",
    )
    mg.set_defaults(func=cmd_migrate)

    c = sub.add_parser("config", help="check a configuration file")
    csub = c.add_subparsers(dest="config_cmd", metavar="ACTION", required=True)
    cc = csub.add_parser("check", help="parse FILE, report errors, print every setting")
    cc.add_argument("file", type=Path, help="TOML configuration file")
    cc.add_argument(
        "--program",
        choices=("serve", "scim-proxy"),
        default="serve",
        help="which program the file configures (default serve)",
    )
    c.set_defaults(func=cmd_config)

    sp = sub.add_parser("scim-proxy", help="auditing reverse proxy for a SCIM service provider")
    add_arguments(sp, ProxyConfig)
    sp.set_defaults(func=cmd_scim_proxy)
    return p


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        ap.print_help(sys.stderr)
        return 2
    args = ap.parse_args(argv)
    if getattr(args, "func", None) is None:
        ap.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except (
        CliError,
        ConfigError,
        StorageError,
        OSError,
        ValueError,
        KeyError,
    ) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"tlog: {one_line(str(msg))}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1


if __name__ == "__main__":
    sys.exit(main())
