"""Test helpers shared by every test package (defined once, imported where needed)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from client.formats.checkpoint import Checkpoint, open_checkpoint
from client.formats.merkle import CompactRange, fold_perfect, leaf_hash
from client.formats.note import Verifier
from client.formats.tiles import TILE_WIDTH, Tile
from harness.net import (
    STARTUP_TIMEOUT,
    free_port,
    http_get,
    stop_processes,
    wait_for,
    wait_http,
)
from harness.tlog import log_vkey, tlog_argv, tlog_cli
from tlog.config import ServeConfig

if TYPE_CHECKING:
    import pytest

    from client.formats.policy import Policy
    from tlog.bucket import BucketPublisher
    from tlog.scim.service import ScimService
    from tlog.witnessing import WitnessPusher

__all__ = [
    "ROOT",
    "AppParts",
    "ServerProcess",
    "UvicornThread",
    "app_parts",
    "assert_prefixes",
    "checkpoints_by_size",
    "ext4_error",
    "ext4_repair",
    "free_port",
    "frozen_ext4",
    "http_get",
    "listening_socket",
    "open_fds",
    "recompute_tile",
    "run_module",
    "run_tool",
    "serve_args",
    "serve_config",
    "slow_reader",
    "start_proxy",
    "start_server",
    "start_witness_serve",
    "start_witnessed_server",
    "stop_processes",
    "store_args",
    "tlog_argv",
    "tlog_cli",
    "tlog_in_process",
    "token_for",
    "wait_for",
    "wait_http",
    "wait_reset",
]

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = "test.example/log"  # the origin of tests/server's log (make_signer there)


def run_tool(*cmd: str) -> subprocess.CompletedProcess[str]:
    """A system tool's run (mount, fsfreeze), its output captured, never raising on failure."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def freeze_unavailable() -> str | None:
    """Why a test cannot loop-mount an ext4 and ``fsfreeze`` it here (None: it can)."""
    import shutil

    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "needs root (mount, fsfreeze)"
    for tool in ("mkfs.ext4", "mount", "umount", "fsfreeze"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not Path("/dev/loop-control").exists():
        return "needs loop devices"
    return None


def frozen_ext4(tmp_path: Path, size_mib: int = 32, options: str = "") -> Iterator[Path]:
    """An ext4 file system of ``size_mib`` MiB in an image file, loop-mounted at
    ``tmp_path/mnt`` while the generator is suspended (``yield from`` it in a fixture, or
    ``with contextlib.contextmanager(frozen_ext4)(...)``), for ``fsfreeze -f``/``-u`` (a
    stalled disk); thawed and unmounted after (lazily: a process killed on it may still hold
    a file). ``options``: more mount options (``errors=remount-ro``, for
    :func:`ext4_error`). Skips without root, the tools or loop devices, saying which."""
    import pytest

    why = freeze_unavailable()
    if why is not None:
        pytest.skip(why)
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    mnt.mkdir()
    with image.open("wb") as f:
        f.truncate(size_mib << 20)
    made = run_tool("mkfs.ext4", "-q", str(image))
    if made.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
    m = run_tool("mount", "-o", ",".join(["loop", *filter(None, [options])]), str(image), str(mnt))
    if m.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {m.stderr.strip()}")
    try:
        yield mnt
    finally:
        run_tool("fsfreeze", "-u", str(mnt))
        run_tool("umount", "-l", str(mnt))


def _ext4_sysfs(mnt: Path) -> Path:
    """``/sys/fs/ext4/<device>`` of the ext4 mounted at ``mnt`` (/proc/self/mounts)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        dev, point = line.split()[:2]
        if point == str(mnt):
            return Path("/sys/fs/ext4") / Path(dev).name
    raise AssertionError(f"nothing mounted at {mnt}")


def ext4_error(mnt: Path) -> None:
    """Make the kernel's ext4 at ``mnt`` (a :func:`frozen_ext4` mounted with
    ``errors=remount-ro``) report a file system error, as it does on an I/O error of its
    metadata: it goes read-only under whatever holds files open on it (writes fail with
    EROFS; ``/proc/mounts`` says ``emergency_ro`` on recent kernels, ``ro`` on older
    ones). Through ``/sys/fs/ext4/<dev>/trigger_fs_error`` (Linux 5.x+); skips the test
    when the kernel has no such knob. Afterwards :func:`ext4_repair` makes it writable."""
    import pytest

    knob = _ext4_sysfs(mnt) / "trigger_fs_error"
    if not knob.exists():
        pytest.skip(f"this kernel has no {knob} to make ext4 fail")
    knob.write_text("tlog test: an I/O error\n")
    probe = mnt / ".rw-probe"
    try:
        probe.write_bytes(b"x")
    except OSError as exc:
        assert exc.errno == errno.EROFS, exc
    else:
        raise AssertionError("the file system is still writable after the ext4 error")


def ext4_repair(tmp_path: Path) -> Path:
    """What an operator does after :func:`ext4_error`: unmount the file system of
    :func:`frozen_ext4` (nothing may hold it: stop the programs first), ``e2fsck -fy`` its
    image and mount it again read-write, at the same place; returns the mount point."""
    image, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    u = run_tool("umount", str(mnt))
    assert u.returncode == 0, u.stderr
    fsck = run_tool("e2fsck", "-fy", str(image))
    assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
    m = run_tool("mount", "-o", "loop,errors=remount-ro", str(image), str(mnt))
    assert m.returncode == 0, m.stderr
    return mnt


_BLKIO = Path("/sys/fs/cgroup/blkio")  # cgroup v1's block I/O controller


def _cgroup2_io() -> Path | None:
    """The cgroup v2 hierarchy's root where it offers the ``io`` controller (``io.max``),
    else None (no cgroup2 mount, or ``io`` bound to v1's blkio, as on a hybrid host)."""
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 2 and fields[2] == "cgroup2":
            root = Path(fields[1])
            try:
                if "io" in (root / "cgroup.controllers").read_text().split():
                    return root
            except OSError:
                pass
    return None


def _cgroup2_of(pid: int) -> str:
    """Process ``pid``'s cgroup v2 path (``0::<path>`` in ``/proc/<pid>/cgroup``)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:].lstrip("/")
    return ""


@contextlib.contextmanager
def throttled_reads(mnt: Path, pid: int, iops: int) -> Iterator[None]:
    """Process ``pid``'s reads from the loop device mounted at ``mnt`` (a
    :func:`frozen_ext4`) throttled by the kernel to ``iops`` a second, the device's
    read-ahead off, so that each page read is an I/O of its own: a slow disk that still
    answers, unlike a frozen one. Through a cgroup of its own, created here and removed
    after (the process moved back where it was): cgroup v1's
    ``blkio.throttle.read_iops_device`` where that controller is mounted, else cgroup v2's
    ``io.max`` (``riops``; the root's ``io`` controller enabled for its children if it was
    not, and left enabled: another worker's test may be using it). Skips where neither is
    there, saying so."""
    import uuid

    import pytest

    v1 = (_BLKIO / "blkio.throttle.read_iops_device").exists()
    v2 = None if v1 else _cgroup2_io()
    if not v1 and v2 is None:
        pytest.skip(
            "needs cgroup v1's blkio controller (blkio.throttle.read_iops_device) or "
            "cgroup v2's io controller (io.max)"
        )
    dev = run_tool("findmnt", "-no", "SOURCE", str(mnt)).stdout.strip()
    numbers = run_tool("lsblk", "-dno", "MAJ:MIN", dev).stdout.strip()
    if not dev or not numbers:
        pytest.skip(f"cannot find the device of {mnt}")
    name = f"tlog-test-{uuid.uuid4().hex[:12]}"
    if v2 is None:
        home, group = _BLKIO, _BLKIO / name
        group.mkdir()
        limit, rule = group / "blkio.throttle.read_iops_device", f"{numbers} {iops}\n"
    else:
        home, group = v2 / _cgroup2_of(pid), v2 / name
        control = v2 / "cgroup.subtree_control"
        if "io" not in control.read_text().split():
            try:
                control.write_text("+io\n")
            except OSError as exc:  # e.g. a container's namespace root holding processes
                pytest.skip(f"cannot enable cgroup v2's io controller in {v2}: {exc}")
            # left enabled after the test: another test of another worker may have seen it
            # enabled and be using it (disabling it would silently lift its limit; review
            # 40a); it costs nothing while no group sets a limit
        group.mkdir()
        limit, rule = group / "io.max", f"{numbers} riops={iops}\n"
    ra = run_tool("blockdev", "--getra", dev).stdout.strip() or "256"
    try:
        limit.write_text(rule)
        assert run_tool("blockdev", "--setra", "0", dev).returncode == 0
        (group / "cgroup.procs").write_text(f"{pid}\n")
        yield
    finally:
        with contextlib.suppress(OSError):  # (gone: the process ended)
            (home / "cgroup.procs").write_text(f"{pid}\n")
        run_tool("blockdev", "--setra", ra, dev)
        with contextlib.suppress(OSError):
            group.rmdir()


class OlderKernel:
    """``os.statvfs`` answered, for the files under ``root`` once :meth:`fail` was called,
    as a kernel that marks the super block read-only after an ext4 error does (upstream
    before 6.6; the machine's own kernel may refuse such writes instead, where
    :func:`ext4_error` cannot show the lie): ``ST_RDONLY`` set. The writes and their fsync
    go on succeeding on the real file there, which is the rest of that kernel's lie (but
    for the loss: this file system keeps them). For the checks made after a commit
    (:func:`client.runtime.durable.gone_read_only`), in process."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root, self.failed = root.resolve(), False
        real = os.statvfs

        def statvfs(path: Any) -> Any:
            got = real(path)
            where = Path(os.readlink(f"/proc/self/fd/{path}") if isinstance(path, int) else path)
            if not self.failed or not where.resolve().is_relative_to(self.root):
                return got
            return os.statvfs_result((*got[:8], got.f_flag | os.ST_RDONLY, got.f_namemax))

        monkeypatch.setattr(os, "statvfs", statvfs)

    def fail(self) -> None:
        self.failed = True


