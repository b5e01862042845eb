"""Nobody can forge a log line or drive the operator's terminal through the logs.

Hostile text (``\\n``, ``\\r``, ``ESC[2J``, U+202E, C1) in a message, its arguments, an
exception message, a witness's refusal, a request's headers, or a CLI's error reaches every
line escaped: a text record is one line (a traceback's lines follow, each prefixed with
``CONT``), a JSON record is one line whose decoded values are the original text.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.formats.policy import Policy
from client.formats.text import inert, json_line, one_line
from client.runtime.logs import CONT, configure
from client.witness.cli import main as witness_main
from tests.support import start_server
from tlog.cli import main as tlog_main
from tlog.log import Log
from tlog.witnessing import WitnessPusher

from .pgsupport import open_store
from .server.conftest import make_signer

HOSTILE = "a\nb\rc\x1b[2Jd\u202ee\x85f\x7fg\u2066h\u2028i"
ESCAPED = "a\\nb\\rc\\x1b[2Jd\\u202ee\\x85f\\x7fg\\u2066h\\u2028i"
RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [A-Z]+ \S+: ")


def _inert_line(line: str) -> bool:
    return line.isprintable()


def assert_text_lines(text: str) -> list[str]:
    """Every line printable; each a record or a CONT continuation; the records returned."""
    lines = text.split("\n")
    assert lines[-1] == ""
    records = []
    for line in lines[:-1]:
        assert _inert_line(line), repr(line)
        if RECORD.match(line):
            records.append(line)
        else:
            assert line.startswith(CONT), repr(line)
    return records


@pytest.fixture
def logs_to(capsys: pytest.CaptureFixture[str]) -> Iterator[object]:
    """``configure(level, fmt)`` for the test, on the captured standard error; the root
    logger and the noisy loggers are put back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    named = {n: logging.getLogger(n).level for n in ("httpx", "httpcore", "hpack", "uvicorn")}

    def apply(fmt: str) -> None:
        configure("info", fmt)

    try:
        yield apply
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for n, lvl in named.items():
            logging.getLogger(n).setLevel(lvl)


def test_one_line_escapes_every_non_printable_and_keeps_the_rest() -> None:
    assert one_line(HOSTILE) == ESCAPED
    assert one_line("plain ünïcødé 日本 tab-free") == "plain ünïcødé 日本 tab-free"
    assert one_line("\t\x00\U000e0001") == "\\t\\x00\\U000e0001"
    assert inert(HOSTILE, 3) == "a\\nb..."
    for cp in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]:
        assert one_line(chr(cp)).isascii() and one_line(chr(cp)).isprintable(), hex(cp)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_message_arguments_and_tracebacks_stay_inert(
    fmt: str, logs_to: object, capsys: pytest.CaptureFixture[str]
) -> None:
    logs_to(fmt)  # type: ignore[operator]
    log = logging.getLogger("tlog.test." + HOSTILE[:2])
    log.warning("peer said %s", HOSTILE)
    log.warning(HOSTILE)
    try:
        raise ValueError(f"x\n2026-01-01T00:00:00.000Z ERROR forged: {HOSTILE}")
    except ValueError:
        log.exception("parse failed: %s", HOSTILE)
    log.warning("with stack %s", HOSTILE, stack_info=True)
    err = capsys.readouterr().err
    if fmt == "text":
        records = assert_text_lines(err)
        assert len(records) == 4
        assert records[0].endswith(f"tlog.test.a\\n: peer said {ESCAPED}")
        assert records[1].endswith(f": {ESCAPED}")
        assert records[2].endswith(f": parse failed: {ESCAPED}")
        assert not any("forged" in r for r in records)  # only in CONT lines (source)
        assert f"{CONT}Traceback (most recent call last):" in err
    else:
        lines = err.split("\n")
        assert lines[-1] == "" and len(lines) == 5
        docs = []
        for line in lines[:-1]:
            assert line.isprintable(), repr(line)
            docs.append(json.loads(line))
        assert docs[0]["msg"] == f"peer said {HOSTILE}"  # the value itself, decoded
        assert docs[0]["logger"] == "tlog.test." + HOSTILE[:2]
        assert docs[1]["msg"] == HOSTILE
        assert docs[2]["exc"].startswith("Traceback") and "stack" in docs[3]


def test_formatters_alone_keep_exception_messages_inert() -> None:
    """Without the redacting filter (a program's own handler), an exception message with
    line breaks stays on prefixed continuation lines, escaped."""
    from client.runtime.logs import JsonFormatter, TextFormatter

    try:
        raise ValueError(f"x\n2026-01-01T00:00:00.000Z ERROR forged: {HOSTILE}")
    except ValueError:
        import sys

        rec = logging.LogRecord("t", logging.ERROR, __file__, 1, "m %s", (HOSTILE,), sys.exc_info())
    out = TextFormatter().format(rec) + "\n"
    records = assert_text_lines(out)
    assert len(records) == 1 and records[0].endswith(f"m {ESCAPED}")
    # Split at its line breaks, every piece a prefixed continuation, the rest escaped.
    assert f"\n{CONT}2026-01-01T00:00:00.000Z ERROR forged: a\n{CONT}{ESCAPED[3:]}\n" in out
    rec.exc_text = None
    line = JsonFormatter().format(rec)
    assert "\n" not in line and line.isprintable()
    doc = json.loads(line)
    assert doc["msg"] == f"m {HOSTILE}" and doc["exc"].endswith(f"forged: {HOSTILE}")


