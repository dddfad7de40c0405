"""Ctrl-C: the same script on asyncio and on ferroloop ends the same way."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PRELUDE = """
import asyncio, sys
import ferroloop
USE_FERRO = sys.argv[1] == "ferroloop"
if USE_FERRO:
    new_loop = ferroloop.new_event_loop
else:
    new_loop = asyncio.DefaultEventLoopPolicy().new_event_loop

async def main():
    try:
        print("ready", flush=True)
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        print("main cancelled", flush=True)
        raise
    finally:
        print("main finally", flush=True)
"""

SCENARIOS = {
    "run": """
if USE_FERRO:
    ferroloop.run(main())
else:
    asyncio.run(main())
""",
    "runner": """
with asyncio.Runner(loop_factory=new_loop) as runner:
    runner.run(main())
""",
    "run_until_complete": """
loop = new_loop()
try:
    loop.run_until_complete(main())
finally:
    print("closing", flush=True)
    loop.close()
""",
    "busy_callbacks": """
loop = new_loop()
def spin():
    loop.call_soon(spin)
def start():
    print("ready", flush=True)
    spin()
loop.call_soon(start)
try:
    loop.run_forever()
finally:
    print("closing", flush=True)
    loop.close()
""",
    "run_forever_timers": """
loop = new_loop()
def tick():
    loop.call_later(0.001, tick)
def start():
    print("ready", flush=True)
    tick()
loop.call_soon(start)
try:
    loop.run_forever()
except KeyboardInterrupt:
    print("caught KeyboardInterrupt", flush=True)
    loop.call_soon(loop.stop)
    loop.run_forever()
    print("loop reusable", flush=True)
loop.close()
""",
    "handled_in_runner": """
try:
    with asyncio.Runner(loop_factory=new_loop) as runner:
        runner.run(main())
except KeyboardInterrupt:
    print("outer KeyboardInterrupt", flush=True)
sys.exit(3)
""",
}


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_and_interrupt(scenario, loop_name, park=True):
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(SCENARIOS[scenario])
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    p = subprocess.Popen(
        [sys.executable, "-c", code, loop_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd="/tmp",
        # A pytest started in the background by a non-interactive shell has SIGINT ignored,
        # and children inherit SIG_IGN (Python then installs no KeyboardInterrupt handler):
        # give the child the default disposition, as from a terminal.
        preexec_fn=_default_sigint,
    )
    try:
        first = p.stdout.readline()
        assert first == "ready\n", (first, p.stderr.read() if p.poll() is not None else "")
        if park:
            time.sleep(0.3)  # let the child park in its poll (no assertion on timing)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    except BaseException:
        p.kill()
        p.communicate()
        raise
    err_lines = [line for line in err.splitlines() if line.strip()]
    return p.returncode, first + out, err_lines[-1] if err_lines else ""


needs_runner = pytest.mark.skipif(not hasattr(asyncio, "Runner"), reason="asyncio.Runner is 3.11+")
RUNNER_SCENARIOS = {"runner", "handled_in_runner"}


@pytest.mark.parametrize(
    "scenario",
    [pytest.param(s, marks=needs_runner) if s in RUNNER_SCENARIOS else s for s in SCENARIOS],
)
def test_sigint_same_as_asyncio(scenario):
    expected = run_and_interrupt(scenario, "asyncio")
    got = run_and_interrupt(scenario, "ferroloop")
    assert got == expected


@needs_runner
def test_sigint_runner_cancels_main_first():
    rc, out, last = run_and_interrupt("runner", "asyncio")
    assert out == "ready\nmain cancelled\nmain finally\n"
    assert last == "KeyboardInterrupt"
    assert rc == -signal.SIGINT
    rc, out, last = run_and_interrupt("runner", "ferroloop")
    assert out == "ready\nmain cancelled\nmain finally\n"
    assert last == "KeyboardInterrupt"
    assert rc == -signal.SIGINT
