"""Run one workload once with a fixed n, for profilers (callgrind, perf, py-spy).

    python benchmarks/profile_one.py LOOP WORKLOAD N [--warmup N]

Instruction counts per operation, stable on a noisy machine:
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p \
        python benchmarks/profile_one.py ferroloop call_soon 20000
    (run with two values of N; (I(N2) - I(N1)) / (N2 - N1) is the cost of one operation)
"""

import argparse
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import workloads  # noqa: E402
from _child import loop_factory  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("loop")
    parser.add_argument("workload")
    parser.add_argument("n", type=int)
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args()
    new_loop, _ = loop_factory(args.loop)
    fn, warmup, _ = workloads.THROUGHPUT[args.workload]
    loop = new_loop()
    asyncio.set_event_loop(loop)
    fn(loop, args.warmup if args.warmup is not None else warmup)
    if args.n:
        fn(loop, args.n)
    loop.close()


if __name__ == "__main__":
    main()