def _policy_and_log(tmp_path: Path, database: str | None) -> tuple[Log, Policy]:
    log_ = Log(open_store(database, tmp_path), make_signer())
    from client.formats.cosignature import CosignatureSigner

    w = CosignatureSigner("witness.test/a", b"\1" * 32)
    policy = Policy.parse(f"log {log_.vkey}\nwitness a {w.vkey()} http://a.test\nquorum a\n")
    return log_, policy


@pytest.mark.parametrize("status", [400, 500])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_witness_refusal_text_in_the_pusher_log(
    tmp_path: Path,
    database: str | None,
    fmt: str,
    status: int,
    logs_to: object,
    capsys: pytest.CaptureFixture[str],
) -> None:
    log_, policy = _policy_and_log(tmp_path, database)
    try:
        log_.integrate([b"e0", b"e1"])

        def refuse(request: httpx.Request) -> httpx.Response:
            return httpx.Response(
                status, text=f"no\n2026-01-01T00:00:00.000Z CRITICAL x: {HOSTILE}"
            )

        http = httpx.Client(transport=httpx.MockTransport(refuse))
        pusher = WitnessPusher(log_, policy, interval=0, http=http)
        capsys.readouterr()
        logs_to(fmt)  # type: ignore[operator]
        pusher.push_once()
        err = capsys.readouterr().err
    finally:
        log_.storage.close()
    assert "2J" in err, err  # the refusal was logged
    lines = err.split("\n")
    assert lines[-1] == ""
    for line in lines[:-1]:
        assert line.isprintable(), repr(line)
        if fmt == "text":
            assert RECORD.match(line), repr(line)
        else:
            json.loads(line)
    if fmt == "text":
        assert "\\x1b[2J" in err and "\\u202e" in err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / f"cfg{HOSTILE}.toml"  # a file name is text from elsewhere too
    # tlog: a configuration file that cannot be read.
    assert tlog_main(["config", "check", str(evil)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tlog: ") and err.rstrip("\n").isprintable()
    assert ESCAPED in err
    # tlog-witness: a list source that cannot be read.
    cfg = tmp_path / "w.toml"
    from client.formats.cosignature import CosignatureSigner

    (tmp_path / "w.key").touch(0o600)
    (tmp_path / "w.key").write_text(CosignatureSigner("w.example/w", b"\7" * 32).skey() + "\n")
    cfg.write_text(
        'name = "w.example/w"\nkey_file = "w.key"\nstate_db = "s.db"\nlisten = "127.0.0.1:0"\n'
    )
    assert witness_main(["pull-logs", "--config", str(cfg), "--source", str(evil)]) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.rstrip("\n").isprintable() and ESCAPED in err, err
    # tlog-client: its error line and its parser's, whatever the text they are given.
    from client.tools import cli as tools

    tools._err(f"error: the log answered {HOSTILE}")
    with pytest.raises(SystemExit):
        tools._parser().error(HOSTILE)
    err = capsys.readouterr().err
    lines = err.rstrip("\n").split("\n")
    assert lines[0] == f"tlog-client: error: the log answered {ESCAPED}"
    assert lines[-1] == f"tlog-client: error: {ESCAPED}"
    assert all(ln.isprintable() for ln in lines)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_tlog_serve_access_lines_with_hostile_headers(tmp_path: Path, fmt: str) -> None:
    """The real ``tlog serve``: a request whose forwarded-for address (believed from
    127.0.0.1 with ``--forwarded-allow-ips``), request id and path carry C1 controls, ESC
    and CR/LF escapes; its access log line is one printable line."""
    data = tmp_path / "data"
    srv = start_server(
        data,
        None,
        *("--log-level", "info", "--access-log", "--log-format", fmt),
        *("--forwarded-allow-ips", "127.0.0.1"),
    )
    try:
        host, port = "127.0.0.1", srv.port
        hostile = b"\x9b2J\x85evil\xe2\x80\xae"  # obs-text: latin-1 C1 controls as sent
        req = (
            b"GET /checkpoint%0d%0a2026%1b[2J?x=%0a HTTP/1.1\r\nHost: t\r\n"
            b"X-Forwarded-For: " + hostile + b"\r\n"
            b"X-Request-Id: " + hostile + b"\r\nConnection: close\r\n\r\n"
        )
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(req)
            while s.recv(65536):
                pass
        httpx.get(srv.url + "/checkpoint", timeout=10)  # a second line after ours
    finally:
        srv.stop()
    text = (tmp_path / "data-server.log").read_bytes().decode("utf-8", "replace")
    lines = [ln for ln in text.split("\n") if ln and not ln.startswith("tlog: ")]
    logged = [ln for ln in lines if "GET" in ln]
    assert len(logged) >= 2, text
    # The forwarded-for text reached the line (uvicorn takes it as the client's address)
    # with its C1 CSI and NEL escaped, never raw.
    assert ("\\x9b2J\\x85evil" if fmt == "text" else "\\u009b2J\\u0085evil") in text, text
    for line in logged:
        assert line.isprintable(), repr(line)
        if fmt == "text":
            assert RECORD.match(line), repr(line)
        else:
            json.loads(line)


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.text(), lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_json_line_is_printable_and_decodes_to_the_same_value(value: object) -> None:
    """The JSON line written for log records and the tools' ``--json`` output: printable,
    one line, and the same value once decoded."""
    line = json_line(json.dumps(value, ensure_ascii=False))
    assert "\n" not in line and "\r" not in line
    assert line.isprintable()
    assert json.loads(line) == value
