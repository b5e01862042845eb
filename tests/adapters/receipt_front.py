"""A hostile front before a real log for the receipt tests: :class:`Front` (an ``httpx``
transport that rewrites the log's answers) and :data:`CASES`, the rewrites of a batch answer
(or of a hash tile) whose receipts must then fail verification: inclusion, or the leaf's
commitment to the event sent."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx

from client.adapters.outbox import Outbox
from client.adapters.relay import BATCH_PATH, Relay

from ..support import wait_for
from .logserver import Log

__all__ = ["CASES", "Front", "drain", "on_batch", "relay_behind"]

Rewrite = Callable[[httpx.Request, bytes], bytes]


class Front(httpx.BaseTransport):
    """A front proxy before the real log: while ``rewrite`` is set, every answer it applies
    to (it returns its bytes unchanged otherwise) is rewritten by it."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.rewrite: Rewrite | None = None
        self.rewritten = 0
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        resp = self.inner.handle_request(request)
        with self.lock:
            rewrite = self.rewrite
        if rewrite is None or resp.status_code != 200:
            return resp
        body = resp.read()
        resp.close()
        new = rewrite(request, body)
        if new != body:
            with self.lock:
                self.rewritten += 1
        headers = {k: v for k, v in resp.headers.items() if k.lower() != "content-length"}
        return httpx.Response(200, headers=headers, content=new)

    def close(self) -> None:
        self.inner.close()


def _is_batch(request: httpx.Request) -> bool:
    return request.method == "POST" and request.url.path == BATCH_PATH


def on_batch(change: Callable[[dict[str, Any]], None]) -> Rewrite:
    def rewrite(request: httpx.Request, body: bytes) -> bytes:
        if not _is_batch(request):
            return body
        doc = json.loads(body)
        change(doc)
        return json.dumps(doc).encode()

    return rewrite


def _bad_signature(doc: dict[str, Any]) -> None:
    text, sigs = doc["checkpoint"].split("\n\n", 1)
    lines = sigs.split("\n")
    dash, name, sig = lines[0].split(" ")
    raw = bytearray(base64.b64decode(sig))
    raw[-1] ^= 1
    lines[0] = " ".join([dash, name, base64.b64encode(bytes(raw)).decode()])
    doc["checkpoint"] = text + "\n\n" + "\n".join(lines)


def _swapped_leaves(doc: dict[str, Any]) -> None:
    a, b = doc["results"][0], doc["results"][1]
    a["leaf_hash"], b["leaf_hash"] = b["leaf_hash"], a["leaf_hash"]


def _swapped_indices(doc: dict[str, Any]) -> None:
    a, b = doc["results"][0], doc["results"][1]
    a["index"], b["index"] = b["index"], a["index"]


def _index_outside(doc: dict[str, Any]) -> None:
    doc["results"][0]["index"] = doc["tree_size"]


def _old_index(doc: dict[str, Any]) -> None:
    doc["results"][0]["index"] = 0  # inside the tree verified before the batch was sent


def _tree_size(doc: dict[str, Any]) -> None:
    doc["tree_size"] += 1


def _other_events_leaf(doc: dict[str, Any]) -> None:
    """The substitution a log could make: drop the first event and answer for it with the
    second's leaf, index, leaf hash and nonce as if it had been logged before (all genuinely
    in the tree: inclusion verifies; only the commitment tells)."""
    a, b = doc["results"][0], doc["results"][1]
    for k in ("index", "leaf_hash", "leaf", "nonce"):
        a[k] = b[k]
    a["duplicate"] = True


def _leaf_not_its_hash(doc: dict[str, Any]) -> None:
    doc["results"][0]["leaf"] = doc["results"][1]["leaf"]


def _wrong_nonce(doc: dict[str, Any]) -> None:
    raw = bytearray(base64.b64decode(doc["results"][0]["nonce"]))
    raw[0] ^= 1
    doc["results"][0]["nonce"] = base64.b64encode(bytes(raw)).decode()


def _tampered_tile(request: httpx.Request, body: bytes) -> bytes:
    if request.method != "GET" or not request.url.path.startswith("/tile/0/"):
        return body
    raw = bytearray(body)
    raw[len(raw) // 2] ^= 0x80
    return bytes(raw)


CASES: dict[str, tuple[Rewrite, str]] = {
    "bad signature": (on_batch(_bad_signature), "verif"),
    "leaf hash at another index": (on_batch(_swapped_leaves), "not the log's leaf"),
    "indices swapped": (on_batch(_swapped_indices), "not the log's leaf"),
    "index outside the checkpoint": (on_batch(_index_outside), "outside its checkpoint"),
    "new event at an old index": (on_batch(_old_index), "signed before it was sent"),
    "tree size not the checkpoint's": (on_batch(_tree_size), "tree_size"),
    "tampered tile (wrong proof)": (_tampered_tile, "do not verify"),
    "another event's leaf": (on_batch(_other_events_leaf), "does not commit to the event"),
    "a leaf that is not the leaf hash's": (on_batch(_leaf_not_its_hash), "does not hash"),
    "a wrong nonce": (on_batch(_wrong_nonce), "does not commit to the event"),
}


def relay_behind(outbox: Outbox, log: Log, token: str, front: Front, **kw: Any) -> Relay:
    """A relay from ``outbox`` to the real ``log`` through ``front``, verifying under the
    log's key, with the tests' short back-off and idle times (``kw``: more settings)."""
    settings: dict[str, Any] = {
        "log_key": log.vkey,
        "transport": front,
        "backoff_min": 0.01,
        "backoff_max": 0.05,
        "idle": 0.02,
        **kw,
    }
    return Relay(outbox, log.url, token, **settings)


def drain(outbox: Outbox, relay: Relay, what: str) -> None:
    """Wake the relay and wait until ``outbox`` holds nothing pending."""
    relay.kick()
    wait_for(lambda: outbox.counts()["pending"] == 0, 30, what)
