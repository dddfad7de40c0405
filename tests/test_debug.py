import asyncio
import gc
import logging
import os
import sys
import threading
import time
import warnings

import pytest

import ferroloop

from conftest import run_python


@pytest.mark.nodebug
def test_set_debug(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


@pytest.mark.parametrize(
    "runner",
    [
        pytest.param(
            "asyncio.run",
            marks=pytest.mark.skipif(
                not hasattr(asyncio, "Runner"), reason="asyncio.Runner is 3.11+"
            ),
        ),
        "ferroloop.run",
    ],
)
def test_run_debug_true(loop_name, runner):
    import ferroloop

    from conftest import FACTORIES

    async def main():
        return asyncio.get_running_loop().get_debug(), type(asyncio.get_running_loop()).__name__

    if runner == "asyncio.run":
        with asyncio.Runner(debug=True, loop_factory=FACTORIES[loop_name]) as r:
            dbg, _ = r.run(main())
    else:
        dbg, name = ferroloop.run(main(), debug=True)
        assert name == "Loop"
    assert dbg is True


SCRIPT_DEBUG_FLAG = """
import asyncio, sys
if sys.argv[1] == "ferroloop":
    import ferroloop
    lp = ferroloop.new_event_loop()
else:
    lp = asyncio.DefaultEventLoopPolicy().new_event_loop()
print(lp.get_debug())
lp.close()
"""


@pytest.mark.parametrize(
    "how",
    ["PYTHONASYNCIODEBUG", "-X dev"],
)
def test_debug_from_environment(loop_name, how):
    if how == "PYTHONASYNCIODEBUG":
        p = run_python(SCRIPT_DEBUG_FLAG, loop_name, env={"PYTHONASYNCIODEBUG": "1"})
    else:
        p = run_python(SCRIPT_DEBUG_FLAG, loop_name, xargs=("-X", "dev"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "True"


def test_debug_default_off_subprocess(loop_name):
    p = run_python(SCRIPT_DEBUG_FLAG, loop_name)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


def test_slow_callback_warning(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    async def slow():
        time.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_until_complete(slow())
    msgs = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and not hasattr(r, "watchdog_kind")
    ]
    slow_msgs = [m for m in msgs if m.startswith("Executing <Task")]
    assert len(slow_msgs) == 1, msgs
    import re

    assert re.match(r"Executing <Task .*slow\(\).*> took \d+\.\d{3} seconds$", slow_msgs[0])


def test_slow_callback_warning_plain_handle(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.01

    def slow_cb():
        time.sleep(0.05)

    loop.call_soon(slow_cb)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    # asyncio's own records; ferroloop's debug mode also switches its blocking watchdog on
    # (issue #4), whose records carry `watchdog_kind`.
    msgs = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and not hasattr(r, "watchdog_kind")
    ]
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith("Executing <Handle ")
    assert "slow_cb()" in msgs[0]
    assert msgs[0].endswith(" seconds")


@pytest.mark.nodebug
def test_no_slow_warning_without_debug(loop, caplog):
    loop.slow_callback_duration = 0.001
    loop.call_soon(time.sleep, 0.01)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.run_forever()
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_current_handle_in_debug(loop):
    loop.set_debug(True)
    seen = []
    h = loop.call_soon(lambda: seen.append(loop._current_handle))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [h]
    assert loop._current_handle is None


@pytest.mark.parametrize("method", ["call_soon", "call_later", "call_at"])
def test_thread_check_in_debug(loop, method):
    loop.set_debug(True)
    errors = []

    async def main():
        def other():
            try:
                if method == "call_soon":
                    loop.call_soon(print)
                elif method == "call_later":
                    loop.call_later(1, print)
                else:
                    loop.call_at(1, print)
            except RuntimeError as e:
                errors.append(str(e))

        t = threading.Thread(target=other)
        t.start()
        t.join()

    loop.run_until_complete(main())
    assert len(errors) == 1
    assert errors[0].startswith(
        "Non-thread-safe operation invoked on an event loop other than the current one"
    )


def test_no_thread_check_without_debug_when_not_running(loop):
    # a loop that is not running accepts call_soon from any thread even in debug mode
    loop.set_debug(True)
    out = []
    t = threading.Thread(target=lambda: loop.call_soon(out.append, 1))
    t.start()
    t.join()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [1]


def test_source_traceback(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    line = sys._getframe().f_lineno - 1  # the line above
    tb = h._source_traceback
    assert tb, tb
    last = tb[-1]
    assert last.filename == __file__
    assert last.lineno == line
    assert last.name == "test_source_traceback"
    t = loop.call_later(10, print)
    line2 = sys._getframe().f_lineno - 1  # the line above
    assert t._source_traceback[-1].lineno == line2
    t.cancel()
    h.cancel()


@pytest.mark.nodebug
def test_no_source_traceback_without_debug(loop):
    h = loop.call_soon(print)
    assert h._source_traceback is None
    h.cancel()


def test_handle_repr_debug_includes_location(loop):
    loop.set_debug(True)
    h = loop.call_soon(print)
    line = sys._getframe().f_lineno - 1  # the line above
    assert repr(h).endswith(f"created at {__file__}:{line}>")
    h.cancel()


@pytest.mark.expect_errors
def test_callback_error_has_source_traceback(loop, loop_errors):
    loop.set_debug(True)

    def bad():
        raise ValueError("x")

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert len(loop_errors) == 1
    ctx = loop_errors[0]
    assert set(ctx) == {"message", "exception", "handle", "source_traceback"}
    assert ctx["source_traceback"][-1].name == "test_callback_error_has_source_traceback"


NEVER_AWAITED = """
import asyncio, sys, gc
if sys.argv[1] == "ferroloop":
    import ferroloop
    run = ferroloop.run
else:
    run = asyncio.run
async def coro():
    pass
async def main():
    coro()
    gc.collect()
run(main(), debug=True)
"""


def test_coroutine_never_awaited_origin(loop_name):
    p = run_python(NEVER_AWAITED, loop_name)
    assert p.returncode == 0, p.stderr
    assert "RuntimeWarning: coroutine 'coro' was never awaited" in p.stderr
    assert "Coroutine created at (most recent call last)" in p.stderr
    assert "line 11, in main" in p.stderr


def test_coroutine_origin_tracking_set_while_running(loop):
    loop.set_debug(True)
    seen = []

    async def main():
        seen.append(sys.get_coroutine_origin_tracking_depth())

    before = sys.get_coroutine_origin_tracking_depth()
    loop.run_until_complete(main())
    assert seen[0] > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


def test_unclosed_loop_resource_warning(loop_name):
    from conftest import FACTORIES

    lp = FACTORIES[loop_name]()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    msgs = [str(x.message) for x in w if issubclass(x.category, ResourceWarning)]
    assert len(msgs) == 1, [str(x.message) for x in w]
    assert msgs[0].startswith("unclosed event loop <")


def test_closed_loop_no_resource_warning(loop_name):
    from conftest import FACTORIES

    lp = FACTORIES[loop_name]()
    lp.close()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    assert [x for x in w if issubclass(x.category, ResourceWarning)] == []


def test_debug_exception_handler_logs_source(loop, caplog):
    loop.set_exception_handler(None)
    loop.set_debug(True)

    def bad():
        raise ValueError("dbg")

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.run_forever()
    recs = [r for r in caplog.records if r.name == "asyncio"]
    assert len(recs) == 1
    assert "created at (most recent call last)" in recs[0].getMessage()
    assert recs[0].getMessage().endswith("loop.call_soon(bad)")


@pytest.mark.nodebug
def test_asyncio_run_debug_with_installed_policy():
    import ferroloop

    old = asyncio.get_event_loop_policy()
    try:
        ferroloop.install()

        async def main():
            lp = asyncio.get_running_loop()
            return type(lp).__name__, lp.get_debug()

        assert asyncio.run(main(), debug=True) == ("Loop", True)
        assert asyncio.run(main()) == ("Loop", False)
    finally:
        asyncio.set_event_loop_policy(old)


def test_slow_callback_duration_attribute(loop):
    assert loop.slow_callback_duration == 0.1
    loop.slow_callback_duration = 0.5
    assert loop.slow_callback_duration == 0.5


def test_call_soon_threadsafe_no_thread_check_in_debug(loop):
    loop.set_debug(True)
    out = []

    async def main():
        def other():
            loop.call_soon_threadsafe(out.append, "ok")

        t = threading.Thread(target=other)
        t.start()
        t.join()
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    assert out == ["ok"]


def test_set_debug_while_running(loop):
    seen = []

    async def main():
        loop.set_debug(True)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(sys.get_coroutine_origin_tracking_depth())
        loop.set_debug(False)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        seen.append(sys.get_coroutine_origin_tracking_depth())

    loop.run_until_complete(main())
    assert seen[0] > 0 and seen[1] == 0


_FERROLOOP_DIR = os.path.dirname(ferroloop.__file__) + os.sep


def test_task_source_traceback_names_the_caller(loop):
    # asyncio's Task records where create_task was called; no ferroloop frame may appear.
    loop.set_debug(True)

    async def noop():
        pass

    async def main():
        t1 = loop.create_task(noop())
        line1 = sys._getframe().f_lineno - 1  # the line above
        t2 = asyncio.create_task(noop())
        await asyncio.gather(t1, t2)
        return t1, t2, line1

    t1, t2, line1 = loop.run_until_complete(main())
    assert t1._source_traceback[-1].filename == __file__
    assert t1._source_traceback[-1].lineno == line1
    # asyncio.create_task -> loop.create_task: the last frame is asyncio's tasks.py.
    assert t2._source_traceback[-1].filename == asyncio.tasks.__file__
    for frame in t1._source_traceback + t2._source_traceback:
        assert not frame.filename.startswith(_FERROLOOP_DIR), frame
    assert f"created at {__file__}:{line1}>" in repr(t1)


def test_task_factory_source_traceback_has_no_ferroloop_frame(loop):
    loop.set_debug(True)
    loop.set_task_factory(lambda loop, coro, **kw: asyncio.Task(coro, loop=loop, **kw))

    async def noop():
        pass

    async def main():
        t = loop.create_task(noop())
        await t
        return t

    t = loop.run_until_complete(main())
    for frame in t._source_traceback:
        assert not frame.filename.startswith(_FERROLOOP_DIR), frame
