"""Keep identifiers, query values and credentials out of access and error logs.

Standard library only, so the log server, the witness and the SCIM adapters can all use it.

* :func:`redact_target` turns a request target into something safe to log: every query
  *value* becomes ``*`` (names stay: ``?rid=*&limit=*``), and every path segment that is not
  a fixed word of an API this project serves (``v1``, ``scim``, ``events``, ``Users``, ...)
  or a number / tile coordinate becomes ``{id}``: ``/v2/Users/u-alice`` logs as
  ``/v2/Users/{id}``.
* :func:`redact_text` scrubs free text: bearer credentials (``Bearer ...``, ``tlog_...``
  tokens), query strings inside URLs, and ``Authorization``/``Cookie`` header values.
* :class:`RedactingFilter` applies both to every record passing a handler: uvicorn access
  records (their request target), any other message, and exception tracebacks, which keep
  their frames and exception *type* but lose the exception message (messages can echo
  input: ``KeyError('u-alice')``).
* :func:`uvicorn_log_config` adds the filter to every handler of a dict config (uvicorn's);
  :func:`install` puts it on the root logger's handlers (after ``logging.basicConfig``).

Formatting (plain text or JSON lines) is the caller's choice; the filter only rewrites the
record before any formatter sees it.
"""

from __future__ import annotations

import copy
import logging
import re
import traceback
from typing import Any

__all__ = [
    "RedactingFilter",
    "install",
    "redact_target",
    "redact_text",
    "uvicorn_log_config",
]

REDACTED = "*"
ID = "{id}"

# Fixed path words of the APIs served here (log, SCIM service, SCIM SPs behind the proxy,
# witness, console, ops endpoints). Anything else in a path is treated as an identifier.
SAFE_SEGMENTS = frozenset(
    {
        "v1", "v2", "scim", "events", "batch", "receipts", "tenant-ref", "pseudonyms",
        "erasures", "approve", "certificate", "holds", "retention", "expire", "release",
        "entries", "bundle", "proof", "inclusion", "consistency", "checkpoint", "log",
        "witnesses", "tile", "tlog-tiles", "add-checkpoint", "healthz", "readyz", "livez",
        "metrics", "openapi.json", "docs", "ui", "static", "favicon.ico", "index.html",
        "Users", "Groups", "Bulk", "Me", "Schemas", "ResourceTypes", "ServiceProviderConfig",
        "ServiceProviderConfigs", ".search", "favicon.svg", "assets",
    }
)  # fmt: skip
_NUMERIC_SEGMENT = re.compile(r"x?\d{1,20}(\.p)?|\d{1,3}\.p")
_SAFE_FILE = re.compile(r"[a-z0-9_-]{1,40}\.(js|css|svg|png|html|map)")

_TOKEN = re.compile(r"tlog_[A-Za-z0-9_-]{6,}")
_AUTH = re.compile(r"(?i)\b(bearer|basic|token)(\s+|=|:\s*)[^\s,;\"']+")
_HEADER = re.compile(r"(?i)\b(authorization|cookie|set-cookie|x-api-key)(\"?\s*[:=]\s*\"?)[^\n\"]*")
_URL_QUERY = re.compile(r"\?[^\s\"'<>]*")


def _segment(seg: str) -> str:
    if not seg or seg in SAFE_SEGMENTS or _NUMERIC_SEGMENT.fullmatch(seg):
        return seg
    if _SAFE_FILE.fullmatch(seg):
        return seg
    return ID


def _query(q: str) -> str:
    parts = []
    for item in q.split("&"):
        if not item:
            continue
        name = item.split("=", 1)[0]
        name = name if re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name) else ID
        parts.append(f"{name}={REDACTED}")
    return "&".join(parts)


def redact_target(target: str) -> str:
    """A request target (path and query) that is safe to log."""
    path, sep, query = target.partition("?")
    path = path.split("#", 1)[0]
    out = "/".join(_segment(s) for s in path.split("/"))
    return out + ("?" + _query(query) if sep else "")


def redact_text(text: str) -> str:
    """Free text with credentials and URL query strings removed."""
    text = _TOKEN.sub("tlog_" + REDACTED, text)
    text = _HEADER.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _AUTH.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _URL_QUERY.sub(lambda m: "?" + _query(m.group(0)[1:]), text)


def _traceback(exc_info: Any) -> str:
    etype, _, tb = exc_info
    frames = "".join(traceback.format_tb(tb))
    name = getattr(etype, "__qualname__", "Exception")
    module = getattr(etype, "__module__", "")
    if module and module != "builtins":
        name = f"{module}.{name}"
    return f"Traceback (most recent call last):\n{frames}{name}: (message redacted)"


class RedactingFilter(logging.Filter):
    """Rewrites records in place so no formatter ever sees identifiers or credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            a = list(args)
            a[2] = redact_target(str(a[2]))
            record.args = tuple(a)
        else:
            try:
                msg = record.getMessage()
            except Exception:  # a broken format string: log the template only
                msg = str(record.msg)
            red = redact_text(msg)
            if red != msg or args:
                record.msg, record.args = red, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = _traceback(record.exc_info)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


def uvicorn_log_config(base: dict[str, Any]) -> dict[str, Any]:
    """A logging dict config (e.g. ``uvicorn.config.LOGGING_CONFIG``; ``client`` never
    imports uvicorn itself) with :class:`RedactingFilter` on every handler."""
    cfg = copy.deepcopy(base)
    cfg.setdefault("filters", {})["redact"] = {"()": f"{__name__}.RedactingFilter"}
    for h in cfg.get("handlers", {}).values():
        filters = h.setdefault("filters", [])
        if "redact" not in filters:
            filters.append("redact")
    return cfg


def install(logger: logging.Logger | None = None) -> None:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: root)."""
    lg = logger or logging.getLogger()
    for h in lg.handlers:
        if not any(isinstance(f, RedactingFilter) for f in h.filters):
            h.addFilter(RedactingFilter())
