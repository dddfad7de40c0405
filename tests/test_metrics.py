"""``loop.metrics()`` (issue #4): native counters, read without touching the hot path."""

import asyncio
import threading
import time

import pytest

import ferroloop
from ferroloop import LoopMetrics


@pytest.fixture
def loop():
    loop = ferroloop.new_event_loop()
    yield loop
    loop.close()


def test_fresh_loop(loop):
    m = loop.metrics()
    assert isinstance(m, LoopMetrics)
    assert (m.iterations, m.callbacks, m.max_ready, m.timers, m.watchdog_reports) == (0, 0, 0, 0, 0)
    assert m.run_time == m.poll_time == m.busy_time == 0.0
    assert not m.running and not m.callback_timing
    assert list(m.callback_durations)[-1] == float("inf")
    assert sum(m.callback_durations.values()) == 0


def test_counts_callbacks_iterations_and_queue_depth(loop):
    calls = []
    for i in range(50):
        loop.call_soon(calls.append, i)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(calls) == 50
    m = loop.metrics()
    assert m.callbacks == 51
    assert m.iterations >= 1
    assert m.max_ready == 51
    assert m.run_time > 0
    assert not m.running


def test_poll_time_and_busy_time(loop):
    async def main():
        await asyncio.sleep(0.2)
        time.sleep(0.1)

    loop.run_until_complete(main())
    m = loop.metrics()
    assert m.poll_time >= 0.15
    assert m.busy_time >= 0.09
    assert m.run_time == pytest.approx(m.poll_time + m.busy_time)
    assert 0 < m.busy_fraction < 1
    assert m.timers >= 1


def test_loop_lag_of_a_late_timer(loop):
    # A timer whose deadline passed half a second ago is at least that late when found due
    # (no sleeping involved: the bound holds however loaded the machine is).
    loop.call_at(loop.time() - 0.5, loop.stop)
    loop.run_forever()
    assert 0.5 <= loop.metrics().loop_lag < 30
    # A timer on time: the lag is the last timer's, far below the late one's (a generous
    # bound for a loaded machine, which still fails if the lag is not updated).
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert loop.metrics().loop_lag < 0.4


def test_callback_duration_histogram_is_opt_in(loop):
    def step():
        time.sleep(0.12)

    loop.call_soon(step)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert sum(loop.metrics().callback_durations.values()) == 0

    loop.set_callback_timing(True)
    assert loop.metrics().callback_timing
    for _ in range(3):
        loop.call_soon(step)
    for _ in range(5):
        loop.call_soon(lambda: None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    durations = loop.metrics().callback_durations
    assert sum(durations.values()) == 9
    # The three 120 ms callbacks take at least that long: the 100-500 ms bucket or a later
    # one; the five empty ones are far below (at most one slowed down past 50 ms by a loaded
    # machine).
    assert sum(n for bound, n in durations.items() if bound >= 0.5) == 3
    assert sum(n for bound, n in durations.items() if bound <= 0.05) >= 5 - 1

    loop.set_callback_timing(False)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert sum(loop.metrics().callback_durations.values()) == 9


def test_reset(loop):
    loop.call_soon(loop.stop)
    loop.run_forever()
    before = loop.metrics(reset=True)
    assert before.callbacks == 1
    after = loop.metrics()
    assert after.callbacks == 0 and after.iterations == 0 and after.run_time == 0


def test_read_from_another_thread_while_running(loop):
    seen = []

    def reader():
        seen.append(loop.metrics())
        loop.call_soon_threadsafe(loop.stop)

    loop.call_later(0.05, threading.Thread(target=reader).start)
    loop.run_forever()
    assert seen and seen[0].running
    assert seen[0].run_time > 0


def test_counts_watchdog_reports(loop):
    reports = []
    loop.set_watchdog(0.1, handler=reports.append)

    async def main():
        await asyncio.sleep(0)
        time.sleep(0.8)

    loop.run_until_complete(main())
    loop.set_watchdog(None)
    # The block is reported (once blocked, once released); a loaded machine may add a
    # report of a step it slowed down: the counter counts exactly the "blocked" reports.
    kinds = [r.kind for r in reports]
    blocked = kinds.count("blocked")
    # The function's qualified name from 3.11 (co_qualname); its name on 3.10.
    assert any(
        r.kind == "blocked" and (r.function == "main" or r.function.endswith(".main"))
        for r in reports
    ), reports
    assert blocked >= 1 and kinds.count("released") == blocked
    assert loop.metrics().watchdog_reports == blocked


def test_metrics_in_ferroloop_run():
    async def main():
        for _ in range(10):
            await asyncio.sleep(0)
        return asyncio.get_running_loop().metrics()

    m = ferroloop.run(main())
    assert m.running and m.callbacks >= 10
