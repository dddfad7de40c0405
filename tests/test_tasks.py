import asyncio
import contextvars
import sys

import pytest

cv = contextvars.ContextVar("cv", default="default")
PY311 = sys.version_info >= (3, 11)


def test_task_and_future_types(loop):
    async def main():
        t = asyncio.ensure_future(asyncio.sleep(0))
        f = loop.create_future()
        f.set_result(None)
        await t
        return type(t), type(f)

    tt, ft = loop.run_until_complete(main())
    assert tt is asyncio.Task
    assert ft is asyncio.Future
    assert tt.__module__ == "_asyncio"
    assert ft.__module__ == "_asyncio"


def test_current_task_all_tasks(loop):
    async def child():
        await asyncio.sleep(0.01)

    async def main():
        me = asyncio.current_task()
        assert me is not None and me.get_loop() is loop
        t = loop.create_task(child())
        assert asyncio.all_tasks() == {me, t}
        await t
        assert asyncio.all_tasks() == {me}
        return me

    t = loop.run_until_complete(main())
    assert t.done()
    assert asyncio.current_task(loop) is None
    assert asyncio.all_tasks(loop) == set()


def test_gather(loop):
    async def val(x, d):
        await asyncio.sleep(d)
        return x

    async def bad():
        raise KeyError("k")

    async def main():
        r = await asyncio.gather(val(1, 0.01), val(2, 0), val(3, 0.005))
        r2 = await asyncio.gather(val(1, 0), bad(), return_exceptions=True)
        return r, r2

    r, r2 = loop.run_until_complete(main())
    assert r == [1, 2, 3]
    assert r2[0] == 1 and isinstance(r2[1], KeyError)


def test_wait(loop):
    async def main():
        a = loop.create_task(asyncio.sleep(0.001, "a"))
        b = loop.create_task(asyncio.sleep(10, "b"))
        done, pending = await asyncio.wait({a, b}, timeout=0.1)
        assert done == {a} and pending == {b}
        done, pending = await asyncio.wait({b}, return_when=asyncio.FIRST_COMPLETED, timeout=0)
        assert done == set()
        b.cancel()
        done, pending = await asyncio.wait({b})
        assert b.cancelled()

    loop.run_until_complete(main())


def test_wait_for(loop):
    async def main():
        assert await asyncio.wait_for(asyncio.sleep(0, 7), timeout=None) == 7
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), timeout=0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), timeout=0)

    loop.run_until_complete(main())


def test_shield(loop):
    async def inner():
        await asyncio.sleep(0.02)
        return "inner"

    async def main():
        t = loop.create_task(inner())
        outer = asyncio.ensure_future(asyncio.shield(t))
        await asyncio.sleep(0)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        return await t

    assert loop.run_until_complete(main()) == "inner"


def test_as_completed(loop):
    async def val(x, d):
        await asyncio.sleep(d)
        return x

    async def main():
        res = []
        for f in asyncio.as_completed([val(1, 0.03), val(2, 0.0), val(3, 0.015)]):
            res.append(await f)
        return res

    assert loop.run_until_complete(main()) == [2, 3, 1]


@pytest.mark.skipif(not PY311, reason="asyncio.timeout is 3.11+")
def test_timeout_cm(loop):
    async def main():
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await asyncio.sleep(10)
        async with asyncio.timeout(1) as cm:
            await asyncio.sleep(0)
        assert not cm.expired()
        async with asyncio.timeout_at(loop.time() + 1):
            await asyncio.sleep(0)

    loop.run_until_complete(main())


@pytest.mark.skipif(not PY311, reason="TaskGroup is 3.11+")
def test_taskgroup(loop):
    async def ok(x):
        await asyncio.sleep(0)
        return x

    async def bad():
        await asyncio.sleep(0)
        raise ValueError("tg")

    async def main():
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(ok(1))
            b = tg.create_task(ok(2))
        assert (a.result(), b.result()) == (1, 2)
        with pytest.raises(ExceptionGroup) as ei:  # noqa: F821 (3.11+, skipped before)
            async with asyncio.TaskGroup() as tg:
                tg.create_task(bad())
                slow = tg.create_task(asyncio.sleep(10))
        assert slow.cancelled()
        assert isinstance(ei.value.exceptions[0], ValueError)

    loop.run_until_complete(main())


