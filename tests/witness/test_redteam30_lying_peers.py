"""Red team 30, attack 2: a lying gossip peer against a real ``tlog-witness serve``.

The peer (an HTTP server of the test's, configured as a ``[[peer]]`` with its own key)
answers the witness's gossip with, in turn: garbage, an enormous body, a checkpoint of
another log (its own key, validly signed), a "fork" of the witnessed log signed with a key
that is not the log's, a fork claim with no log signature at all, the log's honest
checkpoint carrying a forged cosignature of the peer, and the honest checkpoint answered
far past the witness's HTTP deadline. Each of them, each cosigned by the peer's real key
where a cosignature is expected, must leave no evidence, and the witness must go on
cosigning the log's pushes. Then the peer shows a real fork (the same size, another root,
signed with the log's own key): that must be recorded as evidence with both notes, and the
log's next push refused (422)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner
from client.formats.note import Ed25519Signer, sign_note
from tests.support import free_port, start_witness_serve, wait_for, wait_http
from tests.witness.helpers import ORIGIN, FakeLog, events

pytestmark = pytest.mark.slow

LIAR = CosignatureSigner("liar.example/w9", b"\x09" * 32)


class Liar:
    """The peer: answers ``GET /<hash(ORIGIN)>/checkpoint`` with ``body`` (after ``delay``
    seconds), counting the requests."""

    def __init__(self) -> None:
        self.body = b""
        self.delay = 0.0
        self.asked = 0
        self.lock = threading.Lock()


@contextmanager
def liar_serving(liar: Liar) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with liar.lock:
                liar.asked += 1
                body, delay = liar.body, liar.delay
            if delay:
                time.sleep(delay)
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the witness gave up (its deadline): fine

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        t.join(5)


def cosigned(note: str, text: str) -> bytes:
    """``note`` with the liar's real cosignature on ``text`` added."""
    return (note + LIAR.cosign(text, int(time.time())).line()).encode()


def test_lying_peers_leave_no_evidence_and_a_real_fork_does(tmp_path: Path) -> None:
    log = FakeLog(events(20))
    fork = FakeLog([*events(10), *events(10, "evil-")])  # the log's own key, another tree
    other = FakeLog(events(20), origin="other.example/log", seed=b"\x07" * 32)
    impostor = Ed25519Signer(ORIGIN, b"\x08" * 32)  # the log's name, not its key
    honest = log.checkpoint(20)
    forked_text = fork.checkpoint_text(20)
    lies: dict[str, tuple[bytes, float]] = {
        "garbage": (b"\x00garbage\n\n\xff", 0.0),
        "enormous": (b"x" * (4 << 20), 0.0),
        "another log": (cosigned(other.checkpoint(20), other.checkpoint_text(20)), 0.0),
        "forged log signature": (
            cosigned(sign_note(forked_text, [impostor]), forked_text),
            0.0,
        ),
        "unsigned fork": (
            (forked_text + "\n" + LIAR.cosign(forked_text, int(time.time())).line()).encode(),
            0.0,
        ),
        "forged cosignature": (
            (honest + "— liar.example/w9 " + "A" * 100 + "\n").encode(),
            0.0,
        ),
        "slow": (cosigned(fork.checkpoint(20), forked_text), 4.0),  # past http_timeout
    }
    liar = Liar()
    d = tmp_path / "w"
    d.mkdir()
    me = CosignatureSigner.generate("witness.test/w")
    (d / "w.key").write_text(me.skey() + "\n")
    (d / "w.key").chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with liar_serving(liar) as liar_url:
        (d / "w.toml").write_text(
            f'name = "{me.name}"\nkey_file = "w.key"\nstate_db = "w.db"\n'
            f'listen = "127.0.0.1:{port}"\ngossip_interval = 0.2\nhttp_timeout = 1\n\n'
            f'[[log]]\norigin = "{ORIGIN}"\nvkey = "{log.signer.vkey()}"\n\n'
            f'[[peer]]\nname = "liar"\nvkey = "{LIAR.vkey()}"\nurl = "{liar_url}"\n'
        )
        proc = start_witness_serve(d / "w.toml")
        try:
            wait_http(url + "/healthz", proc)
            with httpx.Client(timeout=30) as http:
                r = http.post(url + "/add-checkpoint", content=log.body(0, 20))
                assert r.status_code == 200, r.text
                for kind, (body, delay) in lies.items():
                    with liar.lock:
                        liar.body, liar.delay, start = body, delay, liar.asked
                    # two more rounds asked the liar with this lie
                    wait_for(lambda s=start: liar.asked >= s + 2, 60, f"gossip rounds ({kind})")
                    r = http.get(url + "/evidence")
                    assert r.status_code == 200 and r.json()["evidence"] == [], (kind, r.text)
                    r = http.post(url + "/add-checkpoint", content=log.body(20, 20))
                    assert r.status_code == 200, (kind, r.status_code, r.text)
                    assert http.get(url + "/readyz").status_code == 200, kind
                # the real fork, shown at once
                with liar.lock:
                    liar.body, liar.delay = cosigned(fork.checkpoint(20), forked_text), 0.0
                wait_for(lambda: http.get(url + "/evidence").json()["evidence"], 60, "the evidence")
                (e,) = http.get(url + "/evidence").json()["evidence"]
                shown = " ".join(str(v) for v in e.values())
                assert fork.root(20) != log.root(20)
                assert forked_text.splitlines()[2] in shown and honest.splitlines()[2] in shown, e
                r = http.post(url + "/add-checkpoint", content=log.body(20, 20))
                assert r.status_code == 422, (r.status_code, r.text)
        finally:
            proc.terminate()
            proc.wait(15)
    out = (d / "out.log").read_text(errors="replace")
    assert "Traceback" not in out, out[-4000:]