def evict_cached(*paths: Path) -> None:
    """The pages of ``paths`` dropped from the page cache (flushed first): their next reads
    go to the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def listening_socket(backlog: int = 16) -> socket.socket:
    """A non-blocking TCP socket listening on a free port of 127.0.0.1, for a server to
    serve on (``ServingThread(server, [sock])``: bound before the server starts, so the
    port cannot be taken in between); the caller closes it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def slow_reader(address: tuple[str, int], request: bytes) -> socket.socket:
    """A client that sends ``request`` and then never reads: its receive buffer is made
    small so the server's answer backs up into the server's own buffers at once."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(20)
    s.connect(address)
    s.sendall(request)
    return s


def wait_reset(s: socket.socket, bound: float = 30.0) -> bool:
    """Wait, without reading, until the peer resets or closes ``s`` (its TCP state leaves
    ESTABLISHED); False if it is still established after ``bound`` seconds."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        import pytest

        pytest.skip("reads the TCP state with TCP_INFO (Linux)")
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] != 1:  # TCP_ESTABLISHED
            return True
        time.sleep(0.1)
    return False


def serve_config(data: Path, database: str | None = None, **settings: Any) -> ServeConfig:
    """The configuration a test builds its app with (``build_app(serve_config(...), ...)``):
    the ``tlog serve`` defaults, the data directory ``data``, the store ``database`` (None:
    LMDB in ``data``; a ``postgresql://`` URL from the ``database`` fixture: that schema, a
    single test server without a standby, so ``replication = "none"``; ``data`` is made, as
    ``tlog serve`` makes it, for the keys and the remembered checkpoint) and ``settings``."""
    if database is not None:
        settings.setdefault("replication", "none")
        data.mkdir(mode=0o700, parents=True, exist_ok=True)  # as tlog serve makes it
    return ServeConfig(data=data, database=database, **settings)


