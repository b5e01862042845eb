"""Shared test fixtures. The acceptance vectors live beside the project in ../shared/vectors."""

from __future__ import annotations

import compileall
import gc
import logging
import os
import resource
import sys
import types
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.pg import PgCluster, memory_dir, shm_dir
from tests.pgsupport import BACKENDS, OldCopy, backend_database, running_cluster
from tests.support import open_fds


def _raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one for the whole session: the suite
    starts thousands of servers, stores and clients in one process, and a CI machine's
    default soft limit (often 1,024) is within reach: run under `ulimit -n 1024` the
    suite held ~1,015 descriptors by its end (a leak still to find). A server whose
    accept() fails with EMFILE just stops answering: an unrelated-looking timeout."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


_raise_fd_limit()

ROOT = Path(__file__).resolve().parent.parent


def _compile_bytecode() -> None:
    """Write the bytecode of the project's packages once, before any test starts a process.
    Where PYTHONDONTWRITEBYTECODE is set (this machine's and CI's environment) no Python
    process writes it, so every ``tlog`` command, ``tlog serve``, witness and proxy the suite
    starts (hundreds) compiled tlog/ and client/ from source again: about half of
    its start-up. Up to date, this is a few hundred stat calls; the files are written
    atomically, so xdist workers doing it at once are fine."""
    for package in ("tlog", "client", "harness", "tests"):
        compileall.compile_dir(ROOT / package, quiet=1)


_compile_bytecode()

# And pytest's own bytecode of the test modules: where PYTHONDONTWRITEBYTECODE is set,
# pytest does not keep the modules it rewrote for its assertions either, so every xdist
# worker parsed and rewrote all ~400 test files again at every run: 17 s of CPU to collect
# the suite in one process, 7.5 s with the rewritten modules kept (pytest's
# ``__pycache__/*-pytest-*.pyc``, checked against a hash of the source, so a stale one is
# never used). From here on this process writes bytecode, as ``_compile_bytecode`` does.
sys.dont_write_bytecode = False


