"""One log format for every program: Python logging and uvicorn's loggers alike.

``text`` lines are ``2026-11-30T12:00:00.123Z WARNING tlog.witnessing: message``; ``json``
lines are one object each (``ts``, ``level``, ``logger``, ``msg``, and ``exc`` when there is
a traceback), for log shippers. Both go to standard error. httpx and httpcore log every
outgoing request at INFO; they are raised to WARNING so a busy witness pusher or relay does
not fill the log with one line per request. uvicorn's access log is off unless asked for.
"""

from __future__ import annotations

import json
import logging
import logging.config
import time
from typing import Any

from client.runtime import logredact

__all__ = ["JsonFormatter", "TextFormatter", "configure", "uvicorn_log_config"]

# Loggers that log every outgoing or incoming request at INFO.
NOISY = ("httpx", "httpcore", "hpack")


def _iso(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``<UTC ISO time> <LEVEL> <logger>: <message>``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_iso(record)} {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _iso(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


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
