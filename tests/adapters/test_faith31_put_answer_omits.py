"""faith31: what a PUT's answer leaves out of what the PUT stated, the rest of it.

faith30 made a PUT's answer that leaves out a stated attribute say so (``null`` in
``x.result.other``, ``x.result.active`` null), but not for ``userName``: a PUT renaming a
user whose answer shows no ``userName`` had the stated name taken as stored. And past 64
such attributes ``x.result.other`` was left out whole, so the log took every stated value
as stored (review F5). Now ``x.result.userName`` is ``null`` (not known: the name stays in
the state for the erasure's reach, marked stale, the change named without values), and
``x.result.other`` holds up to ``_RESULT_OTHER_BYTES`` of paths and digests (some hundreds
of short names), past which it is ``null`` (cut: none of the PUT's values taken as stored),
never silently absent.

Against scim2-server (its ASGI app) with an extension of its Users of 100 string
attributes, behind the audit middleware, a front (``answer_rewritten``) dropping from its
answers to PUTs the ``userName`` and the extension (what it stored is untouched)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from client.adapters import exchange
from client.adapters.middleware import AuditConfig, AuditMiddleware
from client.adapters.outbox import Outbox
from tlog.scim.effects import classify

from .helpers import SCIM_TOKEN, FakeLog, answer_rewritten, effect_acts, relay_for
from .misleading_sp import MISLEADING, USER, sp_with_misleading_extension

pytest.importorskip("scim2_server", reason="needs the dev extras (scim2-server)")

AUTH = {"Authorization": f"Bearer {SCIM_TOKEN}"}
MANY = 100


def _dropping(app: Any, *names: str) -> Any:
    async def rewrite(scope: dict[str, Any], raw: bytes) -> bytes:
        body = json.loads(raw)
        for name in names:
            body.pop(name, None)
        return json.dumps(body).encode()

    return answer_rewritten(app, lambda scope: scope["method"] == "PUT", rewrite)


@contextmanager
def _rig(tmp_path: Path, app: Any) -> Iterator[tuple[TestClient, Any]]:
    log = FakeLog()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    relay = relay_for(outbox, log)
    config = AuditConfig(tenant="t1", sp_id="sp1", on_access=None)
    mw: Any = AuditMiddleware(app, config, outbox, relay, own=True)
    with TestClient(mw, base_url="http://scim.test") as client:
        yield client, lambda: (relay.flush(10), log.events)[1]


def _user(name: str, value: str) -> dict[str, Any]:
    ext = {"team": value, **{f"a{i}": f"{value}{i}" for i in range(MANY)}}
    return {"schemas": [USER, MISLEADING], "userName": name, MISLEADING: ext}


def _put_twice(client: TestClient, put: dict[str, Any], shown: str) -> None:
    r = client.post("/v2/Users", json=_user("ann", "v"), headers=AUTH)
    assert r.status_code == 201, r.text
    uid = r.json()["id"]
    for _ in range(2):
        r = client.put(f"/v2/Users/{uid}", json=put, headers=AUTH)
        assert r.status_code == 200, r.text
        assert shown not in r.json(), r.json()


def test_a_puts_answer_without_the_stated_user_name_says_it_is_not_known(
    tmp_path: Path,
) -> None:
    with _rig(tmp_path, _dropping(sp_with_misleading_extension(MANY), "userName")) as (c, evs):
        _put_twice(c, _user("bob", "v"), "userName")
        create, first, second = evs()
    # the answer shows no userName: null, not known (before: no such key, "bob" stood)
    assert first["x"]["result"]["userName"] is None, first["x"]
    _, state, _ = classify(None, create)
    effect, state, _ = classify(state, first)
    assert effect is not None and {"attr": "username"} in effect["changes"], effect
    assert state is not None and "username" in state.get("stale", ()), state
    # the same PUT again is no noop: what the SP holds of the name is not known
    effect, _, _ = classify(state, second)
    assert effect_acts(effect) != ["user.noop"], effect


def test_a_puts_answer_leaving_out_more_than_64_stated_attributes_says_so(
    tmp_path: Path,
) -> None:
    put = _user("ann", "w")
    with _rig(tmp_path, _dropping(sp_with_misleading_extension(MANY), MISLEADING)) as (c, evs):
        _put_twice(c, put, MISLEADING)
        create, first, second = evs()
    other = first["x"]["result"]["other"]
    # each of the 101 stated attributes the answer leaves out: null (before: past 64 no
    # "other" at all, and the log took every stated value as stored)
    assert {k for k, v in other.items() if v is None} == {
        f"{MISLEADING}:{k}" for k in put[MISLEADING]
    }, other
    _, state, _ = classify(None, create)
    effect, state, _ = classify(state, first)
    assert state is not None
    assert not {f"{MISLEADING}:{k}".lower() for k in put[MISLEADING]} & set(
        state.get("other", {})
    ), state
    effect, _, _ = classify(state, second)
    assert effect_acts(effect) != ["user.noop"], effect


def test_past_the_bound_the_event_says_it_was_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a bound the answer's attributes pass: x.result.other null (cut), and none of the
    # stated values is taken as stored (before: none recorded, and all were)
    monkeypatch.setattr(exchange, "_RESULT_OTHER_BYTES", 1024)
    with _rig(tmp_path, _dropping(sp_with_misleading_extension(MANY), MISLEADING)) as (c, evs):
        _put_twice(c, _user("ann", "w"), MISLEADING)
        create, first, second = evs()
    assert first["x"]["result"]["other"] is None, first["x"]
    _, state, _ = classify(None, create)
    _, state, _ = classify(state, first)
    assert state is not None and not state.get("other"), state
    effect, _, _ = classify(state, second)
    assert effect_acts(effect) != ["user.noop"], effect


def _keeping_case(app: Any, kept: str) -> Any:
    """``app`` whose answers to PUTs show ``kept`` as the ``userName`` (an SP whose
    ``userName`` is not case-exact keeping the case it holds when a PUT states another)."""

    async def rewrite(scope: dict[str, Any], raw: bytes) -> bytes:
        body = json.loads(raw)
        body["userName"] = kept
        return json.dumps(body).encode()

    return answer_rewritten(app, lambda scope: scope["method"] == "PUT", rewrite)


def test_a_rename_only_in_case_is_judged_by_what_the_answer_shows(tmp_path: Path) -> None:
    with _rig(tmp_path, _keeping_case(sp_with_misleading_extension(), "ann")) as (c, evs):
        r = c.post("/v2/Users", json={"schemas": [USER], "userName": "ann"}, headers=AUTH)
        assert r.status_code == 201, r.text
        uid = r.json()["id"]
        for name in ("ANN", "ann"):
            body = {"schemas": [USER], "userName": name}
            r = c.put(f"/v2/Users/{uid}", json=body, headers=AUTH)
            assert r.status_code == 200 and r.json()["userName"] == "ann", r.text
        create, upper, same = evs()
    assert upper["x"]["result"]["userName"] == "ann", upper["x"]
    _, state, _ = classify(None, create)
    effect, state, _ = classify(state, upper)
    # the answer shows the name unchanged: no rename named (before: "ANN" taken as stored)
    assert effect is not None and {"attr": "username"} not in effect.get("changes", []), effect
    assert state is not None and state["username"] == '"ann"', state
    # the PUT stating what the SP holds changes nothing (before: named a rename, an update)
    effect, _, _ = classify(state, same)
    assert effect_acts(effect) == ["user.noop"], effect
