"""Witness-network log lists (``logs/v0``), as published for the public witness network.

A list is UTF-8 text: comment lines (``#``) and blank lines anywhere, then the header line
``logs/v0``, then entries. Each entry starts with a ``vkey`` line; ``origin`` (default: the
key's name), ``qpd`` (add-checkpoint requests per day the log promises not to exceed) and
``contact`` lines may follow; lines with other keywords are ignored, as are entries whose
vkey does not parse and later duplicates of an origin (torchwood's ``witnessctl pull-logs``
reads lists the same way, so one list means the same to both)::

    logs/v0
    vkey scim-log.example.com/audit+d55b5a85+AQ...
    origin scim-log.example.com/audit
    qpd 86400
    contact https://scim-log.example.com/contact

:func:`format_entry` writes one entry (what ``tlog log-entry`` prints for an operator to
submit); :func:`parse_log_list` reads a list.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from client.formats.cosignature import MLDSACosignatureVerifier
from client.formats.note import ALG_ED25519, Ed25519Verifier, FormatError, Verifier, parse_vkey

__all__ = ["LogListEntry", "format_entry", "log_verifier", "parse_log_list"]

logger = logging.getLogger("client.witness")

HEADER = "logs/v0"
MAX_LIST_SIZE = 8 << 20


def log_verifier(vkey: str) -> Verifier:
    """A log's checkpoint key: an Ed25519 note key (0x01) or ML-DSA-44 (0x06)."""
    if parse_vkey(vkey)[2] == ALG_ED25519:
        return Ed25519Verifier.from_vkey(vkey)
    return MLDSACosignatureVerifier.from_vkey(vkey)


@dataclass(frozen=True)
class LogListEntry:
    vkey: str
    origin: str
    qpd: int | None = None
    contact: str | None = None

    def verifier(self) -> Verifier:
        return log_verifier(self.vkey)


def _clean(value: str, what: str) -> str:
    if not value or "\n" in value or not value.isprintable():
        raise FormatError(f"bad {what}")
    return value


def format_entry(vkey: str, origin: str, qpd: int | None, contact: str | None) -> str:
    """One ``logs/v0`` entry (no header), each line ending in a newline."""
    log_verifier(vkey)  # a key a witness can use
    if qpd is not None and qpd < 1:
        raise FormatError("qpd must be at least 1")
    lines = [f"vkey {_clean(vkey, 'vkey')}", f"origin {_clean(origin, 'origin')}"]
    if qpd is not None:
        lines.append(f"qpd {qpd}")
    if contact:
        lines.append(f"contact {_clean(contact, 'contact')}")
    return "".join(line + "\n" for line in lines)


def parse_log_list(data: str | bytes) -> list[LogListEntry]:
    """Parse a list. Raises :class:`FormatError` only for a bad header or framing."""
    if isinstance(data, bytes):
        if len(data) > MAX_LIST_SIZE:
            raise FormatError("log list too large")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError("log list is not UTF-8") from None
    entries: dict[str, LogListEntry] = {}
    current: dict[str, str] | None = None
    saw_header = False

    def finish() -> None:
        if current is None:
            return
        vkey = current["vkey"]
        try:
            verifier = log_verifier(vkey)
        except FormatError as exc:
            logger.warning("log list: skipping invalid vkey %r: %s", vkey, exc)
            return
        origin = current.get("origin") or verifier.name
        qpd: int | None = None
        q = current.get("qpd")
        # Below 2**63 (the state's SQLite INTEGER), looked at before int() (a ValueError past
        # 4,300 digits): either failed the whole pull (red team 22). Else no number, as any
        # other bad qpd.
        if q is not None and q.isascii() and q.isdigit() and len(q) <= 19:
            qpd = int(q)
            if qpd >= 1 << 63:
                qpd = None
        if origin in entries:
            logger.warning("log list: skipping a duplicate entry for %r", origin)
            return
        entries[origin] = LogListEntry(vkey, origin, qpd, current.get("contact"))

    for raw in data.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not saw_header:
            if line != HEADER:
                raise FormatError(f"log list header must be {HEADER!r}, got {line[:40]!r}")
            saw_header = True
            continue
        key, _, value = line.partition(" ")
        value = value.strip()
        if current is None and key != "vkey":
            raise FormatError(f"log list: expected a vkey line, got {line[:60]!r}")
        if key == "vkey":
            finish()
            if not value:
                raise FormatError("log list: empty vkey")
            current = {"vkey": value}
        elif current is not None and key in ("origin", "qpd", "contact"):
            current[key] = value
    if not saw_header:
        raise FormatError("log list has no logs/v0 header")
    finish()
    return list(entries.values())
