"""Publishing the log's public, immutable read side to an S3-compatible bucket.

After each durable commit (never before: the publisher only reads what the log's store
already holds, through :class:`tlog.log.Log`'s verified read methods, so it works over any
storage backend), a background thread writes to the bucket:

* full hash tiles ``tile/<L>/<N>`` and entry bundles ``tile/entries/<N>``: **create-only**
  (``If-None-Match: *``). An object already there with identical bytes is accepted (another
  frontend, or a retry, wrote it); different bytes mean the bucket holds another history of
  this log: a loud error, and the log stops signing (:meth:`tlog.log.Log.halt`);
* partial tiles ``tile/<L>/<N>.p/<W>`` and ``tile/entries/<N>.p/<W>`` for the published
  size: create-only too (a partial tile of a given width never changes);
* the checkpoint ``checkpoint``, last: replaced with ``If-Match`` on the ETag read before
  (a compare-and-swap), only ever by a larger tree size, so several frontends publishing at
  once cannot move it backwards.

Nothing else is ever written (no entries outside bundles, no SCIM data, no keys or tokens).
Objects carry the tlog-tiles Content-Type and a Cache-Control (immutable for full tiles and
bundles, short for partial tiles and the checkpoint), so the bucket (or a CDN in front of
it) serves any tlog-tiles client directly.

Two frontends that both believe they are the sequencer, each on a store of its own (split
brain), therefore cannot overwrite each other's checkpoint: the loser's write gets 412; if
the winner's checkpoint forks from the loser's tree, or lies beyond the loser's database (no
frontend of that database published it), the loser stops publishing and signing
(:class:`BucketConflict`: CRITICAL, ``tlog_bucket_conflict``). Whether the store honours the
conditions at all is probed once at start (:func:`probe_conditional_writes`); one that does
not keeps being published to, with a WARNING naming the gap.

A failed publication loses nothing: what was acknowledged is in the database, and the
publisher catches up from there on the next commit, on its retry timer, and at start.
At start, :meth:`BucketPublisher.check_at_startup` compares the bucket's checkpoint with the
database's: a bucket ahead of (or forked from) the database means the database lost data,
and the log refuses to sign (:class:`tlog.integrity.RollbackDetected`).

The S3 client (boto3) is an optional extra: ``pip install 'tlog[s3]'``.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from prometheus_client.core import GaugeMetricFamily

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import VerificationError
from client.formats.note import MAX_NOTE_SIZE, FormatError, open_note
from client.formats.tiles import TILE_HEIGHT, TILE_WIDTH, Tile
from tlog.integrity import RECOVER_HINT, RollbackDetected
from tlog.log import Log
from tlog.tree import NodeReader

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "CHECKPOINT_CACHE",
    "FULL_TILE_CACHE",
    "PARTIAL_TILE_CACHE",
    "BucketConflict",
    "BucketError",
    "BucketPublisher",
    "ObjectStore",
    "S3Store",
    "content_headers",
    "probe_conditional_writes",
    "tiles_between",
]

log = logging.getLogger("tlog.bucket")

CHECKPOINT_KEY = "checkpoint"
CHECKPOINT_TYPE = "text/plain; charset=utf-8"
TILE_TYPE = "application/octet-stream"
# tlog-tiles: full tiles and bundles never change; a checkpoint is cached "a few seconds" at
# most; a partial tile is immutable too but may be deleted once its full tile exists.
FULL_TILE_CACHE = "public, max-age=31536000, immutable"
PARTIAL_TILE_CACHE = "public, max-age=60"
CHECKPOINT_CACHE = "public, max-age=5"


class BucketError(Exception):
    """The bucket could not be read or written (network, credentials, server error)."""


class BucketConflict(BucketError):
    """An immutable object in the bucket holds other bytes than this log's: the bucket holds
    another history of this log (or of another log under the same prefix)."""


class PreconditionFailed(BucketError):
    """A conditional write was refused (412): the object exists, or changed since read."""


class ObjectStore(Protocol):
    """The few operations the publisher needs from an object store."""

    def get(self, key: str, limit: int) -> tuple[bytes, str] | None:
        """(bytes, ETag) of ``key``, or None if there is no such object. At most ``limit`` + 1
        bytes are read: a longer object comes back cut there (the caller refuses it)."""

    def create(self, key: str, data: bytes, content_type: str, cache_control: str) -> str:
        """Write ``key`` only if absent (``If-None-Match: *``); returns the new ETag.
        Raises :class:`PreconditionFailed` if it exists."""

    def replace(
        self, key: str, data: bytes, etag: str, content_type: str, cache_control: str
    ) -> str:
        """Overwrite ``key`` only if its ETag is still ``etag`` (``If-Match``); returns the
        new ETag. Raises :class:`PreconditionFailed` if it changed or vanished."""

    def keys(self) -> Iterator[str]:
        """Every key under the store's prefix (relative to it)."""


