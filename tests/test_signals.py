import asyncio
import os
import signal
import threading

import pytest

from conftest import asyncio_loop


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