@dataclass(frozen=True)
class AppParts:
    """The parts ``tlog.server.build_app`` wires into its app that a test may need to hold
    itself (see :func:`app_parts`); None where the configuration has none."""

    scim: ScimService | None  # the SCIM service (its clock, its commit path)
    pusher: WitnessPusher | None  # the witness push rounds (witnessed logs)
    bucket: BucketPublisher | None  # the bucket publisher (``publish_once``)


def app_parts(app: Any) -> AppParts:
    """The one test hook into the internals of an app ``build_app`` made (the ``app``, or a
    ``TestClient``'s ``client.app``), for what neither a public accessor nor the HTTP API
    gives a test: a fake clock, an injected fault, a publish round on demand, the pushes
    switched off. Tests go through here instead of reading ``app.state`` themselves, so the
    places that reach into a running app are found with one grep and change in one place."""
    state = app.state
    return AppParts(scim=state.scim, pusher=state.pusher, bucket=state.bucket)


def checkpoints_by_size(
    notes: Iterable[str], verifier: Verifier, origin: str
) -> dict[int, Checkpoint]:
    """The checkpoints a log handed out, each signature checked, by tree size; fails on two
    roots at one size (a fork)."""
    by_size: dict[int, Checkpoint] = {}
    for note in notes:
        cp, _ = open_checkpoint(note, [verifier], origin=origin)
        if cp.size in by_size:
            assert by_size[cp.size].root_hash == cp.root_hash, f"two roots at {cp.size}"
        by_size[cp.size] = cp
    return by_size


