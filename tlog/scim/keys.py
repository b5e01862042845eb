"""The SCIM key hierarchy: a master key file standing in for a KMS, and what it wraps.

::

    <data>/scim-master.key          32 random bytes, mode 0600, created once with O_EXCL
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

Nothing here logs or prints key material; reprs hide it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from client.scim.cbor import dumps_det
from client.scim.leaf import pid as make_pid
from client.scim.leaf import tenant_ref
from tlog.scim import store
from tlog.scim.store import Overlay, decode_record, encode_record
from tlog.storage import Storage, StorageError

__all__ = [
    "MASTER_KEY_FILE",
    "KeyRing",
    "MasterKey",
    "SubjectId",
    "SubjectKeys",
    "TenantKeys",
    "epoch_of",
    "open_keyring",
    "seal",
    "unseal",
]

MASTER_KEY_FILE = "scim-master.key"
KEY_SIZE = 32
IV_SIZE = 12
KID_SIZE = 16
HASH16 = 16
_FILE_HEADER = "tlog-scim-master-key-v1 "
_AAD = b"tlog-scim/v1/"
_CHECK_PLAINTEXT = b"tlog-scim master key check"


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-256-GCM with a fresh random IV: ``iv(12) ‖ ciphertext ‖ tag(16)``."""
    iv = os.urandom(IV_SIZE)
    return iv + AESGCM(key).encrypt(iv, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes, what: str) -> bytes:
    """Open :func:`seal` output; a wrong key, AAD or a modified blob is a :class:`StorageError`."""
    if len(blob) < IV_SIZE + 16:
        raise StorageError(f"{what}: sealed value too short")
    try:
        return AESGCM(key).decrypt(blob[:IV_SIZE], blob[IV_SIZE:], aad)
    except InvalidTag:
        raise StorageError(f"{what}: does not decrypt (wrong key or modified record)") from None


