"""``tlog-witness`` CLI: keygen, config validation, check, and `serve` as a real process."""

from __future__ import annotations

import re
import signal
import sqlite3
import stat
from pathlib import Path

import pytest

from client.formats.cosignature import CosignatureSigner, CosignatureVerifier
from client.net.witness_client import WitnessClient
from client.witness.cli import main
from client.witness.config import ConfigError, WitnessConfig
from client.witness.core import Witness
from client.witness.store import WitnessStore
from tests.witness.helpers import ORIGIN, FakeLog, events, serve_process, served_url

LOG = FakeLog(events(50))


def keygen(d: Path, name: str = "witness.example.com/w9") -> None:
    assert main(["keygen", "--name", name, "--key", str(d / "witness.key")]) == 0


def write_config(d: Path, name: str = "witness.example.com/w9", extra: str = "") -> Path:
    cfg = d / "witness.toml"
    cfg.write_text(
        f'name = "{name}"\n'
        'key_file = "witness.key"\n'
        'state_db = "state.db"\n'
        'listen = "127.0.0.1:0"\n'
        f"{extra}\n"
        "[[log]]\n"
        f'origin = "{ORIGIN}"\n'
        f'vkey = "{LOG.signer.vkey()}"\n'
    )
    return cfg


def test_keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "witness.key"
    assert main(["keygen", "--name", "witness.example.com/w9", "--key", str(key)]) == 0
    vkey = capsys.readouterr().out.strip()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    skey = key.read_text()
    assert skey.startswith("PRIVATE+KEY+witness.example.com/w9+")
    signer = CosignatureSigner.from_skey(skey)
    assert signer.vkey() == vkey
    assert CosignatureVerifier.from_vkey(vkey).name == "witness.example.com/w9"
    # Never overwrite.
    assert main(["keygen", "--name", "witness.example.com/w9", "--key", str(key)]) == 1
    assert key.read_text() == skey
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["keygen", "--name", "bad name", "--key", str(tmp_path / "k2")]) == 2
    assert not (tmp_path / "k2").exists()


def test_config_validation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keygen(tmp_path)
    cfg = write_config(tmp_path)
    good = cfg.read_text()
    assert main(["check", "--config", str(cfg)]) == 0
    assert "ok: no split-view evidence" in capsys.readouterr().out
    WitnessConfig.load(cfg).signer()

    peer = '\n[[peer]]\nname = "p"\nvkey = "{vkey}"\nurl = "{url}"\n'
    own_vkey = CosignatureSigner.from_skey((tmp_path / "witness.key").read_text()).vkey()
    bad = {
        "unknown key": good.replace("listen", "colour = 1\nlisten"),
        "wrong type": good.replace("listen", 'gossip_interval = "often"\nlisten'),
        "bad listen": good.replace("127.0.0.1:0", "localhost"),
        "not TOML": good + "[[[",
        "bad log vkey": good + '\n[[log]]\norigin = "x"\nvkey = "nope"\n',
        "duplicate origin": good
        + f'\n[[log]]\norigin = "{ORIGIN}"\nvkey = "{LOG.signer.vkey()}"\n',
        "log url scheme": good + 'url = "ftp://log"\n',
        "peer with a 0x01 key": good + peer.format(vkey=LOG.signer.vkey(), url="http://p"),
        "peer without url": good + f'\n[[peer]]\nname = "p"\nvkey = "{own_vkey}"\n',
        "peer is ourselves": good + peer.format(vkey=own_vkey, url="http://p"),
    }
    for name, text in bad.items():
        cfg.write_text(text)
        assert main(["check", "--config", str(cfg)]) == 2, name

    write_config(tmp_path, name="someone.else/w")  # key file is for another name
    with pytest.raises(ConfigError):
        WitnessConfig.load(cfg).signer()
    assert main(["gossip", "--config", str(cfg), "--once"]) == 2
    assert main(["check", "--config", str(tmp_path / "missing.toml")]) == 2


def test_a_misspelt_key_is_named_with_its_likely_spelling(tmp_path: Path) -> None:
    keygen(tmp_path)
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("listen", "gosip_interval = 5\ncolour = 1\nlisten"))
    with pytest.raises(
        ConfigError,
        match=r"unknown key\(s\) colour, gosip_interval \(did you mean gossip_interval\?\)",
    ):
        WitnessConfig.load(cfg)


def test_check_reports_tampered_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keygen(tmp_path)
    cfg = write_config(tmp_path)
    config = WitnessConfig.load(cfg)
    w = Witness(config.signer(), config.logs, WitnessStore(config.state_db))
    w.add_checkpoint(LOG.body(0, 50))
    assert main(["check", "--config", str(cfg)]) == 0
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("UPDATE checkpoints SET note = ?", (LOG.checkpoint(50),))  # no cosig
    assert main(["check", "--config", str(cfg)]) == 3
    assert "lacks our cosignature" in capsys.readouterr().out


def test_serve_as_a_process(tmp_path: Path) -> None:
    keygen(tmp_path)
    cfg = write_config(tmp_path)
    proc = serve_process(cfg)
    try:
        url, line = served_url(proc)
        # tlog serve's line format (client.runtime.logs), not logging's default
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING client\.witness: ", line)
        signer = CosignatureSigner.from_skey((tmp_path / "witness.key").read_text())
        with WitnessClient(url, signer.vkey()) as client:
            client.submit(LOG.checkpoint(20), LOG.consistency_proof)
            client.submit(LOG.checkpoint(50), LOG.consistency_proof)
            assert client.latest_checkpoint(ORIGIN) is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=15)
    assert rc == 0
    # The state outlives the process.
    assert main(["check", "--config", str(cfg)]) == 0


def test_serve_logs_json_lines(tmp_path: Path) -> None:
    """``--log-format json``: one object a line (ts, level, logger, msg), for log shippers."""
    import json

    keygen(tmp_path)
    cfg = write_config(tmp_path)
    proc = serve_process(cfg, "--log-format", "json")
    try:
        assert proc.stderr is not None
        doc = json.loads(proc.stderr.readline())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert doc["level"] == "WARNING" and doc["logger"] == "client.witness"
    assert doc["msg"].startswith("witness witness.example.com/w9 serving 1 log(s) at http://")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["ts"])
