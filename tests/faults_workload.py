"""A workload run under the fault shim (``crates/ferroloop-faults``) by ``test_faults.py``.

    python faults_workload.py LOOP WORKLOAD [SEED]

LOOP is ``asyncio`` or ``ferroloop``; WORKLOAD one of ``WORKLOADS``. The process is started
with ``LD_PRELOAD`` naming the shim and ``FERROLOOP_FAULTS`` configuring it; the workload arms
the shim once its loop exists (the loop's self-pipe protected) and disarms it before the loop
closes. It prints one JSON object: ``outcome`` (what must be equal on both loops, and for the
transient faults equal to a run without faults), ``faults`` (what the shim injected),
``fds_before``/``fds_after`` (open fds before the loop was made and after it was closed and
collected; ``fds_after_close`` after ``close()`` only).
"""

import asyncio
import ctypes
import gc
import hashlib
import json
import os
import random
import socket
import ssl
import sys
import tempfile
import typing

LOOP_NAME, WORKLOAD = sys.argv[1], sys.argv[2]
SEED = int(sys.argv[3]) if len(sys.argv) > 3 else 1
CERT_DIR = os.environ.get("FAULTS_CERT_DIR")
TIME_LIMIT = 40.0

shim = ctypes.CDLL(None)
shim.ferroloop_faults_report.restype = ctypes.c_size_t


def fault_report():
    buf = ctypes.create_string_buffer(65536)
    shim.ferroloop_faults_report(buf, len(buf))
    return {
        name: int(count) for name, count in (line.split("=") for line in buf.value.decode().split())
    }


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def payload(n, salt):
    return random.Random(SEED * 1000 + salt).randbytes(n)


def chunks(data, salt, largest=65536):
    rng = random.Random(SEED * 7919 + salt)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, largest)
        out.append(data[i : i + n])
        i += n
    return out


def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]


def describe(exc):
    """An exception as both loops must give it: class and errno."""
    if exc is None:
        return None
    return [type(exc).__name__, getattr(exc, "errno", None)]


ERRORS = []  # the loop's exception handler calls


def record_error(loop, context):
    ERRORS.append([context.get("message"), describe(context.get("exception"))])


async def wait_until(predicate, what):
    for _ in range(int(TIME_LIMIT * 100)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def unix_path():
    return os.path.join(tempfile.mkdtemp(prefix="faults-"), "s")


# --------------------------------------------------------------------------------------------
# Echo with protocols (TCP, Unix): bytes in == bytes out


class EchoServer(asyncio.Protocol):
    live = 0

    def connection_made(self, transport):
        EchoServer.live += 1
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        return False

    def connection_lost(self, exc):
        EchoServer.live -= 1


class EchoClient(asyncio.Protocol):
    def __init__(self, expected):
        self.expected = expected
        self.received = bytearray()
        self.done = asyncio.get_running_loop().create_future()
        self.lost = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.received += data
        if len(self.received) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        self.lost = exc
        if not self.done.done():
            self.done.set_result(None)


class BufferedEchoClient(asyncio.BufferedProtocol):
    """EchoClient as a BufferedProtocol (the transport reads into its buffer)."""

    def __init__(self, expected):
        self.expected = expected
        self.received = bytearray()
        self.buffer = bytearray(16384)
        self.done = asyncio.get_running_loop().create_future()
        self.lost = None

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buffer

    def buffer_updated(self, nbytes):
        self.received += self.buffer[:nbytes]
        if len(self.received) >= self.expected and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc):
        self.lost = exc
        if not self.done.done():
            self.done.set_result(None)


