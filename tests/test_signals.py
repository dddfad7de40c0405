import asyncio
import json
import os
import signal
import subprocess
import threading

import pytest

from conftest import asyncio_loop, run_python


def test_add_signal_handler(loop):
    got = []

    def handler(arg):
        got.append((arg, threading.get_ident()))
        loop.stop()

    loop.add_signal_handler(signal.SIGUSR1, handler, "x")
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(10, loop.stop)
        loop.run_forever()
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert got == [("x", threading.get_ident())]


def test_signal_wakes_parked_loop(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR2, lambda: (got.append(1), loop.stop()))
    t = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR2))
    try:
        loop.call_later(20, loop.stop)
        t.start()
        loop.run_forever()
    finally:
        t.join()
        loop.remove_signal_handler(signal.SIGUSR2)
    assert got == [1]


def test_remove_signal_handler_not_set(loop):
    assert loop.remove_signal_handler(signal.SIGUSR1) is False


def _outcome(func):
    try:
        func()
    except BaseException as e:  # noqa: BLE001
        return type(e), str(e)
    return None


@pytest.mark.parametrize("sig", [0, -1, 1000, signal.SIGKILL, "x"])
def test_add_signal_handler_errors_same_as_asyncio(loop, sig):
    ref = asyncio_loop()
    try:
        expected = _outcome(lambda: ref.add_signal_handler(sig, print))
    finally:
        ref.close()
    got = _outcome(lambda: loop.add_signal_handler(sig, print))
    assert got == expected
    assert expected is not None


def test_add_signal_handler_coroutine_rejected(loop):
    async def coro():
        pass

    with pytest.raises(TypeError, match="coroutines cannot be used with add_signal_handler"):
        loop.add_signal_handler(signal.SIGUSR1, coro)


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, print)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_replaced(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, "old")
    loop.add_signal_handler(signal.SIGUSR1, lambda: (got.append("new"), loop.stop()))
    try:
        loop.call_soon(os.kill, os.getpid(), signal.SIGUSR1)
        loop.call_later(10, loop.stop)
        loop.run_forever()
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
    assert got == ["new"]


def test_add_signal_handler_not_main_thread(loop):
    err = []

    def worker():
        lp = type(loop)() if not isinstance(loop, asyncio.AbstractEventLoop) else None
        del lp
        try:
            loop.add_signal_handler(signal.SIGUSR1, print)
        except (RuntimeError, ValueError) as e:
            err.append((type(e), str(e)))

    ref_err = []

    def ref_worker():
        ref = asyncio_loop()
        try:
            ref.add_signal_handler(signal.SIGUSR1, print)
        except (RuntimeError, ValueError) as e:
            ref_err.append((type(e), str(e)))
        finally:
            ref.close()

    for target in (worker, ref_worker):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    assert err == ref_err
    assert err


