"""Provisioning a witness from ``logs/v0`` lists (``tlog-witness pull-logs``).

A list only ever *adds* logs: an origin that is configured (TOML) or already provisioned
keeps its key, and a list that names it with another key is reported as a conflict (exit 1
from ``pull-logs``, for a cron job to alert on) and changes nothing. Removing a log from a
list does not remove it here either: re-adding a log later could let a witness sign a split
view. A listed key equal to one of the witness's own keys is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from client.formats.note import FormatError
from client.net.core import HTTPCore, Unreachable, http_client
from client.witness.core import Witness
from client.witness.loglist import MAX_LIST_SIZE, LogListEntry, parse_log_list

__all__ = ["PullReport", "fetch_log_list", "provision"]

logger = logging.getLogger("client.witness")


@dataclass
class PullReport:
    added: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def fetch_log_list(source: str, *, timeout: float = 10.0) -> bytes:
    """The list at an http(s) URL or in a file. An answer must arrive whole within
    :data:`client.net.core.ANSWER_TIME_FACTOR` times ``timeout`` (it is fetched by the
    monitor's loop, which a list server dripping bytes would otherwise stop)."""
    if source.startswith(("http://", "https://")):
        url = urlsplit(source)
        path = url.path + (f"?{url.query}" if url.query else "")
        with http_client(timeout=timeout, follow_redirects=True) as http:
            try:
                resp = HTTPCore(f"{url.scheme}://{url.netloc}", http).send(
                    "GET", path, limit=MAX_LIST_SIZE
                )
            except (Unreachable, FormatError) as exc:  # FormatError: too large, undecodable
                raise FormatError(f"GET {source}: {exc}") from None
        if resp.status != 200:
            raise FormatError(f"GET {source}: HTTP {resp.status}")
        return resp.body
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise FormatError(f"cannot read {source}: {exc}") from None


def _vkey_of(witness: Witness, origin: str) -> set[str]:
    log = witness.logs.get(origin)
    if log is not None:
        return {v.vkey() for v in log.verifiers if hasattr(v, "vkey")}
    listed = witness.store.listed_log(origin)
    return set() if listed is None else {listed.vkey}


def provision(witness: Witness, entries: list[LogListEntry], source: str) -> PullReport:
    """Add the entries this witness does not know yet. Durable when it returns."""
    report = PullReport()
    own = {s.public_key for s in witness.signers}
    for e in entries:
        have = _vkey_of(witness, e.origin)
        if have:
            if e.vkey in have:
                report.known.append(e.origin)
            else:
                logger.warning(
                    "log list %s: %r is listed with a different key than the one this "
                    "witness has; keeping ours (investigate why the list changed)",
                    source,
                    e.origin,
                )
                report.conflicts.append(e.origin)
            continue
        if getattr(e.verifier(), "public_key", None) in own:
            logger.warning("log list %s: %r has this witness's own key; refused", source, e.origin)
            report.refused.append(e.origin)
            continue
        if witness.store.add_listed_log(e.origin, e.vkey, e.qpd, e.contact, source, witness.now()):
            report.added.append(e.origin)
        else:  # pragma: no cover - a concurrent pull added it first
            report.known.append(e.origin)
    return report


def pull(witness: Witness, source: str, *, timeout: float = 10.0) -> PullReport:
    return provision(witness, parse_log_list(fetch_log_list(source, timeout=timeout)), source)
