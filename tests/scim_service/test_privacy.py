"""Nothing personal in public, nothing plaintext in private, and the master key file rules."""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
from pathlib import Path

import pytest

from client.formats.tiles import decode_entry_bundle
from client.scim import parse_leaf
from client.scim.cbor import loads_det
from tlog.scim.keys import MASTER_KEY_FILE, MasterKey
from tlog.server import build_app
from tlog.storage import StorageError

from ..pgsupport import relation_files, schema_dump, wal_position, wal_since
from ..support import serve_config
from .conftest import T1, T2, Harness, group_event, make_signer, user_event

IDENTIFIERS = [
    "u-alice-7f3a",
    "alice.liddell@example.org",
    "admin-bob-9921",
    "admin-carol-1234",
    "Bob Admin",
    "req-0001",
    "req-g1",
    "g-engineering-42",
    "u-globex-1",
    "/Users/",
]


def populate(h: Harness) -> None:
    h.post_event(user_event())
    h.post_event(user_event(op="delete", req="req-0002"), cbor=True)
    pid = h.client.post(
        "/v1/scim/pseudonyms",
        headers=h.h("sub1"),
        json={"refs": [{"rt": "User", "id": "u-alice-7f3a"}]},
    ).json()
    h.post_event(group_event([base64.b64decode(pid["refs"][0]["pid"])]))
    h.post_event(user_event("u-globex-1", tenant=T2), "sub2")
    h.auditor().search(rid="u-alice-7f3a")  # an access event too
    rid = h.client.post(
        "/v1/scim/erasures",
        headers=h.h("po_a"),
        json={"tenant": T1, "rt": "Group", "rid": "g-engineering-42", "reason": "test"},
    ).json()["id"]
    assert h.client.post(f"/v1/scim/erasures/{rid}/approve", headers=h.h("po_b")).status_code == 200


def test_public_tree_holds_only_commitments(harness: Harness) -> None:
    populate(harness)
    size = harness.log.latest.size
    bundle = harness.client.get(f"/tile/entries/000.p/{size}").content
    entries = decode_entry_bundle(bundle)
    assert len(entries) == size
    tns = {harness.service.tenant_ref(T1), harness.service.tenant_ref(T2)}
    for e in entries:
        leaf = parse_leaf(e)
        # c commits to the event, e (when the log derived an effect) to the effect: both
        # keyed by the event's secret nonce, nothing readable.
        assert sorted(loads_det(e)) in (["c", "tn", "ts", "v"], ["c", "e", "tn", "ts", "v"])
        assert leaf.tn in tns
    public = bundle + harness.client.get("/checkpoint").content
    for i in range(size):
        public += harness.client.get(f"/v1/entries/{i}").content
        public += harness.client.get(f"/v1/bundle/{i}").content
    for ident in [*IDENTIFIERS, T1, T2]:
        assert ident.encode() not in public, ident


def _bytea_values(dump: bytes) -> bytes:
    """The bytea values of a plain ``pg_dump`` (COPY text writes them as ``\\x<hex>``),
    decoded: the bytes the database holds."""
    return b"\0".join(bytes.fromhex(h.decode()) for h in re.findall(rb"\\\\x([0-9a-f]*)", dump))


def test_private_store_holds_no_plaintext_identifiers(
    harness: Harness, database: str | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Every byte the store holds: LMDB, the file data.mdb raw; PostgreSQL, every row of the
    log's schema (``pg_dump --data-only``, bytea values decoded), the on-disk files of its
    tables, indexes and TOAST relations (dead row versions included) and the WAL written
    meanwhile (what an archive, a replica or a PITR backup keeps)."""
    cluster = None if database is None else request.getfixturevalue("pg_cluster")
    start = None if cluster is None else wal_position(cluster)
    # Plaintext the scans must see (a token's name is not personal data): so that each is
    # known to read the rows, the WAL and the files.
    harness.tokens.create("auditor", tenant=T1, name="canary-token-name")
    populate(harness)
    if cluster is None or start is None or database is None:
        raw = {"data.mdb": (harness.data / "db" / "data.mdb").read_bytes()}
        seen = ["data.mdb"]
    else:
        dump = schema_dump(cluster, database, tmp_path / "dump.sql")
        raw = {"dump": dump, "dump bytea": _bytea_values(dump), "wal": wal_since(cluster, start)}
        files = relation_files(cluster, database)
        # The canary is in one of the files; every file is scanned once below.
        assert any(b"canary-token-name" in f for f in files.values()), "relation files"
        raw.update(files)
        seen = ["dump bytea", "wal"]
    for name in seen:
        assert b"canary-token-name" in raw[name], name
    for name, data in raw.items():
        for ident in IDENTIFIERS:
            assert ident.encode() not in data, (name, ident)


def test_master_key_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, database: str | None
) -> None:
    caplog.set_level(logging.DEBUG)
    _app, log_, _ = build_app(serve_config(tmp_path, database), make_signer())
    log_.storage.close()
    path = tmp_path / MASTER_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.startswith("tlog-scim-master-key-v2\ncurrent ") and len(text) == 171
    assert text.split("\n")[3].startswith("store   ")  # bound to its store (keys.py)
    key_b64 = text.split("\n")[1].split()[1]
    assert len(base64.b64decode(key_b64)) == 32
    assert key_b64 not in caplog.text
    assert key_b64 not in repr(MasterKey.load(path))
    # Never overwritten.
    with pytest.raises(FileExistsError):
        MasterKey.create(path)
    # Reopening with the same key works.
    _, log_, _ = build_app(serve_config(tmp_path, database), make_signer())
    log_.storage.close()
    # Group-readable: refused.
    os.chmod(path, 0o640)
    with pytest.raises(StorageError, match="group or others"):
        build_app(serve_config(tmp_path, database), make_signer())
    os.chmod(path, 0o600)
    # Another key: refused rather than silently unable to decrypt.
    path.rename(tmp_path / "saved.key")
    MasterKey.create(path)
    with pytest.raises(StorageError, match="does not match"):
        build_app(serve_config(tmp_path, database), make_signer())
    # Missing while the store holds keys: refused, never recreated.
    path.unlink()
    with pytest.raises(StorageError, match="missing"):
        build_app(serve_config(tmp_path, database), make_signer())
    assert not path.exists()
    (tmp_path / "saved.key").rename(path)
    _, log_, _ = build_app(serve_config(tmp_path, database), make_signer())
    log_.storage.close()
    # Garbage in the file.
    path.write_text("tlog-scim-master-key-v2\ncurrent !!!\nnext    -\n")
    with pytest.raises(StorageError, match="not a tlog"):
        build_app(serve_config(tmp_path, database), make_signer())
    # Bytes that are not ASCII: the same refusal, naming the file.
    path.write_bytes(b"tlog-scim-master-key-v2\ncurrent \xff\xfe\nnext    -\n")
    with pytest.raises(StorageError, match=f"{path}.* not a tlog"):
        build_app(serve_config(tmp_path, database), make_signer())


def test_scim_can_be_switched_off(tmp_path: Path, database: str | None) -> None:
    from starlette.testclient import TestClient

    app, log_, tokens = build_app(serve_config(tmp_path, database), make_signer(), scim=False)
    token, _ = tokens.create("submitter", tenant=T1)
    with TestClient(app) as c:
        r = c.post("/v1/scim/events", content=b"{}", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404
        assert (
            c.post(
                "/v1/entries", content=b"x", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 200
        )
    log_.storage.close()
    assert not (tmp_path / MASTER_KEY_FILE).exists()
