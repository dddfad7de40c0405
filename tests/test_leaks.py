import asyncio
import gc
import os
import socket
import sys
import weakref

import pytest


class Callback:
    def __call__(self, *args):
        pass


class Arg:
    pass


def test_callback_and_args_freed_after_run(loop):
    cb, arg = Callback(), Arg()
    rcb, rarg = weakref.ref(cb), weakref.ref(arg)
    h = loop.call_soon(cb, arg)
    del cb, arg
    loop.call_soon(loop.stop)
    loop.run_forever()
    del h
    gc.collect()
    assert rcb() is None and rarg() is None


def test_callback_freed_after_cancel(loop):
    cb, arg = Callback(), Arg()
    rcb, rarg = weakref.ref(cb), weakref.ref(arg)
    h = loop.call_soon(cb, arg)
    t = loop.call_later(100, cb, arg)
    del cb, arg
    h.cancel()
    t.cancel()
    loop.call_soon(loop.stop)
    loop.run_forever()
    del h, t
    gc.collect()
    assert rcb() is None and rarg() is None


def test_cancelled_timer_freed_while_loop_alive(loop):
    # cancelled far timers must not keep their callbacks alive forever (the loop purges them)
    refs = []
    for _ in range(200):
        cb = Callback()
        refs.append(weakref.ref(cb))
        loop.call_later(1000, cb).cancel()
        del cb
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_timer_callback_freed_after_fire(loop):
    cb = Callback()
    r = weakref.ref(cb)
    loop.call_later(0, cb)
    del cb
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    gc.collect()
    assert r() is None


def test_pending_freed_on_close(loop):
    cb, arg = Callback(), Arg()
    rcb, rarg = weakref.ref(cb), weakref.ref(arg)
    loop.call_soon(cb, arg)
    loop.call_later(100, cb, arg)
    loop.call_soon_threadsafe(cb, arg)
    del cb, arg
    loop.close()
    gc.collect()
    assert rcb() is None and rarg() is None


def test_loop_freed_after_close(loop_factory):
    lp = loop_factory()
    lp.call_soon(print).cancel()

    async def main():
        await asyncio.sleep(0)

    lp.run_until_complete(main())
    lp.close()
    r = weakref.ref(lp)
    loop_factory.loops.remove(lp)
    del lp
    gc.collect()
    assert r() is None