async def proto_echo(unix):
    loop = asyncio.get_running_loop()
    if unix:
        path = unix_path()
        server = await loop.create_unix_server(EchoServer, path)
    else:
        server = await loop.create_server(EchoServer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

    async def one(i):
        data = payload(300_000, i)
        kind = BufferedEchoClient if i == 2 else EchoClient
        if unix:
            transport, client = await loop.create_unix_connection(lambda: kind(len(data)), path)
        else:
            transport, client = await loop.create_connection(
                lambda: kind(len(data)), "127.0.0.1", port
            )
        for part in chunks(data, i):
            transport.write(part)
        await client.done
        transport.close()
        await wait_until(lambda: client.lost is not None or transport.is_closing(), "close")
        return [len(client.received), digest(client.received) == digest(data)]

    results = await asyncio.gather(*(one(i) for i in range(3)))
    await wait_until(lambda: EchoServer.live == 0, "server connections closed")
    server.close()
    await server.wait_closed()
    return results


# --------------------------------------------------------------------------------------------
# Echo with streams (TCP, Unix, TLS)


def tls_contexts():
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(
        os.path.join(CERT_DIR, "cert.pem"), os.path.join(CERT_DIR, "key.pem")
    )
    client_ctx = ssl.create_default_context(cafile=os.path.join(CERT_DIR, "cert.pem"))
    return server_ctx, client_ctx


async def stream_echo(kind):
    live = [0]

    async def handle(reader, writer):
        live[0] += 1
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()
            live[0] -= 1

    server_ctx = client_ctx = None
    if kind == "tls":
        server_ctx, client_ctx = tls_contexts()
    if kind == "unix":
        path = unix_path()
        server = await asyncio.start_unix_server(handle, path)
    else:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]

    async def one(i):
        data = payload(200_000, 10 + i)
        if kind == "unix":
            reader, writer = await asyncio.open_unix_connection(path)
        else:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=client_ctx,
                server_hostname="localhost" if client_ctx else None,
            )

        async def send():
            for part in chunks(data, 10 + i):
                writer.write(part)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        received = await reader.readexactly(len(data))
        await sender
        writer.close()
        await writer.wait_closed()
        return [len(received), digest(received) == digest(data)]

    results = await asyncio.gather(*(one(i) for i in range(3)))
    await wait_until(lambda: live[0] == 0, "server connections closed")
    server.close()
    await server.wait_closed()
    return results


# --------------------------------------------------------------------------------------------
# Echo with loop.sock_* (TCP, Unix)


async def sock_echo(unix):
    loop = asyncio.get_running_loop()
    if unix:
        path = unix_path()
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(path)
        address = path
    else:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        address = listener.getsockname()
    listener.listen(8)
    listener.setblocking(False)

    async def serve_one(conn):
        with conn:
            while data := await loop.sock_recv(conn, 65536):
                await loop.sock_sendall(conn, data)

    async def serve():
        # One accept at a time: a second sock_accept on the same socket would replace the
        # first one's reader.
        servers = []
        while len(servers) < 3:
            try:
                conn, _ = await loop.sock_accept(listener)
            except ConnectionAbortedError:
                continue  # asyncio's sock_accept passes ECONNABORTED on: a server retries
            servers.append(asyncio.ensure_future(serve_one(conn)))
        await asyncio.gather(*servers)

    async def one(i):
        data = payload(200_000, 20 + i)
        client = socket.socket(listener.family)
        client.setblocking(False)
        with client:
            await loop.sock_connect(client, address)

            async def send():
                for part in chunks(data, 20 + i):
                    await loop.sock_sendall(client, part)

            sender = asyncio.ensure_future(send())
            received = bytearray()
            buf = bytearray(65536)
            while len(received) < len(data):
                if i % 2:
                    n = await loop.sock_recv_into(client, buf)
                    chunk = bytes(buf[:n])
                else:
                    chunk = await loop.sock_recv(client, 65536)
                if not chunk:
                    break
                received += chunk
            await sender
        return [len(received), digest(received) == digest(data)]

    server = asyncio.ensure_future(serve())
    results = await asyncio.gather(*(one(i) for i in range(3)))
    await server
    listener.close()
    return results


# --------------------------------------------------------------------------------------------
# UDP echo: every datagram once, intact


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self):
        self.received = []
        self.errors = []
        self.event = asyncio.Event()

    def datagram_received(self, data, addr):
        self.received.append(data)
        self.event.set()

    def error_received(self, exc):
        self.errors.append(describe(exc))


async def udp_echo():
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    address = server.get_extra_info("sockname")
    client, proto = await loop.create_datagram_endpoint(UdpClient, remote_addr=address)
    rng = random.Random(SEED)
    sent = [i.to_bytes(4, "big") + rng.randbytes(rng.randint(0, 1400)) for i in range(300)]
    window = 16
    for i, datagram in enumerate(sent):
        client.sendto(datagram)
        while i + 1 - len(proto.received) > window:
            proto.event.clear()
            await asyncio.wait_for(proto.event.wait(), TIME_LIMIT)
    await wait_until(lambda: len(proto.received) >= len(sent), "all datagrams echoed")
    client.close()
    server.close()
    await asyncio.sleep(0)
    return [
        len(proto.received),
        sorted(proto.received) == sorted(sent),
        len(set(proto.received)) == len(sent),
        proto.errors,
    ]


