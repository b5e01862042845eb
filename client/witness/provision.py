"""Provisioning a witness from ``logs/v0`` lists (``tlog-witness pull-logs``).

A list only ever *adds* logs: an origin that is configured (TOML) or already provisioned
keeps its key, and a list that names it with another key is reported as a conflict (exit 1
from ``pull-logs``, for a cron job to alert on) and changes nothing. Removing a log from a
list does not remove it here either: re-adding a log later could let a witness sign a split
view. A listed key equal to one of the witness's own keys is refused.

A list fetched over http(s) follows at most :data:`MAX_REDIRECTS` redirects, and only those
that keep to the list's origin: the same scheme, host and port, or an upgrade from ``http``
to ``https`` on the same host. A redirect from ``https`` to ``http`` is always refused (the
list decides which keys this witness trusts: an operator who wants a list over plain http
names the http URL). A redirect to another host (or port) is refused unless that host is
named in ``allow_redirect_hosts`` (``pull-logs --allow-redirect-host``), and even then only
over https. A refusal is one line: ``GET <url>: redirect to <location> refused: <why>``.
``ca_file`` (``pull-logs --ca-file``) trusts a private CA (PEM) for https lists, in
addition to the system's.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import SplitResult, urljoin, urlsplit

from client.formats.note import FormatError
from client.formats.text import inert
from client.net.core import HTTPCore, Unreachable, http_client
from client.witness.core import Witness
from client.witness.loglist import MAX_LIST_SIZE, LogListEntry, parse_log_list

__all__ = ["MAX_REDIRECTS", "PullReport", "fetch_log_list", "provision"]

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORT = {"http": 80, "https": 443}

logger = logging.getLogger("client.witness")


@dataclass
class PullReport:
    added: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def _port(u: SplitResult) -> int | None:
    try:
        return u.port or _DEFAULT_PORT.get(u.scheme)
    except ValueError:  # a port that is not a number
        return None


def _redirect_refusal(old: SplitResult, new: SplitResult, allow_hosts: frozenset[str]) -> str:
    """Why the redirect from ``old`` to ``new`` is refused; "" when it may be followed."""
    if new.scheme not in ("http", "https") or not new.hostname:
        return "not an http(s) URL"
    if old.scheme == "https" and new.scheme == "http":
        return "it leaves https for plain http"
    same_host = (new.hostname or "").lower() == (old.hostname or "").lower()
    if same_host and (_port(new) == _port(old) or (old.scheme, new.scheme) == ("http", "https")):
        return ""
    if (new.hostname or "").lower() in allow_hosts:
        if new.scheme != "https":
            return "another host is followed only over https"
        return ""
    return "it leaves for another host (allow it with --allow-redirect-host)"


def fetch_log_list(
    source: str,
    *,
    timeout: float = 10.0,
    ca_file: str | None = None,
    allow_redirect_hosts: Iterable[str] = (),
) -> bytes:
    """The list at an http(s) URL or in a file. An answer must arrive whole within
    :data:`client.net.core.ANSWER_TIME_FACTOR` times ``timeout`` (it is fetched by the
    monitor's loop, which a list server dripping bytes would otherwise stop). Redirects: see
    the module's text; ``ca_file`` adds a CA (PEM) to the system's for https."""
    if source.startswith(("http://", "https://")):
        allow = frozenset(h.lower() for h in allow_redirect_hosts)
        verify: ssl.SSLContext | bool = True
        if ca_file is not None:
            try:
                verify = ssl.create_default_context()
                verify.load_verify_locations(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise FormatError(f"cannot use CA file {ca_file}: {exc}") from None
        current = source
        with http_client(timeout=timeout, verify=verify) as http:
            for hop in range(MAX_REDIRECTS + 1):
                url = urlsplit(current)
                path = url.path + (f"?{url.query}" if url.query else "")
                try:
                    resp = HTTPCore(f"{url.scheme}://{url.netloc}", http).send(
                        "GET", path, limit=MAX_LIST_SIZE
                    )
                except (Unreachable, FormatError) as exc:  # FormatError: too large, undecodable
                    raise FormatError(f"GET {inert(current, 500)}: {exc}") from None
                location = resp.headers.get("location")
                if resp.status not in _REDIRECTS or location is None:
                    break
                target = urljoin(current, location.strip())
                why = _redirect_refusal(url, urlsplit(target), allow)
                if why:
                    raise FormatError(
                        f"GET {inert(current, 500)}: redirect to {inert(target, 500)} "
                        f"refused: {why}"
                    )
                if hop == MAX_REDIRECTS:
                    raise FormatError(
                        f"GET {inert(source, 500)}: more than {MAX_REDIRECTS} redirects"
                    )
                current = target
        if resp.status != 200:
            raise FormatError(f"GET {inert(current, 500)}: HTTP {resp.status}")
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


def pull(
    witness: Witness,
    source: str,
    *,
    timeout: float = 10.0,
    ca_file: str | None = None,
    allow_redirect_hosts: Iterable[str] = (),
) -> PullReport:
    body = fetch_log_list(
        source, timeout=timeout, ca_file=ca_file, allow_redirect_hosts=allow_redirect_hosts
    )
    return provision(witness, parse_log_list(body), source)
