"""Behaviour that differs between the CPython versions ferroloop supports (3.10+).

Every test runs on asyncio's own loop and on ferroloop's, and must pass on both: ferroloop
borrows the running version's asyncio code, so what changed between versions must change for
ferroloop the same way. Self-contained (no conftest fixtures) so that it can run anywhere.
"""

import asyncio
import ctypes
import os
import signal
import socket
import sys
import tempfile
import threading
import time

import pytest

import ferroloop

PY311 = sys.version_info >= (3, 11)
PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)

FACTORIES = {
    "asyncio": asyncio.new_event_loop,
    "ferroloop": ferroloop.new_event_loop,
}


@pytest.fixture(params=sorted(FACTORIES))
def factory(request):
    return FACTORIES[request.param]


def run(factory, coro):
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


async def _running_loop_module():
    await asyncio.sleep(0)
    return type(asyncio.get_running_loop()).__module__


def test_import_borrows_everything():
    # Importing ferroloop on this version did not refuse any asyncio method, and the loop has
    # every attribute asyncio's loop has except the selector loop internals it replaces.
    asyncio_loop = asyncio.new_event_loop()
    ferro_loop = ferroloop.new_event_loop()
    try:
        missing = (set(dir(asyncio_loop)) | set(vars(asyncio_loop))) - (
            set(dir(ferro_loop)) | set(vars(ferro_loop))
        )
    finally:
        asyncio_loop.close()
        ferro_loop.close()
    replaced = {"_process_events", "_ready", "_scheduled", "_selector", "_timer_cancelled_count"}
    assert missing <= replaced


def test_run_forever_setup_cleanup(factory):
    # 3.13 split run_forever into _run_forever_setup/_run_forever_cleanup; ferroloop has them
    # on every version.
    loop = factory()
    try:
        if PY313 or isinstance(loop, ferroloop.Loop):
            loop._run_forever_setup()
            try:
                assert asyncio.get_running_loop() is loop
            finally:
                loop._run_forever_cleanup()
            with pytest.raises(RuntimeError):
                asyncio.get_running_loop()
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert not loop.is_running()
    finally:
        loop.close()


def test_gather_wait_for_timeouts(factory):
    async def value(i):
        await asyncio.sleep(0.01 * (3 - i))
        return i

    async def main():
        assert await asyncio.gather(*(value(i) for i in range(3))) == [0, 1, 2]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(10), 0.02)
        if PY311:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.02):
                    await asyncio.sleep(10)

    run(factory, main())


def test_executor_and_threadsafe(factory):
    async def main():
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, sum, range(10)) == 45
        assert await asyncio.to_thread(lambda: 7) == 7
        done = loop.create_future()
        count = [0]

        def bump():
            count[0] += 1
            if count[0] == 400:
                done.set_result(None)

        def worker():
            for _ in range(100):
                loop.call_soon_threadsafe(bump)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for thread in threads:
            thread.start()
        await asyncio.wait_for(done, 5)
        for thread in threads:
            thread.join()

    run(factory, main())


@pytest.mark.skipif(not PY312, reason="shutdown_default_executor(timeout) is 3.12+")
def test_shutdown_default_executor_timeout(factory):
    async def main():
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, time.sleep, 0.01)
        executor = loop._default_executor
        await loop.shutdown_default_executor(timeout=5)
        # The executor is shut down (it takes no more work) and the loop says so.
        with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
            executor.submit(print)
        with pytest.raises(RuntimeError, match="Executor shutdown has been called"):
            loop.run_in_executor(None, print)

    run(factory, main())


async def _echo(reader, writer):
    data = await reader.read(100)
    writer.write(data.upper())
    writer.writelines([b"!", b"?"])  # 3.12: sendmsg-based writelines
    await writer.drain()
    writer.close()
    await writer.wait_closed()


def test_tcp_echo(factory):
    async def main():
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"hello")
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
        return data

    assert run(factory, main()) == b"HELLO!?"