# --------------------------------------------------------------------------------------------
# Pipes and subprocesses


class PipeReader(asyncio.Protocol):
    def __init__(self):
        self.received = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data):
        self.received += data

    def connection_lost(self, exc):
        self.lost.set_result(describe(exc))


async def pipe_echo():
    loop = asyncio.get_running_loop()
    data = payload(500_000, 30)
    r, w = os.pipe()
    read_transport, reader = await loop.connect_read_pipe(PipeReader, os.fdopen(r, "rb", 0))
    write_transport, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))
    for part in chunks(data, 30, largest=8192):
        write_transport.write(part)
        if write_transport.get_write_buffer_size() > 256 * 1024:
            await asyncio.sleep(0.001)
    write_transport.close()
    lost = await asyncio.wait_for(reader.lost, TIME_LIMIT)
    read_transport.close()
    return [len(reader.received), digest(reader.received) == digest(data), lost]


async def subprocess_echo():
    data = payload(300_000, 40)
    results = []
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )

        async def feed(proc=proc):
            # Small writes, each drained: many write calls for the faults to hit.
            for part in chunks(data, 40, largest=8192):
                proc.stdin.write(part)
                await proc.stdin.drain()
            proc.stdin.close()
            await proc.stdin.wait_closed()

        feeder = asyncio.ensure_future(feed())
        out = await proc.stdout.read()
        await feeder
        results.append([len(out), digest(out) == digest(data), await proc.wait()])
    return results


# --------------------------------------------------------------------------------------------
# Fatal faults: what each side is told


class LockstepClient(asyncio.Protocol):
    def __init__(self, parts):
        self.parts = list(parts)
        self.echoed = 0
        self.pending = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.parts[0])

    def data_received(self, data):
        self.pending += data
        while self.echoed < len(self.parts) and len(self.pending) >= len(self.parts[self.echoed]):
            del self.pending[: len(self.parts[self.echoed])]
            self.echoed += 1
            if self.echoed < len(self.parts):
                self.transport.write(self.parts[self.echoed])
            else:
                self.transport.close()

    def connection_lost(self, exc):
        self.lost.set_result(describe(exc))


class RecordingServer(EchoServer):
    lost: typing.ClassVar[list] = []

    def connection_lost(self, exc):
        super().connection_lost(exc)
        RecordingServer.lost.append(describe(exc))


