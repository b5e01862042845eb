"""The per-module descriptor guard of tests/conftest.py fires on a leak and stays quiet otherwise.

Run in a child pytest (pytester) that takes the guard fixture from tests/conftest.py, so a
broken guard (wrong scope, a comparison that never trips) fails here instead of silently
letting leaks pile up until a server in some later test stops answering with EMFILE.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FD_LEAK_LIMIT

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

LEAKY = f"""
import os

KEPT = []


def test_opens_and_keeps_descriptors():
    for _ in range({FD_LEAK_LIMIT} + 20):
        KEPT.append(os.open(os.devnull, os.O_RDONLY))


def test_another_in_the_same_module():
    pass
"""

TIDY = f"""
import os


def test_opens_and_closes_descriptors():
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range({FD_LEAK_LIMIT} + 20)]
    for fd in fds:
        os.close(fd)
"""


@pytest.fixture
def guarded(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makeconftest("from tests.conftest import _module_leaks_no_descriptors  # noqa\n")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    return pytester


def test_a_module_that_leaks_fails_naming_what_it_left(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_leaky=LEAKY)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, errors=1)  # the error is the module's last teardown
    result.stdout.fnmatch_lines(["*test_leaky.py left * more file descriptors open*/dev/null*"])


def test_a_module_that_closes_what_it_opens_passes(guarded: pytest.Pytester) -> None:
    guarded.makepyfile(test_tidy=TIDY)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
