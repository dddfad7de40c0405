import asyncio
import gc
import time
import weakref
from unittest import mock

import pytest


def test_call_later_fires(loop):
    out = []
    loop.call_later(0.01, out.append, "late")
    loop.call_later(0.001, out.append, "early")
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    assert out == ["early", "late"]


def test_call_at_and_when(loop):
    now = loop.time()
    t = loop.call_at(now + 5, print)
    assert t.when() == now + 5
    assert t._when == now + 5  # asyncio attribute used by third-party code
    t2 = loop.call_later(5, print)
    assert now + 5 <= t2.when() <= loop.time() + 5
    t.cancel()
    t2.cancel()


def test_call_at_integer_when(loop):
    t = loop.call_at(10, print)
    assert t.when() == 10
    t.cancel()


def test_timer_equality_and_hash(loop):
    t1 = loop.call_at(100.0, print)
    t2 = loop.call_at(100.0, print)
    t3 = loop.call_at(200.0, print)
    assert t1.__eq__(t1) is True  # the handle's own __eq__ (== on one object may not call it)
    assert t1 != t3
    assert t1 < t3 and t3 > t1
    assert t1 <= t2 and t1 >= t2
    assert hash(t1) == hash(100.0)
    assert hash(t1) == hash(t2)
    # equality of equal-deadline handles compares callback/args/cancelled (asyncio semantics)
    ref1 = asyncio.TimerHandle(100.0, print, (), loop)
    ref2 = asyncio.TimerHandle(100.0, print, (), loop)
    assert (t1 == t2) == (ref1 == ref2)
    assert (t1 != t2) == (ref1 != ref2)
    # In sets: hashed by deadline, equal handles (same deadline, callback, args) collapse, as
    # asyncio's do; different deadlines do not.
    assert len({t1, t2}) == len({ref1, ref2}) == 1
    assert len({t1, t3}) == 2 and t3 in {t1, t3}
    for t in (t1, t2, t3):
        t.cancel()


def test_timer_compare_with_other_types(loop):
    t = loop.call_at(100.0, print)
    assert (t == 100.0) is False
    assert (t != "x") is True
    with pytest.raises(TypeError):
        t < 1  # noqa: B015
    t.cancel()


def test_negative_delay_runs_soon(loop):
    out = []
    loop.call_later(-10, out.append, "neg")
    loop.call_at(loop.time() - 100, out.append, "past")
    loop.call_soon(loop.stop)
    loop.run_forever()
    # due timers are queued after the callbacks already ready, in deadline order
    # (first run_forever: stop is in the ready batch; the timers still ran in the same iteration)
    assert sorted(out) == ["neg", "past"]


def test_zero_delay_runs_after_current_ready(loop):
    out = []
    loop.call_later(0, out.append, "timer")
    loop.call_soon(out.append, "soon")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == ["soon", "timer"] or out == ["timer", "soon"]


def test_loop_time_is_monotonic(loop):
    before = time.monotonic()
    t = loop.time()
    after = time.monotonic()
    assert before <= t <= after


def test_timer_ordering(loop):
    out = []
    now = loop.time()
    for i, d in enumerate([0.005, 0.001, 0.003, 0.002, 0.004]):
        loop.call_at(now + d, out.append, i)
    loop.call_at(now + 0.01, loop.stop)
    loop.run_forever()
    assert out == [1, 3, 2, 4, 0]


def test_equal_deadline_order(loop):
    out = []
    when = loop.time()
    for i in range(50):
        loop.call_at(when, out.append, i)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    # must match asyncio's heapq order, which the ordering tests compare exactly
    assert sorted(out) == list(range(50))


def test_cancel_many_timers(loop):
    out = []
    timers = [loop.call_later(1000 + i, out.append, i) for i in range(5000)]
    for t in timers:
        t.cancel()
    assert all(t.cancelled() for t in timers)
    keep = loop.call_later(0.001, out.append, "kept")
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == ["kept"]
    assert not keep.cancelled()


def test_cancel_timer_inside_callback(loop):
    out = []
    when = loop.time()
    t2 = None

    def first():
        out.append(1)
        t2.cancel()

    loop.call_at(when, first)
    t2 = loop.call_at(when + 0.0001, out.append, 2)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == [1]


def test_wait_for_pattern(loop):
    async def slow():
        await asyncio.sleep(10)

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(slow(), 0.01)
        return await asyncio.wait_for(asyncio.sleep(0, "ok"), 1)

    assert loop.run_until_complete(main()) == "ok"


def test_sleep(loop):
    async def main():
        t0 = loop.time()
        await asyncio.sleep(0.02)
        return loop.time() - t0

    assert loop.run_until_complete(main()) >= 0.02 - 0.001


def test_long_timer_does_not_block_stop(loop):
    out = []
    long = loop.call_later(3600, out.append, "long")
    loop.call_later(0.001, out.append, "short")
    loop.call_later(0.001, loop.stop)
    start = time.monotonic()
    loop.run_forever()
    assert out == ["short"]
    assert time.monotonic() - start < 30  # not parked until the hour-long timer
    assert not long.cancelled()
    long.cancel()


class Holder:
    def __init__(self, loop, delay):
        self.fired = False
        self.h = loop.call_later(delay, self.cb)

    def cb(self):
        self.fired = True


def test_timer_cycle_freed_after_fire(loop):
    obj = Holder(loop, 0)
    ref = weakref.ref(obj)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert obj.fired
    del obj
    gc.collect()
    assert ref() is None


def test_timer_cycle_freed_after_cancel(loop):
    obj = Holder(loop, 100)
    ref = weakref.ref(obj)
    obj.h.cancel()
    del obj
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert ref() is None


def test_timer_cycle_freed_after_close(loop):
    obj = Holder(loop, 100)
    ref = weakref.ref(obj)
    del obj
    loop.close()
    gc.collect()
    assert ref() is None


def test_handle_cycle_freed_after_close(loop):
    class H:
        def __init__(self):
            self.h = loop.call_soon(self.cb)

        def cb(self):
            pass

    obj = H()
    ref = weakref.ref(obj)
    del obj
    loop.close()
    gc.collect()
    assert ref() is None


def test_timer_handle_scheduled_flag(loop):
    t = loop.call_later(10, print)
    assert t._scheduled is True
    t.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_huge_delay(loop):
    t = loop.call_later(1e9, print)
    assert t.when() > loop.time()
    t.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()


def test_timers_follow_a_patched_loop_time(loop):
    # aiohttp's test_keepalive_expires_on_time (scripts/test-ecosystem) patches loop.time with
    # mock.patch.object and moves it to a timer's deadline: asyncio's _run_once reads
    # self.time() and runs the timer, and call_later adds its delay to self.time().

    async def main():
        fired = []
        now = loop.time()
        with mock.patch.object(loop, "time", return_value=now):
            loop.call_at(now + 75, fired.append, "timer")
            loop.call_later(100, fired.append, "later")
            loop.time.return_value = now + 75
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert fired == ["timer"]
            loop.time.return_value = now + 100
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        # Unpatched: the real clock again (the next timer is an hour away, not due).
        loop.call_later(3600, fired.append, "hour")
        await asyncio.sleep(0.01)
        return fired

    assert loop.run_until_complete(main()) == ["timer", "later"]
