"""Benchmark workloads: the same code runs on every loop.

A throughput workload is ``fn(loop, n) -> ops``: it runs about ``n`` operations on ``loop``
(which is not running) and returns the number of operations it actually did. Its per-operation
structure does not depend on ``n`` (batches of fixed size are repeated), so the child process
can scale ``n`` to hit a target duration without changing what is measured.

A memory workload is ``fn(loop_factory) -> dict`` and reports its own numbers.
"""

import asyncio
import gc
import os
import threading
import time

# name -> (function, warm-up n, granularity: n is rounded to a multiple of it)
THROUGHPUT = {}
# name -> function
MEMORY = {}


def throughput(name, warmup, step=1):
    def register(fn):
        fn.__doc__ = (fn.__doc__ or "").strip()
        THROUGHPUT[name] = (fn, warmup, step)
        return fn

    return register


def memory(name):
    def register(fn):
        MEMORY[name] = fn
        return fn

    return register


def _noop(*args):
    pass


async def _return_now():
    return None


async def _sleep0_once():
    await asyncio.sleep(0)


# -- callbacks ---------------------------------------------------------------------------------


@throughput("call_soon", warmup=20_000, step=1000)
def call_soon(loop, n):
    """loop.call_soon(cb): 1000 callbacks in flight, each run schedules the next until n ran."""
    batch = 1000
    state = [0, batch]  # ran, scheduled

    def cb():
        state[0] += 1
        if state[1] < n:
            state[1] += 1
            loop.call_soon(cb)
        elif state[0] == n:
            loop.stop()

    for _ in range(batch):
        loop.call_soon(cb)
    loop.run_forever()
    return state[0]


@throughput("call_soon_native", warmup=20_000, step=1000)
def call_soon_native(loop, n):
    """loop.call_soon(f) with f a C callable (itertools.count().__next__), 1000 per loop
    iteration from one Python callback: the loop's own cost per callback, little Python."""
    import itertools

    batch = 1000
    count = itertools.count()
    f = count.__next__
    done = [0]

    def step():
        call_soon = loop.call_soon
        for _ in range(batch):
            call_soon(f)
        done[0] += batch
        if done[0] >= n:
            loop.call_soon(loop.stop)
        else:
            loop.call_soon(step)

    loop.call_soon(step)
    loop.run_forever()
    return done[0]


@throughput("timer_fire", warmup=10_000, step=1000)
def timer_fire(loop, n):
    """call_later(d, cb) with 1000 distinct tiny delays (0-100 us, shuffled order) per batch,
    all fired; the last timer of a batch schedules the next batch."""
    batch = 1000
    delays = [((i * 7919) % batch) * 1e-7 for i in range(batch)]
    state = [0, 0]  # fired, scheduled

    def cb():
        state[0] += 1
        if state[0] == state[1]:
            if state[1] >= n:
                loop.stop()
            else:
                schedule()

    def schedule():
        call_later = loop.call_later
        for d in delays:
            call_later(d, cb)
        state[1] += batch

    loop.call_soon(schedule)
    loop.run_forever()
    return state[0]


@throughput("timer_cancel", warmup=20_000, step=100)
def timer_cancel(loop, n):
    """The wait_for pattern: h = call_later(3600, cb); h.cancel(); 100 per loop iteration, so
    the loop purges cancelled timers as it goes."""
    per_iter = 100
    done = [0]

    def step():
        call_later = loop.call_later
        for _ in range(per_iter):
            h = call_later(3600, _noop)
            h.cancel()
        done[0] += per_iter
        if done[0] >= n:
            loop.stop()
        else:
            loop.call_soon(step)

    loop.call_soon(step)
    loop.run_forever()
    return done[0]


@throughput("threadsafe", warmup=20_000, step=1000)
def threadsafe(loop, n):
    """A producer thread posts n callbacks with call_soon_threadsafe; until all of them ran."""
    count = [0]

    def cb():
        count[0] += 1
        if count[0] == n:
            loop.stop()

    def producer():
        post = loop.call_soon_threadsafe
        for _ in range(n):
            post(cb)

    thread = threading.Thread(target=producer)
    loop.call_soon(thread.start)
    loop.run_forever()
    thread.join()
    return count[0]


