"""Borrowed asyncio networking/subprocess code running on the loop's reactor."""

import asyncio
import socket
import subprocess
import sys

import pytest


def test_subprocess_exec(loop):
    async def main():
        p = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import sys; data=sys.stdin.read(); print(data.upper()); sys.exit(3)",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await p.communicate(b"hello")
        return out, p.returncode

    asyncio.set_event_loop(loop)  # child watcher (3.11) attaches to the current loop
    assert loop.run_until_complete(main()) == (b"HELLO\n", 3)


def test_subprocess_shell(loop):
    async def main():
        p = await asyncio.create_subprocess_shell("echo shell-out", stdout=asyncio.subprocess.PIPE)
        out = await p.stdout.read()
        await p.wait()
        return out, p.returncode

    asyncio.set_event_loop(loop)
    assert loop.run_until_complete(main()) == (b"shell-out\n", 0)


def test_unix_stream(loop, tmp_path):
    path = str(tmp_path / "sock")

    async def handle(r, w):
        w.write(await r.read(5))
        await w.drain()
        w.close()

    async def main():
        srv = await asyncio.start_unix_server(handle, path)
        r, w = await asyncio.open_unix_connection(path)
        w.write(b"unix!")
        data = await r.read()
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        return data

    assert loop.run_until_complete(main()) == b"unix!"


def test_datagram_endpoint(loop):
    class Proto(asyncio.DatagramProtocol):
        def __init__(self):
            self.fut = loop.create_future()

        def datagram_received(self, data, addr):
            if not self.fut.done():
                self.fut.set_result(data)

    async def main():
        tr, pr = await loop.create_datagram_endpoint(Proto, local_addr=("127.0.0.1", 0))
        addr = tr.get_extra_info("sockname")
        tr2, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=addr)
        tr2.sendto(b"dgram")
        data = await asyncio.wait_for(pr.fut, 10)
        tr.close()
        tr2.close()
        await asyncio.sleep(0)
        return data

    assert loop.run_until_complete(main()) == b"dgram"


