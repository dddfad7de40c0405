"""Server-side network benchmarks, counted instead of timed: user-space instructions and system
calls per request (see README.md, "Counting").

    python benchmarks/server/count.py [--loops uvloop,rloop,rsloop,ferroloop,floor]
        [--workloads tcp_1k,...] [--duration 3] [--warmup 2] [--json FILE]

The servers and the client are run.py's (the same `servers.py` workloads, the same `loadgen`
client, the same floor server). Each (workload, loop) runs twice, one server at a time:

* under `valgrind --tool=callgrind`: the counters are zeroed when the client prints START and
  dumped when it prints END; instructions / requests completed in the window. Valgrind runs the
  server's threads one at a time and counts every thread's instructions.
* plain, with `strace -f -ttt` attached during the warm-up: the system calls whose timestamps
  fall between START and END, by name, / requests in the window.

Each server is primed first, as run.py's are (`--prime`: one unmeasured client session, so
that its steady state, not a fresh process's `malloc` thresholds, is counted).

Both counts are nearly deterministic: they do not move with the host's steal or with the
kernel's run-to-run variation, which decide CPU-time rows at the kernel's floor by more than
5 % (docs/network-notes.md). They leave out what a system call costs inside the kernel, so they
complement run.py's CPU time, they do not replace it. Needs `valgrind` and `strace`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402  (benchmarks/server/run.py: workloads, loadgen, servers)

DEFAULT_LOOPS = ("uvloop", "rloop", "rsloop", "ferroloop", "floor")
# Valgrind runs a server some 50 times slower: it needs longer to start.
READY_TIMEOUT = 180.0
TLS_WARMUP = 10.0


def server_command(ctx: run.Ctx, loop: str, wl: run.Workload, addr: str) -> list[str]:
    if loop == "floor":
        if wl.floor is None:
            raise run.RunError("unsupported", "no floor server for this workload")
        cmd = [run.LOADGEN, "floor", "--mode", wl.floor, "--addr", addr]
        cmd += ["--tls"] if wl.tls else []
    else:
        cmd = [ctx.pythons[loop], run.SERVERS, "--loop", loop, "--workload", wl.server]
        cmd += ["--addr", addr]
    if wl.tls:
        cmd += ["--cert", os.path.join(run.TLS_DIR, "cert.pem")]
        cmd += ["--key", os.path.join(run.TLS_DIR, "key.pem")]
    return cmd


def address(wl: run.Workload, tag: str) -> str:
    if wl.on_unix_socket:
        return os.path.join(tempfile.gettempdir(), f"ferroloop-count-{os.getpid()}-{tag}.sock")
    if wl.client == "udp":
        return f"127.0.0.1:{run.free_udp_port()}"
    return f"127.0.0.1:{run.free_port()}"


def start(cmd: list[str], errpath: str, cpu: int, stdout=subprocess.PIPE) -> subprocess.Popen:
    with open(errpath, "wb") as err:
        return subprocess.Popen(
            cmd, stdout=stdout, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=run.pin(cpu)
        )


def client(ctx: run.Ctx, wl: run.Workload, addr: str, tag: str) -> subprocess.Popen:
    a = ctx.args
    # The TLS handshakes (millions of instructions each, 50 times slower under valgrind) are
    # over before the window.
    warmup = max(a.warmup, TLS_WARMUP) if wl.tls else a.warmup
    cmd = run.client_command(wl, addr, warmup, a.duration)
    return start(cmd, os.path.join(ctx.logdir, f"client-{tag}.err"), run.CLIENT_CPU)


def wait_ready(server: subprocess.Popen, errpath: str) -> None:
    line = run.read_line(server, READY_TIMEOUT)
    if line != "READY":
        try:  # EOF: the server is exiting (give it a moment); None: the wait timed out.
            exited = server.wait(timeout=5) is not None
        except subprocess.TimeoutExpired:
            exited = False
        run.stop(server)
        why = run.last_line(errpath) if exited else ""
        raise run.RunError("unsupported", why or f"no READY in {READY_TIMEOUT:.0f} s")


def requests_in_window(ctx: run.Ctx, cli: subprocess.Popen, on_start, on_end) -> int:
    """Runs the client to its END line, calling on_start / on_end at START and END; returns
    the requests it completed in the window."""
    a = ctx.args
    line = run.read_line(cli, max(a.warmup, TLS_WARMUP) + 120)
    if line != "START":
        raise run.RunError("error", f"client: no START ({line!r})")
    on_start()
    line = run.read_line(cli, a.duration + 600)
    on_end()
    if not line or not line.startswith("END "):
        raise run.RunError("error", f"client: no END ({line!r})")
    n = int(line.split()[1])
    if n <= 0:
        raise run.RunError("error", "no request completed")
    cli.wait(timeout=30)
    return n


def count_instructions(ctx: run.Ctx, loop: str, wl: run.Workload) -> dict:
    a = ctx.args
    tag = f"cg-{loop}-{wl.name}"
    out = os.path.join(ctx.logdir, f"{tag}.callgrind")
    addr = address(wl, tag)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--collect-atstart=yes"]
    # Threads that wait for each other by spinning (rsloop's) need valgrind to take turns.
    cmd += ["--fair-sched=yes"]
    # Valgrind's own messages apart: the server's stderr says why it did not start.
    cmd += [f"--log-file={os.path.join(ctx.logdir, tag)}.valgrind"]
    errpath = os.path.join(ctx.logdir, f"server-{tag}.err")
    server = start(cmd + server_command(ctx, loop, wl, addr), errpath, run.SERVER_CPU)
    cli = None
    try:
        wait_ready(server, errpath)
        # Valgrind's server is slow to finish TLS handshakes: a longer session for those.
        run.prime(ctx, wl, addr, max(a.prime, TLS_WARMUP) if wl.tls and a.prime > 0 else None)
        cli = client(ctx, wl, addr, tag)

        def control(flag: str):
            subprocess.run(["callgrind_control", flag, str(server.pid)], capture_output=True)

        n = requests_in_window(ctx, cli, lambda: control("-z"), lambda: control("-d"))
    finally:
        run.stop(cli)
        run.stop(server)
    dumps = sorted(glob.glob(out + ".*"), key=os.path.getmtime)
    if not dumps:
        raise run.RunError("error", "no callgrind dump")
    total = None
    with open(dumps[-1]) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                total = int(line.split()[1])
    if total is None:
        raise run.RunError("error", "no totals in the callgrind dump")
    return {"status": "ok", "instructions": total / n, "requests": n}


def count_syscalls(ctx: run.Ctx, loop: str, wl: run.Workload) -> dict:
    tag = f"st-{loop}-{wl.name}"
    out = os.path.join(ctx.logdir, f"{tag}.strace")
    addr = address(wl, tag)
    errpath = os.path.join(ctx.logdir, f"server-{tag}.err")
    server = start(server_command(ctx, loop, wl, addr), errpath, run.SERVER_CPU)
    tracer = cli = None
    window = [0.0, 0.0]
    try:
        wait_ready(server, errpath)
        run.prime(ctx, wl, addr)
        tracer = subprocess.Popen(
            ["strace", "-f", "-ttt", "-qq", "-o", out, "-p", str(server.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=run.pin(run.CLIENT_CPU),
        )
        cli = client(ctx, wl, addr, tag)

        def mark(i: int):
            window[i] = time.time()

        n = requests_in_window(ctx, cli, lambda: mark(0), lambda: mark(1))
    finally:
        run.stop(cli)
        if tracer is not None:
            tracer.send_signal(2)
            tracer.wait(timeout=30)
        run.stop(server)
    calls: dict[str, int] = {}
    with open(out, errors="replace") as f:
        for line in f:
            parts = line.split(None, 2)
            # "[pid] seconds.micros name(args...) = result", the pid only with -f.
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            try:
                stamp = float(parts[1])
            except ValueError:
                continue
            if not window[0] <= stamp <= window[1]:
                continue
            rest = parts[2]
            if rest.startswith(("<...", "+++", "---")):
                continue  # the second half of an interrupted call, an exit, a signal
            name = rest.split("(", 1)[0]
            calls[name] = calls.get(name, 0) + 1
    per = {name: count / n for name, count in sorted(calls.items(), key=lambda kv: -kv[1])}
    return {"status": "ok", "syscalls": sum(calls.values()) / n, "by_name": per, "requests": n}


def guarded(fn, ctx: run.Ctx, loop: str, wl: run.Workload) -> dict:
    try:
        return fn(ctx, loop, wl)
    except run.RunError as e:
        return {"status": e.status, "note": e.note}
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        return {"status": "error", "note": f"{type(e).__name__}: {e}"}


def cell(result: dict, key: str, digits: int) -> str:
    if result.get("status") != "ok":
        return result.get("status", "-")
    return f"{result[key]:,.{digits}f}"


def versus_best_peer(results: dict, wl: str, key: str) -> str:
    mine = results.get(("ferroloop", wl), {}).get(key, {})
    peers = [results.get((p, wl), {}).get(key, {}) for p in run.PEERS]
    values = [p[key] for p in peers if p.get("status") == "ok"]
    if mine.get("status") != "ok" or not values:
        return "-"
    return f"{(mine[key] / min(values) - 1) * 100:+.0f} %"


def report(results: dict, loops: list[str], workloads: list[run.Workload]) -> str:
    lines = []
    notes = set()
    for key, title, digits in (
        ("instructions", "user-space instructions per request (callgrind)", 0),
        ("syscalls", "system calls per request (strace)", 2),
    ):
        if not any(key in entry for entry in results.values()):
            continue
        lines.append(f"\n{title}")
        head = f"{'workload':<15}" + "".join(f"{loop:>12}" for loop in loops)
        lines.append(head + f"{'vs best peer':>14}")
        for wl in workloads:
            row = f"{wl.name:<15}"
            for loop in loops:
                result = results.get((loop, wl.name), {}).get(key, {})
                row += f"{cell(result, key, digits):>12}"
                if result.get("note"):
                    notes.add(f"{loop}/{wl.name} ({key}): {result['note']}")
            lines.append(row + f"{versus_best_peer(results, wl.name, key):>14}")
    lines += [""] + sorted(notes) if notes else []
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loops", default=",".join(DEFAULT_LOOPS))
    default_workloads = ",".join(w.name for w in run.WORKLOADS if w.client != "idle")
    p.add_argument("--workloads", default=default_workloads)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--rsloop-python", default="/tmp/rsvenv/bin/python")
    p.add_argument("--what", choices=("both", "instructions", "syscalls"), default="both")
    p.add_argument(
        "--prime",
        type=float,
        default=0.3,
        help="seconds of an unmeasured client session first, as run.py's --prime (0: none)",
    )
    p.add_argument("--json", default=None)
    a = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "strace"):
        if a.what in ("both", "instructions" if tool != "strace" else "syscalls"):
            if shutil.which(tool) is None:
                sys.exit(f"count.py needs {tool} (apt-get install valgrind strace)")
    loops = [loop for loop in a.loops.split(",") if loop]
    workloads = [run.BY_NAME[name] for name in a.workloads.split(",") if name]
    ctx = run.Ctx(args=a, logdir=tempfile.mkdtemp(prefix="ferroloop-count-"))
    ctx.pythons = {loop: a.python for loop in run.PY_LOOPS}
    ctx.pythons["rsloop"] = a.rsloop_python
    run.build_loadgen()
    if any(w.tls for w in workloads):
        run.ensure_cert()
    results: dict = {}
    # A loop whose server never became ready under valgrind is not run under it again.
    no_valgrind: dict[str, str] = {}
    for wl in workloads:
        for loop in loops:
            entry: dict = {}
            if a.what in ("both", "instructions") and loop in no_valgrind:
                entry["instructions"] = {"status": "error", "note": no_valgrind[loop]}
            elif a.what in ("both", "instructions"):
                entry["instructions"] = guarded(count_instructions, ctx, loop, wl)
                if "no READY in" in entry["instructions"].get("note", ""):
                    no_valgrind[loop] = "did not start under valgrind"
            if a.what in ("both", "syscalls"):
                entry["syscalls"] = guarded(count_syscalls, ctx, loop, wl)
            results[(loop, wl.name)] = entry
            shown = ", ".join(
                f"{k} {r[k]:,.2f}" if r.get("status") == "ok" else f"{k} {r.get('note')}"
                for k, r in entry.items()
            )
            print(f"{wl.name:<15} {loop:<10} {shown}", flush=True)
    print(report(results, loops, workloads))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({f"{loop}/{wl}": r for (loop, wl), r in results.items()}, f, indent=1)


if __name__ == "__main__":
    main()
