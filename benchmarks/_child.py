"""One (workload, loop) measurement, in a fresh process. Prints one JSON object on stdout.

python benchmarks/_child.py LOOP WORKLOAD [--target SECONDS]
"""

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402


def loop_factory(name):
    """The loop's own factory and its version; raises ImportError if it is not installed."""
    if name == "asyncio":
        return asyncio.new_event_loop, sys.version.split()[0]
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop, uvloop.__version__
    if name == "rloop":
        import rloop

        return rloop.new_event_loop, getattr(rloop, "__version__", "?")
    if name == "rsloop":
        # rsloop publishes no wheels and builds only with a nightly toolchain; see
        # benchmarks/README.md for how to build it to compare.
        import rsloop

        return rsloop.new_event_loop, getattr(rsloop, "__version__", "?")
    if name == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop, ferroloop.__version__
    raise ValueError(f"unknown loop {name!r}")


def measure(fn, loop, n):
    gc.collect()
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    ops = fn(loop, n)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    return ops, wall, cpu


def run_throughput(name, new_loop, target):
    fn, warmup, step = workloads.THROUGHPUT[name]
    loop = new_loop()
    asyncio.set_event_loop(loop)
    try:
        # Warm-up (first-use allocations, caches), then a timed probe to size the measured run.
        measure(fn, loop, max(step, warmup // 4 // step * step))
        ops, wall, _ = measure(fn, loop, warmup)
        per_op = max(wall / max(ops, 1), 1e-9)
        n = max(step, int(math.ceil(target / per_op / step)) * step)
        n = min(n, 50 * warmup)  # bounded even if the probe was unusually fast
        ops, wall, cpu = measure(fn, loop, n)
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    return {
        "ops": ops,
        "wall_s": wall,
        "cpu_s": cpu,
        "ops_per_s": ops / wall,
        "cpu_ns_per_op": cpu / ops * 1e9,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("loop")
    parser.add_argument("workload")
    parser.add_argument("--target", type=float, default=0.5, help="measured part, seconds")
    args = parser.parse_args()
    try:
        new_loop, version = loop_factory(args.loop)
    except ImportError as error:
        print(json.dumps({"status": "missing", "error": str(error)}))
        return
    if args.workload in workloads.THROUGHPUT:
        result = run_throughput(args.workload, new_loop, args.target)
    else:
        result = workloads.MEMORY[args.workload](new_loop)
    result.update(status="ok", version=version)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
