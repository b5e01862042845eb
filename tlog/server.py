"""Wiring: storage + log + sequencer + tokens + HTTP app, as ``tlog serve`` runs them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from client.formats.policy import Policy
from tlog.app import LogApp, create_app
from tlog.auth import TokenStore
from tlog.backend import Backend, StorageError, is_database_url, open_backend
from tlog.bucket import BucketError, BucketPublisher, ObjectStore, S3Store
from tlog.config import ServeConfig
from tlog.http import Limits
from tlog.integrity import CHECKPOINT_FILE, CheckpointFile, DataDirLock, preflight
from tlog.lockfile import default_lock_dir, place_lock_file
from tlog.log import Log
from tlog.metrics import Metrics, ops_routes
from tlog.published import PublishedState, Solo
from tlog.reads import ReadPool
from tlog.routes import Api
from tlog.scim.keys import KeyFileLock, open_keyring
from tlog.scim.routes import scim_routes
from tlog.scim.service import ScimService
from tlog.sequencer import Sequencer
from tlog.signer import CheckpointSigner
from tlog.ui import console_routes

if TYPE_CHECKING:
    from tlog.pg import OperatorHold

__all__ = ["build_app"]

log = logging.getLogger("tlog.server")


def build_app(
    config: ServeConfig,
    signer: CheckpointSigner,
    *,
    scim: bool = True,
    bucket_store: ObjectStore | None = None,
    hold: OperatorHold | None = None,
) -> tuple[LogApp, Log, TokenStore]:
    """Open the store ``config`` names and build the app: the log API, plus the SCIM event
    service unless ``scim`` is false. Everything else comes from ``config`` (its defaults are
    the ``tlog serve`` defaults); ``bucket_store`` injects an object store in place of
    ``config.bucket`` (tests).

    With the embedded store (``config.database`` unset) it takes ``<data>/db``'s exclusive
    lock (until the store is closed); it refuses a store that is empty, truncated, or behind
    the last published checkpoint (remembered in ``config.checkpoint_file``, default
    ``<data>/last-checkpoint``, and, with a witness policy, what the witnesses cosigned).
    Retention expiry runs every ``config.scim_expiry_interval`` seconds (0: only on
    request). A request waits at most ``config.storage_timeout`` seconds for the store
    (reads on ``config.read_threads`` threads, or its commit), then gets 503.
    ``config.lock_dir`` (a tmpfs): where LMDB's lock file goes, so a frozen data disk
    cannot block reads; None: ``/dev/shm`` or ``$XDG_RUNTIME_DIR`` (:mod:`tlog.lockfile`).

    What it wired up besides the log API (``app.api``) is in ``app.state`` (Starlette's
    application state), for operations and tests: ``metrics``, ``scim`` (the
    :class:`ScimService` or None), ``pusher`` (the witness push rounds or None) and
    ``bucket`` (the bucket publisher or None). Nothing in the app reads it back.

    With ``config.bucket`` (``s3://bucket/prefix``) or ``bucket_store``, every published
    checkpoint, its tiles and entry bundles are also written to that bucket
    (:mod:`tlog.bucket`), and a bucket ahead of the store is refused at start.

    ``config.database``: a ``postgresql://`` URL stores the log there instead (no
    data-directory lock: any number of processes may serve one database, which serialises
    their batches); the keys and the remembered checkpoint stay in ``config.data``.
    ``config.replication`` (``sync``, ``managed``, ``none``) says how its commits survive the
    loss of the primary (:func:`tlog.pg.check_replication`). ``hold``: ``tlog serve``'s hold
    of that store's operator lock (:class:`tlog.pg.OperatorHold`): while it does not hold
    the lock, the store refuses every write (503 with the reason; ``/readyz`` says it).
    """
    data_dir = config.data
    database = config.database
    limits: Limits = config.limits
    storage: Backend
    lock: DataDirLock | None = None
    if is_database_url(database):
        storage = open_backend(database, data_dir, replication=config.replication)
        if hold is not None:
            from tlog.pg import PgStorage

            assert isinstance(storage, PgStorage)
            storage.operator_hold = hold
    else:
        lock = DataDirLock(data_dir / "db").acquire()
        try:
            preflight(data_dir / "db")
            place_lock_file(data_dir / "db", _lock_dir(config.lock_dir))
            storage = open_backend(
                database, data_dir, map_size=config.map_size, verify_limit=config.verify_limit
            )
        except BaseException:
            lock.release()
            raise
        storage.on_close.append(lock.release)
    remembered = CheckpointFile(
        config.checkpoint_file or data_dir / CHECKPOINT_FILE, signer.verifier, signer.origin
    )
    # Closing the store closes everything build_app opened: the remembered checkpoint's file
    # too (it stays open for the log's life; a process that builds many apps, such as the
    # test suite, would otherwise keep one descriptor per app).
    storage.on_close.append(remembered.close)
    try:
        log_ = Log(storage, signer, remembered)
    except BaseException:
        storage.close()
        raise
    seq = Sequencer(
        log_,
        max_batch_entries=config.batch_size,
        max_batch_age=config.batch_age_ms / 1000.0,
        max_backlog=config.max_backlog,
        commit_timeout=config.storage_timeout,
    )
    reads = ReadPool(config.read_threads, config.storage_timeout)
    tokens = TokenStore(storage)
    metrics = Metrics()
    # What is handed out (the API, the metrics, the bucket all ask it): the log's own
    # checkpoints, or with a witness policy what the push rounds gather.
    published: PublishedState = Solo(log_)
    pusher = None
    if config.witnesses is not None:
        # Here, not at the top: the push rounds' HTTP client (httpx) is loaded only by a
        # server that has witnesses, not at every start of every ``tlog`` command.
        from tlog.witnessing import WitnessPusher

        policy = Policy.parse(Path(config.witnesses).read_text("utf-8"))
        for lg in policy.logs:
            if lg.origin == log_.origin and lg.verifier.vkey() != log_.vkey:
                raise ValueError("the witness policy lists another key for this log's origin")
        pusher = WitnessPusher(
            log_, policy, interval=config.witness_interval, max_backoff=config.witness_max_backoff
        )
        try:
            pusher.check_at_startup()
        except BaseException:
            storage.close()
            raise
        seq.on_published = pusher.notify
        pusher.on_push = metrics.observe_push
        published = pusher.published
    publisher = None
    if config.bucket is not None or bucket_store is not None:
        try:
            publisher = _bucket_publisher(
                log_,
                config.bucket,
                config.bucket_endpoint,
                config.bucket_region,
                bucket_store,
                published,
            )
        except BaseException:
            storage.close()
            raise
        seq.on_published = _both(seq.on_published, publisher.notify)
    service = None
    if scim:
        try:
            # Held for the store's life: one LMDB store alone on its key file, or the
            # frontends of one PostgreSQL store together (KeyFileLock); then the file must
            # be bound to this store (open_keyring).
            key_lock = KeyFileLock(config.scim_master_key_path)
            key_lock.acquire(exclusive=not storage.shared, instance=storage.instance)
            storage.on_close.append(key_lock.release)
            keyring = open_keyring(config.scim_master_key_path, storage)
        except BaseException:
            storage.close()
            raise
        service = ScimService(storage, log_, seq, keyring, config.scim, reads=reads)
    metrics.attach(log_, seq, published)
    seq.on_batch = metrics.observe_batch
    if service is not None:
        service.on_logged = metrics.observe_events
        service.on_fence_claim = metrics.observe_fence_claim
    api = Api(log_, seq, tokens, limits, published, reads)
    app = create_app(
        log_,
        seq,
        tokens,
        limits,
        published=published,
        reads=reads,
        api=api,
        extra_routes=[
            *ops_routes(metrics, log_, seq, published, reads),
            *(scim_routes(service, api) if service is not None else []),
            *console_routes(api, service),
        ],
        on_startup=[
            *(
                [lambda: service.erasures.start(config.scim_expiry_interval)]
                if service is not None
                else []
            ),
            *([publisher.start] if publisher is not None else []),
        ],
        on_shutdown=[
            *([service.erasures.stop] if service is not None else []),
            *([publisher.stop] if publisher is not None else []),
        ],
    )
    app.observe = metrics.observe_request
    app.state.metrics = metrics
    app.state.scim = service
    app.state.pusher = pusher  # the push rounds, if witnessed (tests, operations)
    if publisher is not None:
        metrics.registry.register(publisher.collector())
    app.state.bucket = publisher
    return app, log_, tokens


def _lock_dir(lock_dir: Path | None) -> Path | None:
    """The directory for LMDB's lock file: ``lock_dir``, else a memory file system."""
    if lock_dir is not None:
        return lock_dir
    found = default_lock_dir()
    if found is None:
        log.warning(
            "no memory file system (/dev/shm, $XDG_RUNTIME_DIR) for LMDB's lock file: it "
            "stays in the store directory, where a frozen or stalled data disk stops the "
            "whole server (reads included); give --lock-dir on a tmpfs"
        )
    return found


def _both(
    first: Callable[[int], None] | None, second: Callable[[int], None]
) -> Callable[[int], None]:
    if first is None:
        return second

    def both(size: int) -> None:
        first(size)
        second(size)

    return both


def _bucket_publisher(
    log_: Log,
    bucket: str | None,
    endpoint: str | None,
    region: str | None,
    store: ObjectStore | None,
    published: PublishedState,
) -> BucketPublisher:
    """The publisher to the bucket, checked against the store (refuses a bucket ahead)."""
    if store is None:
        assert bucket is not None
        store = S3Store(bucket, endpoint_url=endpoint, region=region)
    # The bucket gets the checkpoint GET /checkpoint hands out (with witnesses: cosigned).
    publisher = BucketPublisher(log_, store, checkpoint_source=published.checkpoint)
    try:
        publisher.check_at_startup()
    except BucketError as exc:  # reported by the command line as one line, not a traceback
        raise StorageError(
            f"{exc} (the bucket must answer at start: its checkpoint is compared with the "
            "database before this log signs anything)"
        ) from None
    return publisher
