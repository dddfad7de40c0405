"""The loop's sock_* methods (sock_recv, sock_recv_into, sock_sendall): results, waits,
cancellation, errors, and the calls that ferroloop leaves to asyncio's own code, compared
between asyncio's loop and ferroloop."""

import asyncio
import gc
import os
import socket
import ssl
import weakref

import pytest

from conftest import socket_pair, tcp_pair


def _watched(loop, fd):
    """What the loop watches fd for: (reading, writing)."""
    key = loop._selector.get_map().get(fd)
    if key is None:
        return (False, False)
    reader, writer = key.data
    return (reader is not None and not reader.cancelled(), writer is not None and not writer.cancelled())


def test_recv_returns_available_data_at_once_and_waits_otherwise(loop):
    a, b = socket_pair()

    async def main():
        a.send(b"ready")
        got = [await loop.sock_recv(b, 3), await loop.sock_recv(b, 100)]
        waiting = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        assert _watched(loop, b.fileno()) == (True, False)
        await loop.sock_sendall(a, b"later")
        got.append(await waiting)
        await asyncio.sleep(0)
        assert _watched(loop, b.fileno()) == (False, False)
        a.close()
        got.append(await loop.sock_recv(b, 100))
        return got

    try:
        assert loop.run_until_complete(main()) == [b"rea", b"dy", b"later", b""]
    finally:
        a.close()
        b.close()


def test_recv_of_zero_bytes(loop):
    a, b = socket_pair()
    try:
        a.send(b"x")
        assert loop.run_until_complete(loop.sock_recv(b, 0)) == b""
        assert loop.run_until_complete(loop.sock_recv(b, 1)) == b"x"
    finally:
        a.close()
        b.close()


def test_recv_larger_than_the_scratch_buffer(loop):
    a, b = tcp_pair()
    data = bytes(range(256)) * 1024

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, data))
        got = bytearray()
        while len(got) < len(data):
            got += await loop.sock_recv(b, 1 << 20)
        await sender
        return bytes(got)

    try:
        assert loop.run_until_complete(main()) == data
    finally:
        a.close()
        b.close()


def test_recv_into_bytearray_and_memoryview_slices(loop):
    a, b = socket_pair()

    async def main():
        buf = bytearray(10)
        a.send(b"abc")
        n1 = await loop.sock_recv_into(b, buf)
        waiting = loop.create_task(loop.sock_recv_into(b, memoryview(buf)[n1:]))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        a.send(b"defghijklmnop")
        n2 = await waiting
        return n1, n2, bytes(buf)

    try:
        assert loop.run_until_complete(main()) == (3, 7, b"abcdefghij")
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("offset", [0, 1, 17, 63, 64])
def test_large_recv_into_a_buffer_at_any_alignment(loop, offset):
    # ferroloop reads into a misaligned buffer of 4 KiB or more in two pieces (the head up to a
    # 64-byte boundary, then the rest): the bytes, the count and what is left must be one recv's.
    a, b = socket_pair()
    payload = bytes(range(251)) * 120  # 30,120 bytes

    async def main():
        storage = bytearray(70_000)
        view = memoryview(storage)[offset : offset + 65_536]
        a.sendall(payload)
        got = 0
        while got < len(payload):
            got += await loop.sock_recv_into(b, view[got:])
        assert got == len(payload)
        assert bytes(view[:got]) == payload
        assert not any(storage[:offset]) and not any(storage[offset + got :])
        a.send(b"tail")
        return await loop.sock_recv_into(b, view[5:9000])

    try:
        assert loop.run_until_complete(main()) == 4
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_sendall_of_more_than_the_socket_buffer_waits_and_delivers_everything(loop, kind):
    a, b = tcp_pair()
    payload = bytes(range(256)) * 20_000  # 5 MB: several waits for writability
    data = {"bytes": payload, "bytearray": bytearray(payload), "memoryview": memoryview(payload)}[kind]

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, data))
        await asyncio.sleep(0.01)
        assert not sender.done()
        assert _watched(loop, a.fileno()) == (False, True)
        got = bytearray()
        while len(got) < len(payload):
            got += await loop.sock_recv(b, 65536)
        assert await sender is None
        await asyncio.sleep(0)
        assert _watched(loop, a.fileno()) == (False, False)
        return bytes(got)

    try:
        assert loop.run_until_complete(main()) == payload
    finally:
        a.close()
        b.close()


