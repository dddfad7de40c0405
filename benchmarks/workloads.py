"""Benchmark workloads: the same code runs on every loop.

A throughput workload is ``fn(loop, n) -> ops``: it runs about ``n`` operations on ``loop``
(which is not running) and returns the number of operations it actually did. Its per-operation
structure does not depend on ``n`` (batches of fixed size are repeated), so the child process
can scale ``n`` to hit a target duration without changing what is measured.

A memory workload is ``fn(loop_factory) -> dict`` and reports its own numbers.
"""

import asyncio
import gc
import os
import threading

# name -> (function, warm-up n, granularity: n is rounded to a multiple of it)
THROUGHPUT = {}
# name -> function
MEMORY = {}


def throughput(name, warmup, step=1):
    def register(fn):
        fn.__doc__ = (fn.__doc__ or "").strip()
        THROUGHPUT[name] = (fn, warmup, step)
        return fn

    return register


def memory(name):
    def register(fn):
        MEMORY[name] = fn
        return fn

    return register


def _noop(*args):
    pass


async def _return_now():
    return None


async def _sleep0_once():
    await asyncio.sleep(0)


# -- callbacks ---------------------------------------------------------------------------------


@throughput("call_soon", warmup=20_000, step=1000)
def call_soon(loop, n):
    """loop.call_soon(cb): 1000 callbacks in flight, each run schedules the next until n ran."""
    batch = 1000
    state = [0, batch]  # ran, scheduled

    def cb():
        state[0] += 1
        if state[1] < n:
            state[1] += 1
            loop.call_soon(cb)
        elif state[0] == n:
            loop.stop()

    for _ in range(batch):
        loop.call_soon(cb)
    loop.run_forever()
    return state[0]


@throughput("call_soon_native", warmup=20_000, step=1000)
def call_soon_native(loop, n):
    """loop.call_soon(f) with f a C callable (itertools.count().__next__), 1000 per loop
    iteration from one Python callback: the loop's own cost per callback, little Python."""
    import itertools

    batch = 1000
    count = itertools.count()
    f = count.__next__
    done = [0]

    def step():
        call_soon = loop.call_soon
        for _ in range(batch):
            call_soon(f)
        done[0] += batch
        if done[0] >= n:
            loop.call_soon(loop.stop)
        else:
            loop.call_soon(step)

    loop.call_soon(step)
    loop.run_forever()
    return done[0]


@throughput("timer_fire", warmup=10_000, step=1000)
def timer_fire(loop, n):
    """call_later(d, cb) with 1000 distinct tiny delays (0-100 us, shuffled order) per batch,
    all fired; the last timer of a batch schedules the next batch."""
    batch = 1000
    delays = [((i * 7919) % batch) * 1e-7 for i in range(batch)]
    state = [0, 0]  # fired, scheduled

    def cb():
        state[0] += 1
        if state[0] == state[1]:
            if state[1] >= n:
                loop.stop()
            else:
                schedule()

    def schedule():
        call_later = loop.call_later
        for d in delays:
            call_later(d, cb)
        state[1] += batch

    loop.call_soon(schedule)
    loop.run_forever()
    return state[0]


@throughput("timer_cancel", warmup=20_000, step=100)
def timer_cancel(loop, n):
    """The wait_for pattern: h = call_later(3600, cb); h.cancel(); 100 per loop iteration, so
    the loop purges cancelled timers as it goes."""
    per_iter = 100
    done = [0]

    def step():
        call_later = loop.call_later
        for _ in range(per_iter):
            h = call_later(3600, _noop)
            h.cancel()
        done[0] += per_iter
        if done[0] >= n:
            loop.stop()
        else:
            loop.call_soon(step)

    loop.call_soon(step)
    loop.run_forever()
    return done[0]


@throughput("threadsafe", warmup=20_000, step=1000)
def threadsafe(loop, n):
    """A producer thread posts n callbacks with call_soon_threadsafe; until all of them ran."""
    count = [0]

    def cb():
        count[0] += 1
        if count[0] == n:
            loop.stop()

    def producer():
        post = loop.call_soon_threadsafe
        for _ in range(n):
            post(cb)

    thread = threading.Thread(target=producer)
    loop.call_soon(thread.start)
    loop.run_forever()
    thread.join()
    return count[0]


# -- coroutines --------------------------------------------------------------------------------


@throughput("tasks", warmup=10_000, step=100)
def tasks(loop, n):
    """await loop.create_task(coro()) where coro returns at once, one after the other."""

    async def main():
        create_task = loop.create_task
        for _ in range(n):
            await create_task(_return_now())

    loop.run_until_complete(main())
    return n