def content_headers(key: str) -> tuple[str, str]:
    """(Content-Type, Cache-Control) of a published object."""
    if key == CHECKPOINT_KEY:
        return CHECKPOINT_TYPE, CHECKPOINT_CACHE
    if ".p/" in key:
        return TILE_TYPE, PARTIAL_TILE_CACHE
    return TILE_TYPE, FULL_TILE_CACHE


@dataclass(frozen=True)
class BucketURL:
    bucket: str
    prefix: str  # "" or "a/b/" (always ends in "/")

    @classmethod
    def parse(cls, url: str) -> BucketURL:
        """``s3://bucket`` or ``s3://bucket/some/prefix``."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"not a bucket URL (want s3://bucket/prefix): {url!r}")
        prefix = parts.path.strip("/")
        if "//" in prefix or any(p in (".", "..") for p in prefix.split("/")):
            raise ValueError(f"bad prefix in bucket URL {url!r}")
        return cls(parts.netloc, prefix + "/" if prefix else "")


class S3Store:
    """An :class:`ObjectStore` over boto3 (any S3-compatible server: AWS S3, SeaweedFS,
    MinIO, Ceph RGW, R2, ...). Credentials come from boto3's usual chain
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, profiles, instance roles)."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        timeout: float = 10.0,
        client: S3Client | None = None,
    ) -> None:
        where = BucketURL.parse(url)
        self.bucket = where.bucket
        self.prefix = where.prefix
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:  # pragma: no cover - depends on the installation
                raise BucketError(
                    "publishing to a bucket needs boto3: pip install 'tlog[s3]'"
                ) from None
            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=Config(
                    connect_timeout=timeout,
                    read_timeout=timeout,
                    retries={"max_attempts": 3, "mode": "standard"},
                    # Path-style URLs work with every S3-compatible server.
                    s3={"addressing_style": "path"},
                ),
            )
        self._s3 = client

    def _fail(self, what: str, key: str, exc: Exception) -> BucketError:
        status, code = _error_of(exc)
        if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return PreconditionFailed(f"{what} s3://{self.bucket}/{self.prefix}{key}: {code}")
        return BucketError(f"{what} s3://{self.bucket}/{self.prefix}{key} failed: {exc}")

    def get(self, key: str, limit: int) -> tuple[bytes, str] | None:
        try:
            r = self._s3.get_object(Bucket=self.bucket, Key=self.prefix + key)
            body = r["Body"]
            try:
                return body.read(limit + 1), r["ETag"]
            finally:
                body.close()  # the rest of an oversized object is never read
        except Exception as exc:
            status, code = _error_of(exc)
            if status == 404 or code in ("NoSuchKey", "404"):
                return None
            raise self._fail("reading", key, exc) from None

    def create(self, key: str, data: bytes, content_type: str, cache_control: str) -> str:
        try:
            r = self._s3.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=data,
                IfNoneMatch="*",
                ContentType=content_type,
                CacheControl=cache_control,
            )
        except Exception as exc:
            raise self._fail("creating", key, exc) from None
        return r["ETag"]

    def replace(
        self, key: str, data: bytes, etag: str, content_type: str, cache_control: str
    ) -> str:
        try:
            return self._put_if_match(key, data, etag, content_type, cache_control)
        except PreconditionFailed:
            # Ceph RGW compares If-Match with the unquoted ETag only: if the object is
            # unchanged (same ETag), ask once more without the quotes.
            unquoted = etag.strip('"')
            if unquoted == etag or self._etag(key) != etag:
                raise
            return self._put_if_match(key, data, unquoted, content_type, cache_control)

    def _put_if_match(
        self, key: str, data: bytes, etag: str, content_type: str, cache_control: str
    ) -> str:
        try:
            r = self._s3.put_object(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Body=data,
                IfMatch=etag,
                ContentType=content_type,
                CacheControl=cache_control,
            )
        except Exception as exc:
            raise self._fail("replacing", key, exc) from None
        return r["ETag"]

    def _etag(self, key: str) -> str | None:
        try:
            return self._s3.head_object(Bucket=self.bucket, Key=self.prefix + key)["ETag"]
        except Exception as exc:
            status, code = _error_of(exc)
            if status == 404 or code in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._fail("reading", key, exc) from None

    def delete(self, key: str) -> None:
        """Remove ``key`` (only the start-up probe's objects are ever removed)."""
        try:
            self._s3.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            raise self._fail("deleting", key, exc) from None

    def keys(self) -> Iterator[str]:
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix) :]
        except Exception as exc:
            raise self._fail("listing", "", exc) from None


