"""Against a real ``tlog serve`` (uvicorn) process on 127.0.0.1: start-up, and crash safety."""

from __future__ import annotations

import base64
import os
import random
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import leaf_hash, verify_consistency, verify_inclusion
from client.formats.note import Ed25519Verifier, b64decode_strict
from client.formats.proof_bundle import TlogProof
from tests.support import (
    ServerProcess,
    checkpoints_by_size,
    start_server,
    store_args,
    tlog_cli,
)
from tlog.auth import TOKEN_CACHE_SECONDS

from .conftest import ORIGIN

pytestmark = pytest.mark.slow


def test_first_start_is_demo_ready(tmp_path: Path, database: str | None) -> None:
    data = tmp_path / "tlog-data"
    srv = start_server(data, database=database)
    try:
        out = (tmp_path / "tlog-data-server.log").read_text()
        assert f"origin  {ORIGIN}" in out
        assert "vkey    " + ORIGIN + "+" in out
        assert f"listening on {srv.url}" in out
        token_file = data / "demo-submitter.token"
        assert (data / "log.key").stat().st_mode & 0o777 == 0o600
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        assert token not in out  # tokens and keys are never printed by serve
        assert (data / "log.key").read_text().split("+", 4)[4].strip() not in out
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        r = httpx.post(
            srv.url + "/v1/entries", content=b"hello", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200
        TlogProof.parse(r.json()["tlog_proof"]).verify(
            Ed25519Verifier.from_vkey(vkey), entry=b"hello"
        )
        # A token made by the CLI while the server runs works at once; revocation too.
        made = tlog_cli(
            "token",
            "create",
            "--role",
            "submitter",
            "--tenant",
            "t1",
            "--data",
            str(data),
            *store_args(database),
        )
        assert made.returncode == 0, made.stderr
        t2 = made.stdout.strip()
        h = {"Authorization": f"Bearer {t2}"}
        assert httpx.post(srv.url + "/v1/entries", content=b"x", headers=h).status_code == 200
        tid = made.stderr.split()[1]
        assert (
            tlog_cli(
                "token", "revoke", tid, "--yes", "--data", str(data), *store_args(database)
            ).returncode
            == 0
        )
        time.sleep(TOKEN_CACHE_SECONDS)  # the documented revocation delay (tlog.auth)
        assert httpx.post(srv.url + "/v1/entries", content=b"y", headers=h).status_code == 401
    finally:
        srv.proc.send_signal(signal.SIGTERM)
        # uvicorn re-raises SIGTERM after a graceful shutdown, so -15 is a clean exit.
        assert srv.proc.wait(15) in (0, -signal.SIGTERM)
    fs = tlog_cli("fsck", "--data", str(data), *store_args(database))
    assert fs.returncode == 0, fs.stderr
    assert "fsck: OK: 2 entries" in fs.stdout


def _submitter(
    url: str,
    token: str,
    stop: threading.Event,
    acked: list[tuple[int, bytes]],
    seen: list[str],
    tag: str,
    lock: threading.Lock,
) -> None:
    rnd = random.Random(tag)
    n = 0
    # A generous timeout: an answer that comes late is still an acknowledgement to check (a
    # short one only turned slow answers on a loaded machine into uncounted requests).
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=auth, timeout=30) as c:
        while not stop.is_set():
            try:
                if rnd.random() < 0.3:
                    batch = [f"{tag}-{n + i}".encode() for i in range(rnd.randint(2, 40))]
                    body = b"".join(len(e).to_bytes(2, "big") + e for e in batch)
                    r = c.post("/v1/entries/batch", content=body)
                    n += len(batch)
                    if r.status_code == 200:
                        d = r.json()
                        with lock:
                            acked.extend(zip(d["indices"], batch, strict=True))
                            seen.append(d["checkpoint"])
                else:
                    e = f"{tag}-{n}".encode()
                    n += 1
                    r = c.post("/v1/entries", content=e)
                    if r.status_code == 200:
                        d = r.json()
                        with lock:
                            acked.append((d["index"], e))
                            seen.append(d["checkpoint"])
            except httpx.HTTPError:
                time.sleep(0.01)  # the server is being killed; keep trying


