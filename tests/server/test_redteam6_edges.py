"""Red team 6: ``tlog serve``'s HTTP edges.

A path one slash away from a route (``/checkpoint/``, ``/v1/entries/5/``,
``POST /v1/entries/``) was answered ``307`` with a ``Location`` built from the request's
``Host`` header (Starlette's ``redirect_slashes``): the log redirected to any host the
requester named, which a cache in front of it would keep and serve to everyone. Now it is
the 404 of any unknown path, and the log never redirects but where it says so itself
(``/ui`` -> ``/ui/``, a relative location).
"""

from __future__ import annotations

import pytest

from tlog.app import LogApp

from .conftest import Harness

EVIL = {"Host": "evil.example"}


def _paths(harness: Harness) -> list[tuple[str, str]]:
    app = harness.client.app
    assert isinstance(app, LogApp)
    out = []
    for e in app.api.endpoints():
        path = e.path.replace("{path:path}", "0/000").replace("{index}", "0")
        path = path.replace("{name}", "x").replace("{", "").replace("}", "")
        out.append((e.method, path))
    return out


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "OPTIONS"])
def test_a_trailing_slash_is_no_redirect_to_the_requested_host(
    harness: Harness, method: str
) -> None:
    harness.add(b"one")
    paths = {p for m, p in _paths(harness) if not p.endswith("/")}
    assert "/checkpoint" in paths and "/v1/entries" in paths
    for path in sorted(paths):
        r = harness.client.request(method, path + "/", headers=EVIL, follow_redirects=False)
        assert not 300 <= r.status_code < 400, (method, path, r.status_code, r.headers)
        assert "evil.example" not in r.headers.get("location", ""), (method, path)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)


def test_the_console_redirect_is_relative(harness: Harness) -> None:
    r = harness.client.get("/ui", headers=EVIL, follow_redirects=False)
    if r.status_code == 404:  # pragma: no cover - a build without the console
        return
    assert r.status_code == 308 and r.headers["location"] == "/ui/"
