"""benchmarks/plot.py: the ratios to uvloop it draws, from both benchmark JSON formats.

The data handling needs only the standard library; the one drawing test skips without
matplotlib (a bench-only dependency: ``pip install matplotlib``).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLOT_PY = os.path.join(ROOT, "benchmarks", "plot.py")


@pytest.fixture(scope="module")
def plot():
    spec = importlib.util.spec_from_file_location("bench_plot", PLOT_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_plot"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules["bench_plot"]


def scheduling_result():
    """The shape benchmarks/run.py writes (summary[workload][loop])."""
    ok = {"status": "ok", "rounds": 3}
    return {
        "date": "2026-12-06T09:00:00+00:00",
        "python": "3.11.7",
        "cpus": 2,
        "cpu": "AMD EPYC",
        "commit": "abc1234",
        "rounds": 3,
        "versions": {"uvloop": "0.23.0", "ferroloop": "0.1.0"},
        "summary": {
            "call_soon": {
                "asyncio": {**ok, "cpu_ns_per_op": 400.0, "ops_per_s": 2.5e6},
                "uvloop": {**ok, "cpu_ns_per_op": 200.0, "ops_per_s": 5e6},
                "rloop": {"status": "missing", "error": None},
                "ferroloop": {**ok, "cpu_ns_per_op": 50.0, "ops_per_s": 2e7},
            },
            "handles_memory": {
                "uvloop": {**ok, "rss_bytes_per_handle": 100.0},
                "ferroloop": {**ok, "rss_bytes_per_handle": 150.0},
            },
            "no_baseline": {
                "uvloop": {"status": "error", "error": "boom"},
                "ferroloop": {**ok, "cpu_ns_per_op": 10.0},
            },
        },
    }


def server_sample(workload, loop, value, rnd, unit="us/req", status="ok"):
    s = {"round": rnd, "workload": workload, "loop": loop, "status": status}
    if status == "ok":
        s.update(value=value, unit=unit)
    else:
        s["note"] = "not importable"
    return s


def server_result():
    """The shape benchmarks/server/run.py writes (a list of samples, several rounds)."""
    samples = []
    for rnd, (uv, fl, floor) in enumerate([(8.0, 4.0, 1.0), (10.0, 6.0, 1.0), (12.0, 5.0, 1.0)]):
        samples += [
            server_sample("tcp_1k", "uvloop", uv, rnd),
            server_sample("tcp_1k", "ferroloop", fl, rnd),
            server_sample("tcp_1k", "floor", floor, rnd),
            server_sample("tcp_1k", "rloop", None, rnd, status="missing"),
            server_sample("idle_rss", "uvloop", 2000.0, rnd, unit="bytes/conn"),
            server_sample("idle_rss", "ferroloop", 3000.0, rnd, unit="bytes/conn"),
        ]
    return {
        "args": {"rounds": 3},
        "meta": {
            "date": "2026-12-06T08:18:00+00:00",
            "python": "3.12.1",
            "cpu": "AMD EPYC",
            "cpus": 2,
            "commit": "4769178",
            "versions": {"uvloop": "0.23.0"},
        },
        "samples": samples,
    }


def test_scheduling_ratios_are_cpu_per_op_over_uvloops(plot):
    chart = plot.chart_from(scheduling_result())
    assert chart.kind == "scheduling"
    # A workload whose uvloop run failed has nothing to be relative to: left out.
    assert chart.workloads == ["call_soon", "handles_memory"]
    assert chart.loops == ["asyncio", "rloop", "ferroloop"]  # uvloop is the line at 1
    r = chart.ratios["call_soon"]
    assert r["ferroloop"] == pytest.approx(0.25)  # a quarter of uvloop's CPU: < 1 = faster
    assert r["asyncio"] == pytest.approx(2.0)
    assert r["rloop"] is None  # not installed: drawn as "no result"
    assert chart.memory == {"handles_memory"}
    assert chart.ratios["handles_memory"]["ferroloop"] == pytest.approx(1.5)
    assert chart.rounds == 3


def test_server_ratios_are_medians_over_rounds(plot):
    chart = plot.chart_from(server_result())
    assert chart.kind == "server"
    assert chart.workloads == ["tcp_1k", "idle_rss"]
    assert "floor" not in chart.loops and "uvloop" not in chart.loops
    assert chart.loops == ["rloop", "ferroloop"]
    # medians: ferroloop 5.0, uvloop 10.0
    assert chart.ratios["tcp_1k"]["ferroloop"] == pytest.approx(0.5)
    assert chart.ratios["tcp_1k"]["rloop"] is None
    assert chart.memory == {"idle_rss"}
    assert chart.ratios["idle_rss"]["ferroloop"] == pytest.approx(1.5)
    assert chart.rounds == 3


def test_caption_names_cpu_python_date_commit(plot):
    text = plot.caption(plot.chart_from(server_result()))
    for fact in (
        "AMD EPYC (2 CPUs)",
        "Python 3.12.1",
        "2026-12-06",
        "commit 4769178",
        "median of 3 rounds",
        "uvloop 0.23.0",
    ):
        assert fact in text
    text = plot.caption(plot.chart_from(scheduling_result()))
    assert "Python 3.11.7" in text and "commit abc1234" in text and "ferroloop 0.1.0" in text


def test_old_json_without_meta_and_meta_overrides(plot):
    data = server_result()
    del data["meta"]
    text = plot.caption(plot.chart_from(data))
    assert "CPU not recorded" in text and "commit not recorded" in text
    chart = plot.chart_from(data, plot.parse_meta(["commit=f0a6da6", "python = 3.11.7"]))
    assert "commit f0a6da6" in plot.caption(chart)
    assert "Python 3.11.7" in plot.caption(chart)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        plot.parse_meta(["commit"])


def test_unusable_json_is_refused_with_a_reason(plot):
    with pytest.raises(ValueError, match="not a benchmark result"):
        plot.chart_from({"rows": []})
    no_uvloop = {"samples": [server_sample("tcp_1k", "ferroloop", 4.0, 0)]}
    with pytest.raises(ValueError, match="uvloop"):
        plot.chart_from(no_uvloop)


def test_svg_from_saved_json(plot, tmp_path):
    pytest.importorskip("matplotlib", reason="drawing needs matplotlib (the bench extra)")
    src = tmp_path / "server.json"
    src.write_text(json.dumps(server_result()))
    out = tmp_path / "chart.svg"
    # The command line the README shows, in a child so matplotlib's state stays out of this
    # process.
    proc = subprocess.run(
        [sys.executable, PLOT_PY, str(src), str(out)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    svg = out.read_text()
    assert svg.startswith("<?xml")
    for text in (
        "tcp_1k",
        "idle_rss (memory)",
        "ferroloop",
        "0.50",
        "commit 4769178",
        "lower is better",
    ):
        assert text in svg


def test_server_report_takes_ratios_within_rounds():
    """benchmarks/server/run.py's table: ferroloop over the best peer, and over the floor,
    sample by sample within each round, then the median and range over rounds."""
    run_py = os.path.join(ROOT, "benchmarks", "server", "run.py")
    spec = importlib.util.spec_from_file_location("bench_server_run", run_py)
    run = importlib.util.module_from_spec(spec)
    sys.modules["bench_server_run"] = run  # dataclasses look their module up
    try:
        spec.loader.exec_module(run)
        samples = server_result()["samples"]
        # Rounds: ferroloop 4, 6, 5 against uvloop 8, 10, 12 and the floor 1, 1, 1.
        assert run.round_ratios(samples, "tcp_1k") == pytest.approx([0.5, 0.6, 5 / 12])
        assert run.round_ratios(samples, "tcp_1k", ("floor",)) == pytest.approx([4, 6, 5])
        loops = ["uvloop", "rloop", "ferroloop", "floor"]
        table = run.report(samples, loops, [run.BY_NAME["tcp_1k"], run.BY_NAME["idle_rss"]])
    finally:
        del sys.modules["bench_server_run"]
    header, _, tcp, idle = table.splitlines()[:4]
    assert header.split()[-4:] == ["vs", "floor,", "per", "round"]
    # The cells are the medians over rounds; rloop's samples failed.
    assert tcp.split()[:5] == ["tcp_1k", "10.00", "missing", "5.00", "1.00"]
    per_round, vs_floor = tcp.split("  ")[-2:]
    assert (per_round.strip(), vs_floor.strip()) == ("-50% [-58..-40]", "+400% [+300..+500]")
    assert idle.split()[:3] == ["idle_rss", "(B/conn)", "2000"]
    assert "'vs floor, per round'" in table