def _get(c: httpx.Client, path: str, **params: int) -> httpx.Response:
    """A read that must succeed: 200, after at most a few 503s (the store did not answer
    within --storage-timeout on a loaded machine: "try again", which says nothing about the
    data); anything else fails with the answer."""
    for _ in range(5):
        r = c.get(path, params=params)
        if r.status_code != 503:
            break
        time.sleep(1)
    assert r.status_code == 200, f"{path} {params}: {r.status_code} {r.text[:300]}"
    return r


def test_sigkill_under_load_loses_nothing_acknowledged(
    tmp_path: Path, database: str | None
) -> None:
    data = tmp_path / "tlog-data"
    srv: ServerProcess = start_server(data, database=database)
    token = (data / "demo-submitter.token").read_text().strip()
    verifier = Ed25519Verifier.from_vkey(httpx.get(srv.url + "/v1/log").json()["vkey"])
    acked: list[tuple[int, bytes]] = []
    seen: list[str] = []
    lock = threading.Lock()
    rnd = random.Random(7)
    for round_ in range(4):
        stop = threading.Event()
        threads = [
            threading.Thread(
                target=_submitter, args=(srv.url, token, stop, acked, seen, f"r{round_}t{i}", lock)
            )
            for i in range(6)
        ]
        before = len(acked)
        for t in threads:
            t.start()
        # Kill only once this round has had its answers (a loaded machine may take seconds
        # for the first), then at a random moment while the writers keep going. Waiting for
        # a count, not for a time, is what makes the 4 x 30 > 100 acknowledgements checked
        # below certain on a slow machine (the deadline only bounds a broken server).
        deadline = time.monotonic() + 180
        while len(acked) < before + 30:
            assert time.monotonic() < deadline, f"round {round_}: {len(acked) - before} answers"
            assert srv.proc.poll() is None, "the server died before it was killed"
            time.sleep(0.02)
        time.sleep(rnd.uniform(0.0, 0.5))
        os.kill(srv.proc.pid, signal.SIGKILL)  # mid-flight, no warning
        srv.proc.wait(30)
        stop.set()
        for t in threads:
            t.join(60)
            assert not t.is_alive()
        fs = tlog_cli("fsck", "--data", str(data), *store_args(database))
        assert fs.returncode == 0, fs.stdout + fs.stderr
        # On a fresh port: the old one may have been taken since the kill (any client's
        # ephemeral source port can land on it), and a restart there could not bind.
        srv = start_server(data, database=database)
    try:
        assert len(acked) > 100
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            latest_text = c.get("/checkpoint").text
            latest, _ = open_checkpoint(latest_text, [verifier], origin=ORIGIN)
            # Every acknowledged entry is there, at the index it was given.
            for index, entry in acked:
                assert _get(c, f"/v1/entries/{index}").content == entry, index
            sample = random.Random(1).sample(acked, 50)
            for index, entry in sample:
                d = _get(c, "/v1/proof/inclusion", index=index).json()
                verify_inclusion(
                    index,
                    latest.size,
                    leaf_hash(entry),
                    [b64decode_strict(h) for h in d["inclusion_proof"]],
                    latest.root_hash,
                )
            # The current checkpoint is consistent with every one handed out before a crash.
            by_size = checkpoints_by_size(seen, verifier, ORIGIN)  # never two heads
            for size, cp in by_size.items():
                d = _get(c, "/v1/proof/consistency", old_size=size).json()
                assert d["tree_size"] == latest.size
                verify_consistency(
                    size,
                    latest.size,
                    cp.root_hash,
                    latest.root_hash,
                    [base64.b64decode(h) for h in d["consistency_proof"]],
                )
    finally:
        srv.stop()