def test_cancel_with_message(loop):
    from conftest import asyncio_loop

    async def sleeper():
        await asyncio.sleep(10)

    async def main():
        t = asyncio.get_running_loop().create_task(sleeper())
        await asyncio.sleep(0)
        t.cancel("my message")
        with pytest.raises(asyncio.CancelledError) as ei:
            await t
        assert t.cancelled()
        return ei.value.args

    ref = asyncio_loop()
    try:
        expected = ref.run_until_complete(main())
    finally:
        ref.close()
    args = loop.run_until_complete(main())
    assert args == expected
    if sys.version_info >= (3, 11):
        assert args == ("my message",)
    else:
        # 3.10: the awaiter's CancelledError carries no message (only the chained one does)
        assert args == ()


def test_cancel_caught_and_uncancel(loop):
    log = []

    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            log.append("caught")
            return "survived"

    async def main():
        t = loop.create_task(sleeper())
        await asyncio.sleep(0)
        t.cancel()
        return await t

    assert loop.run_until_complete(main()) == "survived"
    assert log == ["caught"]


def test_contextvars_in_tasks(loop):
    async def child():
        v = cv.get()
        cv.set("child")
        return v

    async def main():
        cv.set("main")
        v = await loop.create_task(child())
        return v, cv.get()

    assert loop.run_until_complete(main()) == ("main", "main")
    assert cv.get() == "default"


def test_create_task_name_and_context(loop):
    ctx = contextvars.Context()
    ctx.run(cv.set, "ctx")

    async def child():
        return cv.get()

    async def main():
        t = loop.create_task(child(), name="named")
        assert t.get_name() == "named"
        kwargs = {"context": ctx} if PY311 else {}
        t2 = loop.create_task(child(), **kwargs)
        return await t, await t2

    r = loop.run_until_complete(main())
    assert r[0] == "default"
    if PY311:
        assert r[1] == "ctx"


def test_task_factory(loop):
    created = []

    def factory(lp, coro, **kwargs):
        t = asyncio.Task(coro, loop=lp, **kwargs)
        created.append(t)
        return t

    assert loop.get_task_factory() is None
    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory

    async def main():
        return await loop.create_task(asyncio.sleep(0, "f"))

    assert loop.run_until_complete(main()) == "f"
    assert len(created) == 2  # main + inner
    with pytest.raises(TypeError, match="task factory must be a callable or None"):
        loop.set_task_factory(1)
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None


def test_future_callbacks_and_result(loop):
    out = []

    async def main():
        f = loop.create_future()
        f.add_done_callback(lambda fut: out.append(fut.result()))
        loop.call_later(0.001, f.set_result, "res")
        return await f

    assert loop.run_until_complete(main()) == "res"
    assert out == ["res"]


@pytest.mark.expect_errors
def test_unretrieved_task_exception_reported(loop, loop_errors):
    async def bad():
        raise ValueError("never retrieved")

    async def main():
        loop.create_task(bad())
        await asyncio.sleep(0.001)

    loop.run_until_complete(main())
    import gc

    gc.collect()
    msgs = [c["message"] for c in loop_errors]
    assert msgs == ["Task exception was never retrieved"]


def test_to_thread(loop):
    import threading

    async def main():
        return await asyncio.to_thread(threading.get_ident)

    assert loop.run_until_complete(main()) != threading.get_ident()


def test_queue_lock_event_semaphore(loop):
    async def main():
        q = asyncio.Queue()
        lock = asyncio.Lock()
        ev = asyncio.Event()
        sem = asyncio.Semaphore(2)
        out = []

        async def prod():
            for i in range(5):
                await q.put(i)
                await asyncio.sleep(0)
            ev.set()

        async def cons():
            while not (ev.is_set() and q.empty()):
                try:
                    item = await asyncio.wait_for(q.get(), 0.05)
                except asyncio.TimeoutError:
                    continue
                async with lock, sem:
                    out.append(item)

        await asyncio.gather(prod(), cons())
        return out

    assert loop.run_until_complete(main()) == [0, 1, 2, 3, 4]
