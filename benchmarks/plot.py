#!/usr/bin/env python3
"""Charts of a benchmark run: every loop's cost relative to uvloop's, on every workload.

    python benchmarks/run.py --plot chart.svg                  # run, then draw
    python benchmarks/run.py --plot chart.svg --from run.json  # draw a saved run, no new run
    python benchmarks/server/run.py --plot chart.svg [--from run.json]
    python benchmarks/plot.py run.json chart.svg [--meta commit=abc1234 ...]

Reads both JSON formats: ``benchmarks/run.py``'s (``summary[workload][loop]`` with CPU ns per
operation, or bytes per handle for the memory workloads) and ``benchmarks/server/run.py``'s
(a list of samples: server CPU microseconds per request, or RSS bytes per idle connection;
the median of the rounds is used). Every value is drawn as ``loop's cost / uvloop's cost``, so
lower is better: < 1 means the loop needs less CPU (or memory) than uvloop, i.e. is faster.
The caption gives the CPU, Python, date and commit the JSON records; ``--meta KEY=VALUE``
supplies them for JSON written before they were recorded.

The data handling needs only the standard library; drawing needs matplotlib (the ``bench``
extra: ``pip install 'ferroloop[bench]'`` or ``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from dataclasses import dataclass, field

BASELINE = "uvloop"
# Drawing order; loops not listed here follow in the order the JSON gives them.
LOOP_ORDER = ("asyncio", "rloop", "rsloop", "ferroloop")
# Not event loops: the server benchmark's compiled Rust floor (the cost of the work itself).
NOT_LOOPS = ("floor",)
COLORS = {"asyncio": "#9e9e9e", "rloop": "#6a9fd4", "rsloop": "#8cc084", "ferroloop": "#e8590c"}
META_KEYS = ("cpu", "cpus", "python", "date", "commit")


@dataclass
class Chart:
    """What a chart shows: ``ratios[workload][loop]`` = loop's cost / uvloop's (None = no data)."""

    kind: str  # "scheduling" or "server"
    workloads: list[str]
    loops: list[str]
    ratios: dict[str, dict[str, float | None]]
    memory: set[str] = field(default_factory=set)  # workloads that measure bytes, not CPU
    meta: dict[str, object] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    rounds: int | None = None


# --------------------------------------------------------------------------------------------
# run metadata (stored in the JSON by both run.py scripts)


def cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit(path: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None


def run_meta(repo_path: str, python_version: str | None = None) -> dict[str, object]:
    """The caption's facts about this machine and checkout, now."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": python_version or platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "commit": git_commit(repo_path),
    }


# --------------------------------------------------------------------------------------------
# data handling (no matplotlib)


def detect_kind(data: dict) -> str:
    if isinstance(data.get("summary"), dict):
        return "scheduling"
    if isinstance(data.get("samples"), list):
        return "server"
    raise ValueError("not a benchmark result: expected benchmarks/run.py's JSON (with 'summary') "
                     "or benchmarks/server/run.py's (with a 'samples' list)")


def order_loops(loops) -> list[str]:
    seen = [loop for loop in dict.fromkeys(loops) if loop != BASELINE and loop not in NOT_LOOPS]
    known = [loop for loop in LOOP_ORDER if loop in seen]
    return known + [loop for loop in seen if loop not in known]


def _ratio(value, base):
    if value is None or base is None or value <= 0 or base <= 0:
        return None
    return value / base


def scheduling_chart(data: dict) -> Chart:
    summary = data["summary"]
    workloads, memory, ratios, all_loops = [], set(), {}, []
    for name, per_loop in summary.items():
        base = per_loop.get(BASELINE, {})
        if base.get("status") != "ok":
            continue  # nothing to compare with
        key = "cpu_ns_per_op" if "cpu_ns_per_op" in base else "rss_bytes_per_handle"
        if key not in base:
            continue
        if key != "cpu_ns_per_op":
            memory.add(name)
        workloads.append(name)
        all_loops += list(per_loop)
        ratios[name] = {
            loop: _ratio(e.get(key), base[key]) if e.get("status") == "ok" else None
            for loop, e in per_loop.items()
        }
    return Chart("scheduling", workloads, order_loops(all_loops), ratios, memory,
                 rounds=data.get("rounds"), versions=dict(data.get("versions") or {}))


def server_chart(data: dict) -> Chart:
    values: dict[str, dict[str, list[float]]] = {}
    units: dict[str, str] = {}
    all_loops = []
    for s in data["samples"]:
        name, loop = s.get("workload"), s.get("loop")
        if name is None or loop is None:
            continue
        values.setdefault(name, {}).setdefault(loop, [])
        all_loops.append(loop)
        if s.get("status") == "ok" and s.get("value") is not None:
            values[name][loop].append(float(s["value"]))
            units.setdefault(name, s.get("unit", ""))
    workloads, memory, ratios = [], set(), {}
    for name, per_loop in values.items():
        base = per_loop.get(BASELINE)
        if not base:
            continue
        base_med = statistics.median(base)
        workloads.append(name)
        if units.get(name, "").startswith("bytes"):
            memory.add(name)
        ratios[name] = {loop: _ratio(statistics.median(v), base_med) if v else None
                        for loop, v in per_loop.items()}
    rounds = len({s.get("round") for s in data["samples"]}) or None
    return Chart("server", workloads, order_loops(all_loops), ratios, memory, rounds=rounds,
                 versions=dict(data.get("meta", {}).get("versions") or {}))