def _error_of(exc: Exception) -> tuple[int | None, str]:
    """(HTTP status, S3 error code) of a botocore ClientError; (None, "") otherwise."""
    response: Any = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None, ""
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code", "")
    return (status if isinstance(status, int) else None), str(code)


def _signatures(note: str | bytes) -> int:
    """How many signature lines a note carries (the log's and the cosignatures)."""
    data = note.encode() if isinstance(note, str) else note
    return data.count(b"\n\xe2\x80\x94 ")


# Where the start-up probe writes: no tlog-tiles path, so no client ever asks for it. A
# writer that may delete uses a name of its own per start and removes it after; one that may
# not uses the one fixed name below, overwritten at each start, so nothing piles up.
PROBE_PREFIX = "tlog-probe/"
PROBE_KEPT_KEY = PROBE_PREFIX + "kept"
_PROBE_READ_LIMIT = 64
# Another frontend's probe may write the kept object between a read and the write on its
# ETag: tried again after a random pause that grows (0-10 ms, then up to 0.5 s each), so
# frontends starting together do not keep meeting. Five tries without pauses lost all five to
# seven racing probes on a loaded machine (the CI of stop 35); twelve of up to 0.25 s lost
# to sixteen frontends probing at once, each writing the object twice since stop 36 (a CI
# run of stop 37). At most ~12 s of pauses in all, at a start only.
_PROBE_WRITE_TRIES = 30
_PROBE_PAUSE_BASE = 0.01
_PROBE_PAUSE_MAX = 0.5
_WRONG_ETAG = '"00000000000000000000000000000000"'


def _may_delete(store: ObjectStore) -> Callable[[str], None] | None:
    """The store's delete, if the writer may delete: asked by deleting a key that does not
    exist (S3 answers 204 when allowed, 403 when not; nothing is written either way)."""
    delete: Callable[[str], None] | None = getattr(store, "delete", None)
    if delete is None:
        return None
    try:
        delete(PROBE_PREFIX + "absent-" + secrets.token_hex(8))
    except BucketError as exc:
        log.info(
            "the bucket writer may not delete (%s): the probe uses the one object %s, "
            "overwritten at each start",
            exc,
            PROBE_KEPT_KEY,
        )
        return None
    return delete


class _OwnEtagRefused(BucketError):
    """A replace on the object's current ETag refused with nothing written in between."""