def test_sendall_of_nothing(loop):
    a, b = socket_pair()
    try:
        assert loop.run_until_complete(loop.sock_sendall(a, b"")) is None
    finally:
        a.close()
        b.close()


def test_cancelled_recv_stops_watching_and_loses_no_data(loop):
    a, b = socket_pair()

    async def main():
        waiting = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0)
        assert _watched(loop, b.fileno()) == (False, False)
        a.send(b"kept")
        return await loop.sock_recv(b, 100)

    try:
        assert loop.run_until_complete(main()) == b"kept"
    finally:
        a.close()
        b.close()


def test_cancelled_sendall_stops_watching(loop):
    a, b = tcp_pair()

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, b"x" * 20_000_000))
        await asyncio.sleep(0.01)
        assert _watched(loop, a.fileno()) == (False, True)
        sender.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sender
        await asyncio.sleep(0)
        return _watched(loop, a.fileno())

    try:
        assert loop.run_until_complete(main()) == (False, False)
    finally:
        a.close()
        b.close()


def test_a_reader_added_over_a_waiting_recv_replaces_it(loop):
    """add_reader on the fd cancels the wait's handle: the wait's done callback must then
    leave the new reader alone (asyncio's `handle.cancelled()` check)."""
    a, b = socket_pair()
    calls = []

    async def main():
        waiting = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        loop.add_reader(b.fileno(), calls.append, "reader")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await asyncio.sleep(0)
        watched = _watched(loop, b.fileno())
        a.send(b"x")
        await asyncio.sleep(0.01)
        loop.remove_reader(b.fileno())
        return watched

    try:
        assert loop.run_until_complete(main()) == (True, False)
        assert calls and set(calls) == {"reader"}
    finally:
        a.close()
        b.close()


def test_sock_methods_are_coroutines(loop):
    a, b = socket_pair()

    async def main():
        a.send(b"x")
        coros = [loop.sock_recv(b, 1), loop.sock_sendall(a, b"y"), loop.sock_recv_into(b, bytearray(1))]
        assert all(asyncio.iscoroutine(c) for c in coros)
        return [await asyncio.create_task(c) for c in coros]

    try:
        assert loop.run_until_complete(main()) == [b"x", None, 1]
    finally:
        a.close()
        b.close()


def _outcome(loop, method, *args):
    async def main():
        try:
            return ("ok", await getattr(loop, method)(*args))
        except Exception as exc:  # noqa: BLE001 - the comparison is the point
            return (type(exc), str(exc))

    return loop.run_until_complete(main())


_BAD_CALLS = {
    "recv_negative": ("sock_recv", "b", -1),
    "recv_str": ("sock_recv", "b", "10"),
    "recv_float": ("sock_recv", "b", 1.5),
    "recv_huge": ("sock_recv", "b", 1 << 70),
    "recv_into_bytes": ("sock_recv_into", "b", b"immutable"),
    "recv_into_str": ("sock_recv_into", "b", "text"),
    "sendall_str": ("sock_sendall", "a", "text"),
    "sendall_int": ("sock_sendall", "a", 42),
    "recv_closed": ("sock_recv", "closed", 10),
    "recv_into_closed": ("sock_recv_into", "closed", bytearray(10)),
    "sendall_closed": ("sock_sendall", "closed", b"x"),
    "recv_ssl": ("sock_recv", "ssl", 10),
    "sendall_ssl": ("sock_sendall", "ssl", b"x"),
}


