"""Trace comparison: the same scenario on asyncio and on ferroloop must give the same trace."""

import asyncio
import socket
import threading

import pytest

from conftest import FACTORIES


def run_scenario(scenario):
    traces = {}
    for name, factory in FACTORIES.items():
        loop = factory()
        errors = []
        loop.set_exception_handler(lambda lp, ctx: errors.append(ctx["message"]))
        trace = []
        try:
            scenario(loop, trace)
        finally:
            loop.close()
        traces[name] = (trace, errors)
    return traces


def assert_same(scenario):
    traces = run_scenario(scenario)
    assert traces["ferroloop"] == traces["asyncio"]
    return traces["asyncio"][0]


def test_call_soon_mix():
    def scenario(loop, trace):
        def cb(i):
            trace.append(("cb", i))
            if i % 3 == 0:
                loop.call_soon(cb, i * 10 + 1)
            if i % 4 == 0:
                loop.call_later(0, cb, i * 10 + 2)

        for i in range(12):
            loop.call_soon(cb, i)
        loop.call_later(0.05, loop.stop)
        loop.run_forever()

    trace = assert_same(scenario)
    assert len(trace) > 12


def test_equal_deadlines_fixed_when():
    def scenario(loop, trace):
        when = loop.time() + 0.01
        handles = []
        for i in range(200):
            # a handful of distinct deadlines, many ties
            handles.append(loop.call_at(when + (i % 7) * 0.001, trace.append, i))
        for i in range(0, 200, 5):
            handles[i].cancel()
        for i in range(50):
            loop.call_at(when, trace.append, ("tie", i))
        loop.call_at(when + 0.05, loop.stop)
        loop.run_forever()

    trace = assert_same(scenario)
    assert len(trace) == 200 - 40 + 50


def test_equal_deadlines_exact_when_values():
    def scenario(loop, trace):
        base = 1000.0  # in the past: every timer is due
        order = [3, 1, 2, 1, 3, 0, 2, 0, 1, 3]
        for i, k in enumerate(order):
            loop.call_at(base + k, trace.append, (k, i))
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.call_soon(loop.stop)
        loop.run_forever()

    assert_same(scenario)


def test_timers_scheduled_from_timers():
    def scenario(loop, trace):
        when = loop.time()

        def t(i):
            trace.append(i)
            if i < 30:
                loop.call_at(when, t, i + 100)
                loop.call_soon(trace.append, ("soon", i))

        for i in range(30):
            loop.call_at(when - i * 0.0001, t, i)
        loop.call_later(0.02, loop.stop)
        loop.run_forever()

    assert_same(scenario)


def test_cancelled_handles_and_timers():
    def scenario(loop, trace):
        hs = [loop.call_soon(trace.append, ("s", i)) for i in range(20)]
        ts = [loop.call_later(0.001 * (i % 4), trace.append, ("t", i)) for i in range(40)]
        for h in hs[::3]:
            h.cancel()
        for t in ts[::2]:
            t.cancel()

        def canceller():
            trace.append("canceller")
            for t in ts[1::4]:
                t.cancel()

        loop.call_soon(canceller)
        loop.call_later(0.03, loop.stop)
        loop.run_forever()

    assert_same(scenario)


def test_stop_inside_batch():
    def scenario(loop, trace):
        def a():
            trace.append("a")
            loop.stop()
            loop.call_soon(trace.append, "from-a")

        loop.call_soon(trace.append, 0)
        loop.call_soon(a)
        loop.call_soon(trace.append, "after-a")
        loop.run_forever()
        trace.append("--- stopped")
        loop.call_soon(trace.append, "new")
        loop.call_soon(loop.stop)
        loop.run_forever()
        trace.append("--- stopped")

    trace = assert_same(scenario)
    assert trace == [0, "a", "after-a", "--- stopped", "from-a", "new", "--- stopped"]


def test_stop_before_run():
    def scenario(loop, trace):
        loop.stop()
        loop.call_soon(trace.append, 1)
        loop.run_forever()
        trace.append("x")
        loop.call_soon(loop.stop)
        loop.run_forever()

    assert_same(scenario)


def test_stop_twice_in_batch():
    def scenario(loop, trace):
        loop.call_soon(loop.stop)
        loop.call_soon(trace.append, 1)
        loop.call_soon(loop.stop)
        loop.call_soon(trace.append, 2)
        loop.run_forever()
        trace.append("x")
        loop.call_soon(trace.append, 3)
        loop.call_soon(loop.stop)
        loop.run_forever()

    assert assert_same(scenario) == [1, 2, "x", 3]


