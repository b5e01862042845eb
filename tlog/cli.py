"""The ``tlog`` command: keygen, serve, token, fsck, recover."""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
from pathlib import Path

from client import logredact
from client.serving import add_limit_arguments
from tlog.auth import ROLES, TokenStore
from tlog.signer import CheckpointSigner, create_key_file, load_key_file
from tlog.storage import Storage, StorageError

DEFAULT_DATA = "./tlog-data"
DEFAULT_ORIGIN = "localhost/tlog-demo"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _duration(s: str) -> int:
    m = re.fullmatch(r"([1-9][0-9]*)([smhd]?)", s)
    if not m:
        raise argparse.ArgumentTypeError("duration like 3600, 90m, 12h or 30d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data).resolve()


def _key_path(args: argparse.Namespace) -> Path:
    return Path(args.key) if args.key else _data_dir(args) / "log.key"


def cmd_keygen(args: argparse.Namespace) -> int:
    path = _key_path(args)
    if path.exists():
        print(f"tlog: {path} exists; refusing to overwrite a key", file=sys.stderr)
        return 1
    signer = create_key_file(path, args.origin)
    print(f"key:    {path} (mode 0600)")
    print(f"origin: {args.origin}")
    print(f"vkey:   {signer.vkey()}")
    return 0


def _open_signer(args: argparse.Namespace, create: bool) -> CheckpointSigner:
    path = _key_path(args)
    if not path.exists():
        if not create:
            raise FileNotFoundError(f"no key at {path}; run 'tlog keygen' first")
        origin = args.origin or DEFAULT_ORIGIN
        key = create_key_file(path, origin)
        print(f"tlog: created a new signing key at {path} (mode 0600)", file=sys.stderr)
    else:
        key = load_key_file(path)
    origin = args.origin or key.name
    return CheckpointSigner(key, origin)


def cmd_log_entry(args: argparse.Namespace) -> int:
    """Print this log's ``logs/v0`` entry, for a witness operator or a witness-network list.

    ``qpd`` is what the push loop can send at most: one round per ``--witness-interval``
    seconds, each at most two requests per witness (one retry after a 409).
    """
    from client.witness.loglist import format_entry

    signer = _open_signer(args, create=False)
    if args.witness_interval <= 0:
        raise ValueError("--witness-interval must be positive")
    qpd = math.ceil(2 * 86400 / args.witness_interval)
    sys.stdout.write(format_entry(signer.vkey(), signer.origin, qpd, args.contact))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn.config

    from client.serving import limits_from_args, run_hardened
    from tlog.server import build_app

    limits = limits_from_args(args)

    # The sequencer's writer thread and the event loop share the GIL. With the default 5 ms
    # switch interval, a writer whose fsync has returned can wait 5 ms for the GIL before it
    # answers a whole batch; a shorter interval bounds that handoff (latency under load).
    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logredact.install()  # no query values, identifiers or tokens in any log line
    data = _data_dir(args)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = not (data / "db" / "data.mdb").exists()
    signer = _open_signer(args, create=True)
    app, log_, tokens = build_app(
        data,
        signer,
        max_batch_entries=args.batch_size,
        max_batch_age=args.batch_age_ms / 1000.0,
        max_backlog=args.max_backlog,
        witness_policy=args.witnesses,
        witness_interval=args.witness_interval,
        witness_max_backoff=args.witness_max_backoff,
        checkpoint_file=Path(args.checkpoint_file) if args.checkpoint_file else None,
    )
    url = f"http://{args.host}:{args.port}"
    print(f"tlog: origin  {log_.origin}")
    print(f"tlog: vkey    {log_.vkey}")
    print(f"tlog: size    {log_.latest.size}")
    print(f"tlog: listening on {url}")
    if fresh and args.demo_token:
        token_file = data / "demo-submitter.token"
        token, _ = tokens.create("submitter", tenant="default", name="demo")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        print(f"tlog: demo submitter token written to {token_file} (mode 0600); try:")
        print(
            f'  curl -s -H "Authorization: Bearer $(cat {token_file})" '
            f"--data-binary 'hello' {url}/v1/entries"
        )
    sys.stdout.flush()
    run_hardened(
        app,
        args.host,
        args.port,
        limits,
        log_level=args.log_level,
        access_log=args.access_log,
        log_config=logredact.uvicorn_log_config(uvicorn.config.LOGGING_CONFIG),
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    storage = Storage(_data_dir(args) / "db")
    store = TokenStore(storage)
    try:
        if args.token_cmd == "create":
            if args.role == "privacy-officer" and not (args.person or "").strip():
                print("tlog: privacy-officer tokens need --person (dual control)", file=sys.stderr)
                return 2
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
            token, p = store.create(
                args.role, tenant=args.tenant, name=args.name, ttl=args.ttl, person=args.person
            )
            print(token)
            print(f"id {p.token_id} role {p.role} tenant {p.tenant}", file=sys.stderr)
        elif args.token_cmd == "list":
            for p in store.list():
                state = "revoked" if p.revoked else "active"
                print(
                    f"{p.token_id} {p.role:16} tenant={p.tenant} name={p.name!r} "
                    f"person={p.person!r} expires={p.expires} {state}"
                )
        elif args.token_cmd == "revoke":
            p = store.revoke(args.token_id)
            print(f"revoked {p.token_id}")
    finally:
        storage.close()
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    from tlog.fsck import fsck, terminal_progress

    storage = Storage(_data_dir(args) / "db", readonly=True)
    try:
        rep = fsck(storage, terminal_progress)
    finally:
        storage.close()
    for e in rep.errors:
        print(f"fsck: ERROR {e}", file=sys.stderr)
    status = "OK" if rep.ok else f"FAILED ({len(rep.errors)} errors)"
    print(
        f"fsck: {status}: {rep.entries} entries, {rep.blobs_checked} tiles, "
        f"{rep.checkpoints_checked} checkpoints checked"
    )
    return 0 if rep.ok else 2


def cmd_recover(args: argparse.Namespace) -> int:
    from tlog.integrity import CHECKPOINT_FILE, CheckpointFile
    from tlog.recover import checkpoint_file_target, recover, witness_targets

    data = _data_dir(args)
    signer = _open_signer(args, create=False)
    targets = []
    if args.checkpoint:
        targets.append(checkpoint_file_target(Path(args.checkpoint), signer))
    if args.witnesses:
        targets.extend(witness_targets(Path(args.witnesses), signer))
    remembered = CheckpointFile(
        Path(args.checkpoint_file) if args.checkpoint_file else data / CHECKPOINT_FILE,
        signer.verifier,
        signer.origin,
    )
    recover(data / "db", signer, args.source, remembered, targets)
    return 0


def cmd_scim_proxy(args: argparse.Namespace) -> int:
    from tlog.scim_proxy import main_proxy

    return main_proxy(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tlog", description="transparency log server")
    sub = p.add_subparsers(dest="cmd", required=True)

    def data_opt(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--data",
            default=_env("TLOG_DATA", DEFAULT_DATA),
            help="data directory (default ./tlog-data, env TLOG_DATA)",
        )

    k = sub.add_parser("keygen", help="create a log signing key (mode 0600)")
    data_opt(k)
    k.add_argument("--origin", required=True, help="log origin = key name")
    k.add_argument("--key", help="key file (default <data>/log.key)")
    k.set_defaults(func=cmd_keygen)

    s = sub.add_parser("serve", help="run the log server")
    data_opt(s)
    s.add_argument("--host", default=_env("TLOG_HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(_env("TLOG_PORT", "8080")))
    s.add_argument(
        "--origin",
        default=os.environ.get("TLOG_ORIGIN"),
        help=f"log origin (default: the key's name, or {DEFAULT_ORIGIN} for a new key)",
    )
    s.add_argument(
        "--key",
        default=os.environ.get("TLOG_KEY"),
        help="key file (default <data>/log.key, created on first start)",
    )
    s.add_argument("--batch-size", type=int, default=1024, help="max entries per commit")
    s.add_argument(
        "--batch-age-ms", type=float, default=2.0, help="max wait for a batch to fill (ms)"
    )
    s.add_argument(
        "--max-backlog",
        type=int,
        default=100_000,
        help="entries waiting before submissions get 503",
    )
    s.add_argument(
        "--witnesses",
        default=os.environ.get("TLOG_WITNESSES"),
        help="witness policy file (tlog-policy format) to push checkpoints to",
    )
    s.add_argument("--witness-interval", type=float, default=1.0,
                   help="seconds between add-checkpoint requests to one witness")
    s.add_argument("--witness-max-backoff", type=float, default=30.0,
                   help="longest wait before retrying a failing witness (seconds)")
    s.add_argument(
        "--checkpoint-file",
        default=os.environ.get("TLOG_CHECKPOINT_FILE"),
        help="where the last published checkpoint is remembered outside the store "
        "(default <data>/last-checkpoint; env TLOG_CHECKPOINT_FILE)",
    )
    s.add_argument("--switch-interval-ms", type=float, default=0.5,
                   help="Python thread switch interval (GIL handoff latency), ms")
    s.add_argument("--access-log", action="store_true")
    add_limit_arguments(s)
    s.add_argument(
        "--no-demo-token",
        dest="demo_token",
        action="store_false",
        help="don't create a demo submitter token on first start",
    )
    s.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    s.set_defaults(func=cmd_serve)

    t = sub.add_parser("token", help="manage bearer tokens")
    tsub = t.add_subparsers(dest="token_cmd", required=True)
    tc = tsub.add_parser("create", help="create a token (printed once)")
    data_opt(tc)
    tc.add_argument("--role", required=True, choices=ROLES)
    tc.add_argument("--tenant", default=None)
    tc.add_argument("--name", default="")
    tc.add_argument(
        "--person",
        default=None,
        help="the person the token is issued to (required for privacy-officer: dual control "
        "refuses an approval by the person who requested, whatever token they use)",
    )
    tc.add_argument("--ttl", type=_duration, default=None, help="lifetime, e.g. 90d")
    data_opt(tsub.add_parser("list", help="list tokens (ids only)"))
    tr = tsub.add_parser("revoke", help="revoke a token by id prefix")
    data_opt(tr)
    tr.add_argument("token_id")
    t.set_defaults(func=cmd_token)

    le = sub.add_parser(
        "log-entry", help="print this log's logs/v0 entry for witness operators"
    )
    data_opt(le)
    le.add_argument("--key", help="key file (default <data>/log.key)")
    le.add_argument("--origin", help="log origin (default: the key's name)")
    le.add_argument("--contact", help="how witness operators reach you (URL or e-mail)")
    le.add_argument("--witness-interval", type=float, default=1.0,
                    help="the --witness-interval `serve` runs with (sets qpd)")
    le.set_defaults(func=cmd_log_entry)

    f = sub.add_parser("fsck", help="recompute and check the whole tree")
    data_opt(f)
    f.set_defaults(func=cmd_fsck)

    rc = sub.add_parser(
        "recover",
        help="bring a restored or emptied store forward from a copy, verified against the "
        "last signed checkpoint (signs nothing)",
    )
    data_opt(rc)
    rc.add_argument("--from", dest="source", required=True,
                    help="a tlog-tiles URL or directory (auditor, mirror) or a store directory")
    rc.add_argument("--key", default=os.environ.get("TLOG_KEY"),
                    help="key file (default <data>/log.key)")
    rc.add_argument("--origin", default=os.environ.get("TLOG_ORIGIN"))
    rc.add_argument("--checkpoint-file", default=os.environ.get("TLOG_CHECKPOINT_FILE"),
                    help="the remembered checkpoint (default <data>/last-checkpoint)")
    rc.add_argument("--witnesses", default=os.environ.get("TLOG_WITNESSES"),
                    help="witness policy: also verify against what the witnesses cosigned")
    rc.add_argument("--checkpoint", help="a checkpoint note this log signed, to reach")
    rc.set_defaults(func=cmd_recover)

    from tlog.scim_proxy import add_arguments as scim_proxy_arguments

    sp = sub.add_parser("scim-proxy", help="auditing reverse proxy for a SCIM service provider")
    scim_proxy_arguments(sp)
    sp.set_defaults(func=cmd_scim_proxy)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (StorageError, FileNotFoundError, PermissionError, ValueError, KeyError) as exc:
        print(f"tlog: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
