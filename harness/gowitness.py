"""The Go witnesses as real processes on 127.0.0.1, configured like their READMEs say.

For the interoperability tests (``tests/interop``) and the witness benchmark
(``bench/witness.py``); what cannot run here raises :class:`harness.Unavailable`.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.formats.cosignature import (
    CosignatureSigner,
    CosignatureVerifier,
    MLDSACosignatureSigner,
    MLDSACosignatureVerifier,
)
from client.formats.merkle import EMPTY_ROOT
from harness import Unavailable
from harness.gobin import go_binary
from harness.net import free_port, stop_processes, wait_for, wait_http


class Proc:
    """A child process with its output in a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT, env=env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_processes([self.proc])
        self._out.close()


def wait_up(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """:func:`harness.net.wait_http` for a :class:`Proc` (its output in the error)."""
    wait_http(url, proc.proc, timeout, output=proc.output)


class GoWitness:
    name: str
    url: str
    verifier: CosignatureVerifier
    mldsa_verifier: MLDSACosignatureVerifier | None = None
    proc: Proc

    def stop(self) -> None:
        self.proc.stop()


class Omniwitness(GoWitness):
    """transparency-dev/witness cmd/omniwitness: note-format key file, logs added by YAML."""

    def __init__(self, d: Path, origin: str, log_vkey: str, *, mldsa: bool = True) -> None:
        exe = go_binary("omniwitness")
        self.name = "omniwitness.test/w1"
        signer = CosignatureSigner.generate(self.name)
        self.verifier = signer.verifier()
        key = d / "omni.key"
        key.touch(0o600)
        key.write_text(signer.skey())
        # A second, ML-DSA-44 key (README: --private_key_path may be repeated; the first
        # one authenticates its stored state): omniwitness answers with both lines.
        keys = [f"--private_key_path={key}"]
        if mldsa:
            pq = MLDSACosignatureSigner.generate(self.name)
            self.mldsa_verifier = pq.verifier()
            pq_key = d / "omni-mldsa.key"
            pq_key.touch(0o600)
            pq_key.write_text(pq.skey())
            keys.append(f"--private_key_path={pq_key}")
        logs = d / "logs.yaml"
        logs.write_text(f'Logs:\n  - Origin: "{origin}"\n    PublicKey: "{log_vkey}"\n')
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = Proc(
            [
                str(exe),
                f"--listen=127.0.0.1:{port}",
                "--metrics_listen=",
                f"--db_file={d / 'omni.db'}",
                *keys,
                f"--additional_logs={logs}",
                "--logtostderr",
            ],
            d / "omniwitness.log",
        )
        wait_up(self.url + "/", self.proc)


class Litewitness(GoWitness):
    """torchwood cmd/litewitness: Ed25519 key in a dedicated ssh-agent, logs in its SQLite
    database (the rows `witnessctl add-log` / `add-key` write)."""

    def __init__(self, d: Path, origin: str, log_vkey: str) -> None:
        exe = go_binary("litewitness")
        agent_bin, add_bin = shutil.which("ssh-agent"), shutil.which("ssh-add")
        if agent_bin is None or add_bin is None:
            raise Unavailable("litewitness needs ssh-agent and ssh-add (openssh-client)")
        self.name = "litewitness.test/w2"
        sk = Ed25519PrivateKey.generate()
        pem = sk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        key = d / "lite.pem"
        key.touch(0o600)
        key.write_bytes(pem)
        pub = sk.public_key()
        self.verifier = CosignatureVerifier(self.name, pub.public_bytes_raw())
        blob = base64.b64decode(
            pub.public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            ).split()[1]
        )
        fingerprint = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip(
            "="
        )
        # Unix socket paths are short (108 bytes): not under a test's tmp_path.
        self._sockdir = Path(tempfile.mkdtemp(prefix="lw", dir="/tmp"))
        sock = self._sockdir / "s"
        self.agent = Proc([agent_bin, "-D", "-a", str(sock)], d / "ssh-agent.log")
        # the socket's file exists from its bind(), before the agent listens: an ssh-add
        # then was refused (exit 2, a CI run under load), so wait until it takes a connection
        wait_for(lambda: _accepts(sock), 10, lambda: f"ssh-agent's socket: {self.agent.output()}")
        subprocess.run(
            [add_bin, str(key)],
            env={"SSH_AUTH_SOCK": str(sock), "PATH": "/usr/bin:/bin"},
            check=True,
            capture_output=True,
            timeout=30,
        )
        db = d / "lite.db"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = Proc(
            [
                str(exe),
                f"-db={db}",
                f"-name={self.name}",
                f"-key={fingerprint}",
                f"-ssh-agent={sock}",
                f"-listen=127.0.0.1:{port}",
            ],
            d / "litewitness.log",
        )
        wait_up(self.url + "/", self.proc)
        with sqlite3.connect(db) as conn:  # what `witnessctl add-log` + `add-key` do
            conn.execute(
                "INSERT INTO log (origin, tree_size, tree_hash) VALUES (?, 0, ?)",
                (origin, base64.b64encode(EMPTY_ROOT).decode()),
            )
            conn.execute("INSERT INTO key (origin, key) VALUES (?, ?)", (origin, log_vkey))
        conn.close()

    def stop(self) -> None:
        super().stop()
        self.agent.stop()
        shutil.rmtree(self._sockdir, ignore_errors=True)


def _accepts(sock: Path) -> bool:
    """Whether the Unix socket at ``sock`` takes a connection now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(sock))
        except OSError:
            return False
    return True