@pytest.mark.parametrize("call", sorted(_BAD_CALLS))
def test_bad_calls_raise_what_asyncio_raises(loop, call):
    method, which, arg = _BAD_CALLS[call]
    a, b = socket_pair()
    closed = socket.socket()
    closed.close()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    ssl_sock = context.wrap_socket(socket.socket(), do_handshake_on_connect=False)
    sock = {"a": a, "b": b, "closed": closed, "ssl": ssl_sock}[which]
    reference = asyncio.DefaultEventLoopPolicy().new_event_loop()
    try:
        got = _outcome(loop, method, sock, arg)
        assert got[0] != "ok", got
        assert got == _outcome(reference, method, sock, arg)
    finally:
        reference.close()
        a.close()
        b.close()
        ssl_sock.close()


def test_an_error_while_waiting_reaches_the_awaiting_task(loop):
    a, b = tcp_pair()

    async def main():
        waiting = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        # A reset: close with SO_LINGER 0.
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        a.close()
        with pytest.raises(ConnectionResetError):
            await waiting
        await asyncio.sleep(0)
        return _watched(loop, b.fileno())

    try:
        assert loop.run_until_complete(main()) == (False, False)
    finally:
        a.close()
        b.close()


def test_sendall_to_a_closed_peer(loop):
    a, b = socket_pair()
    b.close()

    async def main():
        with pytest.raises(BrokenPipeError):
            await loop.sock_sendall(a, b"x")

    try:
        loop.run_until_complete(main())
    finally:
        a.close()


def test_a_socket_subclass_takes_its_own_methods(loop):
    class Recording(socket.socket):
        calls = []

        def recv(self, n, *flags):
            self.calls.append(("recv", n))
            return super().recv(n, *flags)

        def send(self, data, *flags):
            self.calls.append(("send", len(data)))
            return super().send(data, *flags)

    a, b = socket.socketpair()
    ra = Recording(fileno=a.detach())
    rb = Recording(fileno=b.detach())
    ra.setblocking(False)
    rb.setblocking(False)

    async def main():
        await loop.sock_sendall(ra, b"hello")
        return await loop.sock_recv(rb, 10)

    try:
        assert loop.run_until_complete(main()) == b"hello"
        assert Recording.calls == [("send", 5), ("recv", 10)]
    finally:
        ra.close()
        rb.close()


def test_blocking_socket_in_debug_mode(loop):
    a, b = socket.socketpair()
    loop.set_debug(True)

    async def main():
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            await loop.sock_recv(b, 1)
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            await loop.sock_sendall(a, b"x")
        with pytest.raises(ValueError, match="the socket must be non-blocking"):
            await loop.sock_recv_into(b, bytearray(1))

    try:
        loop.run_until_complete(main())
    finally:
        a.close()
        b.close()


def test_fd_of_a_transport_is_refused_when_the_call_has_to_wait(loop):
    a, b = socket_pair()

    async def main():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=b)
        try:
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv(b, 10)
            with pytest.raises(RuntimeError, match="is used by transport"):
                await loop.sock_recv_into(b, bytearray(10))
        finally:
            transport.close()
            await asyncio.sleep(0)

    try:
        loop.run_until_complete(main())
    finally:
        a.close()


@pytest.mark.parametrize("ending", ["cancelled", "abandoned"])
def test_a_wait_pending_at_close_is_freed(loop_factory, ending):
    """A recv still waiting when the loop closes, its task cancelled or abandoned, leaves
    nothing behind that keeps the socket alive (an abandoned one is a reference cycle through
    the future's callbacks, for the cyclic GC)."""
    loop = loop_factory()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed..."

    def run():
        a, b = socket_pair()

        async def main():
            loop.create_task(loop.sock_recv(b, 10))
            await asyncio.sleep(0.01)

        loop.run_until_complete(main())
        a.close()
        b.close()
        if ending == "cancelled":
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0.01))
        return weakref.ref(b)

    ref = run()
    loop.close()
    gc.collect()
    assert ref() is None