# The storm runs in a child interpreter: with asyncio's setting of the wakeup fd, CPython's
# signal handler reports a full fd through Py_AddPendingCall, which is not async-signal-safe; a
# signal that lands while the interpreter pops a pending call deadlocks the process, and a
# deadlocked pytest would never report.
STORM_SCRIPT = r'''
import asyncio, hashlib, json, os, signal, socket, subprocess, sys, time
import ferroloop

SIZE, BOUND = int(sys.argv[2]), float(sys.argv[3])
# "default": the self-pipe keeps the buffer a user gets (benchmarks/signal_storm.py measures
# both); else the smallest one (below).
WAKEUP_BUFFER = sys.argv[4] if len(sys.argv) > 4 else "min"
# Signals per second, or "max": as fast as the sender can (benchmarks/signal_storm.py).
RATE = sys.argv[5] if len(sys.argv) > 5 else "max"
# Sends SIGUSR1 to its parent in bursts of 100 (at most RATE a second), until its deadline or
# the parent is gone.
SENDER = """
import os, signal, sys, time
pid, kill, sig = int(sys.argv[1]), os.kill, signal.SIGUSR1
deadline = time.monotonic() + float(sys.argv[2])
pause = 0 if sys.argv[3] == "max" else 100 / float(sys.argv[3])
try:
    while time.monotonic() < deadline:
        for _ in range(100):
            kill(pid, sig)
        if pause:
            time.sleep(pause)
except ProcessLookupError:
    pass
"""


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


if sys.argv[1] == "ferroloop":
    loop = ferroloop.new_event_loop()
elif sys.argv[1] == "uvloop":  # benchmarks/signal_storm.py compares with it
    import uvloop

    loop = uvloop.new_event_loop()
else:
    loop = asyncio.DefaultEventLoopPolicy().new_event_loop()
calls = []
chunk = os.urandom(64 << 10)
sent = hashlib.sha256()
for _ in range(SIZE // len(chunk)):
    sent.update(chunk)


async def echo():
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())

    async def send():
        for _ in range(SIZE // len(chunk)):
            writer.write(chunk)
            await writer.drain()

    async def receive():
        received = hashlib.sha256()
        count = 0
        while count < SIZE:
            data = await reader.read(1 << 20)
            if not data:
                break
            received.update(data)
            count += len(data)
        return count, received.hexdigest()

    try:
        while not calls:  # the storm is on before the echo starts
            await asyncio.sleep(0.001)
        started = time.monotonic()
        try:
            _, (count, digest) = await asyncio.wait_for(asyncio.gather(send(), receive()), BOUND)
        except asyncio.TimeoutError:
            count = digest = None
        return count, digest == sent.hexdigest(), time.monotonic() - started
    finally:
        writer.close()
        server.close()


loop.add_signal_handler(signal.SIGUSR1, calls.append, None)
# The smallest send buffer the kernel allows (a few one-byte writes): the storm fills the
# wakeup fd at the rate a small shared machine delivers signals, as it fills the default one
# on a machine where the sender has a CPU of its own.
# (uvloop's self-pipe is not reachable from Python: it keeps its default buffer.)
if WAKEUP_BUFFER == "min" and hasattr(loop, "_csock"):
    loop._csock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
# The sender on a CPU of its own, where there are two: a sender that shares the loop's CPU
# only runs while the loop does not, and interrupts it a few times per time slice.
cpus = sorted(os.sched_getaffinity(0))
pin_sender = None
if len(cpus) > 1:
    os.sched_setaffinity(0, cpus[:1])

    def pin_sender():
        os.sched_setaffinity(0, cpus[1:])


# The sender outlives the bound by a little: a loop stuck for as long as signals arrive still
# gets to report its timeout.
sender = subprocess.Popen(
    [sys.executable, "-c", SENDER, str(os.getpid()), str(BOUND + 5), RATE], preexec_fn=pin_sender
)
try:
    count, same, elapsed = loop.run_until_complete(echo())
finally:
    sender.kill()
    sender.wait()
    loop.remove_signal_handler(signal.SIGUSR1)
    loop.close()
# Threads of the process (uvloop's resolver threads take most of the signals: docs/faults.md).
threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
print(json.dumps({"count": count, "same": same, "elapsed": elapsed, "calls": len(calls),
                  "threads": threads}))
'''

STORM_BYTES = 32 << 20
# Signals a second from the sender: 100,000 fill the smallest wakeup buffer within a fraction
# of every loop iteration. A sender with no limit measures the kernel instead: on a quiet
# machine, where it has a CPU to itself, the loop's thread then spends nearly all its time taking
# signals and 8 MiB took 3-30 s on ferroloop (docs/faults.md, "Signal storm";
# benchmarks/signal_storm.py runs it that way). At this rate the 32 MiB take 0.15 s on ferroloop
# and 1.4-1.9 s on asyncio's loop (thousands of wakeup-fd reports); 0.13 s without signals.
# The bound catches a loop that stops serving I/O, not a slow one. asyncio's own loop can
# deadlock in CPython's signal handler when its wakeup fd is full: a hang there is an xfail.
STORM_RATE = 100_000
STORM_BOUND = {"ferroloop": 30.0, "asyncio": 15.0}


@pytest.mark.timeout(max(STORM_BOUND.values()) + 90)
def test_signal_storm_does_not_starve_io(loop_name):
    """Another process sends SIGUSR1 at 100,000 a second while 32 MiB go through a Protocol echo
    server (a fraction of a second without the storm): every byte comes back, the handler runs,
    and the echo ends well within the bound. On ferroloop, a full wakeup fd is not reported
    ("Exception ignored when trying to write to the signal wakeup fd", once per signal)."""
    try:
        result = run_python(
            STORM_SCRIPT,
            loop_name,
            str(STORM_BYTES),
            str(STORM_BOUND[loop_name]),
            "min",
            str(STORM_RATE),
            timeout=STORM_BOUND[loop_name] + 30,
        )
    except subprocess.TimeoutExpired:
        if loop_name == "asyncio":
            pytest.xfail(
                "asyncio's loop hung (CPython's signal handler deadlocks on a full wakeup fd)"
            )
        pytest.fail(f"the storm did not end within {STORM_BOUND[loop_name] + 30} s: the loop hung")
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout)
    if loop_name == "asyncio" and outcome["count"] is None:
        pytest.xfail("asyncio's loop starved for the whole bound")
    assert outcome["count"] == STORM_BYTES, outcome
    assert outcome["same"], outcome
    assert outcome["calls"] > 0, outcome
    assert outcome["elapsed"] < STORM_BOUND[loop_name], outcome
    if loop_name == "ferroloop":
        assert "signal wakeup fd" not in result.stderr, result.stderr[-3000:]
