"""A typical asyncio program, run on ferroloop: tasks, gather, timeouts, cancellation,
a thread pool for blocking work, and call_soon/timer throughput. Prints its timings.

    python3 examples/demo.py            # on ferroloop
    python3 examples/demo.py --asyncio  # the same program on asyncio's own loop
"""

import asyncio
import contextvars
import sys
import time

import ferroloop

request_id = contextvars.ContextVar("request_id", default="-")


def blocking_io(n):
    time.sleep(0.05)  # a blocking call: belongs in a thread pool
    return n * n


async def fetch(i):
    request_id.set(f"req-{i}")
    await asyncio.sleep(0.01 * (i % 5))
    return f"{request_id.get()} done"


async def slow():
    await asyncio.sleep(10)


async def main():
    loop = asyncio.get_running_loop()
    print(f"loop: {type(loop).__module__}.{type(loop).__name__}")

    t0 = time.perf_counter()
    results = await asyncio.gather(*(fetch(i) for i in range(1000)))
    print(f"gather of 1000 tasks with sleeps: {time.perf_counter() - t0:.3f}s ({results[7]})")

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(slow(), timeout=0.1)
    except asyncio.TimeoutError:
        print(f"wait_for timed out after {time.perf_counter() - t0:.3f}s as asked")

    t0 = time.perf_counter()
    squares = await asyncio.gather(*(loop.run_in_executor(None, blocking_io, n) for n in range(8)))
    print(f"8 blocking calls in the thread pool: {time.perf_counter() - t0:.3f}s -> {squares}")

    async with asyncio.TaskGroup() if sys.version_info >= (3, 11) else _NullGroup() as group:
        tasks = [group.create_task(fetch(i)) for i in range(3)] if group else []
    if tasks:
        print(f"TaskGroup: {[t.result() for t in tasks]}")

    n = 200_000
    done = loop.create_future()
    count = 0

    def tick():
        nonlocal count
        count += 1
        if count == n:
            done.set_result(None)

    t0 = time.perf_counter()
    for _ in range(n):
        loop.call_soon(tick)
    await done
    elapsed = time.perf_counter() - t0
    print(f"{n} call_soon callbacks: {elapsed:.3f}s ({n / elapsed / 1e6:.2f} M/s)")

    t0 = time.perf_counter()
    handles = [loop.call_later(3600, tick) for _ in range(n)]
    for h in handles:
        h.cancel()
    elapsed = time.perf_counter() - t0
    print(f"{n} timers set and cancelled: {elapsed:.3f}s ({n / elapsed / 1e6:.2f} M/s)")


class _NullGroup:
    async def __aenter__(self):
        return None

    async def __aexit__(self, *exc):
        return False


if __name__ == "__main__":
    t0 = time.perf_counter()
    if "--asyncio" in sys.argv:
        asyncio.run(main())
    else:
        ferroloop.run(main())
    print(f"total: {time.perf_counter() - t0:.3f}s")