def _probe_write(store: ObjectStore, key: str, data: bytes, kept: bool) -> None:
    """Write the probe object (its first write at this start) and read it back. A unique
    ``key`` is created; the kept one is created or replaced on the ETag just read (another
    frontend starting at the same moment may write it in between: read again, after a random
    pause that grows, so racing frontends spread out). Raises
    :class:`BucketError` when the writer cannot write it or cannot read it back."""
    for attempt in range(_PROBE_WRITE_TRIES):
        if attempt:
            pause = min(_PROBE_PAUSE_MAX, _PROBE_PAUSE_BASE * 2 ** (attempt - 1))
            time.sleep(secrets.randbelow(1000) / 1000 * pause)
        got = store.get(key, _PROBE_READ_LIMIT) if kept else None
        try:
            if got is None:
                store.create(key, data, CHECKPOINT_TYPE, "no-store")
            else:
                store.replace(key, data, got[1], CHECKPOINT_TYPE, "no-store")
            break
        except PreconditionFailed:
            if not kept:
                raise
            if got is not None:
                again = store.get(key, _PROBE_READ_LIMIT)
                if again is not None and again[1] == got[1]:
                    # nobody wrote it in between: the store refused the object's own ETag
                    # (red team 25: it was "kept changing", twelve tries later)
                    raise _OwnEtagRefused(key) from None
    else:
        raise BucketError(f"the probe object {key} kept changing while it was written")
    back = store.get(key, _PROBE_READ_LIMIT)
    if back is None:
        raise BucketError(f"the probe object {key} just written cannot be read back")
    # The kept object may already hold another frontend's probe; a unique one must not.
    if not kept and back[0] != data:
        raise BucketError(f"the probe object {key} reads back other bytes than written")


def probe_conditional_writes(store: ObjectStore) -> str | None:
    """Whether ``store`` honours the conditional writes the publisher relies on, asked with
    real requests on a probe object: None when both hold, else the gap, named.

    * ``If-None-Match: *``: a create of the probe once it exists must be refused (412);
    * ``If-Match``: a replace with an ETag the object never had must be refused (412), and
      one with the object's own ETag taken.

    A writer that may delete probes an object of its own and removes it afterwards: nothing
    is left. One that may not (:func:`_may_delete`) probes the one object
    :data:`PROBE_KEPT_KEY`, overwritten at each start: no more than that one small object
    is ever left. Raises :class:`BucketError` when the probe cannot be written or read back."""
    delete = _may_delete(store)
    kept = delete is None
    token = secrets.token_hex(8)
    key = PROBE_KEPT_KEY if kept else PROBE_PREFIX + token
    gaps: list[str] = []
    try:
        _probe_write(store, key, f"probe {token} 1\n".encode(), kept)
        try:
            store.create(key, f"probe {token} 2\n".encode(), CHECKPOINT_TYPE, "no-store")
            gaps.append("If-None-Match: * (a create-only write replaced an existing object)")
        except PreconditionFailed:
            pass
        try:
            data = f"probe {token} 3\n".encode()
            store.replace(key, data, _WRONG_ETAG, CHECKPOINT_TYPE, "no-store")
            gaps.append("If-Match (a write with an ETag the object never had replaced it)")
        except PreconditionFailed:
            pass
        # and a replace on the object's own ETag must be taken (the publisher's
        # compare-and-swap of the checkpoint): before, a store refusing it passed the probe
        # of a first start and failed the next one's as "kept changing" (red team 25)
        _probe_write(store, key, f"probe {token} 4\n".encode(), True)
    except _OwnEtagRefused:
        gaps.append(
            "If-Match (a write with the object's own ETag was refused: the bucket's "
            "checkpoint could never be replaced)"
        )
    finally:
        if delete is not None:
            try:
                delete(key)
            except BucketError as exc:
                log.info("could not remove the probe object %s: %s", key, exc)
    return "; ".join(gaps) or None


