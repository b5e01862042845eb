"""The HTTP API end to end, in process. Every answer is checked with the client library."""

from __future__ import annotations

import base64
import json
import struct
import threading

import pytest

from client.formats.checkpoint import open_checkpoint
from client.formats.merkle import (
    inclusion_ranges,
    leaf_hash,
    proof_from_ranges,
    root_of_range,
    verify_consistency,
    verify_inclusion,
)
from client.formats.note import b64decode_strict
from client.formats.proof_bundle import TlogProof
from client.formats.tiles import Tile, TileHashReader, decode_entry_bundle, tiles_for_size
from tlog.sequencer import Overloaded, Sequencer

from .conftest import ORIGIN, Harness


def bundle_body(entries: list[bytes]) -> bytes:
    return b"".join(struct.pack(">H", len(e)) + e for e in entries)


def b64list(xs: list[str]) -> list[bytes]:
    return [b64decode_strict(x, size=32) for x in xs]


def test_empty_log_serves_signed_size_zero_checkpoint(harness: Harness) -> None:
    r = harness.client.get("/checkpoint")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    cp, _ = open_checkpoint(r.text, [harness.signer.verifier], origin=ORIGIN)
    assert cp.size == 0
    assert cp.root_hash == root_of_range([])


def test_add_entry_answer_verifies(harness: Harness) -> None:
    for i in range(9):
        r = harness.add(f"entry-{i}".encode())
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["index"] == i
        assert d["duplicate"] is False
        assert base64.b64decode(d["leaf_hash"]) == leaf_hash(f"entry-{i}".encode())
        cp, _ = open_checkpoint(d["checkpoint"], [harness.signer.verifier], origin=ORIGIN)
        assert cp.size == d["tree_size"] >= i + 1
        verify_inclusion(
            i,
            cp.size,
            leaf_hash(f"entry-{i}".encode()),
            b64list(d["inclusion_proof"]),
            cp.root_hash,
        )
        bundle = TlogProof.parse(d["tlog_proof"])
        assert bundle.checkpoint_note == d["checkpoint"]
        bundle.verify(harness.signer.verifier, entry=f"entry-{i}".encode())


def test_resubmission_returns_original_index(harness: Harness) -> None:
    first = harness.add(b"same").json()
    harness.add(b"other")
    again = harness.add(b"same").json()
    assert again["index"] == first["index"] == 0
    assert again["duplicate"] is True
    assert harness.log.latest.size == 2
    TlogProof.parse(again["tlog_proof"]).verify(harness.signer.verifier, entry=b"same")