def epoch_of(ts_ms: int) -> int:
    """The retention epoch of a log timestamp: months since year 0 (UTC), ``12·y + m - 1``."""
    d = datetime.fromtimestamp(ts_ms // 1000, UTC)
    return d.year * 12 + d.month - 1


def _hmac16(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()[:HASH16]


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
        text = _FILE_HEADER + base64.b64encode(key).decode("ascii") + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, text.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return cls(key, path)

    @classmethod
    def load(cls, path: Path) -> MasterKey:
        """Read the key file; refuse one that group or others may read or write."""
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise StorageError(f"{path} must not be accessible by group or others (chmod 600)")
        text = path.read_text("ascii")
        if not text.startswith(_FILE_HEADER) or not text.endswith("\n"):
            raise StorageError(f"{path} is not a tlog SCIM master key file")
        try:
            key = base64.b64decode(text[len(_FILE_HEADER) : -1], validate=True)
        except (binascii.Error, ValueError):
            raise StorageError(f"{path} is not a tlog SCIM master key file") from None
        if len(key) != KEY_SIZE:
            raise StorageError(f"{path} does not hold a 32-byte key")
        return cls(key, path)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return seal(self._key, plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes, what: str) -> bytes:
        return unseal(self._key, blob, aad, what)


@dataclass(frozen=True)
class SubjectId:
    """A data subject: ``kind`` is ``rid`` or ``xid`` (value = that id), ``none`` or ``sys``."""

    rt: str
    kind: str
    value: str

    def encode(self) -> bytes:
        return dumps_det([self.rt, self.kind, self.value])


@dataclass(frozen=True, repr=False)
class TenantKeys:
    tn: bytes
    kek: bytes = field(repr=False)
    ik: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"TenantKeys(tn={self.tn.hex()})"

    def index_hash(self, fld: bytes, value: bytes) -> bytes:
        """Search index key for ``value`` in field ``fld``: HMAC(index key, fld ‖ 0 ‖ value)."""
        return _hmac16(self.ik, b"index\x00" + fld + b"\x00" + value)

    def subject_hash(self, subject: SubjectId) -> bytes:
        return _hmac16(self.ik, b"subject\x00" + subject.encode())

    def keyed_digest(self, data: bytes) -> bytes:
        """A 32-byte digest only the log can recompute (for access-event query digests)."""
        return hmac.new(self.ik, b"digest\x00" + data, hashlib.sha256).digest()


@dataclass(frozen=True, repr=False)
class SubjectKeys:
    kid: bytes
    wrapped_p: bytes

    def __repr__(self) -> str:
        return f"SubjectKeys(kid={self.kid.hex()})"


class KeyRing:
    """Creates, unwraps and destroys SCIM keys. Reads go through an :class:`Overlay`.

    Writes are staged in the overlay and become durable with the caller's ``put_aux``;
    callers serialise writers (the service holds one lock around stage + commit).
    Tenant keys are cached in memory (they are never deleted); DEKs and pseudonym keys are
    unwrapped per use, so a shredded key does not linger in a cache.
    """

    def __init__(self, storage: Storage, master: MasterKey) -> None:
        self.master = master
        with storage.read() as rv:
            check, tnkey = rv.aux(store.check_key()), rv.aux(store.tn_key_key())
        if check is None:
            if tnkey is not None:
                raise StorageError("SCIM key store has a tenant key but no master-key check")
            tn_key = secrets.token_bytes(KEY_SIZE)
            storage.put_aux(
                [
                    (store.check_key(), master.seal(_CHECK_PLAINTEXT, _AAD + b"check")),
                    (store.tn_key_key(), master.seal(tn_key, _AAD + b"tnkey")),
                ]
            )
        else:
            try:
                ok = master.unseal(check, _AAD + b"check", "check") == _CHECK_PLAINTEXT
            except StorageError:
                ok = False
            if not ok:
                raise StorageError(f"the SCIM master key {master.path} does not match this store")
            if tnkey is None:
                raise StorageError("SCIM key store has lost its tenant ref key")
            tn_key = master.unseal(tnkey, _AAD + b"tnkey", "tenant ref key")
        self._tn_key = tn_key
        self._tenants: dict[bytes, TenantKeys] = {}

    def __repr__(self) -> str:
        return "KeyRing()"

    def tenant_ref(self, tenant: str) -> bytes:
        return tenant_ref(self._tn_key, tenant)

    def tenant(self, tx: Overlay, tenant: str) -> TenantKeys | None:
        """The tenant's keys, or None if it has none yet."""
        tn = self.tenant_ref(tenant)
        tk = self._tenants.get(tn)
        if tk is not None:
            return tk
        raw = tx.get(store.tenant_key(tn))
        if raw is None:
            return None
        r = decode_record(raw, "tenant")
        tk = TenantKeys(
            tn,
            self.master.unseal(r["kek"], _AAD + b"kek" + tn, "tenant KEK"),
            self.master.unseal(r["ik"], _AAD + b"ik" + tn, "tenant index key"),
        )
        if not tx.staged(store.tenant_key(tn)):
            self._tenants[tn] = tk
        return tk

    def tenant_or_create(self, tx: Overlay, tenant: str) -> TenantKeys:
        tk = self.tenant(tx, tenant)
        if tk is not None:
            return tk
        tn = self.tenant_ref(tenant)
        kek, ik = secrets.token_bytes(KEY_SIZE), secrets.token_bytes(KEY_SIZE)
        tx.put(
            store.tenant_key(tn),
            encode_record(
                {
                    "v": 1,
                    "kek": self.master.seal(kek, _AAD + b"kek" + tn),
                    "ik": self.master.seal(ik, _AAD + b"ik" + tn),
                }
            ),
        )
        return TenantKeys(tn, kek, ik)  # cached on the next read once it is durable

    def subject(self, tx: Overlay, tk: TenantKeys, subject: SubjectId) -> SubjectKeys | None:
        raw = tx.get(store.subject_key(tk.tn, tk.subject_hash(subject)))
        if raw is None:
            return None
        r = decode_record(raw, "subject")
        return SubjectKeys(r["kid"], r["p"])

    def subject_or_create(self, tx: Overlay, tk: TenantKeys, subject: SubjectId) -> SubjectKeys:
        sk = self.subject(tx, tk, subject)
        if sk is not None:
            return sk
        kid = secrets.token_bytes(KID_SIZE)
        wrapped = seal(tk.kek, secrets.token_bytes(KEY_SIZE), _AAD + b"p" + tk.tn + kid)
        tx.put(
            store.subject_key(tk.tn, tk.subject_hash(subject)),
            encode_record({"v": 1, "kid": kid, "p": wrapped}),
        )
        return SubjectKeys(kid, wrapped)

    def pseudonym_key(self, tk: TenantKeys, sk: SubjectKeys) -> bytes:
        return unseal(tk.kek, sk.wrapped_p, _AAD + b"p" + tk.tn + sk.kid, "pseudonym key")

    def pid(self, tx: Overlay, tk: TenantKeys, rt: str, rid: str) -> bytes | None:
        """``pid = HMAC(P_subject, rid)[:16]`` for the subject (tenant, rt, rid), if it exists."""
        sk = self.subject(tx, tk, SubjectId(rt, "rid", rid))
        return None if sk is None else make_pid(self.pseudonym_key(tk, sk), rid)

    def pid_or_create(self, tx: Overlay, tk: TenantKeys, rt: str, rid: str) -> bytes:
        sk = self.subject_or_create(tx, tk, SubjectId(rt, "rid", rid))
        return make_pid(self.pseudonym_key(tk, sk), rid)

    @staticmethod
    def _dek_aad(tk: TenantKeys, kid: bytes, epoch: int) -> bytes:
        return _AAD + b"dek" + tk.tn + kid + epoch.to_bytes(4, "big")

    def dek(self, tx: Overlay, tk: TenantKeys, kid: bytes, epoch: int) -> bytes | None:
        raw = tx.get(store.dek_key(kid, epoch))
        return None if raw is None else unseal(tk.kek, raw, self._dek_aad(tk, kid, epoch), "DEK")

    def dek_or_create(self, tx: Overlay, tk: TenantKeys, kid: bytes, epoch: int) -> bytes:
        dek = self.dek(tx, tk, kid, epoch)
        if dek is not None:
            return dek
        dek = secrets.token_bytes(KEY_SIZE)
        tx.put(store.dek_key(kid, epoch), seal(tk.kek, dek, self._dek_aad(tk, kid, epoch)))
        return dek


def open_keyring(path: Path, storage: Storage) -> KeyRing:
    """Load the master key file (creating it for a store with no SCIM keys yet)."""
    if path.exists():
        master = MasterKey.load(path)
    else:
        with storage.read() as rv:
            has_keys = rv.aux(store.check_key()) is not None
        if has_keys:
            raise StorageError(
                f"{path} is missing but the store holds SCIM keys wrapped by it; restore it"
            )
        master = MasterKey.create(path)
    return KeyRing(storage, master)