def tiles_between(old: int, new: int) -> list[Tile]:
    """The objects to write when the published size moves from ``old`` to ``new``: entry
    bundles and hash tiles that became full since ``old`` (every level), and the partial
    ones of size ``new``, lowest first (a tile is written before anything that covers it)."""
    out: list[Tile] = []
    for level in range(-1, 64):
        shift = TILE_HEIGHT * max(level, 0)
        n_old, n_new = old >> shift, new >> shift
        if n_new == 0:
            break
        full = n_new // TILE_WIDTH
        out.extend(Tile(level, i) for i in range(n_old // TILE_WIDTH, full))
        if n_new % TILE_WIDTH:
            out.append(Tile(level, full, n_new % TILE_WIDTH))
        if level >= 0 and full == 0:
            break
    return out


class BucketPublisher:
    """Writes what the log published to ``store``, in a background thread.

    ``checkpoint_source`` gives the checkpoint note to publish (default: the log's latest;
    with witnesses, the newest cosigned one, the same as ``GET /checkpoint``).
    """

    def __init__(
        self,
        log_: Log,
        store: ObjectStore,
        *,
        checkpoint_source: Callable[[], str] | None = None,
        retry_interval: float = 1.0,
        max_backoff: float = 30.0,
        check_interval: float = 5.0,
        parallel: int = 8,
    ) -> None:
        self.log = log_
        self.store = store
        self.checkpoint_source = checkpoint_source or (lambda: self.log.latest.note)
        self.retry_interval = retry_interval
        self.max_backoff = max_backoff
        # While idle, the bucket's checkpoint is re-read this often: a bucket ahead of the
        # database (the database failed over to a standby that was behind) stops signing.
        self.check_interval = check_interval
        self.parallel = max(1, parallel)  # PUTs in flight while catching up
        self._last_read = 0.0
        self._bucket_sigs = 0  # signature lines (log + cosignatures) of the bucket's note
        self.published = 0  # every tile of this tree size is in the bucket
        self.bucket_size = 0  # the size of the checkpoint in the bucket (as last seen)
        self._etag: str | None = None  # of the bucket's checkpoint as last seen
        self.failures = 0  # consecutive failed rounds
        self.last_error: str | None = None
        self.stopped: str | None = None  # set when a conflict stopped publishing
        # Whether the store honours If-None-Match/If-Match (probed at start): True, False
        # (WARNING: split brain is then caught after the fact, not prevented), None unknown.
        self.conditional: bool | None = None
        self._lock = threading.Lock()  # one round at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- start-up ----------------------------------------------------------------------------

    def _bucket_checkpoint(self) -> tuple[Checkpoint, str] | None:
        """The bucket's checkpoint (verified) and its ETag; remembers its signature count."""
        got = self.store.get(CHECKPOINT_KEY, MAX_NOTE_SIZE)
        if got is None:
            return None
        data, etag = got
        if len(data) > MAX_NOTE_SIZE:
            raise RollbackDetected(
                f"the bucket's checkpoint is larger than a note can be ({MAX_NOTE_SIZE} bytes): "
                "the bucket prefix belongs to something else, or was tampered with. Give this "
                "log its own bucket prefix."
            )
        try:
            n = open_note(data, [self.log.signer.verifier])
            cp = Checkpoint.parse(n.text)
        except (FormatError, VerificationError, UnicodeDecodeError) as exc:
            raise RollbackDetected(
                f"the bucket's checkpoint is not signed by this log's key ({exc}): the "
                "bucket prefix belongs to another log, or was tampered with. Give this log "
                "its own bucket prefix."
            ) from None
        if cp.origin != self.log.origin:
            raise RollbackDetected(
                f"the bucket's checkpoint is for origin {cp.origin!r}, not {self.log.origin!r}"
            )
        self._bucket_sigs = _signatures(data)
        return cp, etag

    def check_at_startup(self) -> None:
        """Refuse to sign if the bucket is ahead of (or forked from) the database.

        The bucket's checkpoint was written only after its tree was committed to the
        database, so a bucket checkpoint larger than the database's tree, or one whose root
        the database's tree does not have at that size, means the database lost committed
        data (restored from an old backup, a failover to a replica that was behind, or a
        different database). Raises :class:`RollbackDetected` saying what to do.
        """
        got = self._bucket_checkpoint()
        self._probe()
        if got is None:
            log.info("bucket has no checkpoint yet: publishing the log from the start")
            return
        cp, etag = got
        # The database's tree size read now, after the bucket's checkpoint: the bucket is
        # written only after the database commits, so a database that is not lost has at
        # least that size. (``self.log.latest`` was loaded before the bucket was read: with
        # several frontends, another one may have committed and published meanwhile.)
        size = self._database_size()
        if cp.size > size:
            raise RollbackDetected(self._ahead_message(cp.size, size))
        with self.log.storage.read() as rv:
            root = NodeReader(rv.blob).root(cp.size)
        if root != cp.root_hash:
            raise RollbackDetected(
                f"the bucket's checkpoint for tree size {cp.size} has another root than the "
                "database's tree at that size: the database (or the bucket) is not this "
                "log's history. " + RECOVER_HINT
            )
        self.bucket_size, self._etag = cp.size, etag
        self._last_read = time.monotonic()
        # Tiles are written before the checkpoint that covers them.
        self.published = cp.size

    def _probe(self) -> None:
        """Ask the store once whether it honours conditional writes (see
        :func:`probe_conditional_writes`). Not honoured: publishing goes on as before, with a
        WARNING naming the gap; the probe cannot be written: a WARNING, unknown."""
        try:
            gap = probe_conditional_writes(self.store)
        except BucketError as exc:
            self.conditional = None
            log.warning(
                "could not probe whether the bucket honours conditional writes (%s): if it "
                "does not, two frontends that both believe they are the sequencer (split "
                "brain) can overwrite each other's checkpoint in the bucket",
                exc,
            )
            return
        self.conditional = gap is None
        if gap is not None:
            log.warning(
                "the bucket does NOT honour conditional writes: %s. Two frontends that both "
                "believe they are the sequencer (split brain) can then overwrite each other's "
                "checkpoint and tiles in the bucket; it is caught only afterwards, when a "
                "frontend compares what it reads back. Use a store that honours If-None-Match "
                "and If-Match on PutObject (AWS S3, SeaweedFS, MinIO, Ceph RGW) to prevent it "
                "(docs/operations.md, 'Publishing to a bucket')",
                gap,
            )
        else:
            log.info("the bucket honours conditional writes (If-None-Match, If-Match)")

    def _database_size(self) -> int:
        with self.log.storage.read() as rv:
            return rv.tree_size()

    @staticmethod
    def _ahead_message(bucket: int, size: int) -> str:
        return (
            f"the bucket holds this log's checkpoint for tree size {bucket}, but the "
            f"database ends at tree size {size}: the database lost committed entries "
            "(restored from an older backup, or failed over to a replica that was "
            "behind). Do not sign on this database. Restore a newer backup or promote "
            "the up-to-date replica; or bring the store forward from the bucket, "
            "verified against its checkpoint: save <bucket HTTP URL>/checkpoint to a "
            "file, then 'tlog recover --from <bucket HTTP URL> --checkpoint <file>' "
            "(with --database <URL> for a PostgreSQL log) "
            "(see docs/operations.md, 'Bucket ahead of the database')."
        )

    # -- the background thread ------------------------------------------------------------

    def notify(self, size: int = 0) -> None:
        """Called after each durable commit (from the sequencer's writer): publish soon."""
        self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="tlog-bucket", daemon=True)
            self._thread.start()
            self._wake.set()  # catch up at start

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        delay = self.retry_interval
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.publish_once()
            except BucketConflict:
                return  # logged and halted in publish_once
            except Exception as exc:
                delay = min(self.max_backoff, self.retry_interval * 2 ** min(self.failures, 8))
                log.warning(
                    "publishing to the bucket failed (attempt %d, retrying in %.0f s): %s",
                    self.failures,
                    delay,
                    exc,
                )
                continue
            delay = self.retry_interval

    # -- one round ------------------------------------------------------------------------

    def publish_once(self) -> int:
        """Publish the current checkpoint (tiles first); returns the bucket's tree size."""
        with self._lock:
            if self.stopped is not None:
                raise BucketConflict(self.stopped)
            try:
                size = self._publish()
            except BucketConflict as exc:
                self.stopped = str(exc)
                self.last_error = str(exc)
                log.critical("BUCKET CONFLICT, the log stops signing: %s", exc)
                self.log.halt(f"the bucket holds another history of this log: {exc}")
                raise
            except Exception as exc:
                self.failures += 1
                self.last_error = str(exc)
                raise
            self.failures = 0
            self.last_error = None
            return size

    def _check_not_behind(self) -> None:
        if self.bucket_size > self.log.latest.size:
            # The bucket is ahead of this frontend: another frontend published more (fine),
            # or the database this frontend now uses lost committed entries (a failover to
            # a standby that was behind, a restore): then stop signing.
            size = self._database_size()
            if size < self.bucket_size:
                reason = self._ahead_message(self.bucket_size, size)
                self.log.halt(reason)
                raise BucketError(reason)

    def _refresh(self) -> None:
        """Read the bucket's checkpoint (what other frontends published)."""
        self._last_read = time.monotonic()
        self._adopt(self._bucket_checkpoint())

    def _adopt(self, got: tuple[Checkpoint, str] | None) -> None:
        """Take in the bucket's checkpoint as just read (after a failed compare-and-swap, or
        while idle), checked against the database:

        * one this database's tree has another root for at that size is another history
          of this log on the same key (a promoted standby that forked, two primaries):
          :class:`BucketConflict`, never replaced by a checkpoint that forks from it;
        * one smaller than last seen, or none, means the bucket went back (restored from
          an older snapshot, objects deleted): the objects published since may be gone,
          so they are published again from there (create-only: those still there are
          compared, not rewritten).
        """
        if got is None:
            if self.published:
                log.warning("the bucket's checkpoint is gone: publishing every tile again")
            self._etag, self.bucket_size, self.published = None, 0, 0
            return
        cp, self._etag = got
        with self.log.storage.read() as rv:
            if cp.size <= rv.tree_size() and NodeReader(rv.blob).root(cp.size) != cp.root_hash:
                raise BucketConflict(
                    f"the bucket's checkpoint for tree size {cp.size} has another root than "
                    "this database's tree at that size: another history of this log is "
                    "being published under this prefix (a promoted standby that forked, or "
                    "two primaries on one key)"
                )
        if cp.size < self.bucket_size and cp.size < self.published:
            log.warning(
                "the bucket's checkpoint went back from tree size %d to %d (restored from "
                "an older state?): publishing the tiles from %d again",
                self.bucket_size,
                cp.size,
                cp.size,
            )
            self.published = cp.size
        self.bucket_size = cp.size

    def _publish(self) -> int:
        self._check_not_behind()
        note = self.checkpoint_source()
        n = open_note(note, [self.log.signer.verifier])
        target = Checkpoint.parse(n.text)
        if target.size > self.published:
            t0 = time.monotonic()
            tiles = tiles_between(self.published, target.size)
            if len(tiles) <= 2:
                for tile in tiles:
                    self._put_immutable(tile)
            else:  # catching up: several PUTs in flight (every one must succeed)
                with ThreadPoolExecutor(
                    min(self.parallel, len(tiles)), thread_name_prefix="tlog-bucket-put"
                ) as pool:
                    for f in [pool.submit(self._put_immutable, t) for t in tiles]:
                        f.result()
            log.debug(
                "published %d tiles for sizes %d..%d in %.3f s",
                len(tiles),
                self.published,
                target.size,
                time.monotonic() - t0,
            )
            self.published = target.size
        if (
            target.size > self.bucket_size
            or self._etag is None
            # The same tree head with more cosignatures (a witness answered since).
            or (target.size == self.bucket_size and _signatures(note) > self._bucket_sigs)
        ):
            self._put_checkpoint(note.encode(), target)
        elif time.monotonic() - self._last_read >= self.check_interval:
            self._refresh()
            self._check_not_behind()
        return self.bucket_size

    def _tile_bytes(self, tile: Tile, size: int) -> bytes:
        if tile.is_entries:
            return self.log.entry_bundle(tile.index, tile.width, size)
        return self.log.hash_tile(tile.level, tile.index, tile.width, size)

    def _put_immutable(self, tile: Tile) -> None:
        key = tile.path()
        data = self._tile_bytes(tile, self.log.latest.size)
        ctype, cache = content_headers(key)
        try:
            self.store.create(key, data, ctype, cache)
            return
        except PreconditionFailed:
            pass
        got = self.store.get(key, len(data))  # a longer object differs: no need to read it all
        if got is None:  # deleted in between: try once more, conditionally again
            self.store.create(key, data, ctype, cache)
            return
        if got[0] != data:
            there = len(got[0])
            size = f"more than {len(data)}" if there > len(data) else str(there)
            raise BucketConflict(
                f"{key} in the bucket differs from this log's tile ({size} bytes "
                f"there, {len(data)} here): the bucket prefix holds another history"
            )

    def _put_checkpoint(self, note: bytes, target: Checkpoint) -> None:
        for _ in range(8):  # bounded: each retry means another frontend moved it
            etag = self._etag
            try:
                if etag is None:
                    self._etag = self.store.create(
                        CHECKPOINT_KEY, note, CHECKPOINT_TYPE, CHECKPOINT_CACHE
                    )
                else:
                    self._etag = self.store.replace(
                        CHECKPOINT_KEY, note, etag, CHECKPOINT_TYPE, CHECKPOINT_CACHE
                    )
                self.bucket_size = target.size
                self._bucket_sigs = _signatures(note)
                return
            except PreconditionFailed:
                pass
            self._last_read = time.monotonic()
            got = self._bucket_checkpoint()
            published = self.published
            self._adopt(got)
            if self.published < published:
                # The bucket went back: its tiles first, then the checkpoint (next round).
                raise BucketError(
                    f"the bucket went back to tree size {self.bucket_size}: "
                    "publishing its tiles again"
                )
            if got is None:
                continue
            cp = got[0]
            if cp.size > target.size:
                size = self._database_size()
                if size < cp.size:
                    # Not another frontend of this database (it would have committed that
                    # size here first): another writer with another store won the race.
                    raise BucketConflict(
                        f"lost the bucket's checkpoint to another writer (412): the bucket's "
                        f"checkpoint is at tree size {cp.size}, beyond this database's tree "
                        f"({size}). Two frontends each believe they are the sequencer on "
                        "their own store (split brain), or this database lost committed "
                        "entries; the bucket keeps the other writer's checkpoint, never "
                        "overwritten"
                    )
                return  # another frontend published a larger checkpoint of this log
            if cp.size == target.size:
                if cp.root_hash != target.root_hash:
                    raise BucketConflict(
                        f"the bucket's checkpoint for tree size {cp.size} has another root"
                    )
                if _signatures(note) > self._bucket_sigs:
                    continue  # ours carries more cosignatures: replace it
                return  # the same tree head, as well signed: done
        raise BucketError("the bucket's checkpoint kept changing; will retry")

    # -- status ---------------------------------------------------------------------------

    def collector(self) -> BucketCollector:
        """Prometheus gauges of this publisher (register on the app's metrics registry)."""
        return BucketCollector(self)

    def status(self) -> dict[str, Any]:
        return {
            "published_size": self.published,
            "bucket_checkpoint_size": self.bucket_size,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
            "stopped": self.stopped,
            "conditional_writes": self.conditional,
        }


class BucketCollector:
    """``tlog_bucket_*`` gauges for ``GET /metrics``."""

    def __init__(self, publisher: BucketPublisher) -> None:
        self.publisher = publisher

    def collect(self) -> Iterator[GaugeMetricFamily]:
        p = self.publisher
        yield GaugeMetricFamily(
            "tlog_bucket_checkpoint_size",
            "tree size of the checkpoint in the bucket (as last written or read)",
            value=p.bucket_size,
        )
        yield GaugeMetricFamily(
            "tlog_bucket_published_size",
            "tree size whose tiles and entry bundles are all in the bucket",
            value=p.published,
        )
        yield GaugeMetricFamily(
            "tlog_bucket_consecutive_failures",
            "publication rounds that failed in a row (0: the bucket is current)",
            value=p.failures,
        )
        yield GaugeMetricFamily(
            "tlog_bucket_conditional_writes",
            "1 when the store honours If-None-Match/If-Match (probed at start), 0 when it "
            "does not (split brain is then only caught afterwards), -1 when unknown",
            value=-1 if p.conditional is None else int(p.conditional),
        )
        yield GaugeMetricFamily(
            "tlog_bucket_conflict",
            "1 when the bucket held other bytes for an immutable object (signing stopped)",
            value=1 if p.stopped is not None else 0,
        )
