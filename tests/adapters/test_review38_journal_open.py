"""Review 38: a write on the event loop never waits behind another thread that is opening
the intent journal.

While the journal could not be opened (stall29: readiness then reports it, and each
readiness check and each write try again), a readiness check opens it in a thread of its
own, holding the outbox's lock for it. If that thread is held (the journal's disk stalls
while it creates the files), a write on the event loop that tried to open the journal too
waited for the same lock, and the whole loop (health checks included) with it. Now the loop
does not wait: that write is refused (503 "journal unavailable", as for a journal that
cannot be opened), and the next one opens it once the other thread is done."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from client.adapters.middleware import AuditMiddleware
from client.adapters.outbox import Outbox, OutboxError

from .journals import CFG, call


async def _sp(scope: object, receive: object, send: object) -> None:
    await receive()  # type: ignore[operator]
    await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]


def test_the_loop_does_not_wait_for_a_journal_another_thread_is_opening(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.sqlite")
    mw = AuditMiddleware(_sp, CFG, ob)
    try:
        # the journal could not be opened at start (a file where its directory goes), then
        # the cause gone, and another thread opening it and held there
        ob.intents_dir.write_bytes(b"")
        mw.start()
        assert mw._journal is None and mw._journal_error is not None
        ob.intents_dir.unlink()
        held = threading.Event()
        release = threading.Event()

        def opener() -> None:
            with ob._readers_lock:
                held.set()
                release.wait(30)

        t = threading.Thread(target=opener)
        t.start()
        assert held.wait(10)
        try:
            got: list[int] = []
            began = time.monotonic()
            runner = threading.Thread(
                target=lambda: got.append(
                    asyncio.run(call(mw, "DELETE", "/Users/u1", [(b"x-request-id", b"r1")]))
                )
            )
            runner.start()
            runner.join(10)
            assert not runner.is_alive(), "the write waited behind the other thread's open"
            assert got == [503] and time.monotonic() - began < 10
            assert mw._journal_error is not None and "opening" in mw._journal_error
            try:
                ob.intents(wait=False)
            except OutboxError as exc:
                assert "another thread is opening it" in str(exc)
            else:  # pragma: no cover
                raise AssertionError("opened while another thread held the lock")
        finally:
            release.set()
            t.join(10)
        # the other thread done: the next write opens the journal and is forwarded
        assert asyncio.run(call(mw, "DELETE", "/Users/u2", [(b"x-request-id", b"r2")])) == 204
        assert mw._journal is not None and mw._journal_error is None
    finally:
        mw.close()
        ob.close()