# -- coroutines --------------------------------------------------------------------------------


@throughput("tasks", warmup=10_000, step=100)
def tasks(loop, n):
    """await loop.create_task(coro()) where coro returns at once, one after the other."""

    async def main():
        create_task = loop.create_task
        for _ in range(n):
            await create_task(_return_now())

    loop.run_until_complete(main())
    return n


@throughput("tasks_sleep0", warmup=10_000, step=100)
def tasks_sleep0(loop, n):
    """await loop.create_task(coro()) where coro does one await asyncio.sleep(0)."""

    async def main():
        create_task = loop.create_task
        for _ in range(n):
            await create_task(_sleep0_once())

    loop.run_until_complete(main())
    return n


@throughput("gather", warmup=20_000, step=10_000)
def gather(loop, n):
    """await asyncio.gather(*[coro() for _ in range(10_000)]), repeated; ops = coroutines."""
    size = 10_000

    async def main():
        for _ in range(n // size):
            await asyncio.gather(*[_return_now() for _ in range(size)])

    loop.run_until_complete(main())
    return (n // size) * size


@throughput("futures", warmup=20_000, step=100)
def futures(loop, n):
    """f = loop.create_future(); loop.call_soon(f.set_result, i); await f."""

    async def main():
        create_future = loop.create_future
        call_soon = loop.call_soon
        for i in range(n):
            f = create_future()
            call_soon(f.set_result, i)
            await f

    loop.run_until_complete(main())
    return n


@throughput("sleep0_pingpong", warmup=20_000, step=2)
def sleep0_pingpong(loop, n):
    """Two tasks alternating with await asyncio.sleep(0); ops = switches (both tasks)."""
    half = n // 2

    async def player():
        sleep = asyncio.sleep
        for _ in range(half):
            await sleep(0)

    async def main():
        await asyncio.gather(player(), player())

    loop.run_until_complete(main())
    return 2 * half


@throughput("burst_300k", warmup=300_000, step=300_000)
def burst_300k(loop, n):
    """300k call_soon callbacks scheduled at once (all pending), then run; repeated n/300k
    times. Slow when handles are GC-tracked: the collector scans the pending ones."""
    size = 300_000
    state = [0, 0]  # ran, bursts done

    def cb():
        state[0] += 1
        if state[0] == size:
            state[0] = 0
            state[1] += 1
            if state[1] * size >= n:
                loop.stop()
            else:
                loop.call_soon(burst)

    def burst():
        call_soon = loop.call_soon
        for _ in range(size):
            call_soon(cb)

    loop.call_soon(burst)
    loop.run_forever()
    return state[1] * size


# -- memory ------------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _create_timers(loop, count):
    def create():
        call_later = loop.call_later
        for _ in range(count):
            call_later(3600, _noop)
        loop.stop()

    loop.call_soon(create)
    loop.run_forever()


@memory("mem_timer_handle")
def mem_timer_handle(new_loop, count=100_000):
    """Bytes per pending call_later(3600, cb) handle (the loop holds it, the caller drops it):
    RSS delta (everything, native allocations included) and tracemalloc delta (Python's
    allocator only), over 100k handles, each in a fresh loop."""
    out = {"count": count}
    gc.collect()
    loop = new_loop()
    _create_timers(loop, 1000)  # the loop's own first-use allocations
    gc.collect()
    before = _rss()
    _create_timers(loop, count)
    gc.collect()
    out["rss_bytes_per_handle"] = (_rss() - before) / count
    loop.close()

    import tracemalloc

    loop = new_loop()
    _create_timers(loop, 1000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _create_timers(loop, count)
    gc.collect()
    out["traced_bytes_per_handle"] = (tracemalloc.get_traced_memory()[0] - before) / count
    tracemalloc.stop()
    loop.close()
    return out


def describe():
    rows = [(name, fn.__doc__) for name, (fn, _, _) in THROUGHPUT.items()]
    rows += [(name, fn.__doc__) for name, fn in MEMORY.items()]
    return rows


if __name__ == "__main__":
    for name, doc in describe():
        print(f"{name}: {' '.join(doc.split())}")