def test_protocol_large_transfer(loop):
    payload = b"x" * (4 * 1024 * 1024)

    class Server(asyncio.Protocol):
        def connection_made(self, tr):
            self.tr = tr
            self.n = 0

        def data_received(self, data):
            self.n += len(data)
            if self.n == len(payload):
                self.tr.write(b"ok")
                self.tr.close()

    async def main():
        srv = await loop.create_server(Server, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(payload)
        await w.drain()
        ack = await r.read()
        w.close()
        await w.wait_closed()
        srv.close()
        await srv.wait_closed()
        return ack

    assert loop.run_until_complete(main()) == b"ok"


def test_sock_connect_accept(loop):
    async def main():
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        csock = socket.socket()
        csock.setblocking(False)
        try:
            accept = loop.create_task(loop.sock_accept(lsock))
            await loop.sock_connect(csock, lsock.getsockname())
            conn, _ = await accept
            with conn:
                await loop.sock_sendall(csock, b"ping")
                return await loop.sock_recv(conn, 4)
        finally:
            csock.close()
            lsock.close()

    assert loop.run_until_complete(main()) == b"ping"


def test_connect_refused(loop):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()

    async def main():
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", port)

    loop.run_until_complete(main())


def _norm_repr(s):
    import re

    s = re.sub(r"fd=\d+", "fd=N", s)
    s = re.sub(r"pid=\d+", "pid=N", s)
    s = re.sub(r" at 0x[0-9a-f]+", " at 0x", s)
    return s


def _safe_repr(obj):
    try:
        return repr(obj)
    except Exception as e:  # noqa: BLE001
        return f"repr raised {type(e).__name__}: {e}"


def _socket_transport_reprs(loop):
    async def main():
        done = loop.create_future()

        async def handler(r, w):
            await r.read()
            w.close()
            await w.wait_closed()
            done.set_result(None)

        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
        try:
            return [_safe_repr(w.transport), _safe_repr(w)]
        finally:
            w.close()
            await w.wait_closed()
            await asyncio.wait_for(done, 10)
            srv.close()
            await srv.wait_closed()

    return [_norm_repr(x) for x in loop.run_until_complete(main())]


def test_socket_transport_repr(loop):
    from conftest import asyncio_loop

    ref = asyncio_loop()
    try:
        expected = _socket_transport_reprs(ref)
    finally:
        ref.close()
    assert _socket_transport_reprs(loop) == expected
    assert "read=polling" in expected[0]


def _pipe_transport_reprs(loop):
    import os

    async def main():
        r, w = os.pipe()
        rf = os.fdopen(r, "rb", buffering=0)
        wf = os.fdopen(w, "wb", buffering=0)
        rtr, _ = await loop.connect_read_pipe(asyncio.Protocol, rf)
        wtr, _ = await loop.connect_write_pipe(asyncio.Protocol, wf)
        try:
            return [_safe_repr(rtr), _safe_repr(wtr)]
        finally:
            rtr.close()
            wtr.close()
            await asyncio.sleep(0)

    return [_norm_repr(x) for x in loop.run_until_complete(main())]


def test_pipe_transport_repr(loop):
    from conftest import asyncio_loop

    ref = asyncio_loop()
    try:
        expected = _pipe_transport_reprs(ref)
    finally:
        ref.close()
    assert _pipe_transport_reprs(loop) == expected


def _debug_eof_log(loop):
    import logging

    records = []

    class H(logging.Handler):
        def emit(self, record):
            try:
                records.append(_norm_repr(record.getMessage()))
            except Exception as e:  # noqa: BLE001
                records.append(f"getMessage raised {type(e).__name__}: {e}")

    lg = logging.getLogger("asyncio")
    h = H(logging.DEBUG)
    old = lg.level
    lg.addHandler(h)
    lg.setLevel(logging.DEBUG)
    # only our handler (which survives a failing repr) sees the records, not pytest's capture
    lg.propagate = False
    loop.set_debug(True)
    try:

        async def main():
            done = loop.create_future()

            async def handler(r, w):
                await r.read()
                w.close()
                await w.wait_closed()
                done.set_result(None)

            srv = await asyncio.start_server(handler, "127.0.0.1", 0)
            r, w = await asyncio.open_connection(*srv.sockets[0].getsockname())
            w.write_eof()
            await r.read()
            w.close()
            await w.wait_closed()
            await asyncio.wait_for(done, 10)
            srv.close()
            await srv.wait_closed()

        loop.run_until_complete(main())
    finally:
        lg.removeHandler(h)
        lg.setLevel(old)
        lg.propagate = True
        loop.set_debug(False)
    return [m for m in records if "EOF" in m or "raised" in m]


def test_debug_transport_eof_logging(loop):
    from conftest import asyncio_loop

    ref = asyncio_loop()
    try:
        expected = _debug_eof_log(ref)
    finally:
        ref.close()
    assert expected
    assert _debug_eof_log(loop) == expected


NO_SSL_PROGRAM = """
import sys
sys.modules["ssl"] = None  # as on a CPython built without OpenSSL
sys.modules["_ssl"] = None
import asyncio
import ferroloop

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await writer.wait_closed()
    try:
        await asyncio.open_connection("127.0.0.1", port, ssl=True)
        result = None
    except Exception as exc:
        result = (type(exc).__name__, str(exc))
    server.close()
    await server.wait_closed()
    return result

run = asyncio.run if sys.argv[1] == "asyncio" else ferroloop.run
print(repr(run(main())))
"""


def test_without_the_ssl_module():
    """On a CPython without ``ssl`` asyncio works, and so does ferroloop: it imports, serves
    plain connections, and a TLS connection fails with asyncio's error."""
    out = {}
    for name in ("asyncio", "ferroloop"):
        done = subprocess.run(
            [sys.executable, "-c", NO_SSL_PROGRAM, name],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        out[name] = done.stdout
    assert "stdlib ssl module not available" in out["asyncio"]
    assert out["ferroloop"] == out["asyncio"]
