"""LogClient: everything it returns is verified; a lying log raises, an absent one does not
look like a liar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from client.formats.checkpoint import Checkpoint
from client.formats.cosignature import CosignatureSigner
from client.formats.merkle import VerificationError, leaf_hash
from client.formats.note import Ed25519Signer, FormatError, parse_note, sign_note
from client.formats.policy import Policy
from client.formats.tiles import Tile
from client.net.logclient import (
    LogClient,
    LogHTTPError,
    LogUnreachable,
    QuorumNotMet,
    verify_tlog_proof,
)

from .conftest import ORIGIN, SEED, Server, flip, resign, rewrite_json, serve


def _cp(note: str) -> Checkpoint:
    return Checkpoint.parse(parse_note(note).text)


def test_reads_verify(server: Server) -> None:
    server.add(1000)
    c = server.client()
    vc = c.checkpoint()
    assert (vc.size, vc.origin, vc.note) == (1000, ORIGIN, server.note)
    assert c.latest == vc

    p = c.inclusion_proof(5)
    assert (p.index, p.tree_size, p.leaf_hash) == (5, 1000, leaf_hash(b"entry-e-000005"))
    verify_tlog_proof(p.tlog_proof(), c.verifier, entry=b"entry-e-000005")
    by_hash = c.inclusion_proof(leaf_hash(b"entry-e-000600"), tree_size=700)
    assert (by_hash.index, by_hash.tree_size) == (600, 700)
    with pytest.raises(LogHTTPError) as e:
        c.inclusion_proof(leaf_hash(b"entry-e-000777"), tree_size=700)  # not in that tree
    assert e.value.status == 404

    e5 = c.entry(123, tree_size=700)
    assert (e5.entry, e5.proof.tree_size) == (b"entry-e-000123", 700)

    for old, new in [(0, None), (1, 700), (300, 1000), (512, 700), (1000, None), (700, 700)]:
        cp = c.consistency_proof(old, new)
        assert cp.old_size == old and cp.tree_size == (new or 1000)
    # An old root the client had not seen comes from tiles and is bound by the proof.
    assert c.consistency_proof(300).old_root != c.consistency_proof(301).old_root

    b = c.bundle(42)
    assert b.leaf_hash == leaf_hash(b"entry-e-000042") and b.checkpoint.size == 1000
    assert c.bundle(42, 700, entry=b"entry-e-000042").checkpoint.size == 700
    with pytest.raises(VerificationError):
        c.bundle(42, entry=b"entry-e-000043")


def test_submissions_verify(server: Server) -> None:
    c = server.client()
    s = c.submit(b"hello", server.token)
    assert (s.index, s.duplicate, s.proof.tree_size) == (0, False, 1)
    again = c.submit(b"hello", server.token)
    assert (again.index, again.duplicate) == (0, True)
    verify_tlog_proof(s.tlog_proof, c.verifier, entry=b"hello")
    batch = c.submit_batch([b"a", b"b", b"hello", b"a"], server.token)
    assert (batch.indices, batch.duplicates, batch.tree_size) == ((1, 2, 0, 1), (2, 3), 3)
    assert batch.proofs is None
    batch = c.submit_batch([b"c", b"b"], server.token, proofs=True)
    assert batch.proofs is not None and [p.index for p in batch.proofs] == [3, 2]
    assert c.latest is not None and c.latest.size == 4


def test_tiles_verify(server: Server) -> None:
    server.add(70_000 // 100)  # 700
    c = server.client()
    assert len(c.hash_tile(Tile(0, 1))) == 8192
    assert len(c.hash_tile(Tile(0, 2, 188))) == 188 * 32
    assert len(c.hash_tile(Tile(0, 2, 5))) == 5 * 32  # a prefix of the partial tile
    assert len(c.hash_tile(Tile(1, 0, 2))) == 64
    assert c.entry_bundle(2, 188)[0] == b"entry-e-000512"
    server.tamper.rewrite["/tile/0/001"] = lambda b: flip(b, 8000)
    with pytest.raises(VerificationError):
        c.hash_tile(Tile(0, 1))
    server.tamper.rewrite["/tile/entries/000"] = lambda b: b.replace(b"000007", b"000008")
    with pytest.raises(VerificationError):
        c.entry_bundle(0)
    with pytest.raises(ValueError):
        c.hash_tile(Tile(0, 3))  # beyond the tree


@pytest.mark.parametrize(
    "endpoint",
    ["/v1/proof/inclusion", "/v1/proof/consistency"],
)
def test_proof_against_a_differently_signed_checkpoint(server: Server, endpoint: str) -> None:
    server.add(300)
    c = server.client()
    c.checkpoint()
    server.tamper.rewrite[endpoint] = rewrite_json("checkpoint", resign)
    with pytest.raises(VerificationError):
        if endpoint.endswith("inclusion"):
            c.inclusion_proof(7)
        else:
            c.consistency_proof(100)


def test_proof_against_an_unsigned_checkpoint(server: Server) -> None:
    server.add(300)
    c = server.client()
    grease = Ed25519Signer("grease.invalid", bytes(32))
    server.tamper.rewrite["/v1/proof/inclusion"] = rewrite_json(
        "checkpoint", lambda n: sign_note(parse_note(n).text, [grease])
    )
    with pytest.raises(VerificationError, match="no signature from a known key"):
        c.inclusion_proof(7)
    server.tamper.rewrite["/v1/proof/inclusion"] = rewrite_json(
        "checkpoint", lambda n: parse_note(n).text
    )
    with pytest.raises(FormatError):
        c.inclusion_proof(7)


def test_proof_that_does_not_verify(server: Server) -> None:
    server.add(300)
    c = server.client()
    server.tamper.rewrite["/v1/proof/inclusion"] = rewrite_json(
        "inclusion_proof", lambda p: p[::-1]
    )
    with pytest.raises(VerificationError):
        c.inclusion_proof(7)
    server.tamper.rewrite["/v1/proof/inclusion"] = rewrite_json("index", lambda i: i + 1)
    with pytest.raises(VerificationError):
        c.inclusion_proof(7)
    server.tamper.rewrite["/v1/entries/7"] = lambda b: b + b"x"
    del server.tamper.rewrite["/v1/proof/inclusion"]
    with pytest.raises(VerificationError):
        c.entry(7)


def test_submission_with_a_wrong_answer(server: Server) -> None:
    c = server.client()
    server.tamper.rewrite["/v1/entries"] = rewrite_json("index", lambda i: i + 1)
    with pytest.raises(VerificationError):
        c.submit(b"x", server.token)
    server.tamper.rewrite["/v1/entries/batch"] = rewrite_json("checkpoint", resign)
    with pytest.raises(VerificationError):
        c.submit_batch([b"y"], server.token)


def test_rollback_and_fork_are_detected(
    tmp_path: Path, database: str | None, new_database: Callable[[], str | None]
) -> None:
    with serve(tmp_path / "a", database=database) as a:
        a.add(300)
        old = a.note
        a.add(300, tag="b")
        c = a.client()
        assert c.checkpoint().size == 600
        a.tamper.rewrite["/checkpoint"] = lambda b: old.encode()
        with pytest.raises(VerificationError, match="rollback"):
            c.checkpoint()
        # The same old checkpoint is fine as the answer to an explicit question about size 300.
        assert c.inclusion_proof(5, tree_size=300).tree_size == 300
        # A second, log-signed root for size 300 is a fork, even below the latest size.
        key = Ed25519Signer(ORIGIN, SEED)
        forged = sign_note(f"{ORIGIN}\n300\n{'A' * 43}=\n", [key])
        a.tamper.rewrite["/v1/proof/inclusion"] = rewrite_json("checkpoint", lambda _: forged)
        with pytest.raises(VerificationError, match="fork"):
            c.inclusion_proof(5, tree_size=300)
        seen = c.latest
    with serve(tmp_path / "b", database=new_database()) as b:
        b.add(600, tag="fork")
        c = LogClient("http://testserver", b.vkey, http=b.http, checkpoint=seen.note)
        with pytest.raises(VerificationError, match="fork"):
            c.checkpoint()
        b.add(10, tag="more")
        with pytest.raises(VerificationError, match="inconsistent"):
            c.checkpoint()


def test_tiles_only_log(server: Server) -> None:
    server.add(600)
    c = server.client()
    first = c.checkpoint()
    server.add(500, tag="b")
    server.tamper.block.append("/v1/")
    assert c.checkpoint().size == 1100  # consistency computed from hash tiles
    assert any(p.startswith("/tile/") for p in server.tamper.seen)
    assert first.size == 600


def test_network_and_http_errors_are_not_verification_errors(server: Server) -> None:
    c = server.client()
    with pytest.raises(LogHTTPError) as e:
        c.entry(10)
    assert e.value.status in (400, 404) and not isinstance(e.value, VerificationError)
    with pytest.raises(LogHTTPError) as e:
        c.submit(b"x", "tlog_not-a-token")
    assert e.value.status == 401
    with LogClient("http://127.0.0.1:9", server.vkey, timeout=2) as dead:
        with pytest.raises(LogUnreachable):
            dead.checkpoint()
    server.tamper.rewrite["/checkpoint"] = lambda b: b"\xff" * 10
    with pytest.raises(FormatError):
        c.checkpoint()


def test_retry_on_pushback(server: Server) -> None:
    c = server.client(retries=2)
    # 503 with Retry-After: 0 twice, then the real answer.
    state = {"n": 0}
    real_app = server.tamper.app

    async def flaky(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "http" and scope["path"] == "/v1/entries" and state["n"] < 2:
            state["n"] += 1
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [(b"retry-after", b"0"), (b"content-length", b"2")],
                }
            )
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await real_app(scope, receive, send)

    server.tamper.app = flaky
    assert c.submit(b"x", server.token).index == 0
    assert state["n"] == 2


WITNESS = CosignatureSigner("witness.example/w1", bytes(range(50, 82)))


def test_policy_quorum(server: Server) -> None:
    server.add(10)
    policy = Policy.parse(f"log {server.vkey}\nwitness w1 {WITNESS.vkey()}\nquorum w1\n")
    c = server.client(policy=policy)
    with pytest.raises(QuorumNotMet):
        c.checkpoint()

    def cosign(body: bytes) -> bytes:
        note = body.decode()
        return (note + WITNESS.cosign(parse_note(note).text, 1).line()).encode()

    server.tamper.rewrite["/checkpoint"] = cosign
    vc = c.checkpoint()
    assert (vc.cosigners, vc.quorum) == (frozenset({"w1"}), True)
    # Proofs for that (witnessed) size or older ones are accepted without cosignatures.
    assert c.inclusion_proof(3).checkpoint.quorum is False
    assert c.consistency_proof(4).tree_size == 10
    # A fresh submission cannot be witnessed yet: reported, not raised.
    s = c.submit(b"new", server.token)
    assert s.proof.checkpoint.quorum is False and s.proof.tree_size == 11
    # ... but a proof against that unwitnessed, newer checkpoint is refused.
    with pytest.raises(QuorumNotMet):
        c.inclusion_proof(10)
    other = Policy.parse(f"log {Ed25519Signer(ORIGIN, bytes(32)).vkey()}\nquorum none\n")
    with pytest.raises(ValueError):
        server.client(policy=other)


def test_bad_arguments(server: Server) -> None:
    c = server.client()
    with pytest.raises(ValueError):
        c.inclusion_proof(b"short")
    with pytest.raises(ValueError):
        c.entry(-1)
    with pytest.raises(ValueError):
        c.consistency_proof(5, 4)
    with pytest.raises(ValueError):
        c.submit(b"", server.token)
    with pytest.raises(ValueError):
        c.submit_batch([], server.token)