def open_fds():
    return sorted(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_close_releases_fds(loop_factory):
    """close() releases the loop's own fds at once, as asyncio's closes its selector: a closed
    loop still referenced (by a test, a traceback, a cycle) holds none. ferroloop kept its two
    epoll fds and its eventfd until the loop object was freed."""
    before = open_fds()
    lp = loop_factory()
    a, b = socket.socketpair()
    lp.add_reader(a.fileno(), print)
    lp.run_until_complete(asyncio.sleep(0))
    lp.call_soon_threadsafe(print)
    lp.close()
    a.close()
    b.close()
    assert open_fds() == before
    # Closed means closed: no fd is used again behind the loop's back.
    with pytest.raises(RuntimeError, match="closed"):
        lp.call_soon_threadsafe(print)
    with pytest.raises(RuntimeError, match="closed"):
        lp.run_forever()
    assert lp.remove_reader(a.fileno()) is False


def test_loop_freed_with_pending_cycle(loop_factory):
    lp = loop_factory()
    lp.call_soon(lp.stop)  # loop -> handle -> bound method -> loop
    lp.call_later(100, lp.stop)
    lp.close()
    r = weakref.ref(lp)
    loop_factory.loops.remove(lp)
    del lp
    gc.collect()
    assert r() is None


def test_io_callback_freed_after_remove(loop):
    import socket

    a, b = socket.socketpair()
    try:
        cb = Callback()
        r = weakref.ref(cb)
        loop.add_reader(b, cb)
        loop.add_writer(a, cb)
        del cb
        loop.remove_reader(b)
        loop.remove_writer(a)
        loop.call_soon(loop.stop)
        loop.run_forever()
        gc.collect()
        assert r() is None
    finally:
        a.close()
        b.close()


@pytest.mark.nodebug
def test_burst_300k_call_soon(loop):
    n = 300_000
    count = [0]

    def cb():
        count[0] += 1

    for _ in range(n):
        loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert count[0] == n


def test_refcounts_stable_over_runs(loop):
    cb = Callback()
    arg = Arg()

    def cycle():
        for _ in range(100):
            loop.call_soon(cb, arg)
            loop.call_later(0, cb, arg)
            loop.call_later(100, cb, arg).cancel()
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.call_later(0.001, loop.stop)
        loop.run_forever()

    cycle()
    gc.collect()
    before = (sys.getrefcount(cb), sys.getrefcount(arg))
    cycle()
    cycle()
    gc.collect()
    after = (sys.getrefcount(cb), sys.getrefcount(arg))
    assert after == before


def test_exception_in_callback_not_leaked(loop):
    refs = []
    loop.set_exception_handler(lambda lp, ctx: None)

    def bad():
        e = ValueError("leak?")
        refs.append(weakref.ref(e))
        raise e

    for _ in range(10):
        loop.call_soon(bad)
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("n", [1000])
def test_many_tasks_freed(loop, n):
    refs = []

    async def child():
        await asyncio.sleep(0)

    async def main():
        tasks = [loop.create_task(child()) for _ in range(n)]
        refs.extend(weakref.ref(t) for t in tasks)
        await asyncio.gather(*tasks)

    loop.run_until_complete(main())
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


@pytest.mark.parametrize("debug", [False, True], ids=["native", "debug"])
def test_closed_connections_leave_no_cyclic_garbage(debug):
    # asyncio's transports keep bound methods of themselves in their __dict__ (`_read_ready_cb`,
    # 3.12+'s `_write_ready`), so every closed connection is garbage for the cyclic GC (7
    # objects: the transport, its dicts, socket objects and addresses). ferroloop lets go of
    # them at connection_lost, as uvloop's transports leave nothing either.
    import ferroloop

    loop = ferroloop.new_event_loop()
    loop.set_debug(debug)
    lost = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

        def connection_lost(self, exc):
            lost.append(weakref.ref(self.transport))
            self.transport = None

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = []
        for i in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping %d" % i)
            assert await reader.readexactly(5 + len(str(i))) == b"ping %d" % i
            if i % 2:
                writer.close()  # the server sees EOF and closes
            else:
                writer.transport.abort()  # the server may see a reset
            await writer.wait_closed()
            clients.append(weakref.ref(writer.transport))
            del reader, writer
        while len(lost) < 20:
            await asyncio.sleep(0.001)
        server.close()
        await server.wait_closed()
        return clients

    gc.collect()
    gc.disable()
    try:
        clients = loop.run_until_complete(main())
        assert len(lost) == 20
        assert [ref() for ref in lost] == [None] * 20, "a closed server transport is alive"
        assert [ref() for ref in clients] == [None] * 20, "a closed client transport is alive"
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        kinds = {type(o).__name__ for o in gc.garbage}
        assert not kinds & {"_SelectorSocketTransport", "socket", "TransportSocket", "_Acceptor"}, (
            kinds
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
        loop.close()


def test_closed_datagram_transports_leave_no_cyclic_garbage():
    import socket

    import ferroloop

    loop = ferroloop.new_event_loop()
    refs = []

    async def main():
        for _ in range(5):
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
            )
            peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            peer.bind(("127.0.0.1", 0))
            transport.sendto(b"x", peer.getsockname())  # the native sendto
            assert peer.recv(10) == b"x"
            peer.close()
            transport.close()
            await asyncio.sleep(0)
            refs.append(weakref.ref(transport))
            del transport

    gc.collect()
    gc.disable()
    try:
        loop.run_until_complete(main())
        loop.run_until_complete(asyncio.sleep(0))
        assert [ref() for ref in refs] == [None] * 5, "a closed datagram transport is alive"
    finally:
        gc.enable()
        loop.close()


@pytest.mark.nodebug
def test_an_accepted_connections_acyclic_objects_are_not_gc_tracked():
    # ferroloop leaves out of the cyclic GC what cannot be part of a cycle: the connection's
    # socket.socket (slots holding an int and a bool), the plain weak reference in
    # loop._transports and the pending extra dict. With hundreds of connections alive, every
    # tracked object is traversed by each collection that their own allocations trigger.
    # (Outside debug mode: in it, accepting is asyncio's own code.)
    import ferroloop

    loop = ferroloop.new_event_loop()
    loop.set_debug(False)
    transports = []
    opened = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport):
            transports.append(transport)

    async def main():
        server = await loop.create_server(Keep, "127.0.0.1", 0)
        opened.append(server)
        client = socket.create_connection(server.sockets[0].getsockname())
        opened.append(client)
        while not transports:
            await asyncio.sleep(0.001)
        (transport,) = transports
        sock = transport._sock
        assert type(sock) is socket.socket
        assert not gc.is_tracked(sock)
        assert not gc.is_tracked(loop._transports.data[sock.fileno()])
        assert gc.is_tracked(transport)
        # What asyncio's own code does with the socket still works.
        assert transport.get_extra_info("socket").fileno() == sock.fileno()
        assert transport.get_extra_info("peername") == client.getsockname()

    async def close():
        for transport in transports:
            transport.close()
        for thing in opened:
            thing.close()
        if opened:
            await opened[0].wait_closed()

    try:
        loop.run_until_complete(main())
    finally:
        loop.run_until_complete(close())
        loop.close()
