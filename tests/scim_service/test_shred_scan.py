"""Issue 10 part 1: after an approved erasure (and after retention expiry) nothing of the
subject decrypts from ANY byte of the data directory with ANY key the log still holds.

Every AES-GCM encryption the log performs during the test is recorded (key, iv, ciphertext,
AAD): that is the complete set of ciphertexts that can exist anywhere in the data directory,
live or in freed LMDB pages. After the erasure the test

1. reads every file of the data directory raw (``data.mdb`` with its freed pages,
   ``lock.mdb``, the key file, anything else) and finds which recorded ciphertexts are still
   physically there;
2. starts from every key the log still holds (the key file's master key and everything it
   unwraps from the live store) and plays the attacker: every ciphertext found in the files
   is tried with every key known so far and every AAD the log ever used; every key that comes
   out joins the set, until nothing new comes out;
3. asserts that none of the subject's DEKs or pseudonym keys is in that set and none of the
   subject's bodies decrypts; and, so that the scan is known to be able to find something,
   that the very same scan with the keys the log held *before* the erasure does recover them
   from the files (freed pages really do hold them);
4. slides a window over every offset of every file and tries every held key on every
   wrapped-key-sized window with every AAD (no recorded positions assumed);
5. greps every file for the subject's plaintext identifiers.

On PostgreSQL "every byte of the store" is: the on-disk files of every table, index and
TOAST relation of the log's schema after a CHECKPOINT (dead row versions included: no VACUUM
is run, and none is needed, because what they hold is sealed under keys the log no longer
holds), and the raw WAL written since the test began (what a WAL archive, a streaming
replica or a point-in-time-recovery backup keeps). The blind window scan (4) covers the
relation files; the WAL gets steps 1-3 and 5 (its records may split a row across WAL pages,
so positions there are not windows of a row).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tlog.scim.keys
import tlog.scim.service
from tlog.backend import StorageError
from tlog.integrity import RollbackDetected
from tlog.scim.keys import MASTER_KEY_FILE, SubjectId
from tlog.server import build_app

from ..pgsupport import (
    OldCopy,
    clone_store,
    recover_into,
    relation_files,
    wal_position,
    wal_since,
)
from ..support import serve_config
from .conftest import (
    BASE_TS,
    T1,
    Harness,
    make_signer,
    open_harness,
    reopened_harness,
)
from .shred import (
    ALICE,
    ALICE_XID,
    BOB,
    DAY,
    SHRED_ROLES,
    WAL,
    Files,
    Recorder,
    assert_nothing_decrypts,
    held_keys,
    populate,
    raw_files,
    subject_secrets,
)


@pytest.fixture
def rec_harness(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    database: str | None,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Harness, Recorder, Files]]:
    """The harness, the recorder of every encryption, and ``files()``: every byte the log's
    store and data directory hold now (see the module docstring)."""
    rec = Recorder()
    monkeypatch.setattr(tlog.scim.keys, "AESGCM", rec.aesgcm())
    monkeypatch.setattr(tlog.scim.service, "AESGCM", rec.aesgcm())
    cluster = None if database is None else request.getfixturevalue("pg_cluster")
    start = None if cluster is None else wal_position(cluster)
    with open_harness(tmp_path, SHRED_ROLES, scim_expiry_interval=0, database=database) as h:

        def files() -> dict[str, bytes]:
            out = raw_files(h.data)
            if cluster is None:
                assert "db/data.mdb" in out and "db/lock.mdb" in out
                return out
            assert database is not None and start is not None
            out[WAL] = wal_since(cluster, start)  # before the CHECKPOINT may recycle it
            out.update(relation_files(cluster, database))
            return out

        yield h, rec, files


def test_nothing_decryptable_after_erasure(
    rec_harness: tuple[Harness, Recorder, Files],
) -> None:
    h, rec, files = rec_harness
    populate(h)
    secrets = subject_secrets(h, rec, SubjectId("User", "rid", ALICE))
    before = held_keys(h)
    rid = h.request_erasure(ALICE).json()["id"]
    r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
    assert r.status_code == 200 and r.json()["state"] == "done"
    idents = [ALICE, ALICE_XID, "admin-bob-9921"]
    assert_nothing_decrypts(h, rec, secrets, before, idents, files())
    # Everyone else is still readable after the rotation (in memory and after a restart).
    a = h.auditor()
    assert [x.event["rid"] for x in a.search(rid=BOB).results] == [BOB]
    assert len(a.search(rid="g-engineering-42").results) == 1
    assert a.search(rid=ALICE).results == []


def test_nothing_decryptable_after_retention_expiry(
    rec_harness: tuple[Harness, Recorder, Files],
) -> None:
    h, rec, files = rec_harness
    populate(h)
    secrets = subject_secrets(h, rec, SubjectId("User", "rid", ALICE))
    # Retention 30 days; 100 days after Alice's events, only her months (June, July 2024)
    # are due; Bob (August) and the group are not.
    r = h.client.put("/v1/scim/retention", json={"tenant": T1, "days": 30}, headers=h.h("po_a"))
    assert r.status_code == 200, r.text
    before = held_keys(h)
    h.service.clock = lambda: BASE_TS + 100 * DAY
    size = h.log.latest.size
    root = h.client.get("/checkpoint").text.split("\n")[2]
    r = h.client.post("/v1/scim/expire", json={"tenant": T1}, headers=h.h("po_a"))
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["events"] == 3 and res["deks"] == 2
    secrets["p"] = None
    idents = [ALICE, ALICE_XID, "admin-bob-9921"]
    assert_nothing_decrypts(h, rec, secrets, before, idents, files())
    a = h.auditor()
    assert a.search(rid=ALICE).results == []
    assert [x.event["rid"] for x in a.search(rid=BOB).results] == [BOB]
    # Proofs and roots unchanged; an expiry event appended.
    assert h.client.get(f"/v1/proof/consistency?old_size={size}&tree_size={size}").status_code
    (ev,) = [x.event for x in a.search(action="tlog.expiry.run").results]
    assert ev["x"]["events"] == 3
    with h.log.storage.read() as rv:
        assert rv.tree_size() > size
    assert h.client.get(f"/v1/proof/inclusion?index=0&tree_size={size}").status_code == 200
    assert root  # the old checkpoint's root is still what consistency proofs start from


def test_a_backup_from_before_an_erasure_opens_only_with_the_key_file_of_its_moment(
    tmp_path: Path,
    database: str | None,
    old_copy: Callable[[str], OldCopy],
    new_database: Callable[[], str | None],
) -> None:
    """What a restore does to an erasure (docs/operations.md, "Backups and erasure"): a
    store backup taken before an erasure (an mdb_copy; a pg_dump, as a point-in-time restore
    to a moment before it would be), restored and brought forward with ``tlog recover`` (the
    log's entries only), does not serve with the current key file: its SCIM keys are sealed
    under the master key the erasure destroyed, and serve refuses rather than lose them
    silently. Only the key file of the backup's moment opens it, and it brings the erased
    subject back: which is why that pair must not be kept past the erasure deadline."""
    backup = old_copy("backup")
    old_key = tmp_path / "old-master.key"
    with open_harness(tmp_path, SHRED_ROLES, scim_expiry_interval=0, database=database) as h:
        populate(h)
        backup.take(h.log.storage)
        shutil.copy2(tmp_path / MASTER_KEY_FILE, old_key)  # the key file of that moment
        rid = h.request_erasure(ALICE).json()["id"]
        r = h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b"))
        assert r.status_code == 200 and r.json()["state"] == "done"
        tokens = dict(h.tok)
    replica = clone_store(database, tmp_path, new_database(), tmp_path / "replica")
    backup.restore(tmp_path)
    signer = make_signer()
    with pytest.raises(RollbackDetected):  # behind the log: the entries come back first
        build_app(serve_config(tmp_path, database), signer)
    recover_into(database, tmp_path, signer, replica, [])
    with pytest.raises(StorageError, match="does not match this store"):
        build_app(serve_config(tmp_path, database), signer)
    # The pair of that moment opens it, and the erased subject is readable again.
    shutil.copy2(old_key, tmp_path / MASTER_KEY_FILE)
    with reopened_harness(tmp_path, database, tokens) as again:
        assert ALICE in {x.event["rid"] for x in again.auditor().search(rid=ALICE).results}
