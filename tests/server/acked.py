"""What a red team 30 test acknowledged, and what a ``tlog serve`` proves of it."""

from __future__ import annotations

import httpx

from client.formats.merkle import leaf_hash
from client.formats.note import Ed25519Verifier
from client.net.logclient import LogClient
from tests.support import ServerProcess


def submit(srv: ServerProcess, token: str, body: bytes) -> httpx.Response:
    return httpx.post(
        srv.url + "/v1/entries",
        content=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def acknowledge(srv: ServerProcess, token: str, n: int, tag: str) -> dict[int, bytes]:
    acked = {}
    for i in range(n):
        body = f"{tag}-{i}".encode()
        r = submit(srv, token, body)
        assert r.status_code == 200, r.text
        acked[int(r.json()["index"])] = body
    return acked


def proves(srv: ServerProcess, vkey: str, acked: dict[int, bytes]) -> int:
    """Every acknowledged entry served at its index with an inclusion proof verified
    against the log's key; the served tree size."""
    http = httpx.Client(timeout=30)
    try:
        client = LogClient(srv.url, Ed25519Verifier.from_vkey(vkey), http=http)
        for index, body in acked.items():
            r = http.get(f"{srv.url}/v1/entries/{index}")
            assert r.status_code == 200 and r.content == body, (index, r.status_code)
            assert client.inclusion_proof(leaf_hash(body)).index == index
        return int(http.get(srv.url + "/v1/log").json()["tree_size"])
    finally:
        http.close()
