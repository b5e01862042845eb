"""The load of red team 8's and 9's fault tests (tests/server/test_redteam8_*.py,
test_redteam9_*.py): raw entries one by one, raw batches, SCIM batches and single SCIM
events sent at once to a real ``tlog serve``, every answer kept; then what must hold after
the fault: every acknowledged submission in the log once, at its index, with a verified
inclusion proof, one root per tree size, no 5xx but a clear 503, writes of every kind
working again without a restart, no unhandled exception in the server's log, ``tlog fsck``
clean (:func:`faulted_server` runs a test's fault between the start and those checks)."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.merkle import leaf_hash
from client.formats.note import Ed25519Verifier
from client.net.logclient import LogClient
from client.scim import event_to_json, new_event
from harness.pg import PgCluster
from tests.pgsupport import open_store
from tests.support import (
    ServerProcess,
    assert_prefixes,
    checkpoints_by_size,
    start_server,
    tlog_cli,
    token_for,
)

from .conftest import ORIGIN

KINDS = ("raw", "raw-batch", "scim", "scim-batch")
_roles = itertools.count()


def make_token(data: Path, database: str | None, *role: str) -> str:
    """A new token (``tlog token create ROLE...``, in process) in the log of ``data``."""
    return token_for(data, database, *role)


def scim_event(n: str) -> dict[str, Any]:
    return new_event(
        tenant="acme",
        sp="app-1",
        op="patch",
        rt="User",
        rid=f"u-{n}",
        actor={"kind": "user", "id": "admin-1"},
        corr=f"req-{n}",
        req={"m": "PATCH", "p": f"/Users/u-{n}", "dig": bytes(32), "len": 10},
        res=200,
        outcome="success",
        mods=[{"attr": "active", "old": "true", "new": "false"}],
    )


@dataclass
class Answer:
    kind: str
    status: int
    text: str
    # (index, leaf hash) of each acknowledged submission of the request
    acked: list[tuple[int, bytes]] = field(default_factory=list)
    note: str | None = None
    elapsed: float = 0.0


class Load:
    """Four kinds of writers against ``url`` until :meth:`stop`."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0, pause: float = 0.0) -> None:
        self.url = url
        self.h = {"Authorization": f"Bearer {token}"}
        self.timeout = timeout
        self.pause = pause
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._seq = itertools.count()
        self._threads: list[threading.Thread] = []

    # -- one request of each kind ---------------------------------------------------------

    def _raw(self, c: httpx.Client, n: int) -> Answer:
        entry = b"raw-%d" % n
        r = c.post(self.url + "/v1/entries", content=entry, headers=self.h)
        a = Answer("raw", r.status_code, r.text)
        if r.status_code == 200:
            j = r.json()
            a.acked, a.note = [(j["index"], leaf_hash(entry))], j["checkpoint"]
        return a

    def _raw_batch(self, c: httpx.Client, n: int) -> Answer:
        entries = [b"batch-%d-%d" % (n, i) for i in range(20)]
        body = json.dumps({"entries": [base64.b64encode(e).decode() for e in entries]})
        h = {**self.h, "Content-Type": "application/json"}
        r = c.post(self.url + "/v1/entries/batch", content=body, headers=h)
        a = Answer("raw-batch", r.status_code, r.text)
        if r.status_code == 200:
            j = r.json()
            a.acked = [(i, leaf_hash(e)) for i, e in zip(j["indices"], entries, strict=True)]
            a.note = j["checkpoint"]
        return a

    def _scim(self, c: httpx.Client, n: int) -> Answer:
        body = event_to_json(scim_event(str(n))).encode()
        h = {**self.h, "Content-Type": "application/json"}
        r = c.post(self.url + "/v1/scim/events", content=body, headers=h)
        a = Answer("scim", r.status_code, r.text)
        if r.status_code == 200:
            j = r.json()
            a.acked = [(j["index"], base64.b64decode(j["leaf_hash"]))]
            a.note = j["checkpoint"]
        return a

    def _scim_batch(self, c: httpx.Client, n: int) -> Answer:
        evs = [scim_event(f"{n}-{i}") for i in range(10)]
        body = '{"events": [' + ",".join(event_to_json(e) for e in evs) + "]}"
        h = {**self.h, "Content-Type": "application/json"}
        r = c.post(self.url + "/v1/scim/events/batch", content=body.encode(), headers=h)
        a = Answer("scim-batch", r.status_code, r.text)
        if r.status_code == 200:
            j = r.json()
            a.acked = [(x["index"], base64.b64decode(x["leaf_hash"])) for x in j["results"]]
            a.note = j["checkpoint"]
        return a

    def one(self, kind: str, c: httpx.Client | None = None) -> Answer:
        fn: Callable[[httpx.Client, int], Answer] = {
            "raw": self._raw,
            "raw-batch": self._raw_batch,
            "scim": self._scim,
            "scim-batch": self._scim_batch,
        }[kind]
        own = c is None
        c = c or httpx.Client(timeout=self.timeout)
        try:
            t0 = time.monotonic()
            try:
                a = fn(c, next(self._seq))
            except httpx.TransportError as exc:
                a = Answer(kind, 0, f"{type(exc).__name__}: {exc}")
            a.elapsed = time.monotonic() - t0
        finally:
            if own:
                c.close()
        with self._lock:
            self.answers.append(a)
        return a

    # -- running --------------------------------------------------------------------------

    def start(self, kinds: tuple[str, ...] = KINDS) -> None:
        def loop(kind: str) -> None:
            with httpx.Client(timeout=self.timeout) as c:
                while not self._stop.is_set():
                    self.one(kind, c)
                    if self.pause:
                        self._stop.wait(self.pause)

        self._stop.clear()
        self._threads = [
            threading.Thread(target=loop, args=(k,), name=f"load-{k}", daemon=True) for k in kinds
        ]
        for t in self._threads:
            t.start()

    def stop(self, join: float = 90.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(join)
        assert not any(t.is_alive() for t in self._threads), "a writer hangs"

    def acked_count(self) -> int:
        with self._lock:
            return sum(len(a.acked) for a in self.answers)

    def wait_acked(self, more: int, bound: float = 30.0) -> None:
        goal = self.acked_count() + more
        deadline = time.monotonic() + bound
        while self.acked_count() < goal:
            assert time.monotonic() < deadline, f"no progress: {self.summary()}"
            time.sleep(0.05)

    def summary(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        with self._lock:
            for a in self.answers:
                out.setdefault(a.kind, []).append(a.status)
        return out

    def failures(self) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.status != 200]


def check_after(
    load: Load, url: str, vkey: str, entries: list[bytes], allowed: Callable[[Answer], bool]
) -> None:
    """What must hold after a fault: only allowed failures (never a 5xx other than a clear
    503, never a lost connection), every acknowledged submission in ``entries`` (the store,
    read afterwards) once at its index with a proof verified against the log's key, one
    root per tree size in every checkpoint handed out."""
    bad = [(a.kind, a.status, a.text[:300]) for a in load.failures() if not allowed(a)]
    assert not bad, bad
    verifier = Ed25519Verifier.from_vkey(vkey)
    hashes = [leaf_hash(e) for e in entries]
    assert len(set(hashes)) == len(hashes), "an entry is in the log twice"
    acked = [x for a in load.answers for x in a.acked]
    for index, lh in acked:
        assert index < len(hashes) and hashes[index] == lh, f"acknowledged {index} lost"
    notes = [a.note for a in load.answers if a.note]
    assert_prefixes(entries, checkpoints_by_size(notes, verifier, ORIGIN))
    http = httpx.Client(timeout=30)
    client = LogClient(url, verifier, http=http)
    try:
        step = max(1, len(acked) // 40)  # a sample of proofs (every kind is in it)
        for index, lh in sorted(set(acked))[::step]:
            assert client.inclusion_proof(lh).index == index
    finally:
        http.close()


def clear_503(a: Answer) -> bool:
    """A 503 that says what happened (never an empty or generic one)."""
    if a.status != 503:
        return False
    try:
        err = json.loads(a.text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(err, str) and len(err) > 20


def stored_entries(url: str, tmp_path: Path) -> list[bytes]:
    """Every entry the PostgreSQL store ``url`` holds, read afterwards."""
    st = open_store(url, tmp_path)
    try:
        with st.read() as rv:
            return rv.entries(0, rv.tree_size())
    finally:
        st.close()


@dataclass
class Faulted:
    """A ``tlog serve`` on a PostgreSQL store under :class:`Load` (:func:`faulted_server`)."""

    srv: ServerProcess
    load: Load
    vkey: str
    url: str  # the store's
    data: Path

    def server_log(self) -> str:
        return (self.data.parent / f"{self.data.name}-server.log").read_text()


@contextlib.contextmanager
def faulted_server(
    tmp_path: Path,
    url: str,
    bound: float,
    *,
    timeout: float = 60.0,
    allowed: Callable[[Answer], bool] = clear_503,
) -> Iterator[Faulted]:
    """A real ``tlog serve`` on the PostgreSQL store ``url`` with the commit bound
    ``--storage-timeout bound``, and a submitter's :class:`Load` on it (not started: the
    test starts it and runs its fault). When the test's block ends without an error, what
    must hold after any fault is checked: the load stops without a writer hanging; one
    request of every kind succeeds (no restart); every failure is ``allowed`` (a clear
    503), every acknowledged submission is stored once at its index with a verified
    inclusion proof, one root per size (:func:`check_after`); the server logged no
    unhandled exception; ``tlog fsck`` is clean."""
    data = tmp_path / "data"
    srv = start_server(data, None, "--storage-timeout", f"{bound:g}", database=url, timeout=90)
    load = Load(srv.url, "", timeout=timeout)
    try:
        token = make_token(data, url, "--role", "submitter", "--tenant", "acme")
        vkey = httpx.get(srv.url + "/v1/log").json()["vkey"]
        load = Load(srv.url, token, timeout=timeout)
        run = Faulted(srv, load, vkey, url, data)
        yield run
        load.stop()
        after = {k: load.one(k).status for k in KINDS}
        assert set(after.values()) == {200}, (after, load.answers[-4:])
        check_after(load, srv.url, vkey, stored_entries(url, tmp_path), allowed)
    finally:
        load.stop()
        srv.stop()
    out = run.server_log()
    assert "Exception in ASGI application" not in out, out[-5000:]
    fs = tlog_cli("fsck", "--data", str(data), "--database", url)
    assert fs.returncode == 0, fs.stdout + fs.stderr


@pytest.fixture
def role_url(pg_cluster: PgCluster) -> Iterator[tuple[str, str]]:
    """A login role of its own owning a fresh schema: (its URL, its name); the role's
    settings are the test's to change (ALTER ROLE), dropped afterwards."""
    name = f"rt8_{next(_roles)}_{int(time.time() * 1000) % 10**6}"
    pg_cluster.sql(f"CREATE ROLE {name} LOGIN")
    pg_cluster.sql(f"CREATE SCHEMA {name} AUTHORIZATION {name}")
    url = f"postgresql://{name}@127.0.0.1:{pg_cluster.port}/postgres?options=-csearch_path%3D{name}"
    try:
        yield url, name
    finally:
        pg_cluster.sql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{name}'"
        )
        pg_cluster.sql(f"DROP SCHEMA {name} CASCADE")
        pg_cluster.sql(f"DROP ROLE {name}")


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    p = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        timeout=30,
    )
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.decode(errors='replace')}")
    try:
        yield where
    finally:
        # The cluster (stopped by then) may still be using it: lazy, then plain.
        subprocess.run(["umount", str(where)], capture_output=True, timeout=30)
        if os.path.ismount(where):
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill_then_free(mnt: Path, load: Load, url: str, *, leave: int, says: str) -> None:
    """A disk full under load, then room again: a filler file takes all of ``mnt`` but
    ``leave`` bytes, ``load`` starts SCIM batches, single events and raw entries, until a
    write is refused saying ``says`` (within 90 s); full, the server at ``url`` still answers
    reads. Then the filler goes, and writes must resume by themselves (50 more
    acknowledged within 60 s); the load is stopped."""
    free = shutil.disk_usage(mnt).free
    filler = mnt / "filler"
    with filler.open("wb") as f:
        f.write(b"\0" * (free - leave))
    load.start(("scim-batch", "scim", "raw"))
    deadline = time.monotonic() + 90
    while not any(says in a.text for a in load.failures()):
        assert time.monotonic() < deadline, load.summary()
        time.sleep(0.2)
    time.sleep(1.0)
    assert httpx.get(url + "/checkpoint").status_code == 200
    assert httpx.get(url + "/v1/entries/0").status_code == 200
    filler.unlink()
    load.wait_acked(50, bound=60)
    load.stop()