def test_batch_octet_stream_and_json(harness: Harness) -> None:
    entries = [f"b{i}".encode() for i in range(50)]
    r = harness.client.post(
        "/v1/entries/batch", content=bundle_body(entries), headers=harness.auth()
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["indices"] == list(range(50))
    assert d["duplicates"] == []
    cp, _ = open_checkpoint(d["checkpoint"], [harness.signer.verifier])
    assert cp.size == 50
    assert cp.root_hash == root_of_range([leaf_hash(e) for e in entries])
    # JSON form, with duplicates inside the batch and against the log.
    js = {"entries": [base64.b64encode(e).decode() for e in [b"new", b"b3", b"new"]]}
    r = harness.client.post("/v1/entries/batch", json=js, headers=harness.auth())
    d = r.json()
    assert d["indices"] == [50, 3, 50]
    assert d["duplicates"] == [1, 2]
    assert d["tree_size"] == 51


def test_tiles_read_back_as_tlog_tiles(harness: Harness) -> None:
    entries = [f"tile-{i}".encode() for i in range(300)]
    for chunk in range(0, 300, 100):
        harness.client.post(
            "/v1/entries/batch",
            content=bundle_body(entries[chunk : chunk + 100]),
            headers=harness.auth(),
        )
    cp_text = harness.client.get("/checkpoint").text
    cp, _ = open_checkpoint(cp_text, [harness.signer.verifier])
    assert cp.size == 300
    paths = [t.path() for t in tiles_for_size(300)]
    assert paths == ["tile/0/000", "tile/0/001.p/44", "tile/1/000.p/1"]

    def fetch(t: Tile) -> bytes:
        r = harness.client.get("/" + t.path())
        assert r.status_code == 200, t.path()
        assert r.headers["content-type"] == "application/octet-stream"
        assert "immutable" in r.headers["cache-control"]
        return r.content

    reader = TileHashReader(300, fetch)

    assert reader.node(8, 0) == root_of_range([leaf_hash(e) for e in entries[:256]])
    proof = proof_from_ranges(inclusion_ranges(299, 300), reader.node)
    verify_inclusion(299, 300, leaf_hash(entries[299]), proof, cp.root_hash)
    # Entry bundles, plain and gzip.
    full = harness.client.get("/tile/entries/000", headers={"Accept-Encoding": "identity"})
    assert decode_entry_bundle(full.content, 256) == entries[:256]
    part = harness.client.get("/tile/entries/001.p/44")
    assert decode_entry_bundle(part.content, 44) == entries[256:]
    gz = harness.client.get("/tile/entries/001.p/44", headers={"Accept-Encoding": "gzip"})
    assert gz.headers.get("content-encoding") == "gzip"
    # Every partial tile of an earlier published size is still served.
    assert len(harness.client.get("/tile/0/000.p/100").content) == 100 * 32
    assert len(harness.client.get("/tile/0/000.p/200").content) == 200 * 32


@pytest.mark.parametrize(
    "path",
    [
        "/tile/0/001",
        "/tile/0/002.p/1",
        "/tile/0/001.p/45",
        "/tile/2/000.p/1",
        "/tile/0/1",
        "/tile/0/000.p/0",
        "/tile/0/000.p/256",
        "/tile/0/000.p/044",
        "/tile/00/000",
        "/tile/64/000",
        "/tile/entries/001",
        "/tile/entries/x000/001",
        "/tile/0/x001/000",
        "/tile/-1/000",
        "/tile/0/000/",
        "/tile/entries/001.p/45",
        "/tile/foo/000",
    ],
)
def test_unknown_or_malformed_tiles_404(harness: Harness, path: str) -> None:
    for i in range(0, 300, 100):
        harness.client.post(
            "/v1/entries/batch",
            content=bundle_body([f"x{j}".encode() for j in range(i, i + 100)]),
            headers=harness.auth(),
        )
    r = harness.client.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "error" in r.json()


def test_proof_api(harness: Harness) -> None:
    entries = [f"p{i}".encode() for i in range(40)]
    sizes = []
    for i in range(0, 40, 7):
        d = harness.client.post(
            "/v1/entries/batch", content=bundle_body(entries[i : i + 7]), headers=harness.auth()
        ).json()
        sizes.append(d["tree_size"])
    v = harness.signer.verifier
    for size in sizes:
        for idx in (0, size // 2, size - 1):
            d = harness.client.get(f"/v1/proof/inclusion?index={idx}&tree_size={size}").json()
            cp, _ = open_checkpoint(d["checkpoint"], [v])
            assert cp.size == size == d["tree_size"]
            verify_inclusion(
                idx, size, leaf_hash(entries[idx]), b64list(d["inclusion_proof"]), cp.root_hash
            )
        lh = base64.b64encode(leaf_hash(entries[3])).decode()
        d = harness.client.get(
            "/v1/proof/inclusion", params={"leaf_hash": lh, "tree_size": size}
        ).json()
        assert d["index"] == 3
    for old in sizes:
        d = harness.client.get(f"/v1/proof/consistency?old_size={old}").json()
        new_cp, _ = open_checkpoint(d["checkpoint"], [v])
        old_cp, _ = open_checkpoint(harness.log.checkpoint_note(old).note, [v])
        verify_consistency(
            old, new_cp.size, old_cp.root_hash, new_cp.root_hash, b64list(d["consistency_proof"])
        )
    info = harness.client.get("/v1/log").json()
    assert info["origin"] == ORIGIN
    assert info["vkey"] == harness.signer.vkey()
    assert info["tree_size"] == 40
    assert harness.client.get("/v1/entries/39").content == entries[39]
    b = TlogProof.parse(harness.client.get("/v1/bundle/5?tree_size=7").text)
    b.verify(v, entry=entries[5])


BAD_QUERIES = [
    "/v1/proof/inclusion?index=-1",
    "/v1/proof/inclusion?index=01",
    "/v1/proof/inclusion?index=+1",
    "/v1/proof/inclusion?index=1.0",
    "/v1/proof/inclusion?index=0x1",
    "/v1/proof/inclusion?index=%D9%A1",  # Arabic-Indic digit one
    "/v1/proof/inclusion?index=99999999999999999999999",
    "/v1/proof/inclusion?index=5",  # not below the size
    "/v1/proof/inclusion?index=0&tree_size=6",  # beyond the log
    "/v1/proof/inclusion?index=0&index=1",
    "/v1/proof/inclusion?index=0&leaf_hash=" + "A" * 43 + "=",
    "/v1/proof/inclusion",
    "/v1/proof/inclusion?leaf_hash=abc",
    "/v1/proof/inclusion?leaf_hash=" + "_" * 43 + "=",
    "/v1/proof/inclusion?index=0&bogus=1",
    "/v1/proof/consistency?old_size=6",
    "/v1/proof/consistency",
    "/v1/proof/consistency?old_size=1&tree_size=99",
    "/v1/proof/consistency?old_size=-3",
    "/v1/proof/consistency?old_size=&tree_size=2",
    "/v1/entries/abc",
    "/v1/entries/-1",
    "/v1/entries/007",
    "/v1/bundle/x",
    "/v1/log?x=1",
]


@pytest.mark.parametrize("path", BAD_QUERIES)
def test_malformed_queries_are_400(harness: Harness, path: str) -> None:
    for i in range(5):
        harness.add(f"q{i}".encode())
    r = harness.client.get(path)
    assert r.status_code == 400, (path, r.status_code, r.text)
    assert r.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/entries/5",
        "/v1/entries/9223372036854775807",
        "/v1/bundle/5",
        "/v1/proof/inclusion?leaf_hash=" + base64.b64encode(b"\x00" * 32).decode(),
        "/v1/proof/inclusion?index=0&tree_size=3",  # size 3 was never published
        "/nope",
        "/tile",
        "/v1",
    ],
)
def test_missing_things_are_404(harness: Harness, path: str) -> None:
    harness.client.post(
        "/v1/entries/batch",
        content=bundle_body([b"m%d" % i for i in range(5)]),
        headers=harness.auth(),
    )
    r = harness.client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text)
    assert r.json()["error"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/checkpoint"),
        ("DELETE", "/checkpoint"),
        ("PUT", "/v1/entries"),
        ("GET", "/v1/entries"),
        ("POST", "/tile/0/000"),
        ("GET", "/v1/entries/batch/x"),
        ("PATCH", "/v1/proof/inclusion"),
    ],
)
def test_wrong_methods(harness: Harness, method: str, path: str) -> None:
    r = harness.client.request(method, path)
    assert r.status_code in (404, 405), r.status_code
    assert r.json()["error"]
    if r.status_code == 405:
        assert "allow" in r.headers


