"""A restored witness notices it by itself: real ``tlog serve``, real ``tlog-witness serve``.

Witness A and its gossip peer B cosign a real log (2-of-2 policy, so the log's
``GET /checkpoint`` carries both cosignatures). A's state directory is copied (the files)
at size 5; A cosigns up to size 9; A is stopped, the copy put back, A started again. Before
it takes its first push A asks the log (and B): it finds its own cosignature on size 9,
adopts it (CRITICAL line, metric) and refuses a fork signed with the log's key that is
consistent only with size 5. Restored once more while the log is down, it adopts size 9 from
B's checkpoint, on which B kept A's cosignature. A log and a peer that never answer do not
block the start.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import consistency_ranges, leaf_hash, proof_from_ranges, root_of_range
from client.formats.note import parse_note, sign_note
from client.net.witness_client import AddCheckpointRequest
from tests.support import ORIGIN as LOG_ORIGIN
from tests.support import (
    free_port,
    run_module,
    start_witness_serve,
    start_witnessed_server,
    wait_for,
    wait_http,
)
from tests.witness.helpers import ORIGIN, FakeLog, events
from tlog.signer import load_key_file

pytestmark = pytest.mark.slow


class WitnessProcess:
    """A ``tlog-witness serve`` process on a fixed port, its output in ``out.log``."""

    def __init__(self, base: Path, name: str) -> None:
        self.dir = base / name
        self.dir.mkdir()
        self.name = f"witness.test/{name}"
        self.signer = CosignatureSigner.generate(self.name)
        (self.dir / "w.key").write_text(self.signer.skey() + "\n")
        (self.dir / "w.key").chmod(0o600)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def configure(self, log_vkey: str, origin: str, log_url: str | None, peers: str) -> None:
        (self.dir / "w.toml").write_text(
            f'name = "{self.name}"\nkey_file = "w.key"\nstate_db = "w.db"\n'
            f'listen = "127.0.0.1:{self.port}"\ngossip_interval = 1\nhttp_timeout = 1\n\n'
            f'[[log]]\norigin = "{origin}"\nvkey = "{log_vkey}"\npoll_interval = 1\n'
            + (f'url = "{log_url}"\n' if log_url else "")
            + peers
        )

    def peer_entry(self) -> str:
        return f'\n[[peer]]\nname = "{self.dir.name}"\nvkey = "{self.signer.vkey()}"\n' + (
            f'url = "{self.url}"\n'
        )

    def start(self) -> None:
        self.proc = start_witness_serve(self.dir / "w.toml")
        wait_http(self.url + "/healthz", self.proc, output=self.output)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None

    def output(self) -> str:
        return (self.dir / "out.log").read_text(errors="replace")

    def served(self, origin: str) -> str | None:
        h = hashlib.sha256(origin.encode()).hexdigest()
        r = httpx.get(f"{self.url}/{h}/checkpoint", timeout=5)
        return r.text if r.status_code == 200 else None

    def size(self, origin: str) -> int:
        text = self.served(origin)
        return 0 if text is None else Checkpoint.parse(parse_note(text).text).size

    def copy_state(self, to: Path) -> None:
        to.mkdir()
        for f in self.dir.glob("w.db*"):
            shutil.copy2(f, to / f.name)

    def restore_state(self, backup: Path) -> None:
        for f in self.dir.glob("w.db*"):
            f.unlink()
        for f in backup.iterdir():
            shutil.copy2(f, self.dir / f.name)


def fork_body(log_url: str, key: Path, old: int, size: int) -> bytes:
    """A checkpoint of ``size`` signed with the log's own key, whose tree is the log's first
    ``old`` leaves and then other ones, with its (valid) proof from ``old``."""
    tile = httpx.get(f"{log_url}/tile/0/000.p/{old}", timeout=5)
    assert tile.status_code == 200, tile.text
    leaves = [tile.content[i : i + 32] for i in range(0, 32 * old, 32)]
    leaves += [leaf_hash(b"forked-%d" % i) for i in range(size - old)]

    def node(level: int, index: int) -> bytes:
        return root_of_range(leaves[index << level : (index + 1) << level])

    text = Checkpoint(LOG_ORIGIN, size, root_of_range(leaves)).text()
    note = sign_note(text, [load_key_file(key)])
    proof = proof_from_ranges(consistency_ranges(old, size), node)
    return AddCheckpointRequest(old, tuple(proof), note).format()


def rollback_line(origin: str, held: int, size: int) -> str:
    return (
        f"WITNESS STATE ROLLED BACK: log {origin}: the state held tree size {held} but this "
        f"witness had cosigned tree size {size}; adopted that checkpoint"
    )


def test_restored_witness_adopts_from_the_log_and_a_peer_and_refuses_the_fork(
    tmp_path: Path,
) -> None:
    data = tmp_path / "log"
    out = run_module("tlog.cli", "keygen", "--origin", LOG_ORIGIN, "--data", str(data))
    log_vkey = next(w for w in out.split() if w.startswith(LOG_ORIGIN + "+"))
    key = Path(next(ln.split()[1] for ln in out.splitlines() if ln.startswith("key:")))
    a, b = WitnessProcess(tmp_path, "a"), WitnessProcess(tmp_path, "b")
    policy_text = (
        f"log {log_vkey}\nwitness a {a.signer.vkey()} {a.url}\n"
        f"witness b {b.signer.vkey()} {b.url}\ngroup both 2 a b\nquorum both\n"
    )
    with ExitStack() as stack:
        stack.callback(a.stop)
        stack.callback(b.stop)
        srv, policy = start_witnessed_server(
            tmp_path, data, policy_text, "0.1", "--witness-max-backoff", "1"
        )
        stack.callback(srv.stop)
        a.configure(log_vkey, LOG_ORIGIN, srv.url, b.peer_entry())
        b.configure(log_vkey, LOG_ORIGIN, srv.url, a.peer_entry())
        a.start()
        b.start()
        token = (data / "demo-submitter.token").read_text().strip()
        with httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as c:

            def append(n: int, prefix: str) -> None:
                for i in range(n):
                    assert c.post("/v1/entries", content=b"%s-%d" % (prefix.encode(), i)).is_success

            def cosigned_at(size: int) -> bool:
                try:
                    cp, _ = policy.verify_checkpoint(c.get("/checkpoint").text, LOG_ORIGIN)
                except Exception:
                    return False
                return cp.size == size

            append(5, "first")
            wait_for(lambda: cosigned_at(5), 60, "a 2-of-2 cosigned checkpoint of size 5")
            a.stop()
            a.copy_state(tmp_path / "backup")  # the operator's backup, at size 5
            a.start()
            append(4, "second")
            wait_for(lambda: cosigned_at(9), 60, "a 2-of-2 cosigned checkpoint of size 9")

            wait_for(b_holds_a_cosignature_at(b, a, 9), 60, "B's 9 with A's cosignature")

            # A is put back to its copy and started again: it asks the log before serving.
            a.stop()
            a.restore_state(tmp_path / "backup")
            a.start()
            assert a.size(LOG_ORIGIN) == 9, a.output()
            assert a.output().count("WITNESS STATE ROLLED BACK") == 1
            assert rollback_line(LOG_ORIGIN, 5, 9) in a.output()
            metrics = httpx.get(a.url + "/metrics", timeout=5).text
            assert f'tlog_witness_state_rolled_back_total{{origin="{LOG_ORIGIN}"}} 1.0' in metrics
            # (b) a fork consistent only with size 5, signed with the log's own key.
            fork = fork_body(srv.url, key, 5, 7)
            r = httpx.post(a.url + "/add-checkpoint", content=fork)
            assert (r.status_code, r.text) == (409, "9\n")
            assert httpx.get(a.url + "/evidence", timeout=5).json() == {"evidence": []}
            # The log's own history goes on through A.
            append(1, "third")
            wait_for(lambda: cosigned_at(10), 60, "a 2-of-2 cosigned checkpoint of size 10")

            # Again, with the log down: A finds its cosignature on B's checkpoint.
            wait_for(b_holds_a_cosignature_at(b, a, 10), 60, "B's 10 with A's cosignature")
            srv.stop()
            a.stop()
            a.restore_state(tmp_path / "backup")
            (a.dir / "out.log").write_bytes(b"")
            a.start()
            assert a.size(LOG_ORIGIN) == 10, a.output()
            assert rollback_line(LOG_ORIGIN, 5, 10) in a.output()
            assert "WARNING" in a.output() and "poll " + LOG_ORIGIN in a.output()
            r = httpx.post(a.url + "/add-checkpoint", content=fork)
            assert r.status_code == 409 and r.text == "10\n"


def b_holds_a_cosignature_at(b: WitnessProcess, a: WitnessProcess, size: int) -> Callable[[], bool]:
    """B serves its checkpoint of ``size`` with A's cosignature kept beside its own."""

    def cond() -> bool:
        text = b.served(LOG_ORIGIN)
        return text is not None and f"\n{size}\n" in text and f"— {a.name} " in text

    return cond


