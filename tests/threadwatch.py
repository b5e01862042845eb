"""Which test started a thread that outlived it (a pytest plugin, loaded by tests/conftest.py).

Every ``threading.Thread`` started while the suite runs is tagged with the test being run
and the scope of the fixture being set up at that moment, if any. A thread started by a
test (its body, or a function-scoped fixture) that is still alive once that test's
teardown ended is a leak: it goes on running under later tests, with whatever they patch
(red team 20 found outbox writers, relays and journal flushers of earlier tests calling a
later test's patched clock). Watched strictly, for the project's own background threads
(:data:`WATCHED`): such a thread still alive after its test is an error at that test's
teardown, naming the thread. Every other thread a test leaves is listed at the end of the
session (terminal summary), with the test that started it.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterator
from typing import Any

import pytest

# The project's background threads, by name (client/adapters): each belongs to an object
# whose close() or stop() ends it, so one alive after its test is that test's leak.
WATCHED = frozenset(
    {
        "outbox-writer",
        "scim-relay",
        "intent-recovery",
        "intent-journal-flush",
        "intent-journal-prepare",
    }
)
# How long a watched thread is given to end after its test (a thread told to stop may be
# between two steps of its loop); a thread nobody told to stop never ends.
GRACE_S = 5.0

_ORIGIN = "_tlog_started_by"
_PROPERTY = "threads_left_running"
_state: dict[str, Any] = {"test": None, "scopes": []}
_left: list[tuple[str, str]] = []  # (thread name, test) alive at the end of their test
_real_start = threading.Thread.start


def _start(self: threading.Thread) -> None:
    scopes: list[str] = _state["scopes"]
    scope = scopes[-1] if scopes else "function"
    setattr(self, _ORIGIN, (_state["test"], scope))
    _real_start(self)


def origin(t: threading.Thread) -> tuple[str | None, str]:
    """(the test that started ``t``, the scope it was started in) or (None, "")."""
    got: tuple[str | None, str] = getattr(t, _ORIGIN, (None, ""))
    return got


def install() -> None:
    threading.Thread.start = _start  # type: ignore[method-assign]


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Generator[None, None, None]:
    _state["scopes"].append(fixturedef.scope)
    try:
        yield
    finally:
        _state["scopes"].pop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    _state["test"] = item.nodeid
    try:
        yield
    finally:
        _state["test"] = None


def _left_by(nodeid: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.is_alive() and origin(t) == (nodeid, "function")]


@pytest.fixture(autouse=True)
def _threads_stopped(request: pytest.FixtureRequest) -> Iterator[None]:
    """An error at the test's teardown if a thread of :data:`WATCHED` that it started is
    still alive (this fixture is set up first and torn down last of the test's own)."""
    yield
    nodeid = request.node.nodeid
    left = _left_by(nodeid)
    for t in left:
        if t.name in WATCHED:
            t.join(GRACE_S)
    left = _left_by(nodeid)
    if left:  # carried on the teardown's report: under xdist the controller lists them
        request.node.user_properties.append((_PROPERTY, sorted(t.name for t in left)))
    watched = sorted(t.name for t in left if t.name in WATCHED)
    if watched:
        pytest.fail(
            f"{nodeid} left its background threads running: {watched} (close the outbox, "
            "stop the relay or middleware it started: they would go on under later tests)",
            pytrace=False,
        )


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "teardown":
        return
    for key, names in report.user_properties:
        if key == _PROPERTY:
            _left.extend((str(name), report.nodeid) for name in names)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _left:
        return
    terminalreporter.section("threads left running by the test that started them")
    for name, nodeid in _left:
        terminalreporter.write_line(f"{nodeid}: {name}")
