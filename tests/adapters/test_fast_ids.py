"""The eids and request ids drawn from a pool of OS random bytes (``proxy7`` round): the same
texts as ``str(uuid7())`` / ``str(uuid.uuid4())`` for the same random bits, fresh bytes every
time, and a forked child that never repeats its parent's bytes."""

from __future__ import annotations

import os
import threading
import uuid
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.scim import event as event_module


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_uuid4_text_is_uuid4_printed(b: bytes) -> None:
    # uuid.uuid4() is UUID(bytes=os.urandom(16), version=4).
    assert event_module._uuid4_text_of(b) == str(uuid.UUID(bytes=b, version=4))


def test_uuid4_text_from_the_pool() -> None:
    got = event_module.uuid4_text()
    u = uuid.UUID(got)
    assert str(u) == got and u.version == 4 and u.variant == uuid.RFC_4122
    with mock.patch.object(event_module._RandomPool, "take", return_value=bytes(range(16))):
        assert event_module.uuid4_text() == str(uuid.UUID(bytes=bytes(range(16)), version=4))


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=10, max_size=10))
def test_randbits74_is_the_first_74_bits(b: bytes) -> None:
    with mock.patch.object(event_module._RandomPool, "take", return_value=b) as take:
        got = event_module._randbits74()
    take.assert_called_once_with(10)
    assert got == int.from_bytes(b, "big") >> 6
    assert 0 <= got < 1 << 74


def test_pool_hands_out_each_byte_once() -> None:
    pool = event_module._RandomPool()
    chunks = [os.urandom(pool.SIZE), os.urandom(pool.SIZE)]
    with mock.patch.object(event_module.os, "urandom", side_effect=chunks) as urandom:
        got = b"".join(pool.take(10) for _ in range(pool.SIZE // 10 + 1))
    # 409 takes of 10 bytes fill the first 4,090 bytes; the 410th does not fit: a refill.
    assert urandom.call_count == 2
    assert got == chunks[0][: 409 * 10] + chunks[1][:10]


def test_pool_is_thread_safe() -> None:
    pool = event_module._RandomPool()
    out: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [pool.take(16) for _ in range(2000)]
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == len(out) == 8000  # no slice handed out twice


def test_ids_differ() -> None:
    eids = {event_module.uuid7_text() for _ in range(5000)}
    reqs = {event_module.uuid4_text() for _ in range(5000)}
    assert len(eids) == 5000 and len(reqs) == 5000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_does_not_repeat_the_parent() -> None:
    event_module.uuid4_text()  # the parent's pool holds unused bytes now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(w, event_module._POOL.take(64))
        finally:
            os._exit(0)
    os.close(w)
    child = b""
    while len(child) < 64:
        part = os.read(r, 64)
        if not part:
            break
        child += part
    os.close(r)
    os.waitpid(pid, 0)
    assert len(child) == 64
    assert child != event_module._POOL.take(64)