def test_auth_required_and_checked(harness: Harness) -> None:
    c = harness.client
    assert c.post("/v1/entries", content=b"x").status_code == 401
    r = c.post("/v1/entries", content=b"x", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert (
        c.post(
            "/v1/entries", content=b"x", headers={"Authorization": "Basic dXNlcjpwYXNz"}
        ).status_code
        == 401
    )
    assert (
        c.post(
            "/v1/entries", content=b"x", headers={"Authorization": "Bearer tlog_" + "A" * 43}
        ).status_code
        == 401
    )
    auditor, _ = harness.tokens.create("auditor", tenant="t1")
    r = c.post("/v1/entries", content=b"x", headers=harness.auth(auditor))
    assert r.status_code == 403
    revoked, p = harness.tokens.create("submitter")
    harness.tokens.revoke(p.token_id)
    assert c.post("/v1/entries", content=b"x", headers=harness.auth(revoked)).status_code == 401
    expired, _ = harness.tokens.create("submitter", ttl=-1)
    assert c.post("/v1/entries", content=b"x", headers=harness.auth(expired)).status_code == 401
    assert c.post("/v1/entries/batch", content=bundle_body([b"x"])).status_code == 401
    # Nothing above reached the log.
    assert harness.log.latest.size == 0
    # Reads are public.
    assert c.get("/checkpoint").status_code == 200
    assert c.get("/v1/log").status_code == 200


def test_body_limits(harness: Harness) -> None:
    c, h = harness.client, harness.auth()
    assert c.post("/v1/entries", content=b"", headers=h).status_code == 400
    assert c.post("/v1/entries", content=b"x" * 65535, headers=h).status_code == 200
    r = c.post("/v1/entries", content=b"x" * 65536, headers=h)
    assert r.status_code == 413
    assert "65535" in r.json()["error"]
    # Batch: too many entries, too large a body, empty entries, truncations, bad JSON.
    assert (
        c.post("/v1/entries/batch", content=bundle_body([b"e"] * 101), headers=h).status_code == 413
    )
    assert (
        c.post("/v1/entries/batch", content=b"\x00" * ((1 << 20) + 1), headers=h).status_code == 413
    )
    for bad in [b"", b"\x00", b"\x00\x05abc", bundle_body([b""]), b"\x00\x01a\x00"]:
        r = c.post("/v1/entries/batch", content=bad, headers=h)
        assert r.status_code == 400, bad
    for bad_json in [
        b"{",
        b"[]",
        b'{"entries": "x"}',
        b'{"entries": [1]}',
        b'{"entries": ["***"]}',
        b'{"entries": []}',
        b'{"entries": [""]}',
        b'{"entries": ["YQ=="], "x": 1}',
        b'{"entries": ["YQ"]}',
    ]:
        r = c.post(
            "/v1/entries/batch", content=bad_json, headers={**h, "Content-Type": "application/json"}
        )
        assert r.status_code == 400, bad_json
    r = c.post("/v1/entries/batch", content=b"x", headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 400
    assert harness.log.latest.size == 1


def test_backlog_full_is_503_with_retry_after(harness: Harness) -> None:
    """A full backlog is pushback, answered at once, not a hang."""
    gate = threading.Event()
    entered = threading.Event()
    real = harness.log.integrate

    def slow(entries: list[bytes], publish: bool = True, **kw):  # type: ignore[no-untyped-def]
        entered.set()
        gate.wait(10)
        return real(entries, publish, **kw)

    api = harness.client.app.api  # type: ignore[attr-defined]
    seq: Sequencer = api.seq
    seq.max_backlog = 3
    harness.log.integrate = slow  # type: ignore[method-assign]
    results: list[int] = []

    def submit(i: int) -> None:
        results.append(harness.add(f"bl{i}".encode()).status_code)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(4)]
    threads[0].start()
    assert entered.wait(10)  # the writer holds the first submission
    for t in threads[1:]:
        t.start()
    for _ in range(1000):  # then three wait in the queue
        if seq.backlog >= 3:
            break
        threading.Event().wait(0.01)
    assert seq.backlog == 3
    r = harness.add(b"one too many")
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "backlog" in r.json()["error"]
    gate.set()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 200, 200, 200]
    assert isinstance(Overloaded(), Exception)


def test_json_errors_never_500(harness: Harness) -> None:
    c = harness.client
    for path in [
        "/v1/proof/inclusion?index=%00",
        "/v1/proof/inclusion?index=" + "9" * 5000,
        "/tile/" + "x" * 3000,
        "/v1/entries/" + "1" * 400,
    ]:
        r = c.get(path)
        assert 400 <= r.status_code < 500, path
        json.loads(r.text)


@pytest.mark.parametrize(
    "query",
    [
        "index=%ff",
        "index=%",
        "%ff=1",
        "index=1%00",
        "leaf_hash=%2B%2F%3D",
        "in%64ex=0",
        "index=1&&tree_size=",
        "=1",
        "index",
    ],
)
def test_percent_encoding_is_strict(harness: Harness, query: str) -> None:
    harness.add(b"pe")
    r = harness.client.get("/v1/proof/inclusion?" + query)
    if query == "in%64ex=0":  # percent-decoded names are still names
        assert r.status_code == 200
        return
    assert r.status_code == 400, (query, r.status_code, r.text)
