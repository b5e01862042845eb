"""A real log server (uvicorn on 127.0.0.1, in a thread) with SCIM events, a 2-of-3 witness
policy whose cosignatures the test makes itself, and a tamper hook: an ASGI middleware
wrapped around the app that rewrites chosen answers, as a malicious or broken server would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.formats.cosignature import CosignatureSigner, MLDSACosignatureSigner
from client.formats.note import Ed25519Signer, parse_note
from client.scim import event_to_json, new_event
from tlog.log import Published
from tlog.server import build_app
from tlog.signer import CheckpointSigner

from ..support import UvicornThread, app_parts, free_port, serve_config

ORIGIN = "console.example/log"
TENANT = "acme"
Transform = Callable[[str, Any], Any]


class Tamper:
    """ASGI middleware: ``rules[path] = fn(query, doc) -> doc`` rewrites JSON answers of
    ``path``; an empty ``rules`` passes everything through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.rules: dict[str, Transform] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        rule = self.rules.get(scope.get("path", "")) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body = b"".join(chunks)
                    if start.get("status") == 200:
                        doc = rule(scope.get("query_string", b"").decode(), json.loads(body))
                        body = json.dumps(doc).encode()
                    headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                    headers.append((b"content-length", str(len(body)).encode()))
                    await send({**start, "headers": headers})
                    await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


@dataclass
class Live:
    url: str
    tamper: Tamper
    signer: CheckpointSigner
    witnesses: list[CosignatureSigner]
    pusher: Any
    log: Any
    tokens: dict[str, str]
    data: Path
    store: Any = None  # the TokenStore, for tests that need more tokens

    @property
    def vkey(self) -> str:
        return self.signer.vkey()

    def post(self, ev: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/v1/scim/events",
            content=event_to_json(ev).encode(),
            headers={
                "Authorization": f"Bearer {self.tokens['sub']}",
                "Content-Type": "application/json",
            },
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def cosign(self, n: int = 2) -> None:
        """The first ``n`` Ed25519 witnesses and the ML-DSA-44 one cosign the latest
        checkpoint (as the pusher would record it after add-checkpoint)."""
        pub: Published = self.log.latest
        text = parse_note(pub.note).text
        now = int(time.time())
        signers = [*self.witnesses[:n], self.witnesses[3]]
        self.pusher._record(pub, tuple(w.cosign(text, now) for w in signers))
        for name in [*list(self.pusher.state)[:n], "pq"]:
            self.pusher.state[name].cosigned_size = pub.size


def user(
    rid: str,
    req: str,
    *,
    op: str = "patch",
    outcome: str = "success",
    mods: list[dict[str, str]] | None = None,
    **kw: Any,
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if outcome != "success":
        extra["err"] = {"scim_type": "uniqueness", "reason": "userName already taken"}
    return new_event(
        tenant=TENANT,
        sp="crm-app",
        op=op,
        rt="User",
        rid=rid,
        xid=f"{rid}@example.org",
        actor={"kind": "oauth_client", "id": "okta-scim-client", "name": "Okta"},
        corr=req,
        req={
            "m": {"patch": "PATCH", "create": "POST", "delete": "DELETE"}[op],
            "p": f"/Users/{rid}",
            "dig": hashlib.sha256(req.encode()).digest(),
            "len": 120,
        },
        res=200 if outcome == "success" else 409,
        outcome=outcome,
        mods=mods if op == "patch" else None,
        src={"ip": "192.0.2.10", "ua": "Okta SCIM Client 1.0"},
        **extra,
        **kw,
    )


def populate(live: Live) -> None:
    """A small, realistic history: accounts created, changed, deactivated, a group."""
    for rid in ("u-alice", "u-bob", "u-carol"):
        live.post(user(rid, f"req-create-{rid}", op="create"))
    live.post(
        user(
            "u-alice",
            "req-2",
            mods=[{"attr": "title", "old": '"Engineer"', "new": '"Staff Engineer"'}],
            x={"ticket": "HR-1042", "n": -3, "tags": ["é", "ü"], "ok": True, "none": None},
        )
    )
    live.post(user("u-bob", "req-3", outcome="failure", op="create"))
    pids = httpx.post(
        f"{live.url}/v1/scim/pseudonyms",
        json={"refs": [{"rt": "User", "id": "u-alice"}]},
        headers={"Authorization": f"Bearer {live.tokens['sub']}"},
    ).json()
    pid = pids["refs"][0]["pid"]
    import base64

    live.post(
        new_event(
            tenant=TENANT,
            sp="crm-app",
            op="patch",
            rt="Group",
            rid="g-admins",
            actor={"kind": "oauth_client", "id": "okta-scim-client"},
            corr="req-4",
            req={"m": "PATCH", "p": "/Groups/g-admins", "dig": bytes(32), "len": 64},
            res=204,
            outcome="success",
            refs=[{"rt": "User", "pid": base64.b64decode(pid)}],
            acts=[{"a": "group.member.add", "ocsf": [3006, 3]}],
        )
    )
    live.cosign(2)
    live.post(user("u-alice", "req-5", mods=[{"attr": "active", "old": "true", "new": "false"}]))
    live.post(user("u-carol", "req-6", op="delete"))
    live.cosign(2)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, module_database: str | None) -> Iterator[Live]:
    data = tmp_path_factory.mktemp("console")
    signer = CheckpointSigner(Ed25519Signer(ORIGIN, bytes(range(32))), ORIGIN)
    witnesses: list[Any] = [
        CosignatureSigner(f"witness.example/w{i}", bytes([i]) * 32) for i in (1, 2, 3)
    ]
    # A post-quantum witness: listed and cosigning, but WebCrypto cannot verify ML-DSA-44,
    # so the page shows it and never counts it.
    witnesses.append(MLDSACosignatureSigner("witness.example/pq", bytes([4]) * 32))
    dead = free_port()  # nothing listens there: the test cosigns by itself
    policy = (
        "\n".join(
            [
                f"log {signer.vkey()}",
                *(
                    f"witness {n} {w.verifier().vkey()} http://127.0.0.1:{dead}/{n}"
                    for n, w in zip(("w1", "w2", "w3", "pq"), witnesses, strict=True)
                ),
                "group two 2 w1 w2 w3 pq",
                "quorum two",
            ]
        )
        + "\n"
    )
    (data / "policy").write_text(policy)
    app, log_, tokens = build_app(
        serve_config(data, module_database, batch_age_ms=0.0, witnesses=data / "policy"), signer
    )
    pusher = app_parts(app).pusher
    pusher.start = lambda: None  # no pushing: the test is the witnesses
    toks = {
        "sub": tokens.create("submitter", tenant=TENANT, name="sub")[0],
        "aud": tokens.create("auditor", tenant=TENANT, name="aud")[0],
        "aud2": tokens.create("auditor", tenant="globex", name="aud2")[0],
    }
    tamper = Tamper(app)
    server = UvicornThread(tamper)
    lv = Live(server.url, tamper, signer, witnesses, pusher, log_, toks, data, tokens)
    populate(lv)
    try:
        yield lv
    finally:
        server.stop()
        log_.storage.close()


CHROMIUM = os.environ.get("TLOG_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright; never a browser Playwright downloads.
    Skips (with the reason) when the package or the browser is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[dev]')")
    exe = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if exe is None:
        pytest.skip(f"no system Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()