def pytest_configure(config: pytest.Config) -> None:
    """Before xdist starts its workers, rewrite the test modules they will import (those
    under the paths given, missing or stale in pytest's cache) once, here: a clean
    checkout's workers otherwise each rewrote all of them at the same time."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", 0):
        return
    if config.getoption("assertmode", "rewrite") != "rewrite":
        return
    try:
        _rewrite_ahead(config)
    except Exception:  # pytest's private names changed: the workers rewrite as before
        pass  # (review 39: a changed signature would have aborted the session)


def _rewrite_ahead(config: pytest.Config) -> None:
    try:  # pytest's own cache (private names; if they move, the workers just do it)
        from _pytest.assertion.rewrite import (
            PYC_TAIL,
            _read_pyc,
            _rewrite_test,
            _write_pyc,
            get_cache_dir,
        )
    except ImportError:
        return
    files: set[Path] = set()
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path.is_dir():
            files.update(f for f in path.rglob("test_*.py") if "__pycache__" not in f.parts)
            files.update(path.rglob("conftest.py"))
        elif path.suffix == ".py" and path.is_file():
            files.add(path)
    quiet = types.SimpleNamespace(trace=lambda message: None)
    for fn in sorted(files):
        cache = get_cache_dir(fn)
        pyc = cache / (fn.name[:-3] + PYC_TAIL)
        if _read_pyc(fn, pyc) is not None:
            continue
        try:
            cache.mkdir(exist_ok=True)
            source_hash, co = _rewrite_test(fn, config)
        except (OSError, SyntaxError):
            continue  # the worker's own import says what is wrong
        _write_pyc(quiet, co, source_hash, pyc)  # type: ignore[arg-type]


def _temp_in_memory() -> None:
    """Put the session's temporary directories (``tmp_path``: every test's data directory,
    LMDB store, outbox and intent journal) on ``/dev/shm`` when it is a writable tmpfs, as
    the throwaway PostgreSQL clusters already are (``harness.pg.memory_dir``). On a disk,
    every commit's fsync waited for the device and cost system time: the stateful SCIM
    model alone (`-n 0`) took 24.6 s user + 5.1 s system on the disk, 22.7 + 2.9 in
    memory. These tests are about behaviour, and a process killed loses nothing from the
    page cache either; what survives a power cut is not testable here. The product still
    calls fsync where it did. pytest's own scheme is kept (``pytest-of-<user>/pytest-N``,
    the last three sessions kept, a session's whole tree ~100-200 MB); ``TLOG_TEST_TMP``
    names another root (empty: the system's temporary directory; without it, a /dev/shm
    with less than ``harness.pg.SHM_FREE_MIN`` free is not used), and
    ``PYTEST_DEBUG_TEMPROOT`` or ``--basetemp``, when given, win."""
    if "PYTEST_DEBUG_TEMPROOT" in os.environ:
        return
    root = os.environ.get("TLOG_TEST_TMP")
    if root is None:  # /dev/shm only with room (a container's default is 64 MiB)
        root = shm_dir() or ""
    if root:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = root


_temp_in_memory()


def _share_httpx_tls() -> None:
    """One verifying TLS context for every httpx client the tests make in this process
    with httpx's defaults (``verify=True``), as the product's own clients share one
    (``client.net.core.default_tls``). httpx makes a new context for each client, its whole
    CA file parsed again: ~30 ms of CPU a client, and the tests make many
    (``httpx.get`` and ``httpx.post`` in polling loops, an auditor's client per read, a
    front transport per test): 15% of the CPU of tests/console and tests/witness. The
    context is the one httpx would make (the CA file of ``SSL_CERT_FILE`` or
    ``SSL_CERT_DIR`` as the environment is at that moment, else certifi's: one context per
    such setting); a client given its own context, ``verify=False`` or a certificate gets
    what it asked for, as before."""
    import ssl
    import threading

    import httpx._transports.default as transport

    made = transport.create_ssl_context
    shared: dict[tuple[bool, str | None, str | None], ssl.SSLContext] = {}
    lock = threading.Lock()

    def create_ssl_context(
        verify: ssl.SSLContext | str | bool = True, cert: Any = None, trust_env: bool = True
    ) -> ssl.SSLContext:
        if verify is not True or cert is not None:
            return made(verify=verify, cert=cert, trust_env=trust_env)
        env = os.environ
        key = (trust_env, env.get("SSL_CERT_FILE"), env.get("SSL_CERT_DIR"))
        with lock:
            ctx = shared.get(key)
            if ctx is None:
                ctx = shared[key] = made(verify=True, trust_env=trust_env)
        return ctx

    transport.create_ssl_context = create_ssl_context


_share_httpx_tls()
VECTORS = ROOT.parent / "shared" / "vectors"

if not VECTORS.is_dir():  # pragma: no cover - environment error, not a test outcome
    raise RuntimeError(f"test vectors not found at {VECTORS} (expected ../shared/vectors)")


@pytest.fixture(scope="session")
def vectors() -> Path:
    return VECTORS


@pytest.fixture(scope="session", autouse=True)
def _lmdb_lock_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test's store puts LMDB's lock file on /dev/shm (tlog.lockfile), which outlives the
    test's directory: at the end of the session (per xdist worker), remove the lock files of
    this session's stores, so the suite leaves nothing in memory."""
    yield
    base = tmp_path_factory.getbasetemp()
    for link in base.rglob("lock.mdb"):
        if link.is_symlink():
            target = Path(os.readlink(link))
            if target.name.startswith("tlog-") and target.name.endswith("-lock.mdb"):
                target.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _logging_isolated() -> Iterator[None]:
    """Undo what a test did to the logging configuration. A command run in process
    (``tlog serve``'s ``main`` up to a refusal, uvicorn's ``Config``, a ``dictConfig``)
    replaces the root logger's handlers with a StreamHandler on the sys.stderr of that
    moment: pytest's capture stream of that test, closed when it ends. Every later log line
    of the session, from any thread (in-process servers too), then went through that
    handler first and printed a "Logging error" traceback; and levels, ``propagate`` and
    uvicorn's handlers changed under later tests. pytest's own capture handlers are left
    alone (it adds and removes them around each phase)."""
    from _pytest.logging import LogCaptureHandler

    manager = logging.Logger.manager
    root = logging.getLogger()

    def state(lg: logging.Logger) -> tuple[int, bool, bool, list[logging.Handler]]:
        return lg.level, lg.propagate, lg.disabled, list(lg.handlers)

    saved_root = state(root)
    saved = {
        name: state(lg)
        for name, lg in list(manager.loggerDict.items())
        if isinstance(lg, logging.Logger)
    }
    yield
    level, _, _, handlers = saved_root
    ours = [h for h in root.handlers if isinstance(h, LogCaptureHandler)]
    root.handlers = [h for h in handlers if not isinstance(h, LogCaptureHandler)] + ours
    root.setLevel(level)
    for name, (level, propagate, disabled, handlers) in saved.items():
        lg = logging.getLogger(name)
        lg.level, lg.propagate, lg.disabled, lg.handlers = level, propagate, disabled, handlers
    manager._clear_cache()  # loggers cache their effective level


# A test module may leave at most this many more descriptors open than it found (after a
# garbage collection). The worst module once left ~150 (one remembered-checkpoint file per
# app built); after the fixes modules leave a handful at most. The bound is far above that
# noise (session fixtures started midway, pooled connections), so only a real leak trips it.
FD_LEAK_LIMIT = 100
_FD_DIR = Path("/proc/self/fd")


def _fd_targets() -> list[str]:
    return list(open_fds().values())


