"""``tlog recover``: bring a restored (older, emptied) store forward without a fork.

The store is the embedded LMDB store of a data directory, or a PostgreSQL database
(``--database``, e.g. restored with ``pg_restore`` from an older ``pg_dump``). The entries the
store lacks are re-imported from a copy of the log (tlog-tiles entry bundles from a URL or a
directory, e.g. the public bucket, an auditor's or a mirror's; another LMDB store directory;
or another ``postgresql://`` database),
hashed into the store's own tree, and the resulting root is checked against the newest
checkpoint this log is known to have signed (the remembered checkpoint file, the witnesses'
latest cosigned checkpoints, or a checkpoint file given by the operator). Only if every one
of those matches is anything written: entries, dedup records, tree tiles and the *already
signed* checkpoint, in one compare-and-swap commit. Nothing new is signed, so recovery can
never fork the log; after it, ``tlog serve``'s start-up checks pass and the log signs again.

Intermediate checkpoints: the log signed a checkpoint per batch, and the restored store
lacks those between its size and the target's (a proof asked at such a tree size answered
404 after recovery). They are restored when a copy of them is at hand: every stored
checkpoint of a store or database source (``--from``), and every target (the remembered
checkpoint, the witnesses' latest, ``--checkpoint``) at a smaller size. Each is kept only if
it verifies under the log's key, names this origin and its size, and its root is the root
the recovered entries produce at that size: then it is, byte for byte (the log's signature
only), a checkpoint this log signed over this very tree, so storing it signs nothing and
cannot fork the log. A log-signed checkpoint for another root at such a size is evidence of
a fork (or another history in the source): nothing is imported. A tiles source (the
bucket, a mirror) holds entry bundles and the latest checkpoint only, so recovering from it
restores the targets' sizes and no other intermediate checkpoint.

Cosignatures: a target note that carries cosignatures of witnesses of the policy
(``--witnesses``: each witness's own latest checkpoint, or a ``--checkpoint`` file such as the
bucket's cosigned ``/checkpoint``) has those that verify under the policy's witness keys
stored with the checkpoint the recovery writes, so the recovered log is cosigned again
before any witness answers. Nothing else of the lost state can be had from a copy of the log
(docs/operations.md, "What tlog recover restores, and what is lost").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client.formats.checkpoint import Checkpoint
from client.formats.merkle import LEAF_PREFIX, VerificationError
from client.formats.note import FormatError, Note, Verifier, open_note
from client.formats.policy import Policy
from client.formats.tiles import MAX_ENTRY_SIZE, TILE_WIDTH, Tile, decode_entry_bundle
from client.net.core import HTTPCore, Unreachable, http_client
from client.net.witness_client import WitnessClient, WitnessError
from tlog.backend import (
    Backend,
    BatchWrite,
    StorageError,
    is_database_url,
    open_backend,
    u64,
)
from tlog.integrity import CheckpointFile, DataDirLock, preflight
from tlog.log import Log
from tlog.signer import CheckpointSigner
from tlog.storage import Storage
from tlog.tree import NodeReader, RightEdge

__all__ = ["RecoveryError", "Target", "recover", "recover_database", "recover_store"]

log = logging.getLogger("tlog.recover")


class RecoveryError(StorageError):
    """Recovery is impossible or the copy does not match what the log signed."""


@dataclass(frozen=True)
class Target:
    """A checkpoint this log signed, and where we learned it."""

    checkpoint: Checkpoint
    note: str  # the log-signed note (log signature only)
    source: str
    cosignatures: str = ""  # signature lines of policy witnesses that verified on the note


def _own_note(
    note: str, signer: CheckpointSigner, source: str, cosigners: tuple[Verifier, ...] = ()
) -> Target:
    """Verify ``note`` under the log key and keep only the log's signature line, and the
    lines of ``cosigners`` (the policy's witness keys) that verify on it."""
    v = signer.verifier
    try:
        n = open_note(note, [v])
        cp = Checkpoint.parse(n.text)
    except (FormatError, VerificationError) as exc:
        raise RecoveryError(f"{source}: not a checkpoint signed by this log ({exc})") from None
    if cp.origin != signer.origin:
        raise RecoveryError(f"{source}: checkpoint of origin {cp.origin!r}, not this log's")
    own = tuple(s for s in n.signatures if (s.name, s.key_id) == (v.name, v.key_id))
    lines = ""
    if cosigners:
        try:
            verified = open_note(n, [v, *cosigners]).verified
        except (FormatError, VerificationError) as exc:
            log.warning("%s: its cosignatures are not kept: %s", source, exc)
        else:
            lines = "".join(s.line() for s in verified if (s.name, s.key_id) != (v.name, v.key_id))
    return Target(cp, Note(n.text, own).format(), source, lines)


WITNESS_TIMEOUT = 10.0  # seconds per read from a witness (the whole answer: 3 times that)
TILE_TIMEOUT = 30.0  # seconds per read from a copy of the log (the whole answer: 3 times that)


def witness_targets(policy: Policy, signer: CheckpointSigner) -> list[Target]:
    """The latest checkpoint each reachable witness of the policy holds for this log, with
    the cosignatures on it that verify under the policy's witness keys."""
    cosigners = tuple(policy.witness_verifiers())
    out: list[Target] = []
    # http_client: a witness that drips its answer (head too) is cut off like in the push
    # round (client.net.core), not waited for.
    with http_client(timeout=WITNESS_TIMEOUT) as http:
        for w in policy.witnesses.values():
            if not w.url:
                continue
            try:
                note = WitnessClient(w.url, w.verifier, http=http).latest_checkpoint(signer.origin)
            except (WitnessError, FormatError) as exc:  # FormatError: an answer over its bound
                log.warning("witness %s could not be asked: %s", w.name, exc)
                continue
            if note is not None:
                out.append(_own_note(note, signer, f"witness {w.name}", cosigners))
    return out


# -- sources ---------------------------------------------------------------------------------

Fetch = Callable[[Tile], bytes | None]


def _tile_fetcher(source: str, timeout: float = TILE_TIMEOUT) -> tuple[Fetch, Callable[[], None]]:
    if source.startswith(("http://", "https://")):
        # The shared core over http_client(): every answer bounded in time (head included)
        # and in size, so a copy that drips or floods its tiles is an error, not a hang.
        core = HTTPCore(source, timeout=timeout)
        base = core.url

        def get(tile: Tile) -> bytes | None:
            limit = TILE_WIDTH * (2 + MAX_ENTRY_SIZE) if tile.is_entries else tile.width * 32
            try:
                r = core.send("GET", tile.path(), limit=limit)
            except (Unreachable, FormatError) as exc:
                raise RecoveryError(f"{base}/{tile.path()}: {exc}") from None
            if r.status == 404:
                return None
            if r.status != 200:
                raise RecoveryError(f"{base}/{tile.path()}: HTTP {r.status}")
            return r.body

        return get, core.close
    root = Path(source)

    def read(tile: Tile) -> bytes | None:
        try:
            return (root / tile.path()).read_bytes()
        except FileNotFoundError:
            return None

    return read, lambda: None


def _entries_from_tiles(source: str, start: int, end: int) -> list[bytes]:
    fetch, close = _tile_fetcher(source)
    out: list[bytes] = []
    try:
        for k in range(start // TILE_WIDTH, (end - 1) // TILE_WIDTH + 1):
            width = min(TILE_WIDTH, end - k * TILE_WIDTH)
            data = fetch(Tile(-1, k, width)) if width < TILE_WIDTH else None
            if data is None:  # a copy at a larger size has the full bundle instead
                data = fetch(Tile(-1, k))
            if data is None:
                raise RecoveryError(f"{source} has no entry bundle {Tile(-1, k, width).path()}")
            try:
                bundle = decode_entry_bundle(data)
            except FormatError as exc:
                raise RecoveryError(f"{source}: entry bundle {k}: {exc}") from None
            if len(bundle) < width:
                raise RecoveryError(f"{source}: entry bundle {k} holds {len(bundle)} entries")
            lo = max(start - k * TILE_WIDTH, 0)
            out.extend(bundle[lo:width])
    finally:
        close()
    return out


def _source_store(source: str) -> tuple[Backend, str] | None:
    """The store ``source`` names, opened read-only, and how errors name it: a
    ``postgresql://`` database, a store directory or a whole data directory; None for tiles
    (a URL, or a directory of them)."""
    if is_database_url(source):
        st = open_backend(source, Path("."), readonly=True)
        return st, f"the database {st.location}"
    if source.startswith(("http://", "https://")):
        return None
    p = Path(source)
    for path in (p, p / "db"):  # a store directory, or a whole data directory
        if (path / "data.mdb").exists():
            return Storage(path, readonly=True), f"the store {path}"
    return None


def fetch_entries(source: str, start: int, end: int) -> list[bytes]:
    """Entries ``start .. end-1`` from a store directory, a ``postgresql://`` database, a
    tiles directory or a tiles URL."""
    if start >= end:
        return []
    opened = _source_store(source)
    if opened is None:
        if not source.startswith(("http://", "https://")) and not Path(source).is_dir():
            raise RecoveryError(f"{source} is neither a URL, a tiles directory nor a store")
        return _entries_from_tiles(source, start, end)
    st, name = opened
    try:
        with st.read() as rv:
            got = rv.entries(start, end)
    finally:
        st.close()
    if len(got) != end - start:
        raise RecoveryError(f"{name} holds only up to entry {start + len(got) - 1}")
    return got


def fetch_checkpoints(source: str, start: int, end: int) -> list[tuple[int, bytes]]:
    """The stored checkpoints of sizes ``start < size < end`` of a store directory or a
    ``postgresql://`` database (unverified: see :func:`_restorable`); none from tiles."""
    opened = None if start + 1 >= end else _source_store(source)
    if opened is None:
        return []
    st = opened[0]
    out: list[tuple[int, bytes]] = []
    try:
        with st.read() as rv:
            got = rv.checkpoint_at_or_after(start + 1)
            while got is not None and got[0] < end:
                out.append((got[0], bytes(got[1])))
                got = rv.checkpoint_at_or_after(got[0] + 1)
    finally:
        st.close()
    return out


def _restorable(
    signer: CheckpointSigner,
    candidates: list[tuple[int, bytes, str]],
    root_at: Callable[[int], bytes],
    have: Callable[[int], bool],
) -> list[tuple[int, bytes]]:
    """The candidate checkpoints (size, note, where from) to store: those of sizes the store
    lacks that verify under the log's key, name this origin and their size, and whose root
    is ``root_at(size)``, each as the log signed it (its signature only). A log-signed one
    with another root is a :class:`RecoveryError` (nothing is written)."""
    v = signer.verifier
    out: dict[int, bytes] = {}
    for size, note, where in sorted(candidates, key=lambda c: c[0]):
        if size in out or have(size):
            continue
        try:
            n = open_note(note, [v])
            cp = Checkpoint.parse(n.text)
        except (FormatError, VerificationError, UnicodeDecodeError) as exc:
            log.warning("%s: the checkpoint at size %d is not kept: %s", where, size, exc)
            continue
        if cp.origin != signer.origin or cp.size != size:
            log.warning("%s: the checkpoint at size %d is not kept: not this log's", where, size)
            continue
        if root_at(size) != cp.root_hash:
            raise RecoveryError(
                f"{where} holds a checkpoint signed by this log at size {size} whose root is "
                "not the recovered tree's: another history, or a fork signed by this key "
                "(keep it as evidence); nothing was imported"
            )
        own = tuple(s for s in n.signatures if (s.name, s.key_id) == (v.name, v.key_id))
        out[size] = Note(n.text, own).format().encode()
    return sorted(out.items())


def _candidates(
    targets: list[Target], source: str, start: int, end: int
) -> list[tuple[int, bytes, str]]:
    """Intermediate checkpoints (``start < size < end``) from the targets and the source."""
    out = [
        (t.checkpoint.size, t.note.encode(), t.source)
        for t in targets
        if start < t.checkpoint.size < end
    ]
    out += [(k, note, source) for k, note in fetch_checkpoints(source, start, end)]
    return out


def _store_checkpoints(
    storage: Backend, found: list[tuple[int, bytes]], targets: list[Target]
) -> None:
    """Write the restored intermediate checkpoints (one transaction), and the verified
    cosignatures the targets carry at their sizes where the store has none."""
    if found:
        storage.load_raw("checkpts", iter([(u64(k), note) for k, note in found]))
    restored = {k for k, _ in found}
    for k in sorted({t.checkpoint.size for t in targets} & restored):
        cosigs = _cosignatures_at(k, targets)
        if cosigs:
            with storage.read() as rv:
                held = rv.cosignatures(k)
            if held is None:
                storage.put_cosignatures(k, cosigs.encode())


# -- recovery --------------------------------------------------------------------------------


def _pick_target(
    signer: CheckpointSigner, remembered: CheckpointFile | None, targets: list[Target]
) -> tuple[Target, list[Target]]:
    targets = list(targets)
    mem = remembered.read() if remembered is not None else None
    if mem is not None and remembered is not None:
        targets.append(_own_note(mem.note, signer, f"remembered checkpoint {remembered.path}"))
    if not targets:
        raise RecoveryError(
            "no checkpoint to verify against: the remembered checkpoint file is missing and "
            "no witness answered. Give one with --checkpoint <file> (a checkpoint this log "
            "signed, e.g. from an auditor, or the bucket's /checkpoint)."
        )
    return max(targets, key=lambda t: t.checkpoint.size), targets


def recover(
    store: Path,
    signer: CheckpointSigner,
    source: str,
    remembered: CheckpointFile,
    targets: list[Target],
    echo: Callable[[str], None] = print,
) -> int:
    """Bring the LMDB store in directory ``store`` forward to the newest of ``targets``
    (and the remembered checkpoint); see :func:`recover_store`."""
    _pick_target(signer, remembered, targets)  # refuse before touching the store
    with DataDirLock(store, "tlog recover"):
        data = store / "data.mdb"
        if data.exists() and data.stat().st_size == 0:
            data.unlink()  # a failed copy: nothing to keep
            echo(f"tlog: removed the empty {data}; rebuilding the store from {source}")
        preflight(store)
        storage = Storage(store)
        try:
            return recover_store(storage, signer, source, remembered, targets, echo)
        finally:
            storage.close()


def recover_database(
    url: str,
    signer: CheckpointSigner,
    source: str,
    remembered: CheckpointFile | None,
    targets: list[Target],
    echo: Callable[[str], None] = print,
    replication: str = "none",
) -> int:
    """Bring the PostgreSQL store at ``url`` forward (see :func:`recover_store`). No lock is
    needed: the import is one compare-and-swap commit, so a frontend that started meanwhile
    (it should not: its start-up checks refuse this database) makes it fail, not fork."""
    _pick_target(signer, remembered, targets)
    storage = open_backend(url, Path("."), replication=replication)
    try:
        return recover_store(storage, signer, source, remembered, targets, echo)
    finally:
        storage.close()


def recover_store(
    storage: Backend,
    signer: CheckpointSigner,
    source: str,
    remembered: CheckpointFile | None,
    targets: list[Target],
    echo: Callable[[str], None] = print,
) -> int:
    """Bring ``storage`` forward to the newest of ``targets`` (and the remembered checkpoint).

    Returns the tree size reached. Raises :class:`RecoveryError` without writing anything
    if the copy does not reproduce every target's root.
    """
    target, targets = _pick_target(signer, remembered, targets)
    n = target.checkpoint.size
    lg = Log(storage, signer)  # no remembered file: no rollback check, we are the fix
    base = lg.latest
    s = base.size
    if s >= n:
        _check_roots(storage, targets)
        # Intermediate checkpoints an earlier recovery did not restore (a tlog before this
        # one, or one stopped between its two commits): restored now if a copy has them.
        with storage.read() as rv:
            reader = NodeReader(rv.blob)
            found = _restorable(
                signer,
                _candidates(targets, source, 0, s),
                reader.root,
                lambda k: rv.checkpoint(k) is not None,
            )
        _store_checkpoints(storage, found, targets)
        if remembered is not None:
            remembered.write(lg.latest.note if s > n else target.note)
        echo(
            f"tlog: nothing to recover: the store is at size {s} >= {n}, and matches"
            + (f"; restored {len(found)} intermediate checkpoint(s)" if found else "")
        )
        return s
    echo(f"tlog: the store ends at {s}; fetching entries {s}..{n - 1} from {source}")
    entries = fetch_entries(source, s, n)
    hashes = [hashlib.sha256(LEAF_PREFIX + e).digest() for e in entries]
    if len(set(hashes)) != len(hashes):
        raise RecoveryError(f"{source} repeats an entry: not a copy of this log")

    def blob(level: int, index: int) -> bytes | None:
        with storage.read() as rv:
            b = rv.blob(level, index)
            return None if b is None else bytes(b)

    edge = RightEdge(s, blob)
    edge.append(hashes)
    reader = edge.reader()
    for t in targets:
        if t.checkpoint.size > s and reader.root(t.checkpoint.size) != (t.checkpoint.root_hash):
            raise RecoveryError(
                f"the entries from {source} do not produce the root this log signed "
                f"at size {t.checkpoint.size} ({t.source}); nothing was imported. "
                "Use another copy."
            )
    _check_roots(storage, [t for t in targets if t.checkpoint.size <= s])
    # The checkpoints the log signed between s and n, where a copy of them is at hand,
    # checked against the recovered tree before anything is written.
    found = _restorable(signer, _candidates(targets, source, s, n), reader.root, lambda k: False)
    storage.commit_batch(
        BatchWrite(
            s,
            entries,
            hashes,
            edge.take_dirty(),
            n,
            target.note.encode(),
            base.note.encode(),
        )
    )
    if remembered is not None:
        remembered.write(target.note)
    cosigs = _cosignatures_at(n, targets)
    if cosigs:
        storage.put_cosignatures(n, cosigs.encode())
    # After the commit (a second transaction): stopped in between, the store is the one a
    # recovery without them makes, and running recover again restores them.
    _store_checkpoints(storage, found, targets)
    echo(
        f"tlog: recovered entries {s}..{n - 1} from {source}, verified against the "
        f"checkpoint at size {n} ({target.source})"
        + (f", with {cosigs.count(chr(10))} witness cosignature(s)" if cosigs else "")
        + (
            f"; restored {len(found)} intermediate checkpoint(s) the log signed between"
            if found
            else "; no intermediate checkpoint restored (the copy holds none)"
            if n - s > 1
            else ""
        )
        + "; the log may sign again ('tlog serve')"
    )
    _warn_lost_scim_records(storage, entries, echo)
    return n


def _warn_lost_scim_records(
    storage: Backend, entries: list[bytes], echo: Callable[[str], None]
) -> None:
    """The recovered entries that are SCIM events have no records in a store that holds
    SCIM keys: among them may be erasures and retention runs, which this store does not
    know of. If the key file that opens it is of the backup's moment, the subjects they
    erased are readable again here until their certificates are applied again."""
    from client.scim.leaf import entry_domain
    from tlog.scim.keys import stored_check

    scim = sum(1 for e in entries if entry_domain(e) == "scim")
    if not scim or stored_check(storage) is None:
        return
    echo(
        f"tlog: WARNING: {scim} of the recovered entries are SCIM events whose private "
        "records (bodies, erasure requests and approvals, retention runs, legal holds) are "
        "in no copy of the log and stay lost. Any erasure or retention expiry among them is "
        "UNDONE in this store if the SCIM key file that opens it is of the backup's moment: "
        "the subjects it erased are readable again. Before serving it, apply every erasure "
        "certificate issued since the backup again: 'tlog reapply-erasures CERTIFICATE...' "
        "(docs/operations.md, 'Backups and erasure')"
    )


def _cosignatures_at(size: int, targets: list[Target]) -> str:
    """The verified cosignature lines the targets at ``size`` carry, each once."""
    lines = (
        ln + "\n"
        for t in targets
        if t.checkpoint.size == size
        for ln in t.cosignatures.splitlines()
    )
    return "".join(dict.fromkeys(lines))


def _check_roots(storage: Backend, targets: list[Target]) -> None:
    with storage.read() as rv:
        reader = NodeReader(rv.blob)
        for t in targets:
            if reader.root(t.checkpoint.size) != t.checkpoint.root_hash:
                raise RecoveryError(
                    f"the store's tree at size {t.checkpoint.size} differs from the checkpoint "
                    f"this log signed ({t.source}): the store holds another history, which "
                    "recovery cannot repair. Move it aside and recover into an empty store."
                )


def checkpoint_file_target(
    path: Path, signer: CheckpointSigner, cosigners: tuple[Verifier, ...] = ()
) -> Target:
    return _own_note(path.read_text("utf-8"), signer, f"checkpoint file {path}", cosigners)