def test_unix_server_socket_cleanup(factory):
    path = os.path.join(tempfile.mkdtemp(), "sock")

    async def main():
        server = await asyncio.start_unix_server(_echo, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(b"unix")
            data = await reader.read()
            writer.close()
            await writer.wait_closed()
        return data

    try:
        assert run(factory, main()) == b"UNIX!?"
        # 3.13 unlinks the listening socket when the server closes (_stop_serving).
        assert os.path.exists(path) is not PY313
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(os.path.dirname(path))


@pytest.mark.skipif(not PY313, reason="Server.close_clients/abort_clients are 3.13+")
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_server_close_clients(factory, method):
    async def main():
        connected = asyncio.Event()

        async def hold(reader, writer):
            connected.set()
            await reader.read()

        server = await asyncio.start_server(hold, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.wait_for(connected.wait(), 5)
        server.close()
        getattr(server, method)()
        await asyncio.wait_for(server.wait_closed(), 5)
        try:
            data = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:
            data = b""
        writer.close()
        return data

    assert run(factory, main()) == b""


def test_subprocess_pipes(factory):
    # 3.12 deprecates child watchers and 3.13 removes the policy's watcher: the loop picks a
    # pidfd or threaded watcher inside _make_subprocess_transport.
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; sys.stdout.write(sys.stdin.read().upper())",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate(b"abc")
        shell = await asyncio.create_subprocess_shell("exit 3")
        return out, proc.returncode, await shell.wait()

    assert run(factory, main()) == (b"ABC", 0, 3)


def test_signal_handler(factory):
    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        loop.add_signal_handler(signal.SIGUSR1, got.set_result, "sig")
        try:
            loop.call_later(0.01, os.kill, os.getpid(), signal.SIGUSR1)
            return await asyncio.wait_for(got, 5)
        finally:
            assert loop.remove_signal_handler(signal.SIGUSR1)

    assert run(factory, main()) == "sig"


def test_signal_tripped_outside_the_poll(factory):
    # Not version-specific, but first seen on 3.10 (where os.kill does not run the handlers
    # itself): a signal that arrives while callbacks run, not during the poll, must be acted on
    # before the loop blocks. libc's kill() does not run Python signal handlers.
    # KeyboardInterrupt, as with SIGINT: asyncio reports other exceptions as the callback's.
    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGUSR2, handler)
    loop = factory()
    task = loop.create_task(asyncio.sleep(10))
    try:
        loop.call_soon(ctypes.CDLL(None).kill, os.getpid(), signal.SIGUSR2)
        start = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            loop.run_until_complete(task)
        assert time.monotonic() - start < 5
    finally:
        signal.signal(signal.SIGUSR2, old)
        task.cancel()
        loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        loop.close()


def test_sock_methods(factory):
    async def main():
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        with a, b:
            a.setblocking(False)
            b.setblocking(False)
            await loop.sock_sendall(a, b"xyz")
            return await loop.sock_recv(b, 10)

    assert run(factory, main()) == b"xyz"


@pytest.mark.skipif(not PY312, reason="eager_task_factory is 3.12+")
def test_eager_task_factory(factory):
    async def main():
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        order = []

        async def child():
            order.append("eager")
            await asyncio.sleep(0)
            return 1

        task = asyncio.create_task(child())
        order.append("after")
        assert await task == 1
        return order

    assert run(factory, main()) == ["eager", "after"]


@pytest.mark.skipif(not PY311, reason="asyncio.Runner is 3.11+")
def test_runner_loop_factory():
    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        assert runner.run(_running_loop_module()) == "ferroloop._loop"


@pytest.mark.skipif(not PY312, reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_loop_factory():
    assert asyncio.run(_running_loop_module(), loop_factory=ferroloop.new_event_loop) == (
        "ferroloop._loop"
    )


def test_ferroloop_run_cleans_up():
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append("agen")

    async def main():
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, time.sleep, 0.01)
        gen = agen()
        await gen.__anext__()
        loop.call_later(100, print)
        return type(loop).__module__, gen

    module, gen = ferroloop.run(main())
    assert module == "ferroloop._loop"
    assert closed == ["agen"]
    del gen


def test_ferroloop_run_rejects_non_coroutine():
    with pytest.raises((ValueError, TypeError)):
        ferroloop.run(42)


def test_install_then_asyncio_run():
    old = asyncio.get_event_loop_policy()
    ferroloop.install()
    try:
        assert asyncio.run(_running_loop_module()) == "ferroloop._loop"
    finally:
        asyncio.set_event_loop_policy(old)