@pytest.fixture(scope="module", autouse=True)
def _module_leaks_no_descriptors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the module (an error at its last test's teardown) if it leaves more than
    FD_LEAK_LIMIT descriptors open: a leak per test adds up over the session until a
    server's accept() fails with EMFILE and it just stops answering, far from the cause."""
    if not _FD_DIR.is_dir():  # not Linux
        yield
        return
    before = _fd_targets()
    yield
    after = _fd_targets()
    if len(after) - len(before) <= FD_LEAK_LIMIT:
        return
    gc.collect()  # only now: what is garbage but not yet collected does not count
    after = _fd_targets()
    grown = len(after) - len(before)
    if grown > FD_LEAK_LIMIT:
        extra = Counter(after) - Counter(before)
        left = [f"{n} x {target}" for target, n in extra.most_common(10)]
        pytest.fail(
            f"{request.node.nodeid} left {grown} more file descriptors open than it found "
            f"(limit {FD_LEAK_LIMIT}): close what the tests open (TestClient as a context "
            f"manager, stores, clients, log files). Some of them: {left}",
            pytrace=False,
        )


# -- storage backends ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL server per test session (per xdist worker); skips when
    PostgreSQL is not installed (see harness/pg.py). It runs with fsync on, from a
    tmpfs when there is one: these tests are about behaviour, and a process crash loses
    nothing from the page cache either; what survives a power cut is not testable here."""
    with running_cluster(tmp_root=memory_dir()) as cluster:
        yield cluster


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A ``postgresql://`` URL whose search_path is a fresh, empty schema."""
    return pg_cluster.new_schema()


# Every test that uses a store runs on each backend (tests/README-style notes in
# docs/testing.md). The store comes from ONE place: the ``database`` fixture (per test) or
# ``module_database`` (a module-scoped server fixture), which pytest_generate_tests below
# parametrises over BACKENDS. A test or fixture that opens a store asks for one of them and
# passes it on (``serve_config(data, database)``, ``serve_args(database)``,
# ``open_store(database, path)``); a test about LMDB's own files is marked
# ``@pytest.mark.lmdb_only("why")`` and runs once, on LMDB.

STORE_FIXTURES = {"database": "function", "module_database": "module"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for name, scope in STORE_FIXTURES.items():
        if name not in metafunc.fixturenames:
            continue
        only = metafunc.definition.get_closest_marker("lmdb_only")
        if only is not None and not only.args:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: lmdb_only needs a reason")
        metafunc.parametrize(
            name,
            BACKENDS[:1] if only is not None else BACKENDS,
            indirect=True,
            scope=scope,  # type: ignore[arg-type]
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files that hold a ``slow`` test first, each file's tests in their order. With
    ``--dist loadfile`` each file runs whole on one worker, the files handed out in this
    order (``--no-loadscope-reorder`` in pyproject.toml): xdist's own order, the files with
    the most tests first, put the long multi-process files of one to three tests last, and
    one worker ran them alone while the others had nothing left."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str | None:
    """The ``--database`` this test runs with: None (the embedded LMDB store in the data
    directory) or a ``postgresql://`` URL of a fresh, empty schema in the session cluster
    (skips with the reason when PostgreSQL cannot run here)."""
    return backend_database(request)


@pytest.fixture(scope="module")
def module_database(request: pytest.FixtureRequest) -> str | None:
    """:func:`database` for a module-scoped fixture: one fresh schema per module."""
    if getattr(request, "param", BACKENDS[0]) == BACKENDS[0]:
        return None
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_schema()


@pytest.fixture
def new_database(database: str | None, request: pytest.FixtureRequest) -> Callable[[], str | None]:
    """Another, empty store on the backend of ``database`` (for a second, unrelated log):
    None again for LMDB (the caller gives it another data directory), a fresh schema for
    PostgreSQL."""
    if database is None:
        return lambda: None
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_schema


@pytest.fixture
def old_copy(
    database: str | None, request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[str], OldCopy]:
    """``old_copy(name)``: an :class:`~tests.pgsupport.OldCopy` of the store of ``database``
    (an mdb_copy, or a pg_dump restored with pg_restore), kept under ``tmp_path / name``."""
    cluster = None if database is None else request.getfixturevalue("pg_cluster")
    return lambda name: OldCopy(database, cluster, tmp_path / name)


# A real S3-compatible server (SeaweedFS), started on first use, one per session.
from .s3support import seaweedfs  # noqa: E402,F401

# Threads a test leaves running after it (tests/threadwatch.py): tagged at start, checked at
# each test's end.
from .threadwatch import (  # noqa: E402,F401
    _threads_stopped,
    install,
    pytest_fixture_setup,
    pytest_runtest_logreport,
    pytest_runtest_protocol,
    pytest_terminal_summary,
)

install()