# --- (c) a log and a peer that never answer do not block the start ---------------------------


@contextmanager
def silent_listener() -> Iterator[str]:
    """A URL whose TCP connections are accepted by the kernel and never answered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_an_unreachable_log_and_peer_do_not_block_the_start(tmp_path: Path) -> None:
    log = FakeLog(events(10))
    w = WitnessProcess(tmp_path, "w")
    other = CosignatureSigner.generate("witness.test/silent")
    with silent_listener() as log_url, silent_listener() as peer_url:
        peer = f'\n[[peer]]\nname = "silent"\nvkey = "{other.vkey()}"\nurl = "{peer_url}"\n'
        w.configure(log.signer.vkey(), ORIGIN, log_url, peer)
        try:
            w.start()
            r = httpx.post(w.url + "/add-checkpoint", content=log.body(0, 10), timeout=30)
            assert r.status_code == 200, r.text
            wait_for(lambda: "gossip silent" in w.output(), 60, "the peer's warning")
        finally:
            w.stop()
    lines = w.output().splitlines()
    serving = next(i for i, ln in enumerate(lines) if " serving 1 log(s) at " in ln)
    # Asked before it served (the start-up check), each a WARNING, and served anyway.
    assert any(f"WARNING client.witness: poll {ORIGIN}: " in ln for ln in lines[:serving])
    assert any("WARNING client.witness: gossip silent: " in ln for ln in lines[:serving])
    assert not any("WITNESS STATE ROLLED BACK" in ln for ln in lines)
