"""``tlog-witness``: run a c2sp.org/tlog-witness witness.

Subcommands::

    tlog-witness keygen --name NAME --key FILE [--alg ed25519|mldsa44]  # prints the vkey
    tlog-witness serve  --config FILE            # HTTP server + log polling + gossip (the
                                                 # first round before the first push, bounded)
    tlog-witness check  --config FILE            # exit 0 iff no split-view evidence; asks
                                                 # the logs and peers for our own later
                                                 # cosignatures first (a restored state)
    tlog-witness gossip --config FILE [--once]   # gossip round(s) with the peers
    tlog-witness poll   --config FILE [--once]   # poll the logs that have a URL (the
                                                 # first round asks the peers first)
    tlog-witness pull-logs --config FILE --source FILE|URL  # add logs from a logs/v0 list

Exit codes: 0 fine; 1 split-view evidence is recorded (``check``, ``gossip``, ``poll``) or
``keygen`` refused to overwrite; 2 usage or configuration error; 3 the state database cannot
be opened (any command), or (``check``) the stored state does not verify.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from types import FrameType

from client.formats.checkpoint import open_checkpoint
from client.formats.cosignature import (
    AnyCosignatureSigner,
    CosignatureSigner,
    MLDSACosignatureSigner,
)
from client.formats.merkle import VerificationError
from client.formats.note import FormatError
from client.runtime.durable import create_new
from client.runtime.logs import configure as configure_logs
from client.runtime.logs import one_line
from client.runtime.private import private_umask
from client.witness.config import ConfigError, KeyFileUnreadable, WitnessConfig
from client.witness.core import Witness, WitnessedLog
from client.witness.loglist import log_verifier
from client.witness.monitor import Monitor
from client.witness.provision import pull
from client.witness.server import ServerStartError, WitnessHTTPServer
from client.witness.store import StateUnusable, WitnessStore

__all__ = ["main"]

logger = logging.getLogger("client.witness")

EXIT_OK, EXIT_EVIDENCE, EXIT_USAGE, EXIT_STATE = 0, 1, 2, 3
EXIT_REFUSED = 1


def _out(*lines: str) -> None:
    sys.stdout.write("".join(line + "\n" for line in lines))
    sys.stdout.flush()


def _err(msg: str) -> None:
    sys.stderr.write(f"tlog-witness: {one_line(msg)}\n")


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- keygen -------------------------------------------------------------------------------


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        signer: AnyCosignatureSigner = (
            MLDSACosignatureSigner.generate(args.name)
            if args.alg == "mldsa44"
            else CosignatureSigner.generate(args.name)
        )
    except FormatError as exc:
        _err(f"bad key name: {exc}")
        return EXIT_USAGE
    try:
        # never over an existing file (a lost witness key can't be replaced without telling
        # every verifier); 0600 from the first byte, not chmod after the fact.
        create_new(args.key, (signer.skey() + "\n").encode("ascii"))
    except FileExistsError:
        _err(f"{args.key} already exists; refusing to overwrite it")
        return EXIT_REFUSED
    except OSError as exc:
        _err(f"cannot create {args.key}: {exc}")
        return EXIT_USAGE
    _out(signer.vkey())
    return EXIT_OK


# --- shared setup -------------------------------------------------------------------------


def _load(args: argparse.Namespace) -> tuple[WitnessConfig, Witness]:
    cfg = WitnessConfig.load(args.config)
    store = WitnessStore(cfg.state_db)
    return cfg, Witness(cfg.signer(), cfg.logs, store, extra_signers=cfg.extra_signers())


def _monitor(cfg: WitnessConfig, witness: Witness) -> Monitor:
    return Monitor(
        witness,
        cfg.peers,
        missing_proof_rounds=cfg.missing_proof_rounds,
        timeout=cfg.http_timeout,
        log_lists=cfg.log_lists,
        log_list_interval=cfg.log_list_interval,
    )


# --- serve --------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    private_umask()  # the state database and its journal: 0600 whatever the umask
    cfg, witness = _load(args)
    server = WitnessHTTPServer(cfg.listen, witness, cfg.limits)
    monitor = _monitor(cfg, witness)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    mon_thread = threading.Thread(
        target=monitor.run,
        args=(stop,),
        kwargs={"gossip_interval": cfg.gossip_interval},
        name="witness-monitor",
        daemon=True,
    )
    mon_thread.start()
    _startup_check(cfg, monitor, stop)
    try:
        server.start()
    except ServerStartError as exc:
        _err(str(exc))
        stop.set()
        mon_thread.join(timeout=10)
        monitor.close()
        return EXIT_STATE
    logger.warning(
        "witness %s serving %d log(s) at %s; vkey %s",
        witness.name,
        len(cfg.logs),
        server.url,
        witness.vkey(),
    )
    try:
        while not stop.wait(1.0):
            pass
    finally:
        server.shutdown()
        server.server_close()
        mon_thread.join(timeout=10)
        monitor.close()
        if not mon_thread.is_alive():  # else its connection may be in use: left to exit
            witness.store.close()
    return EXIT_OK


def _startup_check(cfg: WitnessConfig, monitor: Monitor, stop: threading.Event) -> None:
    """Wait (bounded) for the monitor's first round, which asks every log with a URL and
    every peer for its latest checkpoint, before the first push is taken: a state put back
    from an old copy adopts the larger checkpoint this witness cosigned since (see
    Witness.observe_own). A log or peer not answered by then never blocks the start: a
    WARNING, and the background rounds ask it again. The socket is bound already, so pushes
    arriving meanwhile wait in its backlog."""
    if not any(lg.url for lg in cfg.logs) and not cfg.peers:
        return
    bound = 3 * cfg.http_timeout  # one whole answer's deadline (client.net)
    deadline = time.monotonic() + bound
    while not monitor.first_round.is_set() and not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            logger.warning(
                "start-up check: the logs and peers did not all answer within %g s; serving "
                "now, asking them again in the background",
                bound,
            )
            return
        monitor.first_round.wait(min(left, 0.5))


# --- check --------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    cfg = WitnessConfig.load(args.config)
    with WitnessStore(cfg.state_db) as store:
        notes = _check_own(cfg, store)
        return _check(cfg, store, notes)


def _check_own(cfg: WitnessConfig, store: WitnessStore) -> list[str]:
    """Ask the logs (with a URL) and the peers for their latest checkpoints: our own
    cosignature on a larger size than the state holds means the state was put back; it is
    adopted (or, inconsistent with the state, recorded as evidence). Lines for the report."""
    if not any(lg.url for lg in cfg.logs) and not cfg.peers:
        return []
    try:
        witness = Witness(cfg.signer(), cfg.logs, store, extra_signers=cfg.extra_signers())
    except ConfigError:
        return []  # the key cannot be read: _check reports it
    monitor = _monitor(cfg, witness)
    try:
        _, missed = monitor.check_own_once()
    finally:
        monitor.close()
    lines = [
        f"STATE ROLLED BACK: log {origin}: the state held tree size {held}; adopted tree size "
        f"{size}, which this witness had cosigned"
        for origin, (held, size) in sorted(witness.rollbacks.items())
    ]
    lines += [f"warning: could not ask {what} for its latest checkpoints" for what in missed]
    return lines


def _check(cfg: WitnessConfig, store: WitnessStore, notes: Sequence[str] = ()) -> int:
    problems: list[str] = []
    for line in notes:
        _out(line)
    try:
        own = [cfg.signer().verifier(), *(s.verifier() for s in cfg.extra_signers())]
    except KeyFileUnreadable as exc:
        own = []
        problems.append(f"cannot read the witness key to verify our cosignatures: {exc}")
    logs = {lg.origin: lg for lg in cfg.logs}
    for listed in store.listed_logs():  # provisioned from log lists
        if listed.origin not in logs:
            logs[listed.origin] = WitnessedLog(listed.origin, (log_verifier(listed.vkey),))
    for stored in store.all_latest():
        log = logs.get(stored.origin)
        if log is None:
            problems.append(f"{stored.origin}: state for a log not in the configuration")
            continue
        try:
            cp, note = open_checkpoint(stored.note, [*log.verifiers, *own], origin=stored.origin)
        except (FormatError, VerificationError) as exc:
            problems.append(f"{stored.origin}: stored checkpoint does not verify: {exc}")
            continue
        if own and not any(s.key_id == own[0].key_id for s in note.verified):
            problems.append(f"{stored.origin}: stored checkpoint lacks our cosignature")
        if (cp.size, cp.root_hash) != (stored.size, stored.root_hash):
            problems.append(f"{stored.origin}: stored size/root disagree with the note")
        _out(f"log {stored.origin}: cosigned size {stored.size} at {_iso(stored.updated_at)}")

    for s in store.suspicions():
        _out(
            f"warning: {s.origin}: the log has not proved consistency with {s.peer}'s size "
            f"{s.their_size} for {s.rounds} round(s): {s.reason}"
        )
    evidence = store.evidence()
    if evidence:
        _out(f"SPLIT-VIEW EVIDENCE: {len(evidence)} record(s)")
        for e in evidence:
            _out(
                "",
                f"#{e.id} log {e.origin}, seen via {e.peer} at {_iso(e.detected_at)}",
                f"reason: {e.reason}",
                f"detail: {e.detail}",
                "our checkpoint:",
                *("    " + ln for ln in e.our_note.splitlines()),
                "their checkpoint:",
                *("    " + ln for ln in e.their_note.splitlines()),
            )
    for p in problems:
        _out(f"STATE PROBLEM: {p}")
    if evidence:
        return EXIT_EVIDENCE
    if problems:
        return EXIT_STATE
    _out(f"ok: no split-view evidence ({len(cfg.logs)} log(s), {len(cfg.peers)} peer(s))")
    return EXIT_OK


# --- gossip / poll ------------------------------------------------------------------------


def _rounds(args: argparse.Namespace, what: str) -> int:
    cfg, witness = _load(args)
    monitor = _monitor(cfg, witness)
    interval = (
        cfg.gossip_interval
        if what == "gossip"
        else min((lg.poll_interval for lg in cfg.logs if lg.url), default=60.0)
    )
    first = True
    try:
        while True:
            if what == "gossip":
                found = monitor.gossip_once()
            elif first:
                # As serve's first round: the peers first, so that a restored state adopts
                # our own later cosignature before a log's checkpoint is cosigned.
                found = monitor.peers_then_logs(lg for lg in witness.logs.values() if lg.url)
            else:
                found = monitor.poll_once()
            first = False
            if found:
                _out(f"{what}: {found} new split-view evidence record(s); run `check`")
            if args.once:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        monitor.close()
    with witness.store:
        return EXIT_EVIDENCE if witness.evidence() else EXIT_OK


def cmd_gossip(args: argparse.Namespace) -> int:
    return _rounds(args, "gossip")


def cmd_poll(args: argparse.Namespace) -> int:
    return _rounds(args, "poll")


# --- pull-logs ----------------------------------------------------------------------------


def cmd_pull_logs(args: argparse.Namespace) -> int:
    cfg, witness = _load(args)
    try:
        report = pull(
            witness,
            args.source,
            timeout=cfg.http_timeout,
            ca_file=args.ca_file,
            allow_redirect_hosts=args.allow_redirect_host,
        )
    except FormatError as exc:
        _err(f"log list: {exc}")
        return EXIT_USAGE
    finally:
        witness.store.close()
    for origin in report.added:
        _out(f"added {one_line(origin)}")
    for origin in report.conflicts:
        shown = one_line(origin)
        _out(f"KEY CONFLICT: {shown} is listed with another key; kept the configured one")
    for origin in report.refused:
        _out(f"refused {one_line(origin)}: it is listed with this witness's own key")
    if args.verbose:
        for origin in report.known:
            _out(f"known {one_line(origin)}")
    return EXIT_EVIDENCE if report.conflicts or report.refused else EXIT_OK


# --- main ---------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tlog-witness", description="Run a c2sp.org/tlog-witness witness."
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text (UTC ISO time, level, logger, message) or one JSON object "
        "each; the same format and redaction as tlog serve",
    )
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("keygen", help="create a cosignature key file and print its vkey")
    k.add_argument("--name", required=True, help="witness name (a scheme-less URL)")
    k.add_argument("--key", required=True, help="private key file to create (mode 0600)")
    k.add_argument(
        "--alg",
        choices=("ed25519", "mldsa44"),
        default="ed25519",
        help="ed25519 (cosignature/v1, type 0x04; the key_file) or mldsa44 (ML-DSA-44, "
        "type 0x06; the mldsa_key_file)",
    )
    k.set_defaults(func=cmd_keygen)

    for name, func, helptext in (
        ("serve", cmd_serve, "run the witness HTTP server, polling and gossip"),
        ("check", cmd_check, "report split-view evidence; non-zero exit if any"),
        ("gossip", cmd_gossip, "compare checkpoints with the peers"),
        ("poll", cmd_poll, "fetch and cosign the logs' latest checkpoints"),
    ):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("--config", required=True, help="TOML configuration file")
        if name in ("gossip", "poll"):
            s.add_argument("--once", action="store_true", help="one round, then exit")
        s.set_defaults(func=func)
    pl = sub.add_parser("pull-logs", help="add logs from a logs/v0 list (never changes keys)")
    pl.add_argument("--config", required=True, help="TOML configuration file")
    pl.add_argument("--source", required=True, help="log list file or http(s) URL")
    pl.add_argument("--verbose", action="store_true", help="also list logs already known")
    pl.add_argument(
        "--ca-file", help="PEM file of a CA to trust for an https list (besides the system's)"
    )
    pl.add_argument(
        "--allow-redirect-host",
        action="append",
        default=[],
        metavar="HOST",
        help="follow a redirect of the list to HOST (https only; repeatable); by default "
        "only redirects within the list's own origin are followed, never https -> http",
    )
    pl.set_defaults(func=cmd_pull_logs)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.getLevelName(str(args.log_level).upper())
    if not isinstance(level, int):
        _err(f"unknown log level {args.log_level!r}")
        return EXIT_USAGE
    if not logging.getLogger().handlers:  # as basicConfig: a host's own logging stays
        configure_logs(logging.getLevelName(level), args.log_format)
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except StateUnusable as exc:
        _err(str(exc))
        return EXIT_STATE
    return rc


if __name__ == "__main__":
    sys.exit(main())
