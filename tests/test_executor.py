import asyncio
import concurrent.futures
import os
import socket
import sys
import threading

import pytest


def square(x):
    return x * x


def getpid():
    return os.getpid()


def test_run_in_default_executor(loop):
    async def main():
        tid = await loop.run_in_executor(None, threading.get_ident)
        return tid, await loop.run_in_executor(None, square, 7)

    tid, sq = loop.run_until_complete(main())
    assert tid != threading.get_ident()
    assert sq == 49


def test_run_in_thread_pool_executor(loop):
    with concurrent.futures.ThreadPoolExecutor(2) as ex:

        async def main():
            return await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(10)))

        assert loop.run_until_complete(main()) == [i * i for i in range(10)]


def test_run_in_process_pool_executor(loop):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as ex:

        async def main():
            return await loop.run_in_executor(ex, square, 12), await loop.run_in_executor(
                ex, getpid
            )

        sq, pid = loop.run_until_complete(main())
    assert sq == 144
    assert pid != os.getpid()


def test_run_in_executor_exception(loop):
    def bad():
        raise KeyError("exec")

    async def main():
        with pytest.raises(KeyError, match="exec"):
            await loop.run_in_executor(None, bad)

    loop.run_until_complete(main())


def test_set_default_executor(loop):
    ex = concurrent.futures.ThreadPoolExecutor(1)
    try:
        loop.set_default_executor(ex)
        assert loop.run_until_complete(loop.run_in_executor(None, square, 3)) == 9
    finally:
        ex.shutdown(wait=True)


def test_set_default_executor_errors(loop):
    if sys.version_info < (3, 11):
        # asyncio 3.10 only warns (DeprecationWarning) and accepts the object; 3.11 raises.
        for bad in (concurrent.futures.ProcessPoolExecutor, object()):
            with pytest.warns(DeprecationWarning, match="not an instance of ThreadPoolExecutor"):
                loop.set_default_executor(bad)
            assert loop._default_executor is bad
            loop._default_executor = None  # close() would call bad.shutdown()
        return
    with pytest.raises(TypeError, match="executor must be ThreadPoolExecutor"):
        loop.set_default_executor(concurrent.futures.ProcessPoolExecutor)
    with pytest.raises(TypeError):
        loop.set_default_executor(object())


def test_run_in_executor_coroutine_rejected(loop):
    async def coro():
        pass

    loop.set_debug(True)  # asyncio checks the callback only in debug mode
    with pytest.raises(TypeError, match="coroutines cannot be used with run_in_executor"):
        loop.run_in_executor(None, coro)


def test_getaddrinfo(loop):
    async def main():
        return await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)

    res = loop.run_until_complete(main())
    expected = socket.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM)
    assert res == expected


def test_getaddrinfo_error(loop):
    async def main():
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("no-such-host.invalid", 80)

    loop.run_until_complete(main())


def test_getnameinfo(loop):
    async def main():
        return await loop.getnameinfo(
            ("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        )

    assert loop.run_until_complete(main()) == ("127.0.0.1", "80")


def test_tcp_echo_over_localhost(loop):
    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(data.upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        data = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return data

    assert loop.run_until_complete(main()) == b"HELLO\n"