def assert_prefixes(entries: Sequence[bytes], by_size: Mapping[int, Checkpoint]) -> bytes:
    """Every checkpoint in ``by_size`` is of a prefix of ``entries`` (its root is the root of
    the first ``size`` entries, recomputed here); returns the root of all of them."""
    tree = CompactRange()
    if 0 in by_size:
        assert by_size[0].root_hash == tree.root(), "checkpoint 0 is a fork"
    for n, entry in enumerate(entries, 1):
        tree.append(leaf_hash(entry))
        if n in by_size:
            assert tree.root() == by_size[n].root_hash, f"checkpoint {n} is a fork"
    assert max(by_size, default=0) <= len(entries), "a checkpoint beyond the entries"
    return tree.root()


def recompute_tile(leaves: Sequence[bytes], tile: Tile) -> bytes:
    """The bytes a tile must hold, from the entries alone (no code of the log)."""
    if tile.is_entries:
        return b""  # compared separately
    span = TILE_WIDTH**tile.level
    out = []
    for i in range(tile.width):
        first = (tile.index * TILE_WIDTH + i) * span
        layer = [leaf_hash(e) for e in leaves[first : first + span]]
        while len(layer) > 1:
            layer = [fold_perfect(layer[j : j + 2]) for j in range(0, len(layer), 2)]
        out.append(layer[0])
    return b"".join(out)


def open_fds() -> dict[int, str]:
    """This process's open descriptors and what each refers to (Linux: /proc/self/fd)."""
    out: dict[int, str] = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the directory's own descriptor, or one closed meanwhile
            continue
    return out


def tlog_in_process(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``tlog ARGS`` run by :func:`tlog.cli.main` in this process, its output captured:
    the same answer as :func:`tlog_cli` (exit status, stdout, stderr) without starting a
    Python process (one took 1-5 s of a loaded two-core machine, mostly imports). For tests
    about what a command decides; the entry point itself (``python -m tlog.cli``, its exit
    status and streams) keeps its own subprocess tests. Like ``tlog_cli``, without this
    environment's ``TLOG_*`` settings; ``stdin`` is not a terminal."""
    from tlog.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("TLOG_")}
    old_stdin = sys.stdin
    sys.stdin = io.StringIO(stdin)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's usage errors, --help, --version
                if exc.code is None or isinstance(exc.code, int):
                    code = exc.code or 0
                else:  # sys.exit("why"): the interpreter prints it and exits 1
                    print(exc.code, file=sys.stderr)
                    code = 1
    finally:
        sys.stdin = old_stdin
        os.environ.update(saved)
    return subprocess.CompletedProcess(["tlog", *args], code, out.getvalue(), err.getvalue())


def token_for(data: Path, database: str | None, *flags: str) -> str:
    """A new token in the log of ``data`` (and ``database``): ``tlog token create FLAGS``
    (``--role``, ``--tenant``, ...) run in process, for a test's setup (an interpreter per
    token cost ~0.3 s of CPU); fails the test unless the command succeeds."""
    args = ["token", "create", *flags, "--data", str(data), *store_args(database)]
    r = tlog_in_process(*args)
    assert r.returncode == 0, f"tlog {' '.join(args)}: exit {r.returncode}: {r.stderr}"
    return r.stdout.strip()


def store_args(database: str | None) -> list[str]:
    """The flags of a ``tlog`` store command (fsck, token, ...) for the store ``database``."""
    return [] if database is None else ["--database", database]


def serve_args(database: str | None) -> list[str]:
    """The ``tlog serve`` flags for the store ``database`` (what :func:`serve_config` sets)."""
    return [] if database is None else [*store_args(database), "--replication", "none"]


# -- starting servers (waiting for them: harness.net's wait_for, wait_http) ------------------