async def proto_lockstep():
    """A client writes five parts, each after the echo of the one before: a fault on the N-th
    send or recv hits a known side at a known point."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(RecordingServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    parts = [payload(1000 * (i + 1), 50 + i) for i in range(5)]
    _, client = await loop.create_connection(lambda: LockstepClient(parts), "127.0.0.1", port)
    client_lost = await asyncio.wait_for(client.lost, TIME_LIMIT)
    await wait_until(lambda: EchoServer.live == 0, "server side closed")
    server.close()
    await server.wait_closed()
    return {
        "client_lost": client_lost,
        "echoed": client.echoed,
        "server_lost": RecordingServer.lost,
    }


async def sock_lockstep():
    """sock_sendall / sock_recv of a client against a sock_* echo server: the exception the
    faulted call raises."""
    loop = asyncio.get_running_loop()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)

    async def serve():
        conn, _ = await loop.sock_accept(listener)
        with conn:
            try:
                while data := await loop.sock_recv(conn, 65536):
                    await loop.sock_sendall(conn, data)
            except OSError as exc:
                return describe(exc)
        return None

    server = asyncio.ensure_future(serve())
    client = socket.socket()
    client.setblocking(False)
    outcome = {"echoed": 0, "client_error": None}
    with client:
        await loop.sock_connect(client, listener.getsockname())
        try:
            for i in range(5):
                part = payload(1000 * (i + 1), 60 + i)
                await loop.sock_sendall(client, part)
                got = bytearray()
                while len(got) < len(part):
                    chunk = await loop.sock_recv(client, 65536)
                    if not chunk:
                        raise EOFError
                    got += chunk
                outcome["echoed"] += 1
        except (OSError, EOFError) as exc:
            outcome["client_error"] = describe(exc)
    outcome["server_error"] = await asyncio.wait_for(server, TIME_LIMIT)
    listener.close()
    return outcome


async def udp_count():
    """Datagrams to a counting server: each one either arrives or reaches error_received."""
    loop = asyncio.get_running_loop()
    received = []

    class Counter(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            received.append(data)

    server, _ = await loop.create_datagram_endpoint(Counter, local_addr=("127.0.0.1", 0))
    address = server.get_extra_info("sockname")
    client, proto = await loop.create_datagram_endpoint(UdpClient, local_addr=("127.0.0.1", 0))
    for i in range(100):
        client.sendto(i.to_bytes(4, "big"), address)
        await asyncio.sleep(0)
    expected = 100 - len(proto.errors)
    await wait_until(lambda: len(received) >= expected, "datagrams")
    await asyncio.sleep(0.05)
    client.close()
    server.close()
    await asyncio.sleep(0)
    return {
        "received": len(received),
        "errors": len(proto.errors),
        "error_types": sorted({tuple(e) for e in proto.errors}),
        "unique": len(set(received)) == len(received),
    }


async def accept_many():
    """Four connections to a protocol echo server whose accept fails: all of them served."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoServer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    echoed = []
    for i in range(4):
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), TIME_LIMIT
        )
        writer.write(b"ping %d" % i)
        echoed.append((await asyncio.wait_for(reader.readexactly(6), TIME_LIMIT)).decode())
        writer.close()
        await writer.wait_closed()
    await wait_until(lambda: EchoServer.live == 0, "server side closed")
    server.close()
    await server.wait_closed()
    return {"echoed": echoed}


async def connect_once():
    """Two connections: the faulted one raises what asyncio raises, the next one works."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    outcomes = []
    for _ in range(2):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            outcomes.append(describe(exc) + [str(exc).replace(str(port), "PORT")])
        else:
            outcomes.append(await reader.read())
            writer.close()
            await writer.wait_closed()
            outcomes[-1] = ["connected", outcomes[-1].decode()]
    await asyncio.sleep(0.1)
    server.close()
    await server.wait_closed()
    return outcomes


WORKLOADS = {
    "proto_tcp": lambda: proto_echo(unix=False),
    "proto_unix": lambda: proto_echo(unix=True),
    "streams_tcp": lambda: stream_echo("tcp"),
    "streams_unix": lambda: stream_echo("unix"),
    "tls": lambda: stream_echo("tls"),
    "sock_tcp": lambda: sock_echo(unix=False),
    "sock_unix": lambda: sock_echo(unix=True),
    "udp": udp_echo,
    "pipes": pipe_echo,
    "subprocess": subprocess_echo,
    "proto_lockstep": proto_lockstep,
    "sock_lockstep": sock_lockstep,
    "udp_count": udp_count,
    "accept_many": accept_many,
    "connect_once": connect_once,
}


async def main():
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(record_error)
    for attr in ("_ssock", "_csock"):
        sock = getattr(loop, attr, None)
        if sock is not None:
            shim.ferroloop_faults_protect(sock.fileno(), 1)
    shim.ferroloop_faults_arm(1)
    try:
        return await asyncio.wait_for(WORKLOADS[WORKLOAD](), TIME_LIMIT)
    finally:
        shim.ferroloop_faults_arm(0)
        print("faults injected:", fault_report(), file=sys.stderr)


def run():
    if LOOP_NAME == "ferroloop":
        import ferroloop

        factory = ferroloop.new_event_loop
    else:
        factory = asyncio.DefaultEventLoopPolicy().new_event_loop
    fds_before = open_fds()
    loop = factory()
    try:
        outcome = loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
    fds_after_close = open_fds()
    del loop
    gc.collect()
    fds_after = open_fds()
    print(
        json.dumps(
            {
                "outcome": outcome,
                "errors": ERRORS,
                "faults": fault_report(),
                "fds_before": fds_before,
                "fds_after_close": fds_after_close,
                "fds_after": fds_after,
            }
        )
    )


if __name__ == "__main__":
    run()
