"""Issue 9 part 5: Entra ID and Okta request shapes (``corpus.py``) replayed through the
middleware and through ``tlog scim-proxy`` in front of a real SCIM SP (scim2-server), into a
real log; every request's intent and effect actions are asserted, and both paths agree."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.scim_service.conftest import Harness, harness  # noqa: F401
from tests.support import UvicornThread

from .corpus import CORPUS
from .helpers import SCIM_TOKEN, scim_asgi_app
from .rig import make_rig, proxy_app

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}


def fill(value: Any, ids: dict[str, str]) -> Any:
    text = json.dumps(value)
    for k, v in ids.items():
        text = text.replace("{" + k + "}", v)
    return json.loads(text)


def replay(send: Any, prefix: str) -> list[tuple[str, int]]:
    """Send the corpus with ``send(method, path, body, headers)``; return (req id, status)."""
    ids: dict[str, str] = {}
    out = []
    for name, _idp, method, path, body, intent, _e in CORPUS:
        req = f"{prefix}-{name}"
        r = send(
            method,
            fill(path, ids),
            None if body is None else fill(body, ids),
            {**AUTH, "X-Request-Id": req},
        )
        assert (200 <= r.status_code < 300) == bool(intent), (name, r.status_code, r.text)
        if name.startswith("create:"):
            ids[name.split(":", 1)[1]] = r.json()["id"]
        out.append((req, r.status_code))
    return out


def check(h: Harness, prefix: str) -> list[tuple[list[str], list[str]]]:
    a = h.auditor()
    got = []
    for name, idp, _m, _p, _b, intent, effect in CORPUS:
        (f,) = a.search(req=f"{prefix}-{name}").results
        assert f.event is not None
        assert f.event["outcome"] == ("success" if intent else "failure"), name
        acts = [x["a"] for x in f.event.get("acts", ())]
        derived = [x["a"] for x in (f.effect or {}).get("acts", ())]
        assert "uninterpretable" not in f.event.get("x", {}), (idp, name)
        assert acts == intent, (idp, name, acts)
        assert derived == effect, (idp, name, derived)
        got.append((acts, derived))
    return got


@pytest.fixture
def sp() -> Iterator[UvicornThread]:
    srv = UvicornThread(scim_asgi_app())
    yield srv
    srv.stop()


def test_corpus_through_middleware_and_proxy(
    harness: Harness,  # noqa: F811
    tmp_path: Path,
    sp: UvicornThread,
) -> None:
    with make_rig(harness, tmp_path, app=scim_asgi_app()) as rig:

        def via_mw(method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
            return rig.client.request(method, "/v2" + path, json=body, headers=headers)

        replay(via_mw, "mw")
        assert rig.relay.flush(30)
        by_mw = check(harness, "mw")

    app = proxy_app(harness, tmp_path, sp.url + "/v2", "sp")
    with TestClient(app, base_url="http://proxy.test") as c:

        def via_proxy(method: str, path: str, body: Any, headers: dict[str, str]) -> Any:
            return c.request(method, "/v2" + path, json=body, headers=headers)

        replay(via_proxy, "px")
        assert app.relay is not None and app.relay.flush(30)
    assert check(harness, "px") == by_mw