class UvicornThread:
    """An ASGI app served on 127.0.0.1 in a daemon thread by the server ``tlog serve`` and
    ``tlog scim-proxy`` run (``client.runtime.serving``: :func:`hardened_config`'s limits,
    :func:`hardened_server`'s start-up, the uvicorn event loop its config picks), started
    when this returns: :class:`ServingThread` waits until uvicorn says it started, and
    raises its ``ServerStartError`` (from the thread's exception, or with the thread's stack
    after a hang) otherwise. ``kw`` go to ``hardened_config`` (``limits``, uvicorn's
    settings); what a thread does not do that ``run_hardened`` does is said at
    ``ServingThread``."""

    def __init__(self, app: Any, port: int | None = None, **kw: Any) -> None:
        from client.runtime.serving import ServingThread, hardened_config, hardened_server

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cfg = hardened_config(app, "127.0.0.1", self.port, log_level="warning", lifespan="on", **kw)
        self.server = hardened_server(cfg)
        loop_factory = getattr(cfg, "get_loop_factory", None)  # as Server.run picks it
        self.serving = ServingThread(
            self.server, name="uvicorn-test", loop_factory=loop_factory and loop_factory()
        )
        self.thread = self.serving.thread
        self.serving.start(STARTUP_TIMEOUT)

    def stop(self) -> None:
        self.serving.stop(15)


@dataclass
class ServerProcess:
    """A ``tlog serve`` process (:func:`start_server`)."""

    proc: subprocess.Popen[bytes]
    url: str
    data: Path
    port: int

    def stop(self) -> None:
        stop_processes([self.proc])


def dies_with_us(argv: list[str]) -> list[str]:
    """``argv`` run so that the kernel kills it when this process dies, however it ends
    (SIGKILL included): see tests/pdeathsig.py. Its pid is the command's own (exec). The
    wrapper needs the standard library only: ``-S`` spares it the site packages' start-up
    (~9 of its ~31 ms of CPU); the command it becomes starts as it would alone."""
    return [sys.executable, "-S", "-m", "tests.pdeathsig", str(os.getpid()), "--", *argv]


def start_server(
    data: Path,
    port: int | None = None,
    *extra: str,
    database: str | None = None,
    origin: str = ORIGIN,
    timeout: float = STARTUP_TIMEOUT,
    script: str | None = None,
) -> ServerProcess:
    """Run ``tlog serve`` as a real uvicorn process on 127.0.0.1 (the store ``database``,
    as the ``database`` fixture gives it) and wait until it answers; its output goes to
    ``<data>-server.log``. ``script``: a ``python -c`` program run in its place with the
    serve arguments (``tests/ops/paused.py``'s ``command_script``: ``tlog serve`` with a
    test-only patch in its own process).

    Without ``port``, a free one is picked; the pick and the server's bind are two steps,
    so another process (a parallel test worker's server, or any client's ephemeral source
    port) can take it in between: then the server exits with "address already in use" and
    it is started again on another port (up to 5 picks), instead of failing the test."""
    picked = port is None
    log_path = data.parent / f"{data.name}-server.log"
    for attempt in range(5):
        start = log_path.stat().st_size if log_path.exists() else 0
        try:
            return _start_server(
                data, port or free_port(), extra, database, origin, timeout, script
            )
        except RuntimeError:
            tail = log_path.read_bytes()[start:].decode(errors="replace")
            if not picked or attempt == 4 or "address already in use" not in tail:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _start_server(
    data: Path,
    port: int,
    extra: tuple[str, ...],
    database: str | None,
    origin: str,
    timeout: float,
    script: str | None = None,
) -> ServerProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    argv = tlog_argv("serve") if script is None else [sys.executable, "-c", script]
    log_path = data.parent / f"{data.name}-server.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            dies_with_us(
                [*argv, "--data", str(data)]
                + ["--port", str(port), "--origin", origin, "--log-level", "warning"]
                + [*serve_args(database), *extra]
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    url = f"http://127.0.0.1:{port}"
    # Ours answers only once it said it bound the port: an answer from another process that
    # holds the port (ours then exits, "address already in use") is not taken for it.
    bound = f"tlog: listening on {url}\n".encode()

    def ours(r: httpx.Response) -> bool:
        return r.status_code == 200 and bound in log_path.read_bytes()[start:]

    wait_http(
        url + "/checkpoint",
        proc,
        timeout,
        ok=ours,
        output=lambda: log_path.read_text(errors="replace"),
    )
    return ServerProcess(proc, url, data, port)


