"""One log format for every program: Python logging and uvicorn's loggers alike.

``text`` lines are ``2026-11-30T12:00:00.123Z WARNING tlog.witnessing: message``; ``json``
lines are one object each (``ts``, ``level``, ``logger``, ``msg``, and ``exc`` when there is
a traceback), for log shippers. Both go to standard error. httpx and httpcore log every
outgoing request at INFO; they are raised to WARNING so a busy witness pusher or relay does
not fill the log with one line per request. uvicorn's access log is off unless asked for.

Nobody can forge a log line. A ``text`` record's own line is one line: in the message (its
arguments included), the logger name and the level, every character that is not printable
(C0 controls such as CR, LF, ESC; DEL; C1 controls; format characters such as the
bidirectional overrides U+202A-202E and U+2066-2069; the line and paragraph separators) is
shown as its Python escape (``\\n``, ``\\x1b``, ``\\u202e``) by :func:`one_line`. A traceback
(or stack) follows on continuation lines, each escaped the same way and prefixed with
``CONT`` (``"  | "``): a record starts with a timestamp, a continuation line never does, so
an exception message carrying ``"\\n2026-... ERROR x: forged"`` shows as ``  | 2026-...``.
A ``json`` record is one line as well: ``json.dumps`` escapes C0 characters, quotes and
backslashes; the other non-printable characters (DEL, C1, format characters, U+2028/2029,
which ``ensure_ascii=False`` would leave raw) are written as ``\\uXXXX`` escapes, so the
decoded values are unchanged while the line is inert in a terminal and to line splitters.
A backslash is doubled (``\\\\``) in a ``text`` line, so every backslash there starts an
escape and the value is recovered exactly from its line: a literal ``\\n`` shows as
``\\\\n``, a line break as ``\\n``.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

from client.formats.text import inert, json_line, one_line
from client.runtime import logredact

__all__ = [
    "CONT",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "inert",
    "one_line",
    "uvicorn_log_config",
]

# The prefix of every continuation line (traceback, stack) of a text record.
CONT = "  | "


# Loggers that log every outgoing or incoming request at INFO.
NOISY = ("httpx", "httpcore", "hpack")


def _iso(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC ISO time> <LEVEL> <logger>: <message>``, the message one line (:func:`one_line`);
    a traceback or stack on continuation lines, each prefixed with :data:`CONT`."""

    def format(self, record: logging.LogRecord) -> str:
        # The timestamp is printable: one check of the rest (the common case, in C).
        line = (
            _iso(record)
            + " "
            + one_line(f"{record.levelname} {record.name}: {record.getMessage()}")
        )
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += _continued(record.exc_text)
        if record.stack_info:
            line += _continued(self.formatStack(record.stack_info))
        return line


def _continued(text: str) -> str:
    """``text``'s lines, each escaped and prefixed with :data:`CONT`, each after a line
    break."""
    return "".join(f"\n{CONT}{one_line(x)}" for x in text.rstrip("\n").split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json_line(json.dumps(doc, ensure_ascii=False))


def _formatter_class(fmt: str) -> str:
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    return f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"


def uvicorn_log_config(level: str = "info", fmt: str = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for the root logger and uvicorn's, in one format, with
    :class:`client.runtime.logredact.RedactingFilter` on its handler (no identifiers, query
    values or tokens in any line).

    Passed to ``uvicorn.Config(log_config=...)``, which applies it (so uvicorn does not install
    its own format); :func:`configure` applies it for programs without uvicorn.
    """
    lvl = level.upper()
    return logredact.uvicorn_log_config(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"one": {"()": _formatter_class(fmt)}},
            "handlers": {
                "stderr": {
                    "class": "logging.StreamHandler",
                    "formatter": "one",
                    "stream": "ext://sys.stderr",
                }
            },
            "root": {"handlers": ["stderr"], "level": lvl},
            "loggers": {
                "uvicorn": {"handlers": [], "level": lvl, "propagate": True},
                "uvicorn.error": {"handlers": [], "level": lvl, "propagate": True},
                "uvicorn.access": {"handlers": [], "level": lvl, "propagate": True},
                **{name: {"level": "WARNING" if lvl == "INFO" else lvl} for name in NOISY},
            },
        }
    )


def configure(level: str = "info", fmt: str = "text") -> None:
    """Apply the format to the root logger (programs that do not run uvicorn)."""
    logging.config.dictConfig(uvicorn_log_config(level, fmt))
