"""Server-side network benchmarks: server CPU time per request (see README.md).

    python benchmarks/server/run.py [--loops asyncio,uvloop,rloop,rsloop,ferroloop,floor]
        [--workloads tcp_1k,...] [--rounds 2] [--duration 3] [--warmup 1] [--json FILE]
        [--keep-servers] [--plot FILE.svg]
    python benchmarks/server/run.py --plot FILE.svg --from saved.json   # draw, no new run

Each (round, workload, loop) runs one fresh server process pinned to CPU 0 and one client
pinned to CPU 1 (with --keep-servers, each workload's servers are started once and the rounds'
client windows alternate between them).  Server CPU = sum over the server's threads of the
first field of /proc/PID/task/*/schedstat (ns on CPU), read when the client prints START and
END; divided by the requests the client completed in that window.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))

import plot  # noqa: E402  (benchmarks/plot.py)

LOADGEN_DIR = os.path.join(HERE, "loadgen")
LOADGEN = os.path.join(LOADGEN_DIR, "target", "release", "loadgen")
SERVERS = os.path.join(HERE, "servers.py")

PY_LOOPS = ("asyncio", "uvloop", "rloop", "rsloop", "ferroloop")
ALL_LOOPS = PY_LOOPS + ("floor",)
PEERS = ("uvloop", "rloop", "rsloop")
SERVER_CPU = 0
CLIENT_CPU = 1
TLS_DIR = os.path.join(tempfile.gettempdir(), "ferroloop-bench-tls")


@dataclass
class Workload:
    name: str
    server: str  # servers.py --workload
    client: str  # loadgen client --mode
    floor: str | None  # loadgen floor --mode, None = no floor server
    conns: int = 8
    size: int = 1024
    tls: bool = False
    what: str = ""
    unix: bool = False  # a Unix socket address (the client's mode may not say so: churn)

    @property
    def on_unix_socket(self) -> bool:
        return self.unix or self.client == "unix"


WORKLOADS = [
    Workload(
        "tcp_1k", "tcp_protocol", "tcp", "tcp", what="TCP echo, Protocol, 8 conns ping-pong 1 KiB"
    ),
    Workload(
        "tcp_100k",
        "tcp_protocol",
        "tcp",
        "tcp",
        size=102400,
        what="TCP echo, Protocol, 8 conns 100 KiB",
    ),
    Workload(
        "streams_1k", "streams", "tcp", "tcp", what="TCP echo, start_server + read/write/drain"
    ),
    Workload(
        "sock_1k", "sock", "tcp", "tcp", what="TCP echo, sock_accept/sock_recv/sock_sendall tasks"
    ),
    Workload("unix_1k", "unix_protocol", "unix", "unix", what="Unix-socket echo, Protocol"),
    Workload("udp_1k", "udp", "udp", "udp", what="UDP echo, DatagramProtocol, 8 sockets"),
    Workload(
        "http", "http", "http", "http", conns=32, what="HTTP/1.1 keep-alive, httptools, 32 conns"
    ),
    Workload("churn", "churn", "churn", "tcp", what="connect + 64 B echo + close, 8 concurrent"),
    Workload(
        "unix_churn",
        "unix_protocol",
        "churn",
        "unix",
        unix=True,
        what="Unix socket: connect + 64 B echo + close, 8 concurrent",
    ),
    Workload(
        "accept_storm",
        "storm",
        "churn",
        "tcp",
        conns=500,
        what="connect + 64 B echo + close, 500 concurrent (an accept storm)",
    ),
    Workload(
        "idle_rss",
        "idle",
        "idle",
        "tcp",
        conns=5000,
        what="RSS bytes per idle connection, 5000 conns",
    ),
    Workload("tls_1k", "tls_protocol", "tcp", "tcp", tls=True, what="TLS echo, Protocol, 1 KiB"),
    Workload(
        "tls_64k",
        "tls_protocol",
        "tcp",
        "tcp",
        size=65536,
        tls=True,
        what="TLS echo, Protocol, 64 KiB",
    ),
    Workload(
        "tls_streams_1k", "tls_streams", "tcp", "tcp", tls=True, what="TLS echo, streams, 1 KiB"
    ),
]
BY_NAME = {w.name: w for w in WORKLOADS}


class RunError(Exception):
    def __init__(self, status: str, note: str):
        super().__init__(note)
        self.status = status
        self.note = note


# --------------------------------------------------------------------------------------------
# /proc readings


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def process_clock_ns(pid: int) -> int:
    """The process's CPU-time clock (clock_getcpuclockid): the same kernel counter as
    schedstat's first field (sum_exec_runtime, ns), summed over all threads, including threads
    that have already exited."""
    cid = ctypes.c_int()
    err = _libc.clock_getcpuclockid(pid, ctypes.byref(cid))
    if err:
        raise OSError(err, f"clock_getcpuclockid({pid})")
    return time.clock_gettime_ns(cid.value)


def server_cpu(pid: int) -> tuple[int, int, int]:
    """(process CPU clock ns, schedstat sum over live threads ns, live thread count)."""
    clock = process_clock_ns(pid)
    sched, n = schedstat_ns(pid)
    return clock, sched, n


def schedstat_ns(pid: int) -> tuple[int, int]:
    """(sum of schedstat run time over the process's live threads in ns, thread count)."""
    total = 0
    n = 0
    task_dir = f"/proc/{pid}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
                n += 1
        except (FileNotFoundError, ProcessLookupError):
            pass  # thread exited in between
    return total, n


def stat_times_ns(pid: int) -> tuple[int, int]:
    """(utime, stime) of the whole process (dead threads included), tick resolution."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    return int(fields[11]) * tick, int(fields[12]) * tick


def stat_cpu_ns(pid: int) -> int:
    """utime + stime of the whole process (dead threads included), tick resolution."""
    return sum(stat_times_ns(pid))


def cpu_ticks(cpu: int) -> tuple[int, int]:
    """(steal, total) clock ticks of one CPU so far, from /proc/stat.

    Steal is the time the hypervisor ran something else while this (virtual) CPU had work.
    A task's run time (schedstat, its CPU clock) still counts it, so a sample taken while the
    host steals reads high for every loop alike: `run_one` measures such a sample again."""
    try:
        with open("/proc/stat") as f:
            for line in f:
                if line.startswith(f"cpu{cpu} "):
                    v = [int(x) for x in line.split()[1:9]]
                    return (v[7] if len(v) > 7 else 0), sum(v)
    except OSError:
        pass
    return 0, 0


def steal_share(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total > 0 else 0.0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RunError("error", "no VmRSS")


# --------------------------------------------------------------------------------------------
# processes


def pin(cpu: int):
    def _pin():
        os.sched_setaffinity(0, {cpu})

    return _pin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_line(proc: subprocess.Popen, timeout: float) -> str | None:
    """One line of proc's stdout, or None on EOF / timeout."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        # poll, not select: a long run's pipes can have fd numbers above FD_SETSIZE.
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(left * 1000):
            return None
        ch = os.read(fd, 1)  # byte-wise: never read past the line the caller waits for
        if not ch:
            return None
        if ch == b"\n":
            return buf.decode(errors="replace").strip()
        buf += ch


def stop(proc: subprocess.Popen | None):
    """End proc if it still runs, and close its stdout pipe (a run makes thousands of
    processes: their pipes must not pile up in this one)."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)
    except ProcessLookupError:
        pass
    finally:
        if proc.stdout is not None:
            proc.stdout.close()


def last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return lines[-1][:200] if lines else ""
    except OSError:
        return ""


@dataclass
class Ctx:
    args: argparse.Namespace
    logdir: str
    pythons: dict[str, str] = field(default_factory=dict)
    counter: int = 0
    procs: list = field(default_factory=list)


def start_server(ctx: Ctx, loop: str, wl: Workload, addr: str):
    """Start the server, wait for READY; returns (proc, stderr path). Raises RunError."""
    ctx.counter += 1
    errpath = os.path.join(ctx.logdir, f"server-{ctx.counter}-{loop}-{wl.name}.err")
    if loop == "floor":
        if wl.floor is None:
            raise RunError("unsupported", "no floor server for this workload")
        cmd = [LOADGEN, "floor", "--mode", wl.floor, "--addr", addr]
        if wl.tls:
            cmd += [
                "--tls",
                "--cert",
                os.path.join(TLS_DIR, "cert.pem"),
                "--key",
                os.path.join(TLS_DIR, "key.pem"),
            ]
    else:
        cmd = [ctx.pythons[loop], SERVERS, "--loop", loop, "--workload", wl.server, "--addr", addr]
        if wl.tls:
            cmd += [
                "--cert",
                os.path.join(TLS_DIR, "cert.pem"),
                "--key",
                os.path.join(TLS_DIR, "key.pem"),
            ]
    with open(errpath, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            preexec_fn=pin(SERVER_CPU),
        )
    ctx.procs.append(proc)
    line = read_line(proc, 20.0)
    if line != "READY":
        stop(proc)
        why = last_line(errpath) or f"no READY (got {line!r})"
        raise RunError("unsupported", why)
    return proc, errpath


def start_client(ctx: Ctx, cmd: list[str], name: str):
    ctx.counter += 1
    errpath = os.path.join(ctx.logdir, f"client-{ctx.counter}-{name}.err")
    with open(errpath, "wb") as err:
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            preexec_fn=pin(CLIENT_CPU),
        )
    ctx.procs.append(proc)
    return proc, errpath


# --------------------------------------------------------------------------------------------
# one measurement


def server_address(ctx: Ctx, wl: Workload) -> str:
    """A free address for a server of `wl`: a Unix socket path, or a free TCP/UDP port."""
    if wl.on_unix_socket:
        return os.path.join(
            tempfile.gettempdir(), f"ferroloop-bench-{os.getpid()}-{ctx.counter}.sock"
        )
    if wl.client == "udp":
        return f"127.0.0.1:{free_udp_port()}"
    return f"127.0.0.1:{free_port()}"


def remove_address(wl: Workload, addr: str):
    if wl.on_unix_socket:
        try:
            os.unlink(addr)
        except OSError:
            pass


def measure(ctx: Ctx, loop: str, wl: Workload) -> dict:
    """One sample on a server process of its own, started for it and stopped after it."""
    addr = server_address(ctx, wl)
    server = None
    try:
        server, server_err = start_server(ctx, loop, wl, addr)
        if wl.client == "idle":
            return measure_idle(ctx, wl, server, server_err, addr)
        prime(ctx, wl, addr)
        return measure_window(ctx, loop, wl, server, server_err, addr)
    finally:
        stop(server)
        remove_address(wl, addr)


def client_command(wl: Workload, addr: str, warmup: float, duration: float) -> list[str]:
    """loadgen's client for `wl` against `addr`."""
    return [
        LOADGEN,
        "client",
        "--mode",
        wl.client,
        "--addr",
        addr,
        "--conns",
        str(wl.conns),
        "--size",
        str(wl.size),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    ] + (["--tls"] if wl.tls else [])


def prime(ctx: Ctx, wl: Workload, addr: str, seconds: float | None = None) -> None:
    """--prime: one client session, not measured, against a server that just started: its
    connections are made, used and closed once, as a running server's have been. Until a
    process frees a large `malloc` block whole, glibc serves every block of 128 KiB or more
    with `mmap` and gives it back at once (its threshold for that rises only then), so a
    loop that allocates `max_size` (256 KiB) for each read, as asyncio's `sock.recv(max_size)`
    and `SSLObject.read(max_size)` do, pays `mmap`, `mremap` and `munmap` on every read until
    its first connection closes: four times the CPU per request of its steady state.
    `seconds`: the session's length, --prime's by default."""
    a = ctx.args
    seconds = a.prime if seconds is None else seconds
    if seconds <= 0 or wl.client == "idle":
        return
    if wl.client == "http" and getattr(a, "http_client", "loadgen") == "wrk":
        cmd = ["wrk", f"-c{wl.conns}", "-t1", f"-d{max(1, round(seconds))}s", f"http://{addr}/"]
    else:
        cmd = client_command(wl, addr, 0.0, seconds)
    proc, errpath = start_client(ctx, cmd, f"prime-{wl.name}")
    try:
        proc.communicate(timeout=seconds + 120)
    except subprocess.TimeoutExpired:
        raise RunError("error", f"priming client did not finish: {last_line(errpath)}") from None
    finally:
        stop(proc)


def measure_window(ctx: Ctx, loop: str, wl: Workload, server, server_err: str, addr: str) -> dict:
    """One client window against a running server: its CPU time over the requests done."""
    a = ctx.args
    pid = server.pid
    if wl.client == "http" and a.http_client == "wrk":
        return measure_wrk(ctx, wl, server, addr)
    client = None
    try:
        cmd = client_command(wl, addr, a.warmup, a.duration)
        client, client_err = start_client(ctx, cmd, f"{loop}-{wl.name}")

        def fail(what: str):
            if server.poll() is not None:
                why = f"server died: {last_line(server_err)}"
            else:
                why = last_line(client_err) or last_line(server_err)
            raise RunError("error", f"{what}: {why}")

        line = read_line(client, a.warmup + 30)
        if line != "START":
            fail(f"no START ({line!r})")
        cpu0, sched0, threads0 = server_cpu(pid)
        (user0, sys0) = stat_times_ns(pid)
        ticks0 = (cpu_ticks(SERVER_CPU), cpu_ticks(CLIENT_CPU))
        t0 = time.perf_counter()
        line = read_line(client, a.duration + 30)
        cpu1, sched1, threads1 = server_cpu(pid)
        (user1, sys1) = stat_times_ns(pid)
        ticks1 = (cpu_ticks(SERVER_CPU), cpu_ticks(CLIENT_CPU))
        t1 = time.perf_counter()
        if not line or not line.startswith("END "):
            fail(f"no END ({line!r})")
        n = int(line.split()[1])
        if n <= 0:
            fail("no request completed")
        client.wait(timeout=10)
        return {
            "status": "ok",
            "value": (cpu1 - cpu0) / n / 1000.0,
            "unit": "us/req",
            "requests": n,
            "window_s": t1 - t0,
            "req_per_s": n / (t1 - t0),
            "server_cpu_ns": cpu1 - cpu0,
            "server_cpu_util": (cpu1 - cpu0) / 1e9 / (t1 - t0),
            "stat_cpu_ns": (user1 + sys1) - (user0 + sys0),
            # The user-space and kernel shares of that (tick resolution): where a loop's CPU
            # per request goes.
            "stat_user_ns": user1 - user0,
            "stat_sys_ns": sys1 - sys0,
            "schedstat_ns": sched1 - sched0,
            "threads": [threads0, threads1],
            "steal": [steal_share(ticks0[i], ticks1[i]) for i in (0, 1)],
            "client_note": last_line(client_err),
        }
    finally:
        stop(client)


def measure_wrk(ctx: Ctx, wl: Workload, server, addr: str) -> dict:
    a = ctx.args
    pid = server.pid
    url = f"http://{addr}/"

    def wrk(seconds: int):
        cmd = ["wrk", f"-c{wl.conns}", "-t1", f"-d{seconds}s", url]
        proc, errpath = start_client(ctx, cmd, f"wrk-{wl.name}")
        try:
            out, _ = proc.communicate(timeout=seconds + 30)
        finally:
            stop(proc)
        text = out.decode(errors="replace")
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "requests" and parts[2] == "in":
                return int(parts[0]), text
        raise RunError(
            "error", f"wrk: no request count: {text.strip()[-200:]} {last_line(errpath)}"
        )

    if a.warmup > 0:
        wrk(max(1, round(a.warmup)))
    cpu0, sched0, threads0 = server_cpu(pid)
    stat0 = stat_cpu_ns(pid)
    ticks0 = (cpu_ticks(SERVER_CPU), cpu_ticks(CLIENT_CPU))
    t0 = time.perf_counter()
    n, text = wrk(max(1, round(a.duration)))
    cpu1, sched1, threads1 = server_cpu(pid)
    stat1 = stat_cpu_ns(pid)
    ticks1 = (cpu_ticks(SERVER_CPU), cpu_ticks(CLIENT_CPU))
    t1 = time.perf_counter()
    if server.poll() is not None:
        raise RunError("error", "server died during wrk")
    errors = [ln.strip() for ln in text.splitlines() if "Socket errors" in ln or "Non-2xx" in ln]
    return {
        "status": "ok",
        "value": (cpu1 - cpu0) / n / 1000.0,
        "unit": "us/req",
        "requests": n,
        "window_s": t1 - t0,
        "req_per_s": n / (t1 - t0),
        "server_cpu_ns": cpu1 - cpu0,
        "server_cpu_util": (cpu1 - cpu0) / 1e9 / (t1 - t0),
        "stat_cpu_ns": stat1 - stat0,
        "schedstat_ns": sched1 - sched0,
        "threads": [threads0, threads1],
        "steal": [steal_share(ticks0[i], ticks1[i]) for i in (0, 1)],
        "client": "wrk",
        "client_note": "; ".join(errors),
    }


def measure_idle(ctx: Ctx, wl: Workload, server, server_err: str, addr: str) -> dict:
    pid = server.pid
    time.sleep(0.5)
    rss0 = rss_bytes(pid)
    cmd = [
        LOADGEN,
        "client",
        "--mode",
        "idle",
        "--addr",
        addr,
        "--conns",
        str(wl.conns),
        "--hold",
        "120",
    ]
    client, client_err = start_client(ctx, cmd, f"idle-{wl.name}")
    try:
        line = read_line(client, 90)
        if line != "READY":
            why = (
                f"server died: {last_line(server_err)}"
                if server.poll() is not None
                else last_line(client_err)
            )
            raise RunError("error", f"idle client: no READY ({line!r}): {why}")
        time.sleep(0.5)
        rss1 = rss_bytes(pid)
    finally:
        stop(client)
    return {
        "status": "ok",
        "value": (rss1 - rss0) / wl.conns,
        "unit": "bytes/conn",
        "rss_before": rss0,
        "rss_after": rss1,
        "conns": wl.conns,
    }


# --------------------------------------------------------------------------------------------
# setup


def build_loadgen():
    if os.path.exists(LOADGEN) and not os.environ.get("LOADGEN_REBUILD"):
        src = os.path.join(LOADGEN_DIR, "src")
        newest = max(os.path.getmtime(os.path.join(src, f)) for f in os.listdir(src))
        newest = max(newest, os.path.getmtime(os.path.join(LOADGEN_DIR, "Cargo.toml")))
        if os.path.getmtime(LOADGEN) >= newest:
            return
    print("building loadgen (cargo build --release) ...", file=sys.stderr, flush=True)
    subprocess.run(
        ["cargo", "build", "--release", "--quiet"], cwd=LOADGEN_DIR, check=True, timeout=1800
    )


def ensure_cert():
    cert, key = os.path.join(TLS_DIR, "cert.pem"), os.path.join(TLS_DIR, "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        return
    os.makedirs(TLS_DIR, exist_ok=True)
    if not shutil.which("openssl"):
        raise RunError("unsupported", "no openssl CLI to make a self-signed certificate")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "3650",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        timeout=60,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def importable(python: str, module: str) -> tuple[bool, str]:
    if module == "asyncio":
        return True, ""
    try:
        r = subprocess.run(
            [python, "-c", f"import {module}; print({module}.__name__)"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, str(e)
    if r.returncode == 0:
        return True, ""
    return False, (r.stderr.strip().splitlines() or ["import failed"])[-1]


def python_version(python: str) -> str | None:
    try:
        r = subprocess.run(
            [python, "-c", "import platform; print(platform.python_version())"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.strip() or None


def loop_versions(ctx: Ctx, loops: list[str]) -> dict[str, str]:
    """The installed version of each loop package, for the chart's caption."""
    out = {}
    for loop in loops:
        if loop in ("asyncio", "floor"):
            continue
        try:
            code = f"import importlib.metadata as m; print(m.version({loop!r}))"
            r = subprocess.run(
                [ctx.pythons[loop], "-c", code], capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0 and r.stdout.strip():
            out[loop] = r.stdout.strip()
    return out


# --------------------------------------------------------------------------------------------
# report


def fmt_cell(samples: list[dict]) -> tuple[str, float | None]:
    ok = [s["value"] for s in samples if s["status"] == "ok"]
    if ok:
        med = statistics.median(ok)
        text = (
            f"{med:.0f}" if samples[0].get("unit") == "bytes/conn" or med >= 1000 else f"{med:.2f}"
        )
        # '*': a sample in this cell was taken while the host stole more than --max-steal
        return text + ("*" if any(s.get("noisy") for s in samples) else ""), med
    if not samples:
        return "-", None
    return samples[-1]["status"], None


def round_ratios(
    results: list[dict], workload: str, against: tuple[str, ...] = PEERS
) -> list[float]:
    """ferroloop's cell over the best of `against` (the peers, or the floor), within each
    round: the samples of one round run one after the other, so a host that is slower in one
    round than in another (the cells of every loop move together, by up to a fifth here) moves
    both sides of the ratio."""
    ratios = []
    for rnd in sorted({r["round"] for r in results if r["workload"] == workload}):
        ok = {
            r["loop"]: r["value"]
            for r in results
            if r["workload"] == workload and r["round"] == rnd and r["status"] == "ok"
        }
        others = [ok[p] for p in against if p in ok]
        if "ferroloop" in ok and others and min(others) > 0:
            ratios.append(ok["ferroloop"] / min(others))
    return ratios


def fmt_ratios(ratios: list[float]) -> str:
    """'median% [lowest..highest]' of ratios, as differences from 1."""
    if not ratios:
        return "-"
    return (
        f"{(statistics.median(ratios) - 1) * 100:+.0f}% "
        f"[{(min(ratios) - 1) * 100:+.0f}..{(max(ratios) - 1) * 100:+.0f}]"
    )


def report(results: list[dict], loops: list[str], workloads: list[Workload]) -> str:
    header = ["workload"] + loops + ["best peer", "ferroloop vs best peer", "per round"]
    with_floor = "floor" in loops and "ferroloop" in loops
    if with_floor:
        header.append("vs floor, per round")
    rows = []
    notes = {}
    for wl in workloads:
        row = [wl.name + (" (B/conn)" if wl.client == "idle" else "")]
        meds = {}
        for loop in loops:
            samples = [r for r in results if r["workload"] == wl.name and r["loop"] == loop]
            text, med = fmt_cell(samples)
            meds[loop] = med
            row.append(text)
            bad = [s for s in samples if s["status"] != "ok"]
            if bad:
                notes[(wl.name, loop)] = f"{bad[-1]['status']}: {bad[-1].get('note', '')}"
        peers = [(meds[p], p) for p in PEERS if meds.get(p) is not None]
        if peers:
            best, who = min(peers)
            row.append(
                f"{best:.0f} ({who})"
                if wl.client == "idle" or best >= 1000
                else f"{best:.2f} ({who})"
            )
            fl = meds.get("ferroloop")
            row.append(f"{(fl / best - 1) * 100:+.0f}%" if fl is not None and best > 0 else "-")
            row.append(fmt_ratios(round_ratios(results, wl.name)))
        else:
            row += ["-", "-", "-"]
        if with_floor:
            row.append(fmt_ratios(round_ratios(results, wl.name, ("floor",))))
        rows.append(row)
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = [
        "  ".join(
            h.ljust(widths[i]) if i == 0 else h.rjust(widths[i]) for i, h in enumerate(header)
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append(
            "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        )
    lines.append("")
    lines.append(
        "cells: median server CPU us per request (idle_rss: server RSS bytes per idle connection);"
    )
    lines.append(
        "'ferroloop vs best peer': + = ferroloop uses more CPU (or memory) than the best of "
        "uvloop/rloop/rsloop."
    )
    lines.append(
        "'per round': the median over rounds of ferroloop / the round's best peer, "
        "[lowest..highest round]."
    )
    if with_floor:
        lines.append("'vs floor, per round': the same with the round's floor sample.")
    steals = [max(r["steal"]) for r in results if r.get("status") == "ok" and "steal" in r]
    if steals:
        noisy = sum(1 for r in results if r.get("noisy"))
        retried = sum(1 for r in results if r.get("attempts", 1) > 1)
        lines.append(
            f"host steal per kept sample (the larger of the two CPUs'): median "
            f"{statistics.median(steals) * 100:.1f}%, max {max(steals) * 100:.1f}%; "
            f"{retried} sample(s) measured again, {noisy} still over the limit (marked *)."
        )
    for (w, lp), n in notes.items():
        lines.append(f"  {w} / {lp}: {n}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--loops", default=",".join(ALL_LOOPS))
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=3.0, help="measured seconds per sample")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per sample")
    ap.add_argument("--json", default=os.path.join(HERE, "results", "latest.json"))
    ap.add_argument("--python", default=sys.executable, help="interpreter for the Python servers")
    default_rs = (
        "/tmp/rsvenv/bin/python" if os.path.exists("/tmp/rsvenv/bin/python") else sys.executable
    )
    ap.add_argument("--rsloop-python", default=default_rs, help="interpreter for the rsloop server")
    ap.add_argument(
        "--http-client",
        choices=("wrk", "loadgen"),
        default="wrk" if shutil.which("wrk") else "loadgen",
    )
    ap.add_argument(
        "--max-steal",
        type=float,
        default=0.03,
        help="measure a sample again while the host steals more than this share of either "
        "CPU's time during it (a VM's steal counts as the server's CPU time)",
    )
    ap.add_argument("--steal-retries", type=int, default=4, help="at most this many times")
    ap.add_argument(
        "--steal-wait",
        type=float,
        default=60.0,
        help="before each retry, wait (at most this many seconds) for a 2-second look at "
        "both CPUs to show steal under the limit",
    )
    ap.add_argument(
        "--prime",
        type=float,
        default=0.3,
        help="seconds of an unmeasured client session against each new server before its "
        "first sample (0: none); see prime()",
    )
    ap.add_argument(
        "--keep-servers",
        action="store_true",
        help="start each loop's server once per workload and alternate the client windows "
        "between them, round after round (use short windows and many rounds: --rounds 8 "
        "--duration 0.5 --warmup 0.2); the default is a fresh server per sample",
    )
    ap.add_argument("--list", action="store_true", help="list the workloads")
    ap.add_argument(
        "--plot",
        metavar="FILE.svg",
        default=None,
        help="draw every loop's server CPU per request relative to uvloop's "
        "(needs matplotlib; see benchmarks/plot.py)",
    )
    ap.add_argument(
        "--from",
        dest="from_json",
        metavar="JSON",
        default=None,
        help="with --plot: draw this saved result instead of running",
    )
    ap.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help="with --plot: caption facts an older JSON lacks (cpu, python, date, commit)",
    )
    a = ap.parse_args()

    if (a.from_json or a.meta) and not a.plot:
        ap.error("--from and --meta go with --plot")
    if a.from_json:
        try:
            chart = plot.plot_file(a.from_json, a.plot, plot.parse_meta(a.meta))
        except (OSError, ValueError) as e:
            ap.error(str(e))
        print(f"chart: {a.plot} ({len(chart.workloads)} workloads)")
        return

    if a.list:
        for w in WORKLOADS:
            print(f"{w.name:16} {w.what}")
        return
    loops = [x for x in a.loops.split(",") if x]
    for x in loops:
        if x not in ALL_LOOPS:
            ap.error(f"unknown loop {x!r}")
    workloads = []
    for x in a.workloads.split(","):
        if x not in BY_NAME:
            ap.error(f"unknown workload {x!r} (--list)")
        workloads.append(BY_NAME[x])

    # the driver itself stays off the server's CPU
    os.sched_setaffinity(0, {CLIENT_CPU})
    if len(os.sched_getaffinity(0)) < 1 or os.cpu_count() < 2:
        sys.exit("needs 2 CPUs")
    # make finally blocks run on SIGTERM too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    build_loadgen()
    ctx = Ctx(args=a, logdir=tempfile.mkdtemp(prefix="ferroloop-server-bench-"))
    ctx.pythons = {loop: a.python for loop in PY_LOOPS}
    ctx.pythons["rsloop"] = a.rsloop_python

    missing = {}
    for loop in loops:
        if loop == "floor":
            continue
        ok, why = importable(ctx.pythons[loop], loop)
        if not ok:
            missing[loop] = f"not importable with {ctx.pythons[loop]}: {why}"
    if any(w.server == "http" for w in workloads):
        ok, why = importable(a.python, "httptools")
        if not ok:
            print(
                f"warning: httptools missing ({why}): the http workload will fail", file=sys.stderr
            )
    tls_problem = None
    if any(w.tls for w in workloads):
        try:
            ensure_cert()
        except (RunError, subprocess.SubprocessError, OSError) as e:
            tls_problem = str(e)

    print(
        f"loops: {', '.join(loops)}; rounds {a.rounds}, warm-up {a.warmup} s, "
        f"measured {a.duration} s; http client: {a.http_client}; logs: {ctx.logdir}",
        flush=True,
    )
    for loop, why in missing.items():
        print(f"  {loop}: missing ({why})", flush=True)

    meta = plot.run_meta(REPO, python_version(a.python))
    meta["versions"] = loop_versions(ctx, [x for x in loops if x not in missing])
    results = []

    def sample(rnd: int, wl: Workload, loop: str, window=None) -> None:
        """Run one sample (on a kept server with `window`), keep it, show it."""
        rec = {
            "round": rnd,
            "workload": wl.name,
            "loop": loop,
            "server": wl.server,
            "client": wl.client,
            "conns": wl.conns,
            "size": wl.size,
            "duration": a.duration,
            "warmup": a.warmup,
            "kept_server": bool(a.keep_servers),
        }
        if loop in missing:
            rec.update(status="missing", note=missing[loop])
        elif wl.tls and tls_problem:
            rec.update(status="unsupported", note=tls_problem)
        else:
            rec.update(run_one(ctx, loop, wl, window))
        results.append(rec)
        print(progress_line(rec, rnd, a.rounds), flush=True)

    try:
        if a.keep_servers:
            for wl in workloads:
                if wl.client == "idle":  # a fresh process's RSS: never a kept server
                    for rnd in range(a.rounds):
                        for loop in rotated(loops, rnd):
                            sample(rnd, wl, loop)
                    continue
                with KeptServers(ctx, wl, [x for x in loops if x not in missing]) as kept:
                    for rnd in range(a.rounds):
                        for loop in rotated(loops, rnd):
                            sample(rnd, wl, loop, kept.window)
        else:
            for rnd in range(a.rounds):
                for wl in workloads:
                    for loop in rotated(loops, rnd):
                        sample(rnd, wl, loop)
    finally:
        for p in ctx.procs:
            stop(p)
        if a.json:
            os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
            with open(a.json, "w") as f:
                json.dump({"args": vars(a), "meta": meta, "samples": results}, f, indent=1)
    print()
    print(report(results, loops, workloads))
    if a.json:
        print(f"\nsamples: {a.json}")
    if a.plot:
        data = {"args": vars(a), "meta": meta, "samples": results}
        plot.render(plot.chart_from(data, plot.parse_meta(a.meta)), a.plot)
        print(f"chart: {a.plot}")


def rotated(loops: list[str], rnd: int) -> list[str]:
    """The loops in round `rnd`'s order: the list rotated by one more place each round."""
    k = rnd % len(loops)
    return loops[k:] + loops[:k]


def progress_line(rec: dict, rnd: int, rounds: int) -> str:
    val = (
        f"{rec['value']:.2f} {rec['unit']}"
        if rec["status"] == "ok"
        else f"{rec['status']}: {rec.get('note', '')}"
    )
    extra = ""
    if "req_per_s" in rec:
        cpu = rec["server_cpu_util"] * 100
        extra = f"  ({rec['req_per_s']:.0f} req/s, server CPU {cpu:.0f}%"
        if "steal" in rec:
            st = "/".join(f"{x * 100:.0f}" for x in rec["steal"])
            extra += f", steal {st}%"
        if rec.get("attempts", 1) > 1:
            extra += f", attempt {rec['attempts']}"
        extra += ", NOISY)" if rec.get("noisy") else ")"
    return f"[round {rnd + 1}/{rounds}] {rec['workload']:15} {rec['loop']:10} {val}{extra}"


class KeptServers:
    """--keep-servers: one server per loop for a workload, started together and kept up while
    every round's client windows run against them in turn. The samples compared within a
    round are then a few seconds apart, with no process start between them; an idle server
    waits in its poll and costs the others nothing. A server that died is started again before
    its next window."""

    def __init__(self, ctx: Ctx, wl: Workload, loops: list[str]):
        self.ctx, self.wl, self.loops = ctx, wl, loops
        self.servers: dict[str, tuple] = {}  # loop -> (proc, stderr path, address)
        self.failed: dict[str, RunError] = {}

    def __enter__(self) -> KeptServers:
        for loop in self.loops:
            self.start(loop)
        return self

    def __exit__(self, *exc) -> None:
        for loop in list(self.servers):
            self.discard(loop)

    def start(self, loop: str) -> None:
        addr = server_address(self.ctx, self.wl)
        try:
            proc, err = start_server(self.ctx, loop, self.wl, addr)
            try:
                prime(self.ctx, self.wl, addr)
            except RunError:
                stop(proc)
                raise
        except RunError as e:
            remove_address(self.wl, addr)
            self.failed[loop] = e
            return
        self.failed.pop(loop, None)
        self.servers[loop] = (proc, err, addr)

    def discard(self, loop: str) -> None:
        proc, _, addr = self.servers.pop(loop)
        stop(proc)
        remove_address(self.wl, addr)

    def window(self, loop: str) -> dict:
        if loop in self.servers and self.servers[loop][0].poll() is not None:
            self.discard(loop)
            self.start(loop)
        if loop not in self.servers:
            e = self.failed.get(loop) or RunError("error", "server not started")
            return {"status": e.status, "note": e.note}
        proc, err, addr = self.servers[loop]
        try:
            return measure_window(self.ctx, loop, self.wl, proc, err, addr)
        except RunError as e:
            return {"status": e.status, "note": e.note}
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            return {"status": "error", "note": f"{type(e).__name__}: {e}"}


def run_one(ctx: Ctx, loop: str, wl: Workload, window=None) -> dict:
    """One sample, measured again (up to --steal-retries times) while the host steals more
    than --max-steal of either CPU's time; the sample kept is the least stolen one, and it
    says how many attempts it took. `window(loop)` measures it on a kept server; without it,
    each attempt starts a server of its own."""
    a = ctx.args
    best = None
    for attempt in range(a.steal_retries + 1):
        if attempt:
            wait_for_quiet_host(a.max_steal, a.steal_wait)
        rec = window(loop) if window is not None else measure_once(ctx, loop, wl)
        stolen = max(rec.get("steal", [0.0]))
        if best is None or (rec["status"] == "ok" and stolen < max(best.get("steal", [0.0]))):
            best = rec
        if rec["status"] != "ok" or stolen <= a.max_steal:
            break
    best["attempts"] = attempt + 1
    best["noisy"] = best["status"] == "ok" and max(best.get("steal", [0.0])) > a.max_steal
    return best


def wait_for_quiet_host(limit: float, at_most: float, window: float = 2.0):
    """Return once both CPUs' steal over a `window`-second look is at most `limit`, or after
    `at_most` seconds."""
    deadline = time.monotonic() + at_most
    while True:
        before = [cpu_ticks(c) for c in (SERVER_CPU, CLIENT_CPU)]
        time.sleep(window)
        after = [cpu_ticks(c) for c in (SERVER_CPU, CLIENT_CPU)]
        stolen = max(steal_share(b, e) for b, e in zip(before, after, strict=True))
        if stolen <= limit or time.monotonic() >= deadline:
            return


def measure_once(ctx: Ctx, loop: str, wl: Workload) -> dict:
    for attempt in range(2):
        try:
            return measure(ctx, loop, wl)
        except RunError as e:
            if attempt == 0 and loop != "floor":
                ok, _ = importable(ctx.pythons[loop], loop)
                if not ok:  # e.g. the package is being reinstalled right now: wait once and retry
                    time.sleep(30)
                    continue
            return {"status": e.status, "note": e.note}
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            return {"status": "error", "note": f"{type(e).__name__}: {e}"}
    return {"status": "missing", "note": "not importable (after waiting 30 s)"}


if __name__ == "__main__":
    main()
