#!/usr/bin/env python3
"""Compare asyncio, uvloop, rloop, rsloop (when installed) and ferroloop on the workloads of ``workloads.py``.

Each (workload, loop) measurement runs in a fresh subprocess; in every round the loops are
interleaved and their order rotated, and the table reports medians over the rounds.

    python benchmarks/run.py                 # 5 rounds, ~0.5 s measured per run
    python benchmarks/run.py --quick         # 3 rounds, ~0.15 s per run (< 3 minutes)
    python benchmarks/run.py --workloads call_soon,futures --loops uvloop,ferroloop
    python benchmarks/run.py --plot chart.svg                # also draw the ratios to uvloop
    python benchmarks/run.py --plot chart.svg --from r.json  # draw a saved run (no new run)
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import plot  # noqa: E402
import workloads  # noqa: E402

LOOPS = ("asyncio", "uvloop", "rloop", "rsloop", "ferroloop")
BASELINE = "uvloop"
CHILD = os.path.join(HERE, "_child.py")


def run_child(loop, workload, target, timeout):
    cmd = [sys.executable, CHILD, loop, workload, "--target", str(target)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "error", "error": f"timed out after {timeout} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["exit code %d" % proc.returncode])[-1]
        return {"status": "error", "error": tail[:200]}
    try:
        return json.loads(lines[-1])
    except ValueError:
        return {"status": "error", "error": lines[-1][:200]}


def median_of(samples, key):
    values = [s[key] for s in samples if s.get("status") == "ok" and key in s]
    return statistics.median(values) if values else None


def spread_of(samples, key):
    values = [s[key] for s in samples if s.get("status") == "ok" and key in s]
    if len(values) < 2:
        return None
    med = statistics.median(values)
    return (max(values) - min(values)) / med * 100 if med else None


def summarize(results, names, loops):
    """results[workload][loop] = list of samples -> summary[workload][loop] = medians."""
    summary = {}
    for name in names:
        summary[name] = {}
        for loop in loops:
            samples = results[name][loop]
            statuses = {s.get("status") for s in samples}
            if "ok" not in statuses:
                status = "missing" if "missing" in statuses else "error"
                errors = [s.get("error") for s in samples if s.get("error")]
                summary[name][loop] = {"status": status, "error": errors[0] if errors else None}
                continue
            entry = {"status": "ok", "rounds": sum(s.get("status") == "ok" for s in samples)}
            if name in workloads.THROUGHPUT:
                for key in ("ops_per_s", "cpu_ns_per_op"):
                    entry[key] = median_of(samples, key)
                entry["spread_pct"] = spread_of(samples, "ops_per_s")
                # The best round: on a shared machine, the one least disturbed by others.
                entry["best_cpu_ns_per_op"] = min(
                    s["cpu_ns_per_op"] for s in samples if s.get("status") == "ok"
                )
            else:
                for key in ("rss_bytes_per_handle", "traced_bytes_per_handle"):
                    entry[key] = median_of(samples, key)
            summary[name][loop] = entry
        base = summary[name].get(BASELINE, {})
        for loop in loops:
            entry = summary[name][loop]
            if entry["status"] != "ok" or base.get("status") != "ok" or name not in workloads.THROUGHPUT:
                continue
            entry["ratio_vs_uvloop"] = entry["ops_per_s"] / base["ops_per_s"]
            entry["cpu_ratio_vs_uvloop"] = base["cpu_ns_per_op"] / entry["cpu_ns_per_op"]
            entry["best_cpu_ratio_vs_uvloop"] = base["best_cpu_ns_per_op"] / entry["best_cpu_ns_per_op"]
    return summary


def fmt_rate(value):
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}k"
    return f"{value:.0f}"


def print_tables(summary, names, loops):
    thr = [n for n in names if n in workloads.THROUGHPUT]
    mem = [n for n in names if n in workloads.MEMORY]
    if thr:
        header = (f"{'workload':<16} {'loop':<10} {'ops/s':>9} {'spread':>7} {'CPU ns/op':>10} "
                  f"{'vs uvloop':>10} {'CPU vs uvloop':>14} {'best CPU':>9} {'vs uvloop':>10}")
        print(header)
        print("-" * len(header))
        for name in thr:
            for loop in loops:
                e = summary[name][loop]
                if e["status"] != "ok":
                    print(f"{name:<16} {loop:<10} {e['status']:>9}  {e.get('error') or ''}")
                    continue
                spread = f"{e['spread_pct']:.0f}%" if e.get("spread_pct") is not None else "-"
                ratio = f"{e['ratio_vs_uvloop']:.2f}x" if "ratio_vs_uvloop" in e else "-"
                cpu_ratio = f"{e['cpu_ratio_vs_uvloop']:.2f}x" if "cpu_ratio_vs_uvloop" in e else "-"
                best_ratio = (f"{e['best_cpu_ratio_vs_uvloop']:.2f}x"
                              if "best_cpu_ratio_vs_uvloop" in e else "-")
                print(f"{name:<16} {loop:<10} {fmt_rate(e['ops_per_s']):>9} {spread:>7} "
                      f"{e['cpu_ns_per_op']:>10.0f} {ratio:>10} {cpu_ratio:>14} "
                      f"{e['best_cpu_ns_per_op']:>9.0f} {best_ratio:>10}")
            print()
    if mem:
        header = f"{'memory':<18} {'loop':<10} {'RSS B/handle':>13} {'tracemalloc B/handle':>21}"
        print(header)
        print("-" * len(header))
        for name in mem:
            for loop in loops:
                e = summary[name][loop]
                if e["status"] != "ok":
                    print(f"{name:<18} {loop:<10} {e['status']:>13}  {e.get('error') or ''}")
                    continue
                print(f"{name:<18} {loop:<10} {e['rss_bytes_per_handle']:>13.0f} "
                      f"{e['traced_bytes_per_handle']:>21.0f}")
        print()
    print("ops/s: median wall-clock throughput; spread: (max-min)/median over rounds;")
    print("CPU ns/op: median process CPU time per operation (all threads);")
    print("vs uvloop: throughput ratio, CPU vs uvloop: uvloop CPU/op / loop CPU/op (>1 = faster);")
    print("best CPU: the lowest CPU ns/op of the rounds, and its ratio to uvloop's lowest.")


def git_commit():
    try:
        return subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True).stdout.strip() or None
    except OSError:
        return None


def main():
    all_names = list(workloads.THROUGHPUT) + list(workloads.MEMORY)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 3 with --quick)")
    parser.add_argument("--target", type=float, default=None,
                        help="seconds per measured part (default 0.5; 0.15 with --quick)")
    parser.add_argument("--quick", action="store_true", help="short run: 3 rounds, 0.15 s targets")
    parser.add_argument("--workloads", default=None, help="comma-separated: " + ",".join(all_names))
    parser.add_argument("--loops", default=None, help="comma-separated: " + ",".join(LOOPS))
    parser.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"), help="output JSON path")
    parser.add_argument("--timeout", type=float, default=120, help="per-child timeout, seconds")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--plot", metavar="FILE.svg", default=None,
                        help="draw every loop's CPU per operation relative to uvloop's "
                             "(needs matplotlib; see plot.py)")
    parser.add_argument("--from", dest="from_json", metavar="JSON", default=None,
                        help="with --plot: draw this saved result instead of running")
    parser.add_argument("--meta", action="append", metavar="KEY=VALUE",
                        help="with --plot: caption facts an older JSON lacks (cpu, python, "
                             "date, commit)")
    args = parser.parse_args()

    if (args.from_json or args.meta) and not args.plot:
        parser.error("--from and --meta go with --plot")
    if args.from_json:
        try:
            chart = plot.plot_file(args.from_json, args.plot, plot.parse_meta(args.meta))
        except (OSError, ValueError) as e:
            parser.error(str(e))
        print(f"chart: {args.plot} ({len(chart.workloads)} workloads)")
        return

    if args.list:
        for name, doc in workloads.describe():
            print(f"{name:<18} {' '.join(doc.split())}")
        return
    rounds = args.rounds or (3 if args.quick else 5)
    target = args.target or (0.15 if args.quick else 0.5)
    names = args.workloads.split(",") if args.workloads else all_names
    loops = args.loops.split(",") if args.loops else list(LOOPS)
    for name in names:
        if name not in all_names:
            parser.error(f"unknown workload {name!r}; known: {', '.join(all_names)}")
    for loop in loops:
        if loop not in LOOPS:
            parser.error(f"unknown loop {loop!r}; known: {', '.join(LOOPS)}")

    results = {name: {loop: [] for loop in loops} for name in names}
    versions = {}
    started = time.time()
    for r in range(rounds):
        order = loops[r % len(loops):] + loops[:r % len(loops)]
        for name in names:
            for loop in order:
                sample = run_child(loop, name, target, args.timeout)
                sample["round"] = r
                results[name][loop].append(sample)
                if sample.get("version"):
                    versions[loop] = sample["version"]
        print(f"round {r + 1}/{rounds} done ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)

    summary = summarize(results, names, loops)
    print()
    print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{rounds} rounds, target {target} s; "
          + ", ".join(f"{loop} {versions.get(loop, 'missing')}" for loop in loops))
    print()
    print_tables(summary, names, loops)

    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": plot.cpu_model(),
        "commit": git_commit(),
        "rounds": rounds,
        "target_s": target,
        "versions": versions,
        "baseline": BASELINE,
        "summary": summary,
        "samples": results,
    }
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nJSON: {args.json}")
    if args.plot:
        plot.render(plot.chart_from(out, plot.parse_meta(args.meta)), args.plot)
        print(f"chart: {args.plot}")


if __name__ == "__main__":
    main()
