"""One log, three witnesses, a 2-of-3 policy, all real processes on 127.0.0.1.

Entries flow while the log pushes checkpoints to the witnesses; the log serves the newest
checkpoint cosigned by a quorum; a witness is SIGKILLed and restarted mid-run, loses nothing
and never rolls back.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import verify_consistency
from client.formats.note import b64decode_strict, parse_note
from client.formats.policy import Policy
from client.formats.proof_bundle import TlogProof
from tests.support import (
    ServerProcess,
    free_port,
    http_get,
    run_module,
    start_witness_serve,
    start_witnessed_server,
    wait_for,
    wait_http,
)

from .conftest import ORIGIN

pytestmark = pytest.mark.slow


class Witness:
    def __init__(self, base: Path, name: str, log_vkey: str) -> None:
        self.dir = base / name
        self.dir.mkdir()
        self.name = f"witness.test/{name}"
        out = run_module(
            "client.witness.cli", "keygen", "--name", self.name, "--key", str(self.dir / "w.key")
        )
        self.vkey = next(w for w in out.split() if w.startswith(self.name + "+"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (self.dir / "w.toml").write_text(
            f'name = "{self.name}"\nkey_file = "w.key"\nstate_db = "w.db"\n'
            f'listen = "127.0.0.1:{self.port}"\n\n'
            f'[[log]]\norigin = "{ORIGIN}"\nvkey = "{log_vkey}"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_witness_serve(self.dir / "w.toml")
        wait_http(self.url + "/evidence", self.proc, output=(self.dir / "out.log").read_text)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def latest_size(self) -> int:
        h = hashlib.sha256(ORIGIN.encode()).hexdigest()
        r = httpx.get(f"{self.url}/{h}/checkpoint", timeout=5)
        if r.status_code == 404:
            return 0
        return Checkpoint.parse(parse_note(r.text).text).size


def test_three_witnesses_two_of_three(tmp_path: Path, database: str | None) -> None:
    data = tmp_path / "log"
    out = run_module("tlog.cli", "keygen", "--origin", ORIGIN, "--data", str(data))
    log_vkey = next(w for w in out.split() if w.startswith(ORIGIN + "+"))
    witnesses = [Witness(tmp_path, f"w{i}", log_vkey) for i in (1, 2, 3)]
    srv = None
    try:
        for w in witnesses:
            w.start()
        srv = run_scenario(tmp_path, data, log_vkey, witnesses, database)
    finally:
        if srv is not None:
            srv.stop()
        for w in witnesses:
            w.stop()


def run_scenario(
    tmp_path: Path, data: Path, log_vkey: str, witnesses: list[Witness], database: str | None
) -> ServerProcess:
    policy_text = (
        f"log {log_vkey}\n"
        + "".join(f"witness {w.dir.name} {w.vkey} {w.url}\n" for w in witnesses)
        + "group any2 2 w1 w2 w3\nquorum any2\n"
    )
    srv, policy = start_witnessed_server(
        tmp_path, data, policy_text, "0.1", "--witness-max-backoff", "2", database=database
    )
    try:
        check_scenario(srv, data, policy, witnesses)
    except BaseException:
        srv.stop()
        raise
    return srv


def check_scenario(
    srv: ServerProcess, data: Path, policy: Policy, witnesses: list[Witness]
) -> None:
    token = (data / "demo-submitter.token").read_text().strip()
    stop = threading.Event()
    acked: list[tuple[int, bytes]] = []

    def submit() -> None:
        n = 0
        with httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as c:
            while not stop.is_set():
                e = b"witnessed-%d" % n
                n += 1
                r = c.post("/v1/entries", content=e)
                if r.status_code == 200:
                    acked.append((r.json()["index"], e))
                time.sleep(0.005)

    seen: dict[int, Checkpoint] = {}

    def watch_cosigned(until: float, min_size: int = 1) -> Checkpoint:
        """Poll /checkpoint until a quorum-cosigned checkpoint of at least min_size shows."""
        while True:
            text = http_get(srv.url + "/checkpoint", timeout=5).text
            try:
                cp, _ = policy.verify_checkpoint(text, ORIGIN)
            except Exception:
                cp = None
            if cp is not None:
                if cp.size in seen:
                    assert seen[cp.size].root_hash == cp.root_hash
                seen[cp.size] = cp
                if cp.size >= min_size:
                    return cp
            if time.monotonic() > until:
                status = httpx.get(srv.url + "/v1/witnesses", timeout=5).text
                raise AssertionError(f"no cosigned checkpoint >= {min_size}: {text} {status}")
            time.sleep(0.05)

    t = threading.Thread(target=submit)
    t.start()
    try:
        first = watch_cosigned(time.monotonic() + 30, 5)
        # Kill one witness mid-run: 2 of 3 remain, cosigning goes on.
        w2 = witnesses[1]
        before = w2.latest_size()
        assert before > 0
        w2.kill()
        second = watch_cosigned(time.monotonic() + 30, first.size + 20)
        # The log reports the dead witness, and nothing else, as failing.
        st = httpx.get(srv.url + "/v1/witnesses").json()
        assert st["quorum"] == "any2"
        errors = {w["name"]: w["last_error"] for w in st["witnesses"]}
        assert errors["w1"] is None or errors["w3"] is None
        # Restart it: its state survived the SIGKILL and it never goes back.
        w2.start()
        assert w2.latest_size() >= before
        wait_for(
            lambda: w2.latest_size() > second.size, 30, "restarted witness catching up", step=0.1
        )
        third = watch_cosigned(time.monotonic() + 30, second.size + 1)
    finally:
        stop.set()
        t.join()
    # Every cosigned checkpoint seen is consistent with the last one.
    with httpx.Client(base_url=srv.url) as c:
        for size, cp in seen.items():
            d = c.get(
                "/v1/proof/consistency", params={"old_size": size, "tree_size": third.size}
            ).json()
            verify_consistency(
                size,
                third.size,
                cp.root_hash,
                third.root_hash,
                [b64decode_strict(h) for h in d["consistency_proof"]],
            )
        # A receipt fetched again now carries the witnesses' cosignatures.
        index, entry = acked[0]
        bundle = TlogProof.parse(c.get(f"/v1/bundle/{index}").text)
        cp, note = bundle.verify(policy.log_verifiers(ORIGIN)[0], entry=entry)
        policy.check(note)
    assert len(acked) > 20