def test_sock_echo_between_many_tasks(loop):
    """A small echo service on sock_* (many waits on both sides, several sockets at once)."""
    pairs = [tcp_pair() for _ in range(4)]
    message = bytes(range(256)) * 8

    async def serve(sock):
        while data := await loop.sock_recv(sock, 65536):
            await loop.sock_sendall(sock, data)

    async def client(sock):
        for _ in range(50):
            await loop.sock_sendall(sock, message)
            got = bytearray()
            while len(got) < len(message):
                got += await loop.sock_recv(sock, len(message) - len(got))
            assert got == message
        sock.shutdown(socket.SHUT_WR)

    async def main():
        servers = [loop.create_task(serve(s)) for _, s in pairs]
        await asyncio.gather(*[client(c) for c, _ in pairs])
        await asyncio.gather(*servers)

    try:
        loop.run_until_complete(main())
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_data_arriving_after_a_recv_leaves_the_loop_waiting(loop):
    """After a sock_recv, no reader is left (asyncio removes it): data that arrives then is
    not waited for, and must not make every poll return at once (ferroloop keeps the kernel's
    registration of a finished recv until the socket waits again or a poll reports it)."""
    a, b = socket_pair()

    async def first_recv():
        loop.call_later(0.01, a.send, b"one")
        return await loop.sock_recv(b, 100)

    try:
        assert loop.run_until_complete(first_recv()) == b"one"
        # The recv's done callback ran before the task resumed: no reader is left.
        assert _watched(loop, b.fileno()) == (False, False)
        a.send(b"two")
        calls = []
        loop.call_later(0.05, calls.append, "timer")
        iterations = 0
        while not calls and iterations < 1000:
            loop._run_once()
            iterations += 1
        assert calls == ["timer"]
        assert iterations <= 3
        # The data is still there for the next recv, at once.
        assert loop.run_until_complete(loop.sock_recv(b, 100)) == b"two"
    finally:
        a.close()
        b.close()


def test_recv_on_a_new_socket_with_the_number_of_a_closed_one(loop):
    """A socket let go right after a recv, and another one given its fd number: the new
    socket's wait must reach the kernel (the old registration died with the old socket)."""
    a, b = socket_pair()

    async def main():
        loop.call_later(0.01, a.send, b"old")
        assert await loop.sock_recv(b, 100) == b"old"
        await asyncio.sleep(0)
        c, d = socket_pair()
        # Give b's number to the new socket: dup2 closes b's socket and reuses the number in
        # one step (a close followed by a reuse could let another thread take the number).
        # b's fileno() is -1 from now on, as after close().
        number = b.detach()
        os.dup2(d.fileno(), number)
        d.close()
        d = socket.socket(fileno=number)
        d.setblocking(False)
        a.close()
        try:
            waiting = loop.create_task(loop.sock_recv(d, 100))
            await asyncio.sleep(0.01)
            c.send(b"new")
            return await asyncio.wait_for(waiting, 5)
        finally:
            c.close()
            d.close()

    assert loop.run_until_complete(main()) == b"new"


def test_two_sockets_alternating_waits(loop):
    """Waits of two sockets (and a plain reader on a third fd) interleaved: each gets its
    own data."""
    pairs = [socket_pair() for _ in range(2)]
    extra_a, extra_b = socket_pair()
    seen = []

    async def reader(i, sock):
        out = []
        for _ in range(20):
            out.append(await loop.sock_recv(sock, 100))
        return i, out

    async def writer():
        for n in range(20):
            for i, (a, _) in enumerate(pairs):
                a.send(f"{i}:{n};".encode())
                await asyncio.sleep(0.001)
            extra_a.send(b"x")

    async def main():
        loop.add_reader(extra_b.fileno(), lambda: seen.append(extra_b.recv(100)))
        try:
            results = await asyncio.gather(
                *[reader(i, b) for i, (_, b) in enumerate(pairs)], writer()
            )
        finally:
            loop.remove_reader(extra_b.fileno())
        return results[:2]

    try:
        for i, out in loop.run_until_complete(main()):
            assert b"".join(out) == b"".join(f"{i}:{n};".encode() for n in range(20))
        assert b"".join(seen) == b"x" * 20
    finally:
        for a, b in pairs + [(extra_a, extra_b)]:
            a.close()
            b.close()
