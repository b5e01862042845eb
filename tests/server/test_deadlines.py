"""tlog.reads.Deadlines: one timer for many futures, failing each as ``bound`` would."""

from __future__ import annotations

import asyncio
import heapq
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tlog.reads import Deadlines, StorageStalled, bound


class _Loop:
    """A loop whose clock moves only when the test says (timers fire in time order)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Any]] = []
        self.n = 0

    def time(self) -> float:
        return self.now

    def is_closed(self) -> bool:
        return False

    def call_at(self, when: float, fn: Any, *args: Any) -> object:
        self.n += 1
        heapq.heappush(self.timers, (when, self.n, lambda: fn(*args)))
        return object()

    def run_until(self, t: float) -> None:
        while self.timers and self.timers[0][0] <= t:
            when, _, fn = heapq.heappop(self.timers)
            self.now = max(self.now, when)
            fn()
        self.now = max(self.now, t)


class _Fut:
    def __init__(self, loop: _Loop) -> None:
        self.loop = loop
        self.result: object = None
        self.exc: BaseException | None = None
        self.finished = False

    def get_loop(self) -> _Loop:
        return self.loop

    def done(self) -> bool:
        return self.finished

    def set_exception(self, exc: BaseException) -> None:
        assert not self.finished
        self.exc, self.finished = exc, True

    def set_result(self, value: object) -> None:
        assert not self.finished
        self.result, self.finished = value, True


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.integers(1, 20),
    plan=st.lists(
        st.tuples(st.integers(0, 60), st.one_of(st.none(), st.integers(0, 40))),
        min_size=1,
        max_size=40,
    ),
)
def test_each_future_fails_exactly_when_bound_would_fail_it(
    seconds: int, plan: list[tuple[int, int | None]]
) -> None:
    """A future added at time a and answered after d (or never) is failed iff it is not
    answered within ``seconds`` of a: ``bound``'s rule, whatever the order of the answers.
    (Times are whole numbers and answers land half-way between them: no ties.)"""
    loop = _Loop()
    d = Deadlines("a commit", float(seconds))
    events: list[tuple[float, int, str, int]] = []  # (time, order, what, which)
    for i, (added, after) in enumerate(plan):
        events.append((float(added), 0, "add", i))
        if after is not None:
            events.append((added + after + 0.5, 1, "answer", i))
    events.sort()
    futs: dict[int, _Fut] = {}
    for t, _, what, i in events:
        loop.run_until(t)
        if what == "add":
            futs[i] = _Fut(loop)
            d.add(futs[i])  # type: ignore[arg-type]
        elif not futs[i].done():
            futs[i].set_result(i)
    loop.run_until(1e9)
    for i, (_, after) in enumerate(plan):
        stalled = after is None or after + 0.5 > seconds
        f = futs[i]
        assert f.done()
        if stalled:
            assert isinstance(f.exc, StorageStalled)
        else:
            assert f.exc is None and f.result == i
    assert not loop.timers  # nothing left armed once every future is done
    assert all(not w for w in d._waiting.values())


def test_on_a_real_loop_the_answer_and_the_message_are_bounds() -> None:
    async def run() -> tuple[BaseException | None, BaseException | None, object]:
        loop = asyncio.get_running_loop()
        d = Deadlines("a commit", 0.05)
        late, ref, answered = loop.create_future(), loop.create_future(), loop.create_future()
        d.add(late)
        bound(ref, "a commit", 0.05)
        d.add(answered)
        answered.set_result("ok")
        await asyncio.wait([late, ref])
        return late.exception(), ref.exception(), answered.result()

    late, ref, answered = asyncio.run(run())
    assert isinstance(late, StorageStalled) and isinstance(ref, StorageStalled)
    assert str(late) == str(ref)
    assert answered == "ok"


def test_done_futures_do_not_pile_up() -> None:
    async def run() -> int:
        loop = asyncio.get_running_loop()
        d = Deadlines("a commit", 60.0)
        for i in range(1000):
            f = loop.create_future()
            d.add(f)
            f.set_result(i)
        return sum(len(w) for w in d._waiting.values())

    assert asyncio.run(run()) <= 1