def run_module(*args: str) -> str:
    """``python -m args...`` from the project root; its standard output (fails the test on
    a non-zero exit)."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    ).stdout


def start_witnessed_server(
    tmp_path: Path,
    data: Path,
    policy_text: str,
    interval: str,
    *extra: str,
    database: str | None = None,
) -> tuple[ServerProcess, Policy]:
    """:func:`start_server` pushing to the witnesses of ``policy_text`` (written to
    ``tmp_path/policy``) every ``interval`` seconds (``extra``: more flags); the policy too."""

    from client.formats.policy import Policy

    (tmp_path / "policy").write_text(policy_text)
    policy = Policy.parse(policy_text)
    srv = start_server(
        data,
        None,
        "--witnesses",
        str(tmp_path / "policy"),
        "--witness-interval",
        interval,
        *extra,
        database=database,
    )
    return srv, policy


def start_witness_serve(config: Path) -> subprocess.Popen[bytes]:
    """``tlog-witness serve --config config`` as a process, its output appended to
    ``out.log`` beside the config; the caller waits for it to answer."""
    # The child gets its own copy of the descriptor: ours is closed at once.
    with open(config.parent / "out.log", "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "client.witness.cli", "serve", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_own(url: str, proc: subprocess.Popen[bytes], log_path: Path, banner: bytes) -> None:
    """:func:`wait_http` for ``proc``'s own answer at ``url``: once its output (``log_path``)
    holds ``banner``, its "listening" line. An answer from another process that took the
    port first does not count, and ``proc``'s exit ("address already in use") fails with
    its output."""
    wait_http(
        url,
        proc,
        ok=lambda r: banner in log_path.read_bytes(),
        output=lambda: log_path.read_text(errors="replace"),
    )


def start_proxy(
    tmp: Path,
    upstream: str,
    log_url: str,
    token: str,
    tenant: str,
    *extra: str,
    outbox: Path | None = None,
    port: int | None = None,
    sp_id: str = "scim2-server",
) -> tuple[subprocess.Popen[bytes], str]:
    """``tlog scim-proxy`` as a real process in front of ``upstream``, recording to the log
    at ``log_url`` with ``token`` for ``tenant`` (``extra``: more flags), started when this
    returns (it said it listens, and answered a request; its output goes to
    ``<tmp>/proxy-<port>.log``); returns it and the proxied SCIM base URL. Stop it with
    ``stop_processes([proc])``.

    Without ``port`` a free one is picked; another process can take it before the proxy
    binds (then the proxy exits, "address already in use", and an answer on that port is
    not the proxy's): the proxy is started again on another port (up to 5 picks), as
    :func:`start_server` does."""
    picked = port is None
    for attempt in range(5):
        try:
            return _start_proxy(
                tmp, upstream, log_url, token, tenant, extra, outbox, port or free_port(), sp_id
            )
        except RuntimeError as exc:
            if not picked or attempt == 4 or "address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _log_key_flags(log_url: str) -> tuple[str, ...]:
    """``--log-key`` with the key the log at ``log_url`` names (the tests' logs are their
    own), or ``--log-key-tofu`` when it cannot be asked now (a test's log that is down)."""
    try:
        return ("--log-key", log_vkey(log_url, timeout=10))
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return ("--log-key-tofu",)


def _start_proxy(
    tmp: Path,
    upstream: str,
    log_url: str,
    token: str,
    tenant: str,
    extra: tuple[str, ...],
    outbox: Path | None,
    port: int,
    sp_id: str,
) -> tuple[subprocess.Popen[bytes], str]:
    token_file = tmp / f"proxy-{port}.token"
    token_file.write_text(token + "\n")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if "--log-key" not in extra and "--log-key-tofu" not in extra:
        extra = (*extra, *_log_key_flags(log_url))
    log_path = tmp / f"proxy-{port}.log"
    # The child gets its own copy of the descriptor: ours is closed at once.
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            tlog_argv(
                "scim-proxy",
                "--upstream",
                upstream,
                "--log",
                log_url,
                "--token-file",
                str(token_file),
                "--tenant",
                tenant,
                "--sp-id",
                sp_id,
                "--listen",
                f"127.0.0.1:{port}",
                "--outbox",
                str(outbox or tmp / f"proxy-{port}.sqlite"),
                "--log-level",
                "warning",
                *extra,
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
        )
    base = f"http://127.0.0.1:{port}" + httpx.URL(upstream).path.rstrip("/")
    banner = f"tlog scim-proxy: listening on http://127.0.0.1:{port} ".encode()
    try:
        wait_own(base + "/ServiceProviderConfig", proc, log_path, banner)
    except BaseException:
        stop_processes([proc])
        raise
    return proc, base
