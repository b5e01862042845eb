"""Real Go programs of the witness network for the tests (built and cached by
:mod:`harness.gobin`); a test that needs one skips, with the reason, where it cannot be built."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import Unavailable, gobin

__all__ = ["go_binary", "skip_unavailable"]


@contextlib.contextmanager
def skip_unavailable() -> Iterator[None]:
    """Skip the test, saying why, when what it starts cannot run here."""
    try:
        yield
    except Unavailable as exc:
        pytest.skip(str(exc))


def go_binary(name: str) -> Path:
    """:func:`harness.gobin.go_binary`, or skip."""
    try:
        return gobin.go_binary(name)
    except Unavailable as exc:
        pytest.skip(str(exc))
