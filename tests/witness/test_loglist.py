"""Log lists (``logs/v0``, issue 14 part 4): the log prints its entry, a witness is
provisioned from a list (file or URL), adding logs and never changing a key."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from client.formats.cosignature import CosignatureSigner
from client.formats.note import FormatError
from client.net.witness_client import origin_hash
from client.witness.cli import _load, main
from client.witness.config import ConfigError, WitnessConfig
from client.witness.loglist import parse_log_list
from client.witness.monitor import Monitor
from tests.support import tlog_in_process
from tests.witness.helpers import ORIGIN, FakeLog, events

NAME = "witness.example.com/w5"


def test_parse_is_lenient_like_witnessctl() -> None:
    a, b = FakeLog([], origin="a.example/log"), FakeLog([], origin="b.example/log", seed=b"\2" * 32)
    text = (
        "# List: test\n#\nlogs/v0\n\n"
        f"vkey {a.signer.vkey()}\nqpd 1440\ncontact mailto:a@example.org\nfuture-key x y\n"
        "vkey not-a-vkey\norigin broken.example\n"
        f"vkey {b.signer.vkey()}\norigin b.example/other-origin\n"
        f"vkey {a.signer.vkey()}\nqpd 9\n"  # a duplicate origin: the first one wins
    )
    entries = parse_log_list(text)
    assert [(e.origin, e.qpd, e.contact) for e in entries] == [
        ("a.example/log", 1440, "mailto:a@example.org"),
        ("b.example/other-origin", None, None),
    ]
    for bad in ("vkey x\n", "logs/v1\n", "logs/v0\norigin a\n", ""):
        with pytest.raises(FormatError):
            parse_log_list(bad)
    assert parse_log_list("logs/v0\n") == []


def test_tlog_log_entry(tmp_path: Path) -> None:
    d = str(tmp_path / "d")
    out = tlog_in_process("keygen", "--origin", "log.example/audit", "--data", d)
    assert out.returncode == 0, out.stderr
    vkey = next(w for w in out.stdout.split() if w.startswith("log.example/audit+"))
    made = tlog_in_process(
        "log-entry", "--data", d, "--contact", "https://log.example/contact",
        "--witness-interval", "10",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    entry = made.stdout
    assert entry == (
        f"vkey {vkey}\norigin log.example/audit\nqpd 17280\ncontact https://log.example/contact\n"
    )
    (e,) = parse_log_list("logs/v0\n" + entry)
    assert (e.vkey, e.origin, e.qpd) == (vkey, "log.example/audit", 17280)


class _ListHandler(BaseHTTPRequestHandler):
    body = b""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)


@pytest.fixture
def list_server() -> Iterator[tuple[str, type[_ListHandler]]]:
    handler = type("H", (_ListHandler,), {})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/logs.txt", handler
    finally:
        srv.shutdown()
        srv.server_close()


def test_pull_logs_adds_and_never_rekeys(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    list_server: tuple[str, type[_ListHandler]],
) -> None:
    configured = FakeLog(events(3))
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        f'name = "{NAME}"\nkey_file = "w.key"\nstate_db = "s.db"\nlisten = "127.0.0.1:0"\n'
        f'[[log]]\norigin = "{ORIGIN}"\nvkey = "{configured.signer.vkey()}"\n'
    )
    new = FakeLog(events(5), origin="new.example/log", seed=b"\5" * 32)
    impostor = FakeLog([], seed=b"\6" * 32)  # the configured origin, another key
    own = FakeLog([], origin="own.example/log", seed=b"\7" * 32)
    own_key = CosignatureSigner(NAME, b"\7" * 32)
    (tmp_path / "w.key").touch(0o600)
    (tmp_path / "w.key").write_text(own_key.skey() + "\n")  # witness key = "own" log's key
    listing = (
        "logs/v0\n"
        f"vkey {impostor.signer.vkey()}\n"
        f"vkey {new.signer.vkey()}\nqpd 86400\n"
        f"vkey {own.signer.vkey()}\n"
    )
    (tmp_path / "list.txt").write_text(listing)
    assert main(["pull-logs", "--config", str(cfg), "--source", str(tmp_path / "list.txt")]) == 1
    out = capsys.readouterr().out
    assert "added new.example/log" in out
    assert f"KEY CONFLICT: {ORIGIN}" in out
    assert "refused own.example/log" in out

    # The provisioned log is witnessed now; the configured key is unchanged.
    _, w = _load(argparse.Namespace(config=str(cfg)))  # the setup `serve` uses
    assert w.add_checkpoint(new.body(0, 5)).startswith("\u2014 " + NAME)
    assert w.checkpoint_by_hash(origin_hash("new.example/log")) is not None
    assert w.add_checkpoint(configured.body(0, 3))  # still the configured key
    assert main(["check", "--config", str(cfg)]) == 0
    capsys.readouterr()

    # The list changes the new log's key: reported, nothing changes. Over HTTP this time.
    other = FakeLog(events(5), origin="new.example/log", seed=b"\x08" * 32)
    list_server[
        1
    ].body = f"logs/v0\nvkey {other.signer.vkey()}\nvkey {configured.signer.vkey()}\n".encode()
    args = ["pull-logs", "--config", str(cfg), "--source", list_server[0], "--verbose"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "KEY CONFLICT: new.example/log" in out and f"known {ORIGIN}" in out
    listed = w.store.listed_log("new.example/log")
    assert listed is not None and listed.vkey == new.signer.vkey()


def test_serve_pulls_configured_lists(tmp_path: Path) -> None:
    log = FakeLog(events(2), origin="listed.example/log", seed=b"\x09" * 32)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "a.txt").write_text(f"logs/v0\nvkey {log.signer.vkey()}\n")
    (tmp_path / "w.key").touch(0o600)
    (tmp_path / "w.key").write_text(CosignatureSigner.generate(NAME).skey() + "\n")
    cfg = tmp_path / "w.toml"
    cfg.write_text(
        f'name = "{NAME}"\nkey_file = "w.key"\nstate_db = "s.db"\nlisten = "127.0.0.1:0"\n'
        'log_lists = ["lists/a.txt", "lists/missing.txt"]\nlog_list_interval = 60\n'
    )
    c, w = _load(argparse.Namespace(config=str(cfg)))
    assert c.log_lists == (str(tmp_path / "lists" / "a.txt"), str(tmp_path / "lists/missing.txt"))
    mon = Monitor(w, log_lists=c.log_lists, log_list_interval=c.log_list_interval)
    try:
        report = mon.pull_lists_once()  # the missing list is logged and skipped
    finally:
        mon.close()
    assert report.added == ["listed.example/log"]
    assert w.add_checkpoint(log.body(0, 2)).startswith("\u2014 " + NAME)
    bad = cfg.read_text().replace("log_list_interval = 60", "log_list_interval = 0")
    cfg.write_text(bad)
    with pytest.raises(ConfigError):
        WitnessConfig.load(cfg)
