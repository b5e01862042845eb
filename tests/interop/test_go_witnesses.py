"""Interop with the deployed witness network's Go software (issue 14 part 1).

* ``tlog serve`` pushes ``add-checkpoint`` to omniwitness and litewitness and reaches a
  2-of-2 quorum that our policy code verifies;
* Tessera's ``fsck`` (a Go tlog-tiles client) accepts our log's checkpoint and tiles;
* Tessera's ``posix-oneshot`` log pushes to our ``tlog-witness`` and publishes only once our
  cosignature verifies on the Go side.

The Go binaries are built on demand (``tests/interop/gobin.py``); without Go these skip.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import CosignatureSigner, MLDSACosignatureSigner
from client.formats.merkle import leaf_hash, root_of_range
from client.formats.note import Ed25519Signer, Note, Signature, open_note, parse_note, sign_note
from client.formats.policy import Policy
from client.net.witness_client import AddCheckpointRequest, WitnessClient, append_signatures
from tests.interop.gobin import go_binary
from tests.interop.peers import GoWitness, Litewitness, Omniwitness, Proc, wait_up
from tests.server.conftest import ORIGIN
from tests.support import (
    ServerProcess,
    free_port,
    http_get,
    start_server,
    start_witnessed_server,
    tlog_in_process,
)

pytestmark = pytest.mark.slow


def new_log(d: Path) -> tuple[Path, str]:
    data = d / "log"
    made = tlog_in_process("keygen", "--origin", ORIGIN, "--data", str(data))
    assert made.returncode == 0, made.stderr
    out = made.stdout
    return data, next(w for w in out.split() if w.startswith(ORIGIN + "+"))


def submit(srv: ServerProcess, n: int, prefix: str) -> None:
    token = (srv.data / "demo-submitter.token").read_text().strip()
    with httpx.Client(
        base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as c:
        for i in range(n):
            r = c.post("/v1/entries", content=f"{prefix}-{i}".encode())
            assert r.status_code == 200, r.text


def wait_cosigned(srv: ServerProcess, policy: Policy, size: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = http_get(srv.url + "/checkpoint", timeout=5).text
        try:
            cp, _ = policy.verify_checkpoint(text, ORIGIN)
            if cp.size >= size:
                return text
        except Exception:
            pass
        if time.monotonic() > deadline:
            status = httpx.get(srv.url + "/v1/witnesses", timeout=5).text
            raise AssertionError(f"no 2-of-2 cosigned checkpoint >= {size}: {text}\n{status}")
        time.sleep(0.1)


@pytest.fixture
def go_witnesses(tmp_path: Path) -> Iterator[tuple[Path, str, list[GoWitness]]]:
    data, vkey = new_log(tmp_path)
    started: list[GoWitness] = []
    try:
        started.append(Omniwitness(tmp_path, ORIGIN, vkey))
        started.append(Litewitness(tmp_path, ORIGIN, vkey))
        yield data, vkey, started
    finally:
        for w in started:
            w.stop()


def test_tlog_serve_reaches_quorum_with_omniwitness_and_litewitness(
    tmp_path: Path, go_witnesses: tuple[Path, str, list[GoWitness]], database: str | None
) -> None:
    data, vkey, (omni, lite) = go_witnesses
    assert omni.mldsa_verifier is not None
    # omniwitness is known to the log by its ML-DSA-44 key only: the log verifies that line
    # and ignores the Ed25519 one it also returns.
    policy_text = (
        f"log {vkey}\n"
        f"witness omni {omni.mldsa_verifier.vkey()} {omni.url}\n"
        f"witness lite {lite.verifier.vkey()} {lite.url}\n"
        "group both all omni lite\nquorum both\n"
    )
    srv, policy = start_witnessed_server(tmp_path, data, policy_text, "0.2", database=database)
    try:
        submit(srv, 5, "first")
        first = wait_cosigned(srv, policy, 5)
        assert policy.cosigned_by(first) == {"omni", "lite"}
        # A second round needs consistency proofs the Go witnesses check.
        submit(srv, 20, "second")
        second = wait_cosigned(srv, policy, 25)
        assert Checkpoint.parse(parse_note(second).text).size >= 25
        omni_sigs = [s for s in parse_note(second).signatures if s.name == omni.name]
        assert [s.key_id for s in omni_sigs] == [omni.mldsa_verifier.key_id]
        assert "\u2014 litewitness.test/w2 " in second
        status = httpx.get(srv.url + "/v1/witnesses", timeout=5).json()
        assert all(not w["alarms"] for w in status["witnesses"]), status
    finally:
        srv.stop()


def test_tessera_fsck_accepts_our_tiles(tmp_path: Path, database: str | None) -> None:
    fsck = go_binary("fsck")
    data, vkey = new_log(tmp_path)
    (tmp_path / "log.pub").write_text(vkey)
    srv = start_server(data, database=database)
    try:
        submit(srv, 300, "fsck")  # one full tile of 256 and a partial one
        good = run_fsck(fsck, srv.url, tmp_path / "log.pub")
        assert good.returncode == 0 and "fsck failed" not in good.stderr, good.stderr
        # The same check fails against a key the log did not sign with: fsck really checks.
        other = Ed25519Signer.generate(ORIGIN).vkey()
        (tmp_path / "other.pub").write_text(other)
        bad = run_fsck(fsck, srv.url, tmp_path / "other.pub")
        assert "fsck failed" in bad.stderr or bad.returncode != 0, bad.stderr
    finally:
        srv.stop()


def run_fsck(fsck: Path, url: str, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(fsck), f"--storage_url={url}/", f"--public_key={pub}", "--ui=false", "--N=2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_tessera_log_pushes_to_tlog_witness(tmp_path: Path) -> None:
    oneshot = go_binary("posix-oneshot")
    origin = "example.com/tessera-interop"
    log = Ed25519Signer.generate(origin)
    name = "witness.test/py"
    (tmp_path / "w.key").touch(0o600)
    (tmp_path / "w.key").write_text(CosignatureSigner.generate(name).skey() + "\n")
    wkey = CosignatureSigner.from_skey((tmp_path / "w.key").read_text())
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (tmp_path / "w.toml").write_text(
        f'name = "{name}"\nkey_file = "w.key"\nstate_db = "w.db"\n'
        f'listen = "127.0.0.1:{port}"\n[[log]]\norigin = "{origin}"\n'
        f'vkey = "{log.vkey()}"\n'
    )
    wit = Proc(
        [sys.executable, "-m", "client.witness.cli", "serve", "--config", str(tmp_path / "w.toml")],
        tmp_path / "witness.log",
    )
    try:
        wait_up(url + "/evidence", wit)
        policy = f"witness py {wkey.vkey()} {url}\nquorum py\n"
        (tmp_path / "policy").write_text(policy)
        storage = tmp_path / "tessera"
        for round_ in (1, 2):
            entries = tmp_path / f"entries{round_}"
            entries.mkdir()
            for i in range(3 * round_):
                (entries / f"e{i}").write_text(f"round {round_} entry {i}\n")
            out = subprocess.run(
                [
                    str(oneshot),
                    f"--storage_dir={storage}",
                    f"--entries={entries}/*",
                    f"--witness_policy_file={tmp_path / 'policy'}",
                    "--witness_timeout=20s",
                ],
                env={"LOG_PRIVATE_KEY": log.skey(), "PATH": "/usr/bin:/bin"},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert out.returncode == 0, out.stderr
            # Tessera (fail-closed) publishes the checkpoint only with a quorum of valid
            # cosignatures: ours, verified by the Go side.
            published = (storage / "checkpoint").read_text()
            ours = Policy.parse(f"log {log.vkey()}\n{policy}")
            cp, _ = ours.verify_checkpoint(published, origin)
            assert cp.size == 3 if round_ == 1 else cp.size == 9
        assert wit.proc.poll() is None
    finally:
        wit.stop()


def test_litewitness_verifies_our_ml_dsa_signature(tmp_path: Path) -> None:
    """Our ML-DSA-44 ``subtree/v1`` signature, as a log key (type 0x06, timestamp 0), is
    accepted by litewitness, whose cosignature our code then verifies."""
    origin = "example.com/tlog-mldsa"
    log = MLDSACosignatureSigner.generate(origin)
    lite = Litewitness(tmp_path, origin, log.vkey())
    try:
        tree = [leaf_hash(b"pq-%d" % i) for i in range(6)]
        cp = Checkpoint(origin, 6, root_of_range(tree))
        note = sign_note(cp.text(), [log])
        with WitnessClient(lite.url, lite.verifier) as client:
            sigs = client.submit(note, lambda old, new: [])
        cosigned = append_signatures(note, sigs)
        open_note(cosigned, [log.verifier(), lite.verifier])
        # A flipped bit in our signature: litewitness refuses it (403).
        parsed = parse_note(note)
        (sig,) = parsed.signatures
        flipped = Signature(
            sig.name, sig.key_id, sig.raw[:50] + bytes([sig.raw[50] ^ 1]) + sig.raw[51:]
        )
        bad = Note(parsed.text, (flipped,)).format()
        r = httpx.post(
            lite.url + "/add-checkpoint",
            content=AddCheckpointRequest(6, (), bad).format(),
            timeout=10,
        )
        assert r.status_code == 403, r.text
    finally:
        lite.stop()
