"""The console shows who acted (docs/design.md, "Actors"): the actor the log opened from
under the actor's own keys, verified in the browser against the event's ``actor.sd``; once
the admin is erased their events about others still verify and read "(unlinked)", naming
no one."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from client.scim import new_event

from .conftest import TENANT, Live

pytestmark = pytest.mark.slow
TIMEOUT = 20_000
SCRATCH = Path(tempfile.gettempdir()) / "tlog-console-screenshots"
ADMIN, NAME = "admin-zed-4410", "Zed Oyelaran"
LIVE_ADMIN, LIVE_NAME = "admin-yan-2207", "Yan Ferreira"


def _by(rid: str, req: str, admin: str, name: str) -> dict[str, Any]:
    return new_event(
        tenant=TENANT,
        sp="crm-app",
        op="patch",
        rt="User",
        rid=rid,
        actor={"kind": "user", "id": admin, "name": name},
        corr=req,
        req={
            "m": "PATCH",
            "p": f"/Users/{rid}",
            "dig": hashlib.sha256(req.encode()).digest(),
            "len": 20,
        },
        res=200,
        outcome="success",
        mods=[{"attr": "title", "old": '"A"', "new": '"B"'}],
    )


@pytest.fixture
def page(browser: Any, live: Live) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1360, "height": 1000})
    pg = ctx.new_page()
    pg.set_default_timeout(TIMEOUT)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.errors = errors
    yield pg
    ctx.close()


def _sign_in(page: Any, live: Live) -> None:
    page.goto(f"{live.url}/ui/#audit")
    page.wait_for_selector("body[data-ready='1']")
    page.click("#tab-audit")
    page.fill("#token", live.tokens["aud"])
    page.click("#signin button[type=submit]")
    page.wait_for_selector("#audit-body:not([hidden])")


def _search(page: Any, rid: str) -> str:
    page.fill("#search [name=rid]", rid)
    page.click("#search button[type=submit]")
    page.wait_for_selector("#results-summary .badge")
    page.locator("#results tbody tr").first.click()
    page.wait_for_selector("#detail:not([hidden])")
    return str(page.inner_text("#results")) + "\n" + page.inner_text("#detail")


def _shot(page: Any, name: str) -> None:
    if os.environ.get("TLOG_ACTOR_SHOTS"):
        SCRATCH.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCRATCH / name), full_page=True)


def test_the_console_shows_the_actor_then_unlinks_an_erased_one(page: Any, live: Live) -> None:
    live.post(_by("u-dave", "req-z1", ADMIN, NAME))
    live.post(_by("u-erin", "req-y1", LIVE_ADMIN, LIVE_NAME))
    _sign_in(page, live)
    text = _search(page, "u-dave")
    assert f"{ADMIN} ({NAME})" in text and "Actor (sealed under the actor's keys)" in text
    assert "FAILED" not in text
    _shot(page, "actor-live.png")

    store = live.store
    po_a = store.create("privacy-officer", tenant=TENANT, name="po-a", person="Ana")[0]
    po_b = store.create("privacy-officer", tenant=TENANT, name="po-b", person="Ben")[0]
    r = httpx.post(
        f"{live.url}/v1/scim/erasures",
        json={"tenant": TENANT, "rt": "User", "rid": ADMIN, "reason": "gdpr-art17"},
        headers={"Authorization": f"Bearer {po_a}"},
    )
    assert r.status_code == 201, r.text
    r = httpx.post(
        f"{live.url}/v1/scim/erasures/{r.json()['id']}/approve",
        headers={"Authorization": f"Bearer {po_b}"},
    )
    assert r.status_code == 200, r.text

    text = _search(page, "u-dave")
    assert "(unlinked)" in text and "unlinked: the actor was erased" in text
    assert ADMIN not in text and NAME not in text
    assert "verified" in text and "FAILED" not in text
    _shot(page, "actor-unlinked.png")
    text = _search(page, "u-erin")
    assert f"{LIVE_ADMIN} ({LIVE_NAME})" in text
    assert page.errors == []