@throughput("tasks_sleep0", warmup=10_000, step=100)
def tasks_sleep0(loop, n):
    """await loop.create_task(coro()) where coro does one await asyncio.sleep(0)."""

    async def main():
        create_task = loop.create_task
        for _ in range(n):
            await create_task(_sleep0_once())

    loop.run_until_complete(main())
    return n


@throughput("gather", warmup=20_000, step=10_000)
def gather(loop, n):
    """await asyncio.gather(*[coro() for _ in range(10_000)]), repeated; ops = coroutines."""
    size = 10_000

    async def main():
        for _ in range(n // size):
            await asyncio.gather(*[_return_now() for _ in range(size)])

    loop.run_until_complete(main())
    return (n // size) * size


@throughput("futures", warmup=20_000, step=100)
def futures(loop, n):
    """f = loop.create_future(); loop.call_soon(f.set_result, i); await f."""

    async def main():
        create_future = loop.create_future
        call_soon = loop.call_soon
        for i in range(n):
            f = create_future()
            call_soon(f.set_result, i)
            await f

    loop.run_until_complete(main())
    return n


@throughput("sleep0_pingpong", warmup=20_000, step=2)
def sleep0_pingpong(loop, n):
    """Two tasks alternating with await asyncio.sleep(0); ops = switches (both tasks)."""
    half = n // 2

    async def player():
        sleep = asyncio.sleep
        for _ in range(half):
            await sleep(0)

    async def main():
        await asyncio.gather(player(), player())

    loop.run_until_complete(main())
    return 2 * half


@throughput("burst_300k", warmup=300_000, step=300_000)
def burst_300k(loop, n):
    """300k call_soon callbacks scheduled at once (all pending), then run; repeated n/300k
    times. Slow when handles are GC-tracked: the collector scans the pending ones."""
    size = 300_000
    state = [0, 0]  # ran, bursts done

    def cb():
        state[0] += 1
        if state[0] == size:
            state[0] = 0
            state[1] += 1
            if state[1] * size >= n:
                loop.stop()
            else:
                loop.call_soon(burst)

    def burst():
        call_soon = loop.call_soon
        for _ in range(size):
            call_soon(cb)

    loop.call_soon(burst)
    loop.run_forever()
    return state[1] * size


# -- network (loopback only) -----------------------------------------------------------------
#
# Request/response over loopback: each client sends a message and waits for its echo before it
# sends the next, so an operation is one round trip through the loop on both ends. Several
# clients run at once, so one loop iteration serves several ready sockets.

_CLIENTS = 4
_MESSAGE = b"x" * 1024


class _EchoServer(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


class _EchoClient(asyncio.Protocol):
    """Sends _MESSAGE, waits until all of it came back, `rounds` times."""

    def __init__(self, rounds, done):
        self.rounds = rounds
        self.done = done
        self.pending = 0

    def connection_made(self, transport):
        self.transport = transport
        self._send()

    def _send(self):
        self.pending = len(_MESSAGE)
        self.transport.write(_MESSAGE)

    def data_received(self, data):
        self.pending -= len(data)
        if self.pending:
            return
        self.rounds -= 1
        if self.rounds:
            self._send()
        else:
            self.transport.close()

    def connection_lost(self, exc):
        if not self.done.done():
            self.done.set_result(self.rounds)


async def _protocol_echo(loop, n, make_server, connect):
    rounds = max(n // _CLIENTS, 1)
    server = await make_server(_EchoServer)
    done = []
    for _ in range(_CLIENTS):
        finished = loop.create_future()
        await connect(lambda finished=finished: _EchoClient(rounds, finished))
        done.append(finished)
    left = await asyncio.gather(*done)
    server.close()
    await server.wait_closed()
    assert not any(left), left
    return rounds * _CLIENTS


@throughput("tcp_echo", warmup=2000, step=_CLIENTS)
def tcp_echo(loop, n):
    """Protocols over TCP: 4 clients, each sending 1 KiB and awaiting its echo; ops = round
    trips."""

    address = []

    async def main():
        async def make_server(factory):
            server = await loop.create_server(factory, "127.0.0.1", 0)
            address.append(server.sockets[0].getsockname())
            return server

        async def connect(factory):
            await loop.create_connection(factory, *address[0])

        return await _protocol_echo(loop, n, make_server, connect)

    return loop.run_until_complete(main())


@throughput("unix_echo", warmup=2000, step=_CLIENTS)
def unix_echo(loop, n):
    """tcp_echo over a Unix socket."""
    import tempfile

    async def main(path):
        async def make_server(factory):
            return await loop.create_unix_server(factory, path)

        async def connect(factory):
            await loop.create_unix_connection(factory, path)

        return await _protocol_echo(loop, n, make_server, connect)

    with tempfile.TemporaryDirectory() as tmp:
        return loop.run_until_complete(main(os.path.join(tmp, "echo.sock")))


@throughput("streams_echo", warmup=2000, step=_CLIENTS)
def streams_echo(loop, n):
    """asyncio streams over TCP: 4 clients, write + drain + readexactly of 1 KiB echoed by a
    start_server handler; ops = round trips."""
    rounds = max(n // _CLIENTS, 1)

    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def client(port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(rounds):
            writer.write(_MESSAGE)
            await writer.drain()
            await reader.readexactly(len(_MESSAGE))
        writer.close()
        await writer.wait_closed()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await asyncio.gather(*[client(port) for _ in range(_CLIENTS)])
        server.close()
        await server.wait_closed()
        return rounds * _CLIENTS

    return loop.run_until_complete(main())


@throughput("sock_echo", warmup=2000, step=_CLIENTS)
def sock_echo(loop, n):
    """loop.sock_sendall/sock_recv on non-blocking TCP sockets: 4 client/server pairs, the
    server side a task echoing what it receives; ops = round trips."""
    import socket

    rounds = max(n // _CLIENTS, 1)
    size = len(_MESSAGE)

    async def serve(sock):
        while data := await loop.sock_recv(sock, 65536):
            await loop.sock_sendall(sock, data)
        sock.close()

    async def client(sock):
        for _ in range(rounds):
            await loop.sock_sendall(sock, _MESSAGE)
            got = 0
            while got < size:
                got += len(await loop.sock_recv(sock, size - got))
        sock.close()

    async def main():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(_CLIENTS)
        listener.setblocking(False)
        pairs = []
        for _ in range(_CLIENTS):
            sock = socket.socket()
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.sock_connect(sock, listener.getsockname())
            server_side, _ = await loop.sock_accept(listener)
            server_side.setblocking(False)
            server_side.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pairs.append((sock, server_side))
        listener.close()
        servers = [loop.create_task(serve(s)) for _, s in pairs]
        await asyncio.gather(*[client(c) for c, _ in pairs])
        await asyncio.gather(*servers)
        return rounds * _CLIENTS

    return loop.run_until_complete(main())


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, rounds, done):
        self.rounds = rounds
        self.done = done

    def connection_made(self, transport):
        self.transport = transport
        transport.sendto(_MESSAGE)

    def datagram_received(self, data, addr):
        self.rounds -= 1
        if self.rounds:
            self.transport.sendto(_MESSAGE)
        elif not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc):
        if not self.done.done():
            self.done.set_exception(exc)


@throughput("udp_echo", warmup=2000, step=_CLIENTS)
def udp_echo(loop, n):
    """Datagram endpoints: 4 clients, each sending a 1 KiB datagram and awaiting its echo;
    ops = round trips. (Loopback does not drop datagrams that are answered one at a time.)"""
    rounds = max(n // _CLIENTS, 1)

    async def main():
        server, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
        address = server.get_extra_info("sockname")
        clients, done = [], []
        for _ in range(_CLIENTS):
            finished = loop.create_future()
            transport, _ = await loop.create_datagram_endpoint(
                lambda finished=finished: _UdpClient(rounds, finished), remote_addr=address
            )
            clients.append(transport)
            done.append(finished)
        await asyncio.wait_for(asyncio.gather(*done), 60)
        for transport in clients:
            transport.close()
        server.close()
        return rounds * _CLIENTS

    return loop.run_until_complete(main())


# -- memory ------------------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def _create_timers(loop, count):
    def create():
        call_later = loop.call_later
        for _ in range(count):
            call_later(3600, _noop)
        loop.stop()

    loop.call_soon(create)
    loop.run_forever()


@memory("mem_timer_handle")
def mem_timer_handle(new_loop, count=100_000):
    """Bytes per pending call_later(3600, cb) handle (the loop holds it, the caller drops it):
    RSS delta (everything, native allocations included) and tracemalloc delta (Python's
    allocator only), over 100k handles, each in a fresh loop."""
    out = {"count": count}
    gc.collect()
    loop = new_loop()
    _create_timers(loop, 1000)  # the loop's own first-use allocations
    gc.collect()
    before = _rss()
    _create_timers(loop, count)
    gc.collect()
    out["rss_bytes_per_handle"] = (_rss() - before) / count
    loop.close()

    import tracemalloc

    loop = new_loop()
    _create_timers(loop, 1000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    _create_timers(loop, count)
    gc.collect()
    out["traced_bytes_per_handle"] = (tracemalloc.get_traced_memory()[0] - before) / count
    tracemalloc.stop()
    loop.close()
    return out


def describe():
    rows = [(name, fn.__doc__) for name, (fn, _, _) in THROUGHPUT.items()]
    rows += [(name, fn.__doc__) for name, fn in MEMORY.items()]
    return rows


if __name__ == "__main__":
    for name, doc in describe():
        print(f"{name}: {' '.join(doc.split())}")
