"""The SCIM key hierarchy: a master key file standing in for a KMS, and what it wraps.

::

    <data>/scim-master.key          32 random bytes, mode 0600, bound to its store (open_keyring)
     ├─ log tenant key              random; tn = HMAC-SHA256(it, tenant)[:16] (public leaf)
     └─ per tenant (record T/tn)
         ├─ KEK                     random; wraps everything below
         ├─ index key               random; search index h = HMAC-SHA256(it, field ‖ value)
         └─ per data subject (record S/tn/h, h = HMAC(index key, subject))
             ├─ kid                 random 16 bytes, names the subject's keys and events
             ├─ pseudonym key P     random; pid = HMAC-SHA256(P, id)[:16] in others' bodies
             └─ DEK per month       random (record D/kid/epoch); AES-256-GCM of the bodies

Every wrap is AES-256-GCM with a fresh 96-bit IV and an AAD naming what is wrapped and
where it belongs (``tlog-scim/v1/dek`` ‖ tn ‖ kid ‖ epoch, ...), so a wrapped key moved to
another record does not unwrap. Crypto-shredding a subject deletes its S record (kid and P)
and all its D records: the bodies encrypted under those DEKs can no longer be decrypted by
anyone holding the master key, and no record links the random kid to the subject any more.

The envelope crypto is here too: an event's body ``{b: event, n: nonce, e: effect}`` sealed
under its subject's DEK with the leaf hash as AAD (:func:`envelope_plaintext`,
:func:`seal_envelope`, :meth:`KeyRing.open_envelope`), and a resource's security-relevant
state sealed under the same DEK (:func:`seal_state`, :meth:`KeyRing.state`), so shredding the
DEK destroys both.

Nothing here logs or prints key material; reprs hide it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import socket
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cbor2
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.runtime.durable import create_new, rename_durably
from client.runtime.private import PrivateFileError, read_private_file
from client.scim.cbor import EventFormatError, dumps_det, loads_det
from client.scim.event import Event, validate_event
from client.scim.leaf import pid as make_pid
from client.scim.leaf import tenant_ref
from tlog.backend import AuxFenced, Backend, StorageError
from tlog.scim import store
from tlog.scim.store import Overlay, Tombstone, decode_envelope, decode_record, encode_record

__all__ = [
    "MASTER_KEY_FILE",
    "ActorOpening",
    "KeyFile",
    "KeyFileLock",
    "KeyRing",
    "KeysRotated",
    "MasterKey",
    "RandomPool",
    "SubjectId",
    "SubjectKeys",
    "TenantKeys",
    "envelope_plaintext",
    "epoch_of",
    "load_key_file",
    "new_kid",
    "open_keyring",
    "seal",
    "seal_actor",
    "seal_envelope",
    "seal_state",
    "stored_check",
    "subject_encoding",
    "unseal",
]

log = logging.getLogger("tlog.scim.keys")

MASTER_KEY_FILE = "scim-master.key"
KEY_SIZE = 32
IV_SIZE = 12
KID_SIZE = 16
KID_TIME_SIZE = 6  # a kid's leading bytes: the log time (ms) it was made at, big-endian
MAX_CACHED_REFS = 4096  # tenant refs remembered by a KeyRing (KeyRing.tenant_ref)
# KeyRing.follow_rotation: how many times the store's check value is read again when the key
# file holds no key that opens it (other rotations may land in between).
FOLLOW_TRIES = 4
HASH16 = 16
_FILE_HEADER = "tlog-scim-master-key-v1 "
_AAD = b"tlog-scim/v1/"
_CHECK_PLAINTEXT = b"tlog-scim master key check"
_STATE_AAD = b"tlog-scim-state\x00"
_ACTOR_AAD = _AAD + b"actor"
_ACTOR_HEAD = KID_SIZE + 4 + IV_SIZE  # a sealed actor: kid ‖ u32 epoch ‖ iv ‖ ciphertext


def seal(
    key: bytes | AESGCM, plaintext: bytes, aad: bytes, rand: Callable[[int], bytes] = os.urandom
) -> bytes:
    """AES-256-GCM with a fresh random IV: ``iv(12) ‖ ciphertext ‖ tag(16)``. ``key`` may be
    an ``AESGCM`` object already keyed (a tenant's KEK: :attr:`TenantKeys.kek_aead`).
    ``rand``: where the IV comes from (a batch's :class:`RandomPool`; the OS by default)."""
    iv = rand(IV_SIZE)
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    return iv + aead.encrypt(iv, plaintext, aad)


def unseal(key: bytes | AESGCM, blob: bytes, aad: bytes, what: str) -> bytes:
    """Open :func:`seal` output; a wrong key, AAD or a modified blob is a :class:`StorageError`."""
    if len(blob) < IV_SIZE + 16:
        raise StorageError(f"{what}: sealed value too short")
    aead = key if isinstance(key, AESGCM) else AESGCM(key)
    try:
        return aead.decrypt(blob[:IV_SIZE], blob[IV_SIZE:], aad)
    except InvalidTag:
        raise StorageError(f"{what}: does not decrypt (wrong key or modified record)") from None


class RandomPool:
    """Random bytes for one staging (one batch, under the writer lock), read from the OS in
    blocks instead of one ``getrandom`` call per nonce, IV and key (a new subject alone needs
    eight). Every byte is handed out once; the pool lives only as long as the staging (or
    the group of stagings that shares it: ``ScimService._pipeline``), and what it did not
    hand out is never used for anything."""

    BLOCK = 8192
    # The first read is small: a single event's staging draws a few hundred bytes (a new
    # subject's keys, IVs and nonce), and reading a whole BLOCK for it cost ~25 µs of
    # getrandom per event; a batch's later reads are BLOCK-sized.
    FIRST_BLOCK = 512

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0

    def __repr__(self) -> str:
        return "RandomPool()"

    def __call__(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if end > len(self._buf):
            self._buf = os.urandom(max(self.BLOCK if self._buf else self.FIRST_BLOCK, n))
            pos, end = 0, n
        self._pos = end
        return self._buf[pos:end]


def envelope_plaintext(
    nonce: bytes,
    encoded_event: bytes,
    encoded_effect: bytes | None = None,
    sealed_actor: bytes | None = None,
    actor_retry: bytes | None = None,
) -> bytes:
    """det_cbor({"n": nonce, "b": event}) from the event's det-CBOR bytes, without encoding
    (and checking) the event again: a 2-entry map, keys "b" < "n" in bytewise order, the
    nonce a 32-byte bstr (header 0x58 0x20). Equal to ``dumps_det`` of the dict (tested).
    ``sealed_actor`` (:func:`seal_actor`): the actor as submitted, under the actor's own DEK,
    as ``"a"`` (first in bytewise order); with it, ``actor_retry``
    (:meth:`TenantKeys.actor_retry_digest`, 16 bytes) as ``"r"`` (last)."""
    if len(nonce) != 32:
        raise ValueError("nonce must be 32 bytes")
    n = 2 + (encoded_effect is not None)
    tail = b""
    if actor_retry is not None:
        if sealed_actor is None or len(actor_retry) != HASH16:
            raise ValueError("an actor's retry digest is 16 bytes, beside its sealed actor")
        n += 1
        tail = b"\x61r\x50" + actor_retry
    if sealed_actor is not None:
        head = bytes((0xA1 + n,)) + b"\x61a" + bytes(cbor2.dumps(sealed_actor)) + b"\x61b"
    else:
        head = bytes((0xA0 + n,)) + b"\x61b"
    if encoded_effect is not None:  # {"b", "e", "n"}: the effect the log derived (effects.py)
        return head + encoded_event + b"\x61e" + encoded_effect + b"\x61n\x58\x20" + nonce + tail
    return head + encoded_event + b"\x61n\x58\x20" + nonce + tail


def seal_actor(
    aead: AESGCM,
    kid: bytes,
    epoch: int,
    lh: bytes,
    encoded_actor: bytes,
    an: bytes,
    rand: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """The actor of an event as submitted (its det-CBOR ``encoded_actor``), with the nonce
    ``an`` of its ``sd``, sealed under the *actor's* DEK ``aead`` (subject ``kid``, month
    ``epoch``) and bound to the event's leaf hash ``lh``:
    ``kid ‖ u32 epoch ‖ iv ‖ AES-GCM(det_cbor({"a": actor, "n": an}))`` (the map written
    from the actor's bytes: keys "a" < "n", the nonce a 32-byte bstr). It travels inside the
    event's envelope: readable only while both the event's subject and the actor keep their
    keys."""
    if len(an) != 32:
        raise ValueError("actor nonce must be 32 bytes")
    iv = rand(IV_SIZE)
    pt = b"\xa2\x61a" + encoded_actor + b"\x61n\x58\x20" + an
    return kid + epoch.to_bytes(4, "big") + iv + aead.encrypt(iv, pt, _ACTOR_AAD + lh)


@dataclass(frozen=True)
class ActorOpening:
    """The sealed actor of an event (:func:`seal_actor`) as a reader finds it: the actor as
    submitted and the nonce of its ``sd``, or both None once the actor's keys are gone
    (the actor was erased, or its month expired): the event is then unlinked from them."""

    actor: dict[str, Any] | None
    an: bytes | None
    # The envelope's digest of the actor as sent, only the log can recompute
    # (TenantKeys.actor_retry_digest): how a retry is told apart once the actor is erased.
    # None in envelopes stored before it was kept.
    retry: bytes | None = None
    # The leaf's c covers the event with this actor in place, not the stored {kind, pid,
    # sd}: an event stored before actors were pseudonymised and re-sealed since
    # (tlog.scim.reseal, the envelope's "s").
    in_c: bool = False


def seal_envelope(
    aead: AESGCM, lh: bytes, plaintext: bytes, rand: Callable[[int], bytes] = os.urandom
) -> tuple[bytes, bytes]:
    """(iv, ciphertext) of an envelope's plaintext under the subject's DEK; SCIM.md §4.3
    step 3: the AAD (the leaf hash) binds the ciphertext to its leaf. ``rand``: where the
    IV comes from (a batch's :class:`RandomPool`; the OS by default)."""
    iv = rand(IV_SIZE)
    return iv, aead.encrypt(iv, plaintext, lh)


def seal_state(
    aead: AESGCM,
    kid: bytes,
    epoch: int,
    encoded_state: bytes,
    rand: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """The record of a subject's resource state (its det-CBOR ``encoded_state``), sealed
    under the subject's DEK of ``epoch``."""
    iv = rand(IV_SIZE)
    ct = aead.encrypt(iv, encoded_state, _STATE_AAD + kid)
    # deterministic key order (v, ct, iv, epoch), known types (tested)
    return bytes(cbor2.dumps({"v": 1, "ct": ct, "iv": iv, "epoch": epoch}))


def epoch_of(ts_ms: int) -> int:
    """The retention epoch of a log timestamp: months since year 0 (UTC), ``12·y + m - 1``."""
    d = datetime.fromtimestamp(ts_ms // 1000, UTC)
    return d.year * 12 + d.month - 1


def new_kid(now_ms: int, rand: Callable[[int], bytes]) -> bytes:
    """A new subject's key id: the log time (ms, 48 bits) it is made at, then 80 random bits.

    Nothing about the subject is in it, and only ``SHA-256(kid)`` is ever public (an erasure
    event's ``kid_hash``), so the time prefix reveals nothing outside the private store, where
    the subject's first event already carries that time. It is there for the store's sake:
    the records keyed by kid (the DEKs, the subject's event list, its effects state) of the
    subjects made in one commit then sit together at the end of the B-tree (LMDB, an
    index in PostgreSQL) instead of at random pages, which cut the bytes an LMDB commit
    writes by about a quarter (docs/performance-history.md, "Kids in time order").
    Uniqueness comes from the 80 random bits (ms that repeat after a clock step back change
    nothing)."""
    return (now_ms % (1 << 48)).to_bytes(KID_TIME_SIZE, "big") + rand(KID_SIZE - KID_TIME_SIZE)


def _hmac16(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")[:HASH16]  # one-shot, C fast path


_FILE_HEADER_V2 = "tlog-scim-master-key-v2\n"
_B64_KEY_LEN = 44
_EMPTY_SLOT = "-" * _B64_KEY_LEN
_V2_BODY_LEN = len(_FILE_HEADER_V2) + 2 * (8 + _B64_KEY_LEN + 1)  # 130
# The binding: a last line naming the store the file belongs to (store_id_of), appended to a
# v1 or v2 body. A file without it (written by an older version, or a bind torn by a crash)
# is bound at its store's next start.
_STORE_LINE = "store   "
STORE_ID_SIZE = 16
_STORE_LINE_LEN = len(_STORE_LINE) + 2 * STORE_ID_SIZE + 1  # 41
# 0xff never occurs in UTF-8, so no tenant id (tn = HMAC(tn key, tenant id)) is this message.
_STORE_ID_MSG = b"\xfftlog-scim/v1/store-id"
LOCK_SUFFIX = ".lock"  # KeyFileLock: <key file>.lock
NEW_SUFFIX = ".new"  # a key file being created (open_keyring): <key file>.new


def store_id_of(tn_key: bytes) -> bytes:
    """The store id a key file is bound to: ``HMAC-SHA256(tenant ref key, 0xff ‖ ...)[:16]``.
    The tenant ref key is random per store, created with its first SCIM keys and never
    rotated, and copies of the store (``tlog backup``, ``tlog migrate``, a restored dump)
    keep it: one id per store and its copies, read from the store with nothing written."""
    return hmac.digest(tn_key, _STORE_ID_MSG, "sha256")[:STORE_ID_SIZE]


def _key_file_text(current: bytes, nxt: bytes | None, store: bytes | None = None) -> bytes:
    """The v2 key file: fixed length (130 bytes, 171 with its store line), so a rewrite
    covers every earlier byte."""
    b64 = base64.b64encode
    return (
        _FILE_HEADER_V2
        + "current "
        + b64(current).decode("ascii")
        + "\n"
        + "next    "
        + (b64(nxt).decode("ascii") if nxt is not None else _EMPTY_SLOT)
        + "\n"
        + (_store_line(store) if store is not None else "")
    ).encode("ascii")


def _b64key(text: str, path: Path) -> bytes:
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise StorageError(f"{path} is not a tlog SCIM master key file") from None
    if len(key) != KEY_SIZE:
        raise StorageError(f"{path} does not hold a 32-byte key")
    return key


@dataclass(frozen=True)
class KeyFile:
    """What a master key file holds: the ``current`` key, during a rotation the ``next``
    one, and the id of the store it is bound to (None: not bound yet). ``body_len``: the
    bytes before the store line (where :func:`bind_key_file` writes it)."""

    current: bytes = field(repr=False)
    next: bytes | None = field(repr=False)
    store: bytes | None
    body_len: int


def parse_key_file(text: str, path: Path) -> KeyFile:
    """A key file's text (v1: one key; v2: a current key and, during a rotation, the next
    one; either followed by the store line once bound)."""
    if text.startswith(_FILE_HEADER):
        end = text.find("\n") + 1
        if end == 0:
            raise StorageError(f"{path} is not a tlog SCIM master key file")
        cur, nxt = _b64key(text[len(_FILE_HEADER) : end - 1], path), None
    elif text.startswith(_FILE_HEADER_V2):
        end = _V2_BODY_LEN
        lines = text[:end].split("\n")
        if not (
            len(lines) == 4
            and lines[3] == ""
            and lines[1].startswith("current ")
            and lines[2].startswith("next    ")
        ):
            raise StorageError(f"{path} is not a tlog SCIM master key file")
        cur = _b64key(lines[1][8:], path)
        nxt = None if lines[2][8:] == _EMPTY_SLOT else _b64key(lines[2][8:], path)
    else:
        raise StorageError(f"{path} is not a tlog SCIM master key file")
    tail = text[end:]
    store = None
    if (
        len(tail) == _STORE_LINE_LEN
        and tail.startswith(_STORE_LINE)
        and tail.endswith("\n")
        and _lower_hex(tail[len(_STORE_LINE) : -1])
    ):
        store = bytes.fromhex(tail[len(_STORE_LINE) : -1])
    elif not _torn_store_line(tail):
        raise StorageError(f"{path} is not a tlog SCIM master key file")
    return KeyFile(cur, nxt, store, end)


def _store_line(store: bytes) -> str:
    """The key file's last line, naming the store it is bound to."""
    return _STORE_LINE + store.hex() + "\n"


def _lower_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def _torn_store_line(tail: str) -> bool:
    """Whether ``tail`` is what a bind cut short by a crash can leave after the keys: nothing,
    the start of the store line, NUL bytes where its data never reached the disk. The keys
    before it are intact, and the file counts as unbound (bound again at the next start)."""
    if len(tail) > _STORE_LINE_LEN:
        return False
    written = tail.rstrip("\0")
    head = written[: len(_STORE_LINE)]
    return _STORE_LINE.startswith(head) and _lower_hex(written[len(_STORE_LINE) :])


def load_key_file(path: Path) -> KeyFile:
    """The key file at ``path`` (:func:`parse_key_file`). Refuses a file that group or
    others may read or write."""
    try:
        raw = read_private_file(path, "SCIM master key file")
    except PrivateFileError as exc:
        raise StorageError(str(exc)) from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise StorageError(f"{path} is not a tlog SCIM master key file (not ASCII)") from None
    return parse_key_file(text, path)


def read_key_file(path: Path) -> tuple[bytes, bytes | None]:
    """(current, next) from a master key file (:func:`load_key_file`)."""
    kf = load_key_file(path)
    return kf.current, kf.next


def _bound_to(fd: int, path: Path) -> bytes | None:
    """The store the key file open at ``fd`` is bound to (None: unbound or unreadable)."""
    try:
        return parse_key_file(os.pread(fd, 4096, 0).decode("ascii"), path).store
    except (StorageError, UnicodeDecodeError):
        return None


def write_key_file_in_place(path: Path, current: bytes, nxt: bytes | None) -> None:
    """Overwrite the key file's bytes in place (same inode, no rename, no truncation before
    the write) and fsync: the old key's bytes are overwritten, not left in a freed block of a
    replaced file. (On flash or copy-on-write file systems the device may still keep old
    blocks; see docs/design.md "Erasure".) The file's store line is kept: the 130 bytes
    before it are the v2 body, so a write that a crash cuts at the old length still leaves
    a whole body."""
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)  # (review 40b F5: as it was read)
    try:
        _write_fd(fd, _key_file_text(current, nxt, _bound_to(fd, path)))
    finally:
        os.close(fd)


def bind_key_file(path: Path, store: bytes) -> None:
    """Bind the key file to ``store``: its store line, appended after the keys (they are not
    rewritten), then fsync. A crash leaves the file unbound (its old length, or NUL bytes
    where the line goes: :func:`parse_key_file`) or bound; its keys are never touched."""
    kf = load_key_file(path)
    if kf.store == store:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        # A key file this process cannot write (a read-only mount): it cannot be rotated by
        # this process either, so no erasure here can seal another store out of it.
        log.warning("the SCIM master key file %s is not writable: not bound to its store", path)
        return
    try:
        _write_fd(fd, _store_line(store).encode("ascii"), kf.body_len)
    finally:
        os.close(fd)


class KeyFileLock:
    """A ``flock`` on ``<key file>.lock`` that ``tlog serve`` holds for its life: exclusive
    for an LMDB store, shared by the frontends of a PostgreSQL store (they share one key
    file). Two stores served at once on one key file (two copies of one store, which have the
    same store id, included) are refused at start: an erasure in one would rewrite the file,
    and the other's SCIM keys would be sealed under a key no file holds any more. The kernel
    releases the lock when the process ends, SIGKILL included. (Not the key file itself:
    a rotation's :func:`key_file_lock` takes an exclusive ``flock`` on it, which shared
    holders of the file would block.) An exclusive holder writes its PID, host and start
    time into the file, for the refusal message only.

    Shared holders also name the database they serve (:attr:`tlog.backend.Backend.instance`):
    each holds a shared ``flock`` on ``<key file>.lock.db-<hash of the instance>`` (the
    instance written in it), then tries every other such file; one that another process
    holds is another database served on this file at the same moment, such as a copy of
    this store restored next to it (same store id, so the binding accepts it), and start-up
    is refused. Each frontend locks its own file before it looks at the others, so of two
    starting at once at least one sees the other."""

    def __init__(self, key_path: Path) -> None:
        self.key_path = key_path
        self.path = key_path.with_name(key_path.name + LOCK_SUFFIX)
        self._fd: int | None = None
        self._db_fd: int | None = None
        self._exclusive = False

    def __repr__(self) -> str:
        return f"KeyFileLock({str(self.path)!r})"

    def acquire(self, exclusive: bool, instance: str | None = None) -> KeyFileLock:
        """Take the lock (``exclusive`` for an LMDB store); a shared holder names the
        ``instance`` of the database it serves (see the class)."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not os.access(
                self.key_path, os.W_OK
            ):
                # A read-only key file (a secret volume): this process cannot rotate it, so
                # no erasure here can seal another store out of it (erasures fail instead).
                log.warning(
                    "cannot lock the SCIM master key file %s (%s: %s); it is not writable "
                    "either: erasures and retention expiry will fail",
                    self.key_path,
                    self.path,
                    exc.strerror,
                )
                return self
            raise StorageError(
                f"cannot lock the SCIM master key file {self.key_path} ({self.path}: "
                f"{exc.strerror}): its directory must be writable"
            ) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise StorageError(
                f"the SCIM master key file {self.key_path} is in use by another store's "
                f"tlog serve, or a copy's of this one ("
                + (holder or "the frontends of a PostgreSQL store")
                + f"; lock {self.path}): one key file belongs to one store, and an erasure "
                "in one would destroy every SCIM body of the other. Give this store a key "
                "file of its own (--scim-master-key), or stop the other process first"
            ) from None
        # Holding the lock: any holder's line in the file is stale (a holder killed).
        os.ftruncate(fd, 0)
        if exclusive:
            _write_holder(fd, "tlog serve")
        self._fd, self._exclusive = fd, exclusive
        if not exclusive and instance is not None:
            try:
                self._claim(instance)
            except BaseException:
                self.release()
                raise
        return self

    def _claim(self, instance: str) -> None:
        prefix = self.path.name + ".db-"
        tag = hashlib.sha256(instance.encode()).hexdigest()[:16]
        mine = self.path.with_name(prefix + tag)
        fd = os.open(mine, os.O_RDWR | os.O_CREAT, 0o600)
        self._db_fd = fd
        # Blocking: another frontend's look at this file holds it exclusively for an instant.
        fcntl.flock(fd, fcntl.LOCK_SH)
        text = (instance + "\n").encode()
        if os.pread(fd, len(text) + 1, 0) != text:  # every holder writes the same bytes
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
        for other in sorted(self.path.parent.glob(prefix + "*")):
            if other.name == mine.name:
                continue
            try:
                ofd = os.open(other, os.O_RDONLY)
            except OSError:
                continue  # gone meanwhile
            try:
                try:
                    fcntl.flock(ofd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    continue  # nobody holds it: a frontend of that database has ended
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                theirs = os.pread(ofd, 500, 0).decode("utf-8", "replace").strip()
            finally:
                os.close(ofd)
            raise StorageError(
                f"the SCIM master key file {self.key_path} is in use by the frontends of "
                f"another database ({theirs or 'unnamed'}; this one is {instance}): a copy "
                "of this store, restored or migrated next to it, served at the same time on "
                "one key file would fork the log and share its SCIM keys. Stop the other "
                f"database's frontends, or give this copy its own key file and data (lock "
                f"{other})"
            )

    def make_exclusive(self, what: str) -> None:
        """Turn a held shared lock exclusive, or refuse (StorageError): for an offline
        command on a PostgreSQL store (``tlog reseal-actors``), which must not run while any
        frontend serves it (they hold the lock shared); a frontend starting meanwhile is
        refused. Nothing to do for a lock not taken (a read-only key file) or exclusive.
        Refused, the lock is still held shared; granted, the file names this process (as an
        exclusive holder's does), for the message of whoever is refused."""
        fd = self._fd
        if fd is None or self._exclusive:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            # flock(2) converts a lock by dropping it first: a refused conversion leaves
            # none. Take the shared lock back (those that refused it hold it shared too).
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise StorageError(
                f"{what} needs the server stopped: a tlog serve holds the SCIM master key "
                f"file {self.key_path} ({self.path}), so it serves this store now"
            ) from None
        self._exclusive = True
        os.ftruncate(fd, 0)
        _write_holder(fd, what)

    def release(self) -> None:
        db_fd, self._db_fd = self._db_fd, None
        if db_fd is not None:
            os.close(db_fd)
        fd, self._fd = self._fd, None
        if fd is not None:
            if self._exclusive:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            os.close(fd)  # releases the flock


def _write_holder(fd: int, what: str) -> None:
    """Name this process in an exclusively held lock file (for a refusal message only)."""
    os.pwrite(
        fd,
        f"PID {os.getpid()} on host {socket.gethostname()} ({what}, since "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})\n".encode(),
        0,
    )


@contextlib.contextmanager
def key_file_lock(path: Path | None, shared: bool) -> Iterator[None]:
    """On a store that several frontends write (``shared``), which then share one key file:
    an exclusive lock on that file (``flock``: other processes, and other key rings of this
    one, wait) held by a rotation from its first write of the file to its last, and by a
    frontend that reads the file at its start (it settles a file with two keys on one).
    Without it, two rotations at once (erasures, retention expiry) on two frontends, or a
    frontend starting during a rotation, write the file over each other, and it can end up
    without the key the store is sealed under. One writer process (LMDB): no lock."""
    if path is None or not shared:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


class MasterKey:
    """The root of the SCIM key hierarchy, read from a key file (a stand-in for a KMS key)."""

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError("master key must be 32 bytes")
        self._key = key
        self.path = path

    def __repr__(self) -> str:
        return f"MasterKey(path={str(self.path)!r})"

    @classmethod
    def create(cls, path: Path) -> MasterKey:
        """Write a new random key to ``path`` (mode 0600, never overwriting a file)."""
        key = secrets.token_bytes(KEY_SIZE)
        create_new(path, _key_file_text(key, None))
        return cls(key, path)

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        """The current key of the key file."""
        return cls(read_key_file(path)[0], path)

    @classmethod
    def fresh(cls, path: Path | None) -> MasterKey:
        return cls(secrets.token_bytes(KEY_SIZE), path)

    def raw(self) -> bytes:
        """The key bytes (for writing the key file; never logged)."""
        return self._key

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return seal(self._key, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes, what: str) -> bytes:
        return unseal(self._key, blob, aad, what)


class KeysRotated(StorageError):
    """The key hierarchy was rotated while a reader held an older snapshot: read again."""


def user_name_key(value: str) -> str:
    """The form a ``userName`` subject is keyed by: caseless (SCIM's ``userName`` is not
    case-exact, RFC 7643 §4.1.1) and in one Unicode normal form (NFC, before and after
    casefolding: ``José`` precomposed and ``Jose`` with a combining accent are one name).
    Before faith31 only casefolded: an erasure request by the NFD form of a name stored
    as NFC (or the reverse) reached nothing. (For a name already in NFC whose casefold is
    too, the form is the one before: the same key.)"""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", value).casefold())


def legacy_user_name_keys(name: str) -> list[str]:
    """The forms a ``userName`` subject may have been keyed by before faith31 (casefolded
    only): the name as sent, and the name in NFD (a client sending decomposed text)."""
    return list(dict.fromkeys((name.casefold(), unicodedata.normalize("NFD", name).casefold())))


@dataclass(frozen=True)
class SubjectId:
    """A data subject: ``kind`` is ``rid`` or ``xid`` (value = that id), ``none`` or ``sys``."""

    rt: str
    kind: str
    value: str

    def encode(self) -> bytes:
        return subject_encoding(self.rt, self.kind, self.value)


# The CBOR heads of text strings of 0-23 bytes (major type 3, length in the head's byte).
_SHORT_TEXT = [bytes((0x60 | n,)) for n in range(24)]


def subject_encoding(rt: str, kind: str, value: str) -> bytes:
    """det_cbor([rt, kind, value]): what a subject's hash is computed over. Three texts of
    fewer than 24 bytes each (a resource type, a kind, most ids) are written directly, an
    array head and three heads of one byte each (~5.6 k instructions against cbor2's ~9 k:
    its call and its check of the list against ``Mapping``); anything else by cbor2."""
    if type(rt) is str and type(kind) is str and type(value) is str:
        try:
            a, k, v = rt.encode(), kind.encode(), value.encode()
        except UnicodeEncodeError:
            return dumps_det([rt, kind, value])  # names the lone surrogate
        if len(a) < 24 and len(k) < 24 and len(v) < 24:
            heads = _SHORT_TEXT
            return b"\x83" + heads[len(a)] + a + heads[len(k)] + k + heads[len(v)] + v
        try:
            # An array of three text strings: cbor2's plain encoding is the deterministic
            # one (it refuses lone surrogates; dumps_det then names the error).
            return bytes(cbor2.dumps([rt, kind, value]))
        except (UnicodeEncodeError, ValueError):
            pass
    return dumps_det([rt, kind, value])


@dataclass(frozen=True, repr=False)
class TenantKeys:
    tn: bytes
    kek: bytes = field(repr=False)
    ik: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"TenantKeys(tn={self.tn.hex()})"

    def __post_init__(self) -> None:
        # The HMAC state after the index key: each index hash copies it instead of keying
        # HMAC again (several per event on the ingestion path). On CPython with OpenSSL the
        # stdlib's HMAC wraps a C object (``_hmac``) with the same copy/update/digest:
        # used directly, a hash costs ~1.4 µs instead of ~4-5 through the Python wrapper
        # (the same bytes, test_stage_fast.py); anything else keeps the wrapper.
        mac = hmac.new(self.ik, digestmod=hashlib.sha256)
        raw = getattr(mac, "_hmac", None)
        object.__setattr__(self, "_ik_mac", mac if raw is None else raw)
        # One AES-GCM object for the KEK, not one per wrapped key (two per new subject).
        object.__setattr__(self, "_kek_aead", AESGCM(self.kek))
        # The KEK's generation: it changes exactly when the KEK does (every erasure or
        # retention expiry in the tenant rotates it), and says nothing of the key.
        gen = hmac.digest(self.kek, _AAD + b"kek-generation", "sha256")[:8].hex()
        object.__setattr__(self, "_generation", gen)

    @property
    def kek_aead(self) -> AESGCM:
        return self._kek_aead  # type: ignore[attr-defined,no-any-return]

    @property
    def generation(self) -> str:
        """A tag of the tenant's current KEK (16 hex digits of an HMAC under it): another
        value means an erasure or an expiry shredded some of the tenant's subjects since
        (tlog.scim.effects.members_known)."""
        return self._generation  # type: ignore[attr-defined,no-any-return]

    def _ik_hash16(self, msg: bytes) -> bytes:
        mac = self._ik_mac.copy()  # type: ignore[attr-defined]
        mac.update(msg)
        return mac.digest()[:HASH16]  # type: ignore[no-any-return]

    def index_hash(self, fld: bytes, value: bytes) -> bytes:
        """Search index key for ``value`` in field ``fld``: HMAC(index key, fld ‖ 0 ‖ value)."""
        return self._ik_hash16(b"index\x00" + fld + b"\x00" + value)

    def subject_hash(self, subject: SubjectId) -> bytes:
        return self._ik_hash16(b"subject\x00" + subject.encode())

    def subject_hash_of(self, rt: str, kind: str, value: str) -> bytes:
        """:meth:`subject_hash` of ``SubjectId(rt, kind, value)``, without building it."""
        return self._ik_hash16(b"subject\x00" + subject_encoding(rt, kind, value))

    def actor_retry_digest(self, lh: bytes, encoded_actor: bytes) -> bytes:
        """``HMAC(index key, "actor-retry" ‖ 0 ‖ lh ‖ det_cbor(actor as sent))[:16]``: kept
        (sealed) in the envelope of the event ``lh`` beside its sealed actor, so that once
        the actor is erased a retry of the event with another actor is still told apart
        (ScimService._check_same). Bound to the event, and only the log can compute it."""
        return self._ik_hash16(b"actor-retry\x00" + lh + encoded_actor)

    def keyed_digest(self, data: bytes) -> bytes:
        """A 32-byte digest only the log can recompute (for access-event query digests)."""
        return hmac.new(self.ik, b"digest\x00" + data, hashlib.sha256).digest()


@dataclass(frozen=True, repr=False, slots=True)
class SubjectKeys:
    kid: bytes
    wrapped_p: bytes
    created: bool = field(default=False, compare=False)  # by this call: it has no DEK yet

    def __repr__(self) -> str:
        return f"SubjectKeys(kid={self.kid.hex()})"


class KeyRing:
    """Creates, unwraps, rotates and destroys SCIM keys. Reads go through an :class:`Overlay`.

    Writes are staged in the overlay and become durable with the caller's ``put_aux``;
    callers serialise writers (the service holds one lock around stage + commit).
    Tenant keys are cached in memory together with the wrapped record they came from, so a
    reader on a snapshot from before a rotation never mixes old records with new keys
    (:class:`KeysRotated`: read again). DEKs and pseudonym keys are unwrapped per use, so a
    shredded key does not linger in a cache.
    """

    def __init__(
        self,
        storage: Backend,
        master: MasterKey,
        candidates: tuple[MasterKey, ...] = (),
    ) -> None:
        check, tnkey, tn_key = self._first_keys(storage, master)
        if tn_key is None:
            assert check is not None  # _first_keys returns the check unless it created it
            # A crash in the middle of a rotation leaves two keys in the file: the one the
            # store's check value opens is the live one.
            live = next((m for m in (master, *candidates) if self._opens(m, check)), None)
            if live is None:
                raise StorageError(
                    f"the SCIM master key {master.path} does not match this store: another "
                    "store's key file, or a store restored from before the last erasure or "
                    "retention expiry, whose keys are sealed under a master key that no longer "
                    "exists (docs/operations.md, 'What tlog recover restores, and what is lost')"
                )
            master = live
            if tnkey is None:
                raise StorageError("SCIM key store has lost its tenant ref key")
            tn_key = master.unseal(tnkey, _AAD + b"tnkey", "tenant ref key")
        self.master = master
        self._storage = storage
        self._tn_key = tn_key
        self.store_id = store_id_of(tn_key)  # what the key file is bound to
        # tenant id -> tn (an HMAC under the tenant ref key, which never changes: every
        # single event's staging asks for it). Bounded; a miss recomputes.
        self._refs: dict[str, bytes] = {}
        self._tenants: dict[bytes, tuple[bytes, TenantKeys]] = {}
        self._swap = threading.Lock()
        self.interrupted = bool(candidates)  # open_keyring finishes the rotation in the file

    @staticmethod
    def _first_keys(
        storage: Backend, master: MasterKey
    ) -> tuple[bytes | None, bytes | None, bytes | None]:
        """The store's master-key check and sealed tenant ref key; on a store with none yet,
        both are created (sealed under ``master``) and the new tenant ref key is returned as
        well. Several frontends starting at once on a new database: the creation is written
        under the SCIM writer fence, so exactly one frontend's keys are stored and the
        others read them (and open them if their key file is the same)."""
        for _ in range(8):
            with storage.read() as rv:
                check, tnkey = rv.aux(store.check_key()), rv.aux(store.tn_key_key())
            if check is not None:
                return check, tnkey, None
            if tnkey is not None:
                raise StorageError("SCIM key store has a tenant key but no master-key check")
            fence = storage.claim_aux_writer()
            if fence is not None and stored_check(storage) is not None:
                continue  # created under an earlier claim (reads after a claim see it)
            tn_key = secrets.token_bytes(KEY_SIZE)
            try:
                storage.put_aux(
                    [
                        (store.check_key(), master.seal(_CHECK_PLAINTEXT, _AAD + b"check")),
                        (store.tn_key_key(), master.seal(tn_key, _AAD + b"tnkey")),
                    ],
                    fence=fence,
                )
            except AuxFenced:
                continue  # another frontend is creating them: read what it stored
            return None, None, tn_key
        raise StorageError("could not create the SCIM keys: other frontends kept taking the fence")

    def follow_rotation(self) -> None:
        """On a store that several frontends write, after this one claimed the SCIM writer
        fence: check that the master key in memory is the store's before anything is staged
        under it. An erasure or retention expiry on another frontend rotates the master key
        (and writes the new one into the key file that frontend reads). When the key in
        memory no longer opens the store's check value, the key file is read again and the
        key in it that does is adopted: every frontend must read one shared key file (one
        writable file on a shared file system, :func:`key_file_lock`), not a copy. When
        none does, :class:`StorageError`: nothing is staged or read here until this
        frontend's key file holds the store's key."""
        last = None
        for _ in range(FOLLOW_TRIES):
            check = stored_check(self._storage)
            with self._swap:
                master = self.master
            if check is None or self._opens(master, check):
                return
            if check == last:
                break  # the store has not moved since: this frontend's key file is stale
            last = check
            path = master.path
            if path is not None and path.exists():
                for raw in read_key_file(path):
                    if raw is not None and self._opens(m := MasterKey(raw, path), check):
                        with self._swap:
                            # Unless another thread followed meanwhile (maybe a later
                            # rotation: never go back to an older key).
                            if self.master is master:
                                self.master = m
                                self._tenants.clear()
                        return
            # No key in the file opens the check value read above: another rotation may
            # have landed in between (the file then holds a newer key). Read it again.
        path = master.path
        raise StorageError(
            f"the SCIM master key this frontend holds (key file {path}) no longer opens the "
            "store: another frontend rotated it (an erasure or retention expiry there). Every "
            "frontend must read the same key file (one shared secret, not copies of it); "
            "nothing is written or read here until its key file holds the store's key"
        )

    @staticmethod
    def _opens(m: MasterKey, check: bytes) -> bool:
        try:
            return m.unseal(check, _AAD + b"check", "check") == _CHECK_PLAINTEXT
        except StorageError:
            return False

    def __repr__(self) -> str:
        return "KeyRing()"

    def unkeyed_tenant_digest(self, tenant: str, data: bytes) -> bytes:
        """A 32-byte digest of ``data`` for a tenant that has no keys yet (an access event's
        query digest before the tenant's first event): keyed by the log's tenant-reference
        key, so only the log can recompute it (the tenant's ``tn`` alone is public)."""
        # Its own key from the tenant-reference key: 0xff never occurs in UTF-8, so no
        # tenant id's tn (HMAC of its UTF-8 under that key) is ever this key.
        key = hmac.new(self._tn_key, b"\xffaccess-digest", hashlib.sha256).digest()
        return hmac.new(key, self.tenant_ref(tenant) + data, hashlib.sha256).digest()

    def tenant_ref(self, tenant: str) -> bytes:
        tn = self._refs.get(tenant) if type(tenant) is str else None
        if tn is None:
            tn = tenant_ref(self._tn_key, tenant)
            if len(self._refs) >= MAX_CACHED_REFS:
                self._refs.clear()
            self._refs[tenant] = tn
        return tn

    def _tenant_keys(self, tn: bytes, raw: bytes) -> TenantKeys:
        with self._swap:
            cached = self._tenants.get(tn)
            master = self.master
        if cached is not None and cached[0] == raw:
            return cached[1]
        r = decode_record(raw, "tenant")
        try:
            tk = TenantKeys(
                tn,
                master.unseal(r["kek"], _AAD + b"kek" + tn, "tenant KEK"),
                master.unseal(r["ik"], _AAD + b"ik" + tn, "tenant index key"),
            )
        except StorageError:
            # A snapshot from the other side of a key rotation than the master in memory.
            raise KeysRotated("SCIM keys were rotated during this read; read again") from None
        return tk

    def tenant(self, tx: Overlay, tenant: str) -> TenantKeys | None:
        """The tenant's keys, or None if it has none yet."""
        tn = self.tenant_ref(tenant)
        raw = tx.get(store.tenant_key(tn))
        if raw is None:
            return None
        tk = self._tenant_keys(tn, raw)
        if not tx.staged(store.tenant_key(tn)):
            with self._swap:
                if self._tenants.get(tn, (b"",))[0] != raw:
                    self._tenants[tn] = (raw, tk)
        return tk

    def cached_tenant(self, tenant: str) -> TenantKeys | None:
        """The tenant's keys as last read from its durable record, if remembered: a guess
        (the record may have changed since), never a substitute for :meth:`tenant`."""
        tn = self.tenant_ref(tenant)
        with self._swap:
            got = self._tenants.get(tn)
        return None if got is None else got[1]

    def tenant_or_create(self, tx: Overlay, tenant: str) -> TenantKeys:
        tk = self.tenant(tx, tenant)
        if tk is not None:
            return tk
        tn = self.tenant_ref(tenant)
        kek, ik = secrets.token_bytes(KEY_SIZE), secrets.token_bytes(KEY_SIZE)
        tx.put(store.tenant_key(tn), self._tenant_record(self.master, tn, kek, ik))
        return TenantKeys(tn, kek, ik)  # cached on the next read once it is durable

    @staticmethod
    def _tenant_record(master: MasterKey, tn: bytes, kek: bytes, ik: bytes) -> bytes:
        return encode_record(
            {
                "v": 1,
                "kek": master.seal(kek, _AAD + b"kek" + tn),
                "ik": master.seal(ik, _AAD + b"ik" + tn),
            }
        )

    # -- rotation (erasure and retention expiry) ----------------------------------------------

    def stage_rotation(self, tx: Overlay, rekey: set[bytes]) -> MasterKey:
        """Stage a rotation of the whole wrapping chain into ``tx``; returns the new master.

        * every tenant in ``rekey`` (by ``tn``) gets a fresh KEK: each of its surviving
          pseudonym keys and DEKs (committed or staged in ``tx``, deleted ones skipped) is
          unwrapped with the old KEK and wrapped again under the new one;
        * every tenant record (KEK and index key), the tn key and the check value are sealed
          again under a fresh master key.

        Nothing is written to the key file here: call :meth:`commit_rotation` around the
        commit of ``tx`` (it writes the new key into the file's second slot before the
        commit and overwrites the old one in place after it).
        """
        new = MasterKey.fresh(self.master.path)
        for tkey, raw in tx.scan(store.tenant_key(b"")):
            tn = tkey[len(store.tenant_key(b"")) :]
            if tx.staged(tkey):  # created in this transaction under the current master
                r = decode_record(raw, "tenant")
                kek = self.master.unseal(r["kek"], _AAD + b"kek" + tn, "tenant KEK")
                ik = self.master.unseal(r["ik"], _AAD + b"ik" + tn, "tenant index key")
            else:
                old = self._tenant_keys(tn, raw)
                kek, ik = old.kek, old.ik
            if tn in rekey:
                new_kek = secrets.token_bytes(KEY_SIZE)
                self._rewrap_tenant(tx, TenantKeys(tn, kek, ik), new_kek)
                kek = new_kek
            tx.put(tkey, self._tenant_record(new, tn, kek, ik))
        tx.put(store.check_key(), new.seal(_CHECK_PLAINTEXT, _AAD + b"check"))
        tx.put(store.tn_key_key(), new.seal(self._tn_key, _AAD + b"tnkey"))
        return new

    def _rewrap_tenant(self, tx: Overlay, old: TenantKeys, new_kek: bytes) -> None:
        new = TenantKeys(old.tn, new_kek, old.ik)
        for skey, sraw in tx.scan(store.subject_key(old.tn, b"")):
            r = decode_record(sraw, "subject")
            kid = r["kid"]
            aad = _AAD + b"p" + old.tn + kid
            p = unseal(old.kek, r["p"], aad, "pseudonym key")
            tx.put(skey, encode_record({**r, "p": seal(new_kek, p, aad)}))
            for dkey, draw in tx.scan(store.dek_prefix(kid)):
                epoch = int.from_bytes(dkey[-4:], "big")
                dek = unseal(old.kek, draw, self._dek_aad(old, kid, epoch), "DEK")
                tx.put(dkey, seal(new_kek, dek, self._dek_aad(new, kid, epoch)))

    def commit_rotation(self, new: MasterKey, commit: Callable[[], None]) -> None:
        """Run ``commit`` (the LMDB commit of a transaction staged with
        :meth:`stage_rotation`) so that a crash at any point leaves a key file that opens the
        store, and afterwards no trace of the old master key in the file."""
        path = self.master.path
        with key_file_lock(path, self._storage.shared):
            if self._storage.shared:
                # Under the lock no other frontend is between its key file writes, so the
                # store's check value is what the last rotation left. If it is not under
                # the key this rotation was staged from, another frontend rotated since:
                # writing the file now would replace the store's key by one that opens
                # nothing (and the fence refuses the records anyway). Nothing is written.
                check = stored_check(self._storage)
                if check is None or not self._opens(self.master, check):
                    raise AuxFenced(
                        "another frontend rotated the SCIM master key since this rotation "
                        "was staged: nothing was written"
                    )
            if path is not None:
                write_key_file_in_place(path, self.master.raw(), new.raw())
            try:
                commit()
            except BaseException:
                # Whichever key the store's check value opens now is the live one.
                check = stored_check(self._storage)
                if check is not None and self._opens(new, check):
                    self._switch(new)
                elif path is not None:
                    write_key_file_in_place(path, self.master.raw(), None)
                raise
            self._switch(new)

    def _switch(self, new: MasterKey) -> None:
        path = new.path
        with self._swap:
            self.master = new
            self._tenants.clear()
        if path is not None:
            write_key_file_in_place(path, new.raw(), None)

    def subject(self, tx: Overlay, tk: TenantKeys, subject: SubjectId) -> SubjectKeys | None:
        return self._subject_at(tx, store.subject_key(tk.tn, tk.subject_hash(subject)))

    def user_name_subject(self, tx: Overlay, tk: TenantKeys, rt: str, name: str) -> SubjectId:
        """The subject a ``userName`` ``name`` (as sent) is keyed by on this store: its
        :func:`user_name_key` form, unless that has no keys here and a form before faith31
        has (casefolded, not normalized: the name as sent, or the name in NFD, as a client
        sending decomposed text would have sent it before). Ingestion and erasure both ask
        it, so a name keyed before goes on being one subject whichever form its later
        events come in: they are sealed under the same keys, and one erasure reaches them
        all (had ingestion taken the new form, the name would have become two subjects and
        an erasure would have reached one; lead and review 40b). A store that already held
        a name in two forms before faith31 holds two subjects, and an erasure reaches the
        one this answers (docs/design.md)."""
        new = SubjectId(rt, "userName", user_name_key(name))
        olds = [v for v in legacy_user_name_keys(name) if v != new.value]
        if not olds or self.subject(tx, tk, new) is not None:
            return new
        for value in olds:
            old = SubjectId(rt, "userName", value)
            if self.subject(tx, tk, old) is not None:
                return old
        return new

    @staticmethod
    def _subject_at(tx: Overlay, key: bytes) -> SubjectKeys | None:
        raw = tx.get(key)
        if raw is None:
            return None
        r = decode_record(raw, "subject")
        return SubjectKeys(r["kid"], r["p"])

    def subject_or_create(
        self,
        tx: Overlay,
        tk: TenantKeys,
        subject: SubjectId,
        now: int,
        rand: Callable[[int], bytes] = secrets.token_bytes,
    ) -> SubjectKeys:
        """``now``: the log time (ms) of the staging (:func:`new_kid`). ``rand``: where the
        kid's random part, the pseudonym key and its wrap's IV come from (a batch's
        :class:`RandomPool`: one read of the OS's random source for many subjects)."""
        key = store.subject_key(tk.tn, tk.subject_hash(subject))
        sk = self._subject_at(tx, key)
        if sk is not None:
            return sk
        kid = new_kid(now, rand)
        wrapped = seal(tk.kek_aead, rand(KEY_SIZE), _AAD + b"p" + tk.tn + kid, rand)
        # Keys in deterministic order (p, v, kid) and of known types: the plain encoding is
        # the deterministic one, as encode_record would produce (tested).
        tx.put(key, bytes(cbor2.dumps({"p": wrapped, "v": 1, "kid": kid})))
        return SubjectKeys(kid, wrapped, created=True)

    @classmethod
    def new_subject_records(
        cls, tk: TenantKeys, now: int, epoch: int, rand: Callable[[int], bytes]
    ) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        """A new subject's keys and records, for a subject the caller found absent:
        ``(kid, wrapped P, subject record, DEK, wrapped DEK)``. The same random draws in the
        same order and the same bytes as :meth:`subject_or_create` followed by
        :meth:`dek_or_create` (tested); the records are the caller's to stage, under
        :func:`store.subject_key` and :func:`store.dek_key`."""
        kid = new_kid(now, rand)
        p = rand(KEY_SIZE)
        iv = rand(IV_SIZE)
        kek = tk.kek_aead
        wrapped = iv + kek.encrypt(iv, p, _AAD + b"p" + tk.tn + kid)
        # {"p": bstr(60), "v": 1, "kid": bstr(16)}: the map subject_or_create encodes
        record = b"\xa3\x61p\x58\x3c" + wrapped + b"\x61v\x01\x63kid\x50" + kid
        dek = rand(KEY_SIZE)
        iv = rand(IV_SIZE)
        wrapped_dek = iv + kek.encrypt(iv, dek, cls._dek_aad(tk, kid, epoch))
        return kid, wrapped, record, dek, wrapped_dek

    def pseudonym_key(self, tk: TenantKeys, sk: SubjectKeys) -> bytes:
        return unseal(tk.kek_aead, sk.wrapped_p, _AAD + b"p" + tk.tn + sk.kid, "pseudonym key")

    def pid(self, tx: Overlay, tk: TenantKeys, rt: str, rid: str) -> bytes | None:
        """``pid = HMAC(P_subject, rid)[:16]`` for the subject (tenant, rt, rid), if it exists."""
        sk = self.subject(tx, tk, SubjectId(rt, "rid", rid))
        return None if sk is None else make_pid(self.pseudonym_key(tk, sk), rid)

    def pid_or_create(self, tx: Overlay, tk: TenantKeys, rt: str, rid: str, now: int) -> bytes:
        sk = self.subject_or_create(tx, tk, SubjectId(rt, "rid", rid), now)
        return make_pid(self.pseudonym_key(tk, sk), rid)

    @staticmethod
    def _dek_aad(tk: TenantKeys, kid: bytes, epoch: int) -> bytes:
        return _AAD + b"dek" + tk.tn + kid + epoch.to_bytes(4, "big")

    def dek(self, tx: Overlay, tk: TenantKeys, kid: bytes, epoch: int) -> bytes | None:
        raw = tx.get(store.dek_key(kid, epoch))
        return (
            None if raw is None else unseal(tk.kek_aead, raw, self._dek_aad(tk, kid, epoch), "DEK")
        )

    def dek_or_create(
        self,
        tx: Overlay,
        tk: TenantKeys,
        kid: bytes,
        epoch: int,
        rand: Callable[[int], bytes] = secrets.token_bytes,
        *,
        new: bool = False,
    ) -> bytes:
        """``new``: the caller created the subject ``kid`` in this transaction, so it has no
        DEK yet (no lookup)."""
        dek = None if new else self.dek(tx, tk, kid, epoch)
        if dek is not None:
            return dek
        dek = rand(KEY_SIZE)
        tx.put(
            store.dek_key(kid, epoch),
            seal(tk.kek_aead, dek, self._dek_aad(tk, kid, epoch), rand),
        )
        return dek

    # -- what the DEKs seal: resource state and event envelopes --------------------------------

    def state(self, tx: Overlay, tk: TenantKeys, kid: bytes) -> dict[str, Any] | None:
        """The subject's security-relevant state, decrypted; None if unknown or shredded."""
        raw = tx.get(store.state_key(kid))
        if raw is None:
            return None
        rec = decode_record(raw, "resource state")
        dek = self.dek(tx, tk, kid, rec["epoch"])
        if dek is None:
            return None  # its epoch expired or the subject was shredded
        try:
            got = loads_det(AESGCM(dek).decrypt(rec["iv"], rec["ct"], _STATE_AAD + kid))
        except (InvalidTag, EventFormatError):
            raise StorageError("SCIM resource state does not decrypt") from None
        return got if isinstance(got, dict) else None

    def open_envelope(
        self, tx: Overlay, tk: TenantKeys, lh: bytes
    ) -> tuple[Event, bytes, dict[str, Any] | None] | None:
        """Decrypt the envelope of ``lh``: (event, nonce, effect), or None once erased."""
        got = self.open_envelope_actor(tx, tk, lh)
        return None if got is None else got[:3]

    def open_actor(
        self,
        tx: Overlay,
        tk: TenantKeys,
        lh: bytes,
        sealed: bytes,
        deks: dict[tuple[bytes, int], bytes | None] | None = None,
    ) -> ActorOpening:
        """Open a sealed actor (:func:`seal_actor`) of the event ``lh``. ``deks``: the
        actors' DEKs already read by the caller (one search page: usually one actor)."""
        if len(sealed) < _ACTOR_HEAD + 16:
            raise StorageError("SCIM sealed actor too short")
        kid, epoch = sealed[:KID_SIZE], int.from_bytes(sealed[KID_SIZE : KID_SIZE + 4], "big")
        if deks is None:
            dek = self.dek(tx, tk, kid, epoch)
        elif (kid, epoch) in deks:
            dek = deks[(kid, epoch)]
        else:
            dek = deks[(kid, epoch)] = self.dek(tx, tk, kid, epoch)
        if dek is None:  # the actor was erased (or its month expired): unlinked
            return ActorOpening(None, None)
        iv = sealed[KID_SIZE + 4 : _ACTOR_HEAD]
        try:
            got = loads_det(AESGCM(dek).decrypt(iv, sealed[_ACTOR_HEAD:], _ACTOR_AAD + lh))
            actor, an = got["a"], got["n"]
            if type(actor) is not dict or type(an) is not bytes:
                raise TypeError("sealed actor")
        except (InvalidTag, EventFormatError, KeyError, TypeError):
            raise StorageError("SCIM sealed actor does not decrypt (modified record?)") from None
        return ActorOpening(actor, an)

    def open_envelope_actor(
        self,
        tx: Overlay,
        tk: TenantKeys,
        lh: bytes,
        deks: dict[tuple[bytes, int], bytes | None] | None = None,
    ) -> tuple[Event, bytes, dict[str, Any] | None, ActorOpening | None] | None:
        """:meth:`open_envelope` with the event's sealed actor opened (None: the event has
        none, its actor is in the event itself), or None once erased."""
        raw = tx.get(store.envelope_key(lh))
        if raw is None:
            raise StorageError("SCIM event without an envelope")
        env = decode_envelope(raw)
        if isinstance(env, Tombstone):
            return None
        dek = self.dek(tx, tk, env.kid, env.epoch)
        if dek is None:  # shredded, or its retention epoch expired
            return None
        try:
            pt = AESGCM(dek).decrypt(env.iv, env.ct, lh)
        except InvalidTag:
            raise StorageError("SCIM envelope does not decrypt (modified record?)") from None
        try:
            body = loads_det(pt)
            effect = body.get("e")
            if effect is not None and not isinstance(effect, dict):
                raise TypeError("effect")
            ev, nonce, sealed = validate_event(body["b"]), body["n"], body.get("a")
            if sealed is not None and type(sealed) is not bytes:
                raise TypeError("sealed actor")
            retry = body.get("r")
            if retry is not None and (
                sealed is None or type(retry) is not bytes or len(retry) != HASH16
            ):
                raise TypeError("actor retry digest")
            mark = body.get("s")
            if mark is not None and (mark is not True or sealed is None):
                raise TypeError("re-sealed actor mark")
            in_c = mark is True
            if sealed is not None and "pid" not in ev["actor"]:
                raise TypeError("a sealed actor beside an actor in clear")
        except (EventFormatError, KeyError, TypeError):
            raise StorageError("SCIM envelope holds a malformed body") from None
        if sealed is None:
            return ev, nonce, effect, None
        opening = self.open_actor(tx, tk, lh, sealed, deks)
        if retry is not None or in_c:
            opening = ActorOpening(opening.actor, opening.an, retry, in_c)
        return ev, nonce, effect, opening


def stored_check(storage: Backend) -> bytes | None:
    """The store's master-key check value (what tells which master key seals the store),
    read from a fresh snapshot; None on a store with no SCIM keys yet."""
    with storage.read() as rv:
        return rv.aux(store.check_key())


def _foreign(path: Path, bound: bytes | None, why: str) -> StorageError:
    owner = (
        f"another store (store id {bound.hex()})"
        if bound is not None
        else "another store (a key file of an older version, not bound to its store yet)"
    )
    return StorageError(
        f"the SCIM master key file {path} belongs to {owner}: {why}. One key file belongs to "
        "one store: an erasure in one would destroy every SCIM body of the other. Nothing "
        "was written. Give this store a key file of its own (--scim-master-key with a path "
        "that does not exist yet: it is created); docs/operations.md, 'SCIM keys'"
    )


def open_keyring(path: Path, storage: Backend) -> KeyRing:
    """Open the store's SCIM keys with the master key file at ``path``, which is bound to
    the store (:func:`store_id_of`): a key file bound to another store is refused, and so
    is an existing key file for a store with no SCIM keys yet (a second store pointed at
    another's file). A store with no SCIM keys and no file gets a new file, bound to it. An
    unbound file (an older version's) that opens the store is bound to it here. Nothing is
    written to the store or the file before those checks pass."""
    if not path.exists():
        made = _create_key_file(path, storage)
        if made is not None:
            return made
        # Another frontend (or a start that crashed before its rename) made it: open it.
    with key_file_lock(path, storage.shared):
        kf = load_key_file(path)
        if stored_check(storage) is None:
            # Files are created (renamed into place) only after their store holds its keys.
            raise _foreign(path, kf.store, "this store holds no SCIM keys yet")
        master = MasterKey(kf.current, path)
        if kf.next is not None:
            ring = KeyRing(storage, MasterKey(kf.next, path), (master,))
        else:
            ring = KeyRing(storage, master)
        if kf.store is not None and kf.store != ring.store_id:
            raise _foreign(
                path,
                kf.store,
                f"its key also opens this store (store id {ring.store_id.hex()}), so an "
                "older version created both stores on it. Copy the file for this store "
                "without its last line ('store ...') and start this store with that copy",
            )
        if ring.interrupted:
            # Finish (or undo) the interrupted rotation: only the live key stays in the file.
            write_key_file_in_place(path, ring.master.raw(), None)
        bind_key_file(path, ring.store_id)
        return ring


def _create_key_file(path: Path, storage: Backend) -> KeyRing | None:
    """A new master key file for a store with no SCIM keys: written as ``<path>.new``, the
    store's keys committed under it, then bound to the store and renamed to ``path``. So an
    existing key file always belongs to a store that holds keys, and a crash leaves either
    no file (the next start makes a new key) or a ``.new`` file whose key the store's check
    value opens (the next start renames it into place). Under an exclusive ``flock`` on the
    ``.new`` file: frontends of a new database starting at once make one file. None: the
    file exists now (made by another frontend, or finished here): open it."""
    new = path.with_name(path.name + NEW_SUFFIX)
    fd = os.open(new, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if path.exists():
            with contextlib.suppress(FileNotFoundError):
                if new.stat().st_ino != path.stat().st_ino:
                    new.unlink()  # made by a start that found the file: nothing in it
            return None
        check = stored_check(storage)
        if check is not None:
            try:
                kf = parse_key_file(os.pread(fd, 4096, 0).decode("ascii"), new)
            except (StorageError, UnicodeDecodeError):
                kf = None
            if kf is not None and any(
                k is not None and KeyRing._opens(MasterKey(k, path), check)
                for k in (kf.current, kf.next)
            ):
                rename_durably(new, path)  # a crash between the store's commit and the rename
                return None
            raise StorageError(
                f"{path} is missing but the store holds SCIM keys wrapped by it; restore it"
            )
        # No SCIM keys in the store: whatever .new holds never sealed anything.
        key = secrets.token_bytes(KEY_SIZE)
        os.fchmod(fd, 0o600)
        _write_fd(fd, _key_file_text(key, None))
        try:
            ring = KeyRing(storage, MasterKey(key, path))
        except StorageError:
            # Another frontend (with another key file) made the store's keys first: this
            # key sealed nothing, so .new goes (left in place if that cannot be read now).
            check = stored_check(storage)
            if check is not None and not KeyRing._opens(MasterKey(key, None), check):
                _write_fd(fd, b"")
                new.unlink()
            raise
        _write_fd(fd, _key_file_text(key, None, ring.store_id))
        rename_durably(new, path)
        return ring
    finally:
        os.close(fd)  # releases the flock


def _write_fd(fd: int, data: bytes, at: int = 0) -> None:
    """The file open at ``fd`` ends with ``data``, written at offset ``at``, durably."""
    os.pwrite(fd, data, at)
    os.ftruncate(fd, at + len(data))
    os.fsync(fd)