def test_stop_with_due_timers():
    def scenario(loop, trace):
        when = loop.time() - 1
        loop.call_at(when, trace.append, "t1")
        loop.call_soon(trace.append, "s1")
        loop.call_soon(loop.stop)
        loop.call_at(when, trace.append, "t2")
        loop.run_forever()
        trace.append("x")
        loop.call_soon(loop.stop)
        loop.run_forever()

    assert_same(scenario)


def test_call_soon_threadsafe_from_threads():
    def scenario(loop, trace):
        # threads schedule in a fixed sequence (each waits its turn), so the trace is deterministic
        turn = threading.Semaphore(0)
        done = []

        def worker(n):
            for i in range(20):
                loop.call_soon_threadsafe(trace.append, (n, i))
            done.append(n)
            turn.release()

        def start_threads():
            for n in range(3):
                t = threading.Thread(target=worker, args=(n,))
                t.start()
                t.join()

        def waiter():
            if len(done) == 3:
                loop.call_soon(loop.stop)
            else:
                loop.call_later(0.001, waiter)

        loop.call_soon(start_threads)
        loop.call_soon(waiter)
        loop.run_forever()

    trace = assert_same(scenario)
    assert sorted(trace) == [(n, i) for n in range(3) for i in range(20)]


def test_reader_writer_on_socketpairs():
    def scenario(loop, trace):
        pairs = [socket.socketpair() for _ in range(3)]
        try:
            for a, b in pairs:
                a.setblocking(False)
                b.setblocking(False)

            def on_write(i):
                trace.append(("w", i))
                pairs[i][0].send(b"x")
                loop.remove_writer(pairs[i][0])

            def on_read(i):
                data = pairs[i][1].recv(100)
                trace.append(("r", i, data))
                loop.remove_reader(pairs[i][1])

            for i, (a, b) in enumerate(pairs):
                loop.add_reader(b, on_read, i)
            for i, (a, b) in enumerate(pairs):
                loop.add_writer(a, on_write, i)
            loop.call_later(0.1, loop.stop)
            loop.run_forever()
        finally:
            for a, b in pairs:
                a.close()
                b.close()

    trace = assert_same(scenario)
    assert sorted(trace) == sorted(
        [("w", i) for i in range(3)] + [("r", i, b"x") for i in range(3)]
    )


def test_io_and_callbacks_interleaving():
    def scenario(loop, trace):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        try:
            a.send(b"hello")
            n = {"i": 0}

            def on_read():
                n["i"] += 1
                trace.append(("read", n["i"]))
                loop.call_soon(trace.append, ("soon-from-read", n["i"]))
                if n["i"] == 3:
                    b.recv(100)
                    loop.remove_reader(b)
                    loop.call_soon(loop.stop)

            loop.add_reader(b, on_read)
            loop.call_soon(trace.append, "s1")
            loop.call_later(0, trace.append, "t0")
            loop.run_forever()
        finally:
            a.close()
            b.close()

    assert_same(scenario)


def test_exceptions_and_handler_order():
    def scenario(loop, trace):
        def bad(i):
            trace.append(("bad", i))
            raise ValueError(i)

        loop.set_exception_handler(lambda lp, ctx: trace.append(("handler", str(ctx["exception"]))))
        for i in range(5):
            loop.call_soon(bad if i % 2 else trace.append, i)
        loop.call_later(0, bad, "t")
        loop.call_later(0.01, loop.stop)
        loop.run_forever()

    assert_same(scenario)


def test_coroutines_tasks_trace():
    def scenario(loop, trace):
        async def worker(n):
            for i in range(3):
                trace.append((n, i))
                await asyncio.sleep(0)
            return n

        async def main():
            tasks = [asyncio.ensure_future(worker(n)) for n in range(4)]
            loop.call_soon(trace.append, "soon")
            res = await asyncio.gather(*tasks)
            trace.append(("gathered", res))
            await asyncio.sleep(0.001)
            trace.append("slept")

        loop.run_until_complete(main())

    assert_same(scenario)


@pytest.mark.parametrize("seed", range(5))
def test_random_mix(seed):
    import random

    def scenario(loop, trace):
        rnd = random.Random(seed)
        base = loop.time()
        handles = []
        for i in range(300):
            kind = rnd.random()
            if kind < 0.4:
                handles.append(loop.call_soon(trace.append, ("s", i)))
            elif kind < 0.8:
                handles.append(
                    loop.call_at(base + rnd.choice([-1, 0, 0.001, 0.002]), trace.append, ("t", i))
                )
            else:
                if handles:
                    rnd.choice(handles).cancel()
        loop.call_at(base + 0.02, loop.stop)
        loop.run_forever()

    assert_same(scenario)
