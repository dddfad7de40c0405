import asyncio
import sys
import threading

import pytest

import ferroloop

from conftest import FACTORIES, asyncio_loop

PY312 = sys.version_info >= (3, 12)


def test_run_until_complete_coroutine(loop):
    async def main():
        await asyncio.sleep(0)
        return 42

    assert loop.run_until_complete(main()) == 42


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_soon(fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_awaitable(loop):
    class Aw:
        def __await__(self):
            yield from asyncio.sleep(0).__await__()
            return "aw"

    assert loop.run_until_complete(Aw()) == "aw"


def test_run_until_complete_exception(loop):
    async def main():
        raise ValueError("x")

    with pytest.raises(ValueError, match="x"):
        loop.run_until_complete(main())


def test_run_until_complete_not_awaitable(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(42)


def test_run_until_complete_future_of_other_loop(loop, loop_factory):
    other = loop_factory()
    fut = other.create_future()
    with pytest.raises(ValueError, match="The future belongs to a different loop"):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_early(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed."):
        loop.run_until_complete(fut)


def _nested_run_forever_breaks_outer_run():
    """CPython 3.13.0: BaseEventLoop.run_forever calls _run_forever_setup inside its try, so
    a refused nested run_forever() still runs _run_forever_cleanup and unsets the running
    loop of the outer run (which then never stops)."""
    from asyncio import events

    lp = asyncio_loop()
    still_running = []

    def cb():
        try:
            lp.run_forever()
        except RuntimeError:
            pass
        still_running.append(events._get_running_loop() is lp)
        lp.stop()

    try:
        lp.call_soon(cb)
        lp.run_forever()
    finally:
        lp.close()
    return not still_running[0]


def test_run_forever_while_running(loop, loop_name):
    if loop_name == "asyncio" and _nested_run_forever_breaks_outer_run():
        pytest.skip("this CPython's asyncio breaks the outer run on a nested run_forever()")

    async def main():
        with pytest.raises(RuntimeError, match="This event loop is already running"):
            loop.run_forever()
        coro = asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="This event loop is already running"):
            loop.run_until_complete(coro)
        coro.close()

    loop.run_until_complete(main())


def test_run_while_another_loop_runs(loop, loop_factory):
    other = loop_factory()

    async def main():
        coro = asyncio.sleep(0)
        try:
            with pytest.raises(
                RuntimeError, match="Cannot run the event loop while another loop is running"
            ):
                other.run_until_complete(coro)
        finally:
            coro.close()

    loop.run_until_complete(main())


def test_close_while_running(loop):
    async def main():
        with pytest.raises(RuntimeError, match="Cannot close a running event loop"):
            loop.close()

    loop.run_until_complete(main())


CLOSED_CALLS = [
    ("call_soon", lambda lp: lp.call_soon(print)),
    ("call_later", lambda lp: lp.call_later(1, print)),
    ("call_at", lambda lp: lp.call_at(1, print)),
    ("call_soon_threadsafe", lambda lp: lp.call_soon_threadsafe(print)),
    ("run_forever", lambda lp: lp.run_forever()),
    ("run_until_complete", lambda lp: lp.run_until_complete(lp.create_future())),
    ("run_in_executor", lambda lp: lp.run_in_executor(None, print)),
    ("add_reader", lambda lp: lp.add_reader(0, print)),
    ("add_writer", lambda lp: lp.add_writer(1, print)),
    ("add_signal_handler", lambda lp: lp.add_signal_handler(10, print)),
]


@pytest.mark.parametrize("name,call", CLOSED_CALLS, ids=[c[0] for c in CLOSED_CALLS])
def test_calls_on_closed_loop(loop, name, call):
    loop.close()
    with pytest.raises(RuntimeError, match="^Event loop is closed$"):
        call(loop)


def test_close_idempotent(loop):
    loop.close()
    loop.close()
    assert loop.is_closed()


def test_remove_reader_on_closed_loop(loop):
    loop.close()
    # asyncio: remove_reader/remove_writer on a closed loop return False silently
    assert loop.remove_reader(0) is False
    assert loop.remove_writer(1) is False


def test_stop_is_running_is_closed(loop):
    assert not loop.is_running()
    assert not loop.is_closed()
    states = []
    loop.call_soon(lambda: states.append(loop.is_running()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert states == [True]
    assert not loop.is_running()
    loop.close()
    assert loop.is_closed()


def test_run_forever_reusable(loop):
    for i in range(3):
        out = []
        loop.call_soon(out.append, i)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert out == [i]


def test_running_loop_set_during_run(loop):
    seen = []

    def cb():
        seen.append(asyncio.get_running_loop())
        seen.append(asyncio.get_event_loop())
        seen.append(asyncio._get_running_loop())

    loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [loop, loop, loop]
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError, match="no running event loop"):
        asyncio.get_running_loop()


def test_shutdown_asyncgens(loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("finalized")

    async def main():
        g = agen()
        assert await g.__anext__() == 1
        return g

    g = loop.run_until_complete(main())
    assert log == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert log == ["finalized"]
    del g


def test_asyncgen_hooks_installed_while_running(loop):
    before = sys.get_asyncgen_hooks()
    seen = []

    async def main():
        seen.append(sys.get_asyncgen_hooks())

    loop.run_until_complete(main())
    hooks = seen[0]
    assert hooks.firstiter == loop._asyncgen_firstiter_hook
    assert hooks.finalizer == loop._asyncgen_finalizer_hook
    assert sys.get_asyncgen_hooks() == before


def test_asyncgen_finalized_by_loop(loop):
    log = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            log.append("finalized")

    async def main():
        g = agen()
        await g.__anext__()
        del g
        import gc

        gc.collect()
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert log == ["finalized"]


def test_shutdown_default_executor(loop):
    async def main():
        await loop.run_in_executor(None, lambda: 1)
        await loop.shutdown_default_executor()
        with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
            await loop.run_in_executor(None, lambda: 1)

    loop.run_until_complete(main())


@pytest.mark.skipif(not PY312, reason="timeout parameter is 3.12+")
def test_shutdown_default_executor_timeout(loop):
    import time
    import warnings

    from conftest import asyncio_loop

    def scenario(lp):
        ev = threading.Event()

        async def main():
            lp.run_in_executor(None, ev.wait, 0.5)
            await asyncio.sleep(0)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                await lp.shutdown_default_executor(timeout=0.01)
            ev.set()
            return [(w.category, str(w.message)) for w in caught]

        try:
            return lp.run_until_complete(main())
        finally:
            ev.set()
            time.sleep(0.05)

    ref = asyncio_loop()
    try:
        expected = scenario(ref)
    finally:
        ref.close()
    got = scenario(loop)
    assert got == expected
    # Early 3.12 releases (e.g. 3.12.1) await the executor's full shutdown before applying
    # the timeout (to the join of the shutdown thread): no warning there. 3.13 bounds the
    # wait itself and warns. Whatever the running version does, ferroloop must do the same.
    assert expected in (
        [],
        [
            (
                RuntimeWarning,
                "The executor did not finishing joining its threads within 0.01 seconds.",
            )
        ],
    )


def test_ferroloop_run():
    async def main():
        loop = asyncio.get_running_loop()
        assert isinstance(loop, ferroloop.Loop)
        await asyncio.sleep(0)
        return "r"

    assert ferroloop.run(main()) == "r"


def test_ferroloop_run_debug():
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert ferroloop.run(main(), debug=True) is True
    assert ferroloop.run(main(), debug=False) is False


def test_ferroloop_run_cancels_remaining_tasks():
    log = []

    async def bg():
        try:
            await asyncio.sleep(100)
        except asyncio.CancelledError:
            log.append("cancelled")
            raise

    async def main():
        asyncio.get_running_loop().create_task(bg())
        await asyncio.sleep(0)

    ferroloop.run(main())
    assert log == ["cancelled"]


def test_ferroloop_run_in_running_loop(loop):
    """ferroloop.run() called inside a running loop (the outer loop is the parameter): like
    asyncio.run it must fail fast with asyncio.run's message and leak nothing."""

    async def inner():
        pass

    async def main():
        coro = inner()
        with pytest.raises(RuntimeError, match="cannot be called from a running event loop"):
            asyncio.run(coro)
        try:
            ferroloop.run(coro)
        except RuntimeError as e:
            msg = str(e)
        else:
            msg = None
        coro.close()
        import gc

        gc.collect()  # anything leaked by ferroloop.run is reported inside this test
        assert msg == "asyncio.run() cannot be called from a running event loop"

    loop.run_until_complete(main())


@pytest.mark.skipif(not hasattr(asyncio, "Runner"), reason="asyncio.Runner is 3.11+")
def test_runner_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(main()) is ferroloop.Loop
        assert isinstance(runner.get_loop(), ferroloop.Loop)
        loop = runner.get_loop()
    assert loop.is_closed()


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_loop_factory():
    async def main():
        return type(asyncio.get_running_loop())

    assert asyncio.run(main(), loop_factory=ferroloop.new_event_loop) is ferroloop.Loop


def test_install():
    old = asyncio.get_event_loop_policy()
    try:
        ferroloop.install()
        assert isinstance(asyncio.get_event_loop_policy(), ferroloop.EventLoopPolicy)

        async def main():
            return type(asyncio.get_running_loop())

        assert asyncio.run(main()) is ferroloop.Loop
        lp = asyncio.new_event_loop()
        try:
            assert isinstance(lp, ferroloop.Loop)
        finally:
            lp.close()
    finally:
        asyncio.set_event_loop_policy(old)
        asyncio.set_event_loop(None)


def test_set_get_event_loop(loop):
    asyncio.set_event_loop(loop)
    try:
        assert asyncio.get_event_loop_policy().get_event_loop() is loop
    finally:
        asyncio.set_event_loop(None)


def test_event_loop_per_thread(loop_factory):
    results = {}

    def worker(n):
        lp = loop_factory()
        asyncio.set_event_loop(lp)
        try:
            results[n] = (
                asyncio.get_event_loop_policy().get_event_loop() is lp,
                lp.run_until_complete(_running_loop()) is lp,
            )
        finally:
            asyncio.set_event_loop(None)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: (True, True) for i in range(3)}


async def _running_loop():
    return asyncio.get_running_loop()


@pytest.mark.nodebug
def test_loop_repr(loop):
    r = repr(loop)
    assert "running=False" in r and "closed=False" in r and "debug=False" in r
    loop.close()
    assert "closed=True" in repr(loop)


def test_is_abstract_event_loop(loop):
    assert isinstance(loop, asyncio.AbstractEventLoop)


def test_run_until_complete_keyboardinterrupt_from_coro(loop):
    async def main():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        loop.run_until_complete(main())
    # the loop is usable afterwards
    assert loop.run_until_complete(asyncio.sleep(0, 5)) == 5


def test_get_event_loop_no_loop_in_thread():
    # in a non-main thread with no loop set, get_event_loop raises
    err = []

    def worker():
        try:
            asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError as e:
            err.append(str(e))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert err and "There is no current event loop" in err[0]


@pytest.mark.nodebug
@pytest.mark.parametrize("name", list(FACTORIES))
def test_new_loop_not_running(name):
    lp = FACTORIES[name]()
    try:
        assert not lp.is_running()
        assert not lp.get_debug()
    finally:
        lp.close()