def chart_from(data: dict, meta_overrides: dict[str, str] | None = None) -> Chart:
    """The chart of a run's JSON (either format), with its caption metadata."""
    kind = detect_kind(data)
    chart = scheduling_chart(data) if kind == "scheduling" else server_chart(data)
    if not chart.workloads:
        raise ValueError(f"no workload in this {kind} result has a measurement on {BASELINE}, "
                         "the baseline of the ratios")
    meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
    chart.meta = {k: meta.get(k) for k in META_KEYS if meta.get(k) is not None}
    chart.meta.update(meta_overrides or {})
    return chart


def parse_meta(items) -> dict[str, str]:
    out = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta takes KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def caption(chart: Chart) -> str:
    m = chart.meta
    cpu = str(m.get("cpu") or "CPU not recorded")
    if m.get("cpus"):
        cpu += f" ({m['cpus']} CPUs)"
    date = str(m.get("date") or "date not recorded")[:10]
    parts = [cpu, f"Python {m.get('python') or 'not recorded'}", date,
             f"commit {m.get('commit') or 'not recorded'}"]
    if chart.rounds:
        parts.append(f"median of {chart.rounds} round{'s' if chart.rounds != 1 else ''}")
    line2 = ", ".join(f"{loop} {v}" for loop, v in sorted(chart.versions.items()) if v)
    return " · ".join(parts) + (f"\n{line2}" if line2 else "")


def workload_label(chart: Chart, name: str) -> str:
    return f"{name} (memory)" if name in chart.memory else name


def fmt_ratio(r: float) -> str:
    return f"{r:.2f}" if r < 10 else f"{r:.0f}"


# --------------------------------------------------------------------------------------------
# drawing (matplotlib)


def render(chart: Chart, path: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib "
                         "(or pip install 'ferroloop[bench]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "ferroloop",
                                "font.size": 9})
    loops, names = chart.loops, chart.workloads
    n = len(loops)
    bar_h = 0.8 / max(n, 1)
    fig_h = 1.6 + 0.22 * len(names) * max(n, 1)
    fig, ax = plt.subplots(figsize=(9.5, fig_h))
    present = [chart.ratios[name].get(loop) for name in names for loop in loops]
    present = [r for r in present if r]
    lo, hi = min(present + [1.0]), max(present + [1.0])
    labelled = set()
    for i, loop in enumerate(loops):
        for j, name in enumerate(names):
            y = j + (i - (n - 1) / 2) * bar_h
            r = chart.ratios[name].get(loop)
            if r is None:
                ax.text(1.0, y, f" {loop}: no result", va="center", fontsize=7, color="#666666")
                continue
            ax.barh(y, r - 1, left=1, height=bar_h * 0.9, color=COLORS.get(loop, "#b07cc6"),
                    label=None if loop in labelled else loop, edgecolor="none")
            labelled.add(loop)
            ax.text(r, y, f" {fmt_ratio(r)} ",
                    va="center", ha="left" if r >= 1 else "right", fontsize=7,
                    fontweight="bold" if loop == "ferroloop" else "normal")
    ax.axvline(1.0, color="black", linewidth=1, label=f"{BASELINE} (= 1)")
    ax.set_xscale("log")
    xmin, xmax = min(lo / 1.6, 0.5), max(hi * 1.6, 2.0)
    ax.set_xlim(xmin, xmax)
    # Powers of two, written plainly: 0.25, 0.5, 1, 2, 4 (halving and doubling look alike).
    ax.xaxis.set_major_locator(FixedLocator([2.0**k for k in range(-10, 11)
                                             if xmin <= 2.0**k <= xmax]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_yticks(range(len(names)), [workload_label(chart, w) for w in names])
    ax.invert_yaxis()
    what = "CPU time per operation" if chart.kind == "scheduling" else "server CPU time per request"
    if chart.memory:
        what += " (memory where marked)"
    ax.set_xlabel(f"{what} relative to {BASELINE}'s, log scale\n"
                  f"< 1 = less than {BASELINE}: faster (better)   ·   "
                  f"> 1 = more than {BASELINE}: slower (worse)")
    title = {"scheduling": "benchmarks/run.py: scheduling workloads",
             "server": "benchmarks/server/run.py: servers over loopback"}[chart.kind]
    ax.set_title(f"{title}\neach loop's cost relative to {BASELINE}'s (the black line): "
                 "lower is better", fontsize=10)
    ax.grid(axis="x", which="both", color="#dddddd", linewidth=0.5)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.text(0.01, 0.005, caption(chart), fontsize=7, color="#444444", va="bottom")
    fig.tight_layout(rect=(0, 0.35 / fig_h, 1, 1))
    fig.savefig(path, metadata={"Date": None})
    plt.close(fig)


def plot_file(json_path: str, out_path: str, meta_overrides=None) -> Chart:
    with open(json_path) as f:
        data = json.load(f)
    chart = chart_from(data, meta_overrides)
    render(chart, out_path)
    return chart


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="a result of benchmarks/run.py or benchmarks/server/run.py")
    ap.add_argument("out", help="the chart to write (.svg, .png, .pdf)")
    ap.add_argument("--meta", action="append", metavar="KEY=VALUE",
                    help=f"caption facts the JSON lacks ({', '.join(META_KEYS)}); repeatable")
    a = ap.parse_args(argv)
    try:
        chart = plot_file(a.json, a.out, parse_meta(a.meta))
    except (OSError, ValueError) as e:
        sys.exit(f"plot: {e}")
    print(f"chart: {a.out} ({len(chart.workloads)} workloads, loops: {', '.join(chart.loops)})")


if __name__ == "__main__":
    main()
