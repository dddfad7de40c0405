"""Servers: accepting connections (ferroloop's native accept loop for plain sockets,
asyncio's ``_accept_connection`` otherwise), on asyncio's loop and on ferroloop."""

import asyncio
import errno
import gc
import os
import socket
import sys
import warnings

import pytest

from conftest import active_connections, run_python, ticker


class Recorder(asyncio.Protocol):
    """Records its callbacks in a shared trace."""

    def __init__(self, trace, name="p"):
        self.trace = trace
        self.name = name
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.nodelay = transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY
        )
        self.trace.append(("made", self.name))

    def data_received(self, data):
        self.trace.append(("data", self.name, data))
        self.transport.write(data.upper())

    def eof_received(self):
        self.trace.append(("eof", self.name))

    def connection_lost(self, exc):
        self.trace.append(("lost", self.name, exc))


def keeping_server(loop, host="127.0.0.1"):
    """A server whose protocol keeps each transport it is given: (server, port, transports)."""
    transports = []

    class Keep(asyncio.Protocol):
        def connection_made(self, transport):
            transports.append(transport)

    server = loop.run_until_complete(loop.create_server(Keep, host, 0))
    return server, server.sockets[0].getsockname()[1], transports


@pytest.mark.nodebug
def test_accept_order_of_steps(loop):
    # asyncio: the accept callback runs after the poll of one iteration, the protocol factory
    # in the next one (the first step of the _accept_connection2 task), connection_made in
    # the one after (scheduled by the transport's __init__). Two clients connected before the
    # loop polls are accepted in one batch.
    trace = []
    names = iter("ab")

    def factory():
        name = next(names)
        trace.append(("factory", name))
        return Recorder(trace, name)

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    try:
        ticker(loop, trace, 5)
        loop.run_until_complete(asyncio.sleep(0.05))
        expected = [
            ("tick", 0),
            # iteration 2: the reader (queued by the poll of iteration 1) accepts both
            ("tick", 1),
            ("factory", "a"),
            ("factory", "b"),
            ("tick", 2),
            ("made", "a"),
            ("made", "b"),
            ("tick", 3),
            ("tick", 4),
        ]
        assert trace[: len(expected)] == expected, trace
    finally:
        for c in clients:
            c.close()
        server.close()
        loop.run_until_complete(server.wait_closed())


def test_accepted_connection_echo_and_extra_info(loop):
    trace = []
    protocols = []

    def factory():
        p = Recorder(trace)
        protocols.append(p)
        return p

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]

    async def client():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        got = await reader.readexactly(5)
        sockname = writer.get_extra_info("sockname")
        writer.close()
        await writer.wait_closed()
        return got, sockname

    got, sockname = loop.run_until_complete(client())
    loop.run_until_complete(asyncio.sleep(0.05))
    assert got == b"HELLO"
    (p,) = protocols
    t = p.transport
    assert isinstance(t, asyncio.Transport)
    assert t.get_extra_info("peername") == sockname
    assert t.get_extra_info("sockname") == server.sockets[0].getsockname()
    sock = t.get_extra_info("socket")
    assert isinstance(sock, asyncio.trsock.TransportSocket)
    assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
    assert p.nodelay
    assert [e[0] for e in trace] == ["made", "data", "eof", "lost"]
    server.close()
    loop.run_until_complete(server.wait_closed())


def test_sockname_of_connections_to_a_wildcard_server_is_each_ones_own(loop):
    # ferroloop reads an IPv4 sockname natively and reuses the previous connection's tuple
    # when the address is the same: connections through two local addresses must still get
    # their own.
    server, port, transports = keeping_server(loop, "0.0.0.0")
    clients = []
    for host in ["127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.1"]:
        clients.append(socket.create_connection((host, port)))
        loop.run_until_complete(asyncio.sleep(0.02))
    try:
        assert [t.get_extra_info("sockname") for t in transports] == [
            (host, port) for host in ["127.0.0.1", "127.0.0.2", "127.0.0.2", "127.0.0.1"]
        ]
        assert [t.get_extra_info("peername") for t in transports] == [
            c.getsockname() for c in clients
        ]
        assert [t.get_extra_info("sockname") for t in transports] == [
            t.get_extra_info("socket").getsockname() for t in transports
        ]
    finally:
        for c in clients:
            c.close()
        for t in transports:
            t.close()
        server.close()
        loop.run_until_complete(server.wait_closed())


def test_accepted_socket_is_non_blocking_and_inheritable_false(loop):
    transports = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            transports.append(transport)

    server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port))
    loop.run_until_complete(asyncio.sleep(0.05))
    (t,) = transports
    raw = t._sock
    assert type(raw) is socket.socket
    assert raw.gettimeout() == 0.0
    assert raw.getblocking() is False
    assert raw.get_inheritable() is False
    assert raw.type == socket.SOCK_STREAM
    assert raw.family == socket.AF_INET
    t.close()
    c.close()
    server.close()
    loop.run_until_complete(server.wait_closed())


def test_ipv6_and_unix_peernames(loop, tmp_path):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    transports = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            transports.append(transport)

    try:
        server6 = loop.run_until_complete(loop.create_server(P, "::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    path = str(tmp_path / "s.sock")
    server_u = loop.run_until_complete(loop.create_unix_server(P, path))
    port = server6.sockets[0].getsockname()[1]
    c6 = socket.create_connection(("::1", port))
    cu = socket.socket(socket.AF_UNIX)
    cu.connect(path)
    loop.run_until_complete(asyncio.sleep(0.05))
    peers = sorted(repr(t.get_extra_info("peername")) for t in transports)
    assert peers == sorted([repr(c6.getsockname()), repr(cu.getsockname())])
    for t in transports:
        t.close()
    c6.close()
    cu.close()
    for s in (server6, server_u):
        s.close()
        loop.run_until_complete(s.wait_closed())


def test_many_connections_in_one_burst(loop):
    # More clients than the backlog argument (the accept batch size; the kernel queues one
    # more than the listen() backlog): two batches, every one served.
    count = 17
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0, backlog=16))
    port = server.sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    loop.run_until_complete(asyncio.sleep(0.1))
    assert len(made) == count
    assert len({t.get_extra_info("peername") for t in made}) == count
    assert active_connections(server) == count
    for c in clients:
        c.close()
    loop.run_until_complete(asyncio.sleep(0.05))
    assert active_connections(server) == 0
    server.close()
    loop.run_until_complete(server.wait_closed())


@pytest.mark.nodebug
def test_protocol_factory_error_is_dropped_outside_debug(loop):
    # asyncio's _accept_connection2 task swallows it outside debug mode; the server goes on.
    calls = []

    def factory():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")
        return asyncio.Protocol()

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    with warnings.catch_warnings():
        # The accepted socket of the failed connection is left to the GC, on both loops.
        warnings.simplefilter("ignore", ResourceWarning)
        c1 = socket.create_connection(("127.0.0.1", port))
        loop.run_until_complete(asyncio.sleep(0.05))
        c2 = socket.create_connection(("127.0.0.1", port))
        loop.run_until_complete(asyncio.sleep(0.05))
        assert len(calls) == 2
        c1.close()
        c2.close()
        server.close()
        loop.run_until_complete(server.wait_closed())
        gc.collect()


@pytest.mark.expect_errors
def test_protocol_factory_error_reported_in_debug(loop, loop_errors):
    loop.set_debug(True)

    def factory():
        raise ValueError("boom")

    server = loop.run_until_complete(loop.create_server(factory, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    with warnings.catch_warnings():
        # The accepted socket of the failed connection is left to the GC (the exception's
        # traceback holds it), on both loops.
        warnings.simplefilter("ignore", ResourceWarning)
        c = socket.create_connection(("127.0.0.1", port))
        loop.run_until_complete(asyncio.sleep(0.1))
        messages = [ctx["message"] for ctx in loop_errors]
        assert "Error on transport creation for incoming connection" in messages
        (ctx,) = [x for x in loop_errors if x["message"].startswith("Error on transport")]
        assert isinstance(ctx["exception"], ValueError)
        c.close()
        server.close()
        loop.run_until_complete(server.wait_closed())
        del ctx
        loop_errors.clear()
        gc.collect()


@pytest.mark.nodebug
def test_debug_switched_on_after_start(loop, caplog):
    # Debug mode turned on while serving: asyncio's accept (and its debug log) from then on.
    import logging

    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    loop.set_debug(True)
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        c = socket.create_connection(("127.0.0.1", port))
        loop.run_until_complete(asyncio.sleep(0.05))
    assert len(made) == 1
    assert any("got a new connection from" in r.getMessage() for r in caplog.records)
    made[0].close()
    c.close()
    server.close()
    loop.run_until_complete(server.wait_closed())


def test_server_close_stops_accepting(loop):
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

    server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    server.close()
    loop.run_until_complete(server.wait_closed())
    with pytest.raises(OSError) as info:
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert info.value.errno == errno.ECONNREFUSED
    assert made == []


def test_start_serving_later(loop):
    # A server created with start_serving=False: no listen() until start_serving().
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)
            transport.close()

    server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0, start_serving=False))
    port = server.sockets[0].getsockname()[1]
    assert not server.is_serving()
    loop.run_until_complete(server.start_serving())
    assert server.is_serving()
    c = socket.create_connection(("127.0.0.1", port))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert len(made) == 1
    c.close()
    server.close()
    loop.run_until_complete(server.wait_closed())


_EMFILE_PROGRAM = """
import asyncio, resource, socket, sys, os
import ferroloop

factory = {"asyncio": asyncio.new_event_loop, "ferroloop": ferroloop.new_event_loop}[sys.argv[1]]
loop = factory()
errors = []
loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
made = []

class P(asyncio.Protocol):
    def connection_made(self, transport):
        made.append(transport)

cert_dir = sys.argv[2] if len(sys.argv) > 2 else None
if cert_dir:
    import ssl
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(
        os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem")
    )
else:
    server_context = None
server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0, ssl=server_context))
port = server.sockets[0].getsockname()[1]
client = socket.create_connection(("127.0.0.1", port))
# Use up every fd this process may open, so that accept() fails with EMFILE.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
hogs = []
while True:
    try:
        hogs.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        break
loop.run_until_complete(asyncio.sleep(0.2))
assert made == [], made
# asyncio goes on with the batch after the first failure: every accept of the batch
# (backlog=100) fails, reports and schedules a retry.
assert len(errors) == 100, len(errors)
assert {c["message"] for c in errors} == {"socket.accept() out of system resource"}, errors
assert errors[0]["exception"].errno == 24
assert isinstance(errors[0]["socket"], asyncio.trsock.TransportSocket)
for fd in hogs:
    os.close(fd)
# asyncio retries after ACCEPT_RETRY_DELAY (1 s).
loop.run_until_complete(asyncio.sleep(1.3))
if cert_dir:
    # The retry serves TLS as well: nothing is made before the client's handshake.
    assert made == [], made
    import threading
    client_context = ssl.create_default_context(cafile=os.path.join(cert_dir, "cert.pem"))
    client.settimeout(10)
    handshake = threading.Thread(
        target=lambda: client_context.wrap_socket(client, server_hostname="localhost")
    )
    handshake.start()
    async def until_made():
        while not made:
            await asyncio.sleep(0.01)
    loop.run_until_complete(asyncio.wait_for(until_made(), 10))
    handshake.join(10)
    assert made[0].get_extra_info("ssl_object") is not None
assert len(made) == 1, made
print("ok")
"""


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("loop_name", ["asyncio", "ferroloop"])
def test_accept_out_of_fds_pauses_and_retries(loop_name, tls, request):
    args = [request.getfixturevalue("tls_cert_dir")] if tls else []
    proc = run_python(_EMFILE_PROGRAM, loop_name, *args, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


async def until(condition, timeout=5.0):
    """Wait (polling each millisecond) until ``condition()`` holds; fail after ``timeout``."""

    async def poll():
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), timeout)


def test_server_counts_connections_and_wait_closed_waits_for_them(loop):
    # ferroloop does asyncio's Server._attach/_detach natively for asyncio's own Server.
    server, port, transports = keeping_server(loop)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    loop.run_until_complete(until(lambda: len(transports) == 3))
    assert active_connections(server) == 3
    transports[0].close()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert active_connections(server) == 2
    server.close()
    closed = loop.create_task(server.wait_closed())
    loop.run_until_complete(asyncio.sleep(0.01))
    if sys.version_info >= (3, 12):  # 3.12+: wait_closed waits for the connections
        assert not closed.done()
    transports[1].abort()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert active_connections(server) == 1
    if sys.version_info >= (3, 12):
        assert not closed.done()
    clients[2].close()  # the server sees EOF and closes the last one
    loop.run_until_complete(asyncio.wait_for(closed, 5))
    assert active_connections(server) == 0
    for c in clients:
        c.close()


def test_patched_server_attach_and_detach_are_called(loop, monkeypatch):
    calls = []
    server_class = asyncio.base_events.Server
    attach, detach = server_class._attach, server_class._detach

    def spy_attach(self, *args):
        calls.append("attach")
        return attach(self, *args)

    def spy_detach(self, *args):
        calls.append("detach")
        return detach(self, *args)

    monkeypatch.setattr(server_class, "_attach", spy_attach)
    monkeypatch.setattr(server_class, "_detach", spy_detach)
    server = loop.run_until_complete(loop.create_server(asyncio.Protocol, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    loop.run_until_complete(until(lambda: calls == ["attach"]))
    client.close()
    loop.run_until_complete(until(lambda: calls == ["attach", "detach"]))
    server.close()
    loop.run_until_complete(server.wait_closed())


def tls_contexts(cert_dir):
    import ssl

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(os.path.join(cert_dir, "cert.pem"), os.path.join(cert_dir, "key.pem"))
    client = ssl.create_default_context(cafile=os.path.join(cert_dir, "cert.pem"))
    return server, client


def accept_tasks():
    return [
        t for t in asyncio.all_tasks() if t.get_coro().__qualname__.endswith("_accept_connection2")
    ]


@pytest.mark.nodebug
@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="3.10's SSLProtocol (_SSLPipe) sends no eof_received on close_notify (see test_tls.py)",
)
def test_tls_server_accepts_in_asyncio_task(loop, tls_cert_dir):
    # A TLS server's accept batch is native on ferroloop, and each connection is asyncio's
    # own _accept_connection2 task, pending for the handshake: on both loops the same task,
    # the same steps, a failed handshake closes the connection without a protocol call.
    server_context, client_context = tls_contexts(tls_cert_dir)
    trace = []

    def factory():
        trace.append("factory")
        return Recorder(trace)

    async def main():
        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=server_context)
        port = server.sockets[0].getsockname()[1]
        # A client that never starts its handshake: the task waits for it.
        silent = socket.create_connection(("127.0.0.1", port))
        await until(lambda: trace == ["factory"])
        (task,) = accept_tasks()
        assert not task.done()
        # Bytes that are no TLS record fail the handshake; the task closes the connection.
        silent.sendall(b"GET / HTTP/1.0\r\n\r\n" * 4)
        await asyncio.wait_for(task, 5)
        assert task.exception() is None  # swallowed outside debug mode
        silent.settimeout(5)
        assert silent.recv(100) == b""
        silent.close()
        assert trace == ["factory"]
        # A real TLS client: the protocol sees asyncio's steps and extra info.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context, server_hostname="localhost"
        )
        writer.write(b"hello")
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"HELLO"
        writer.close()
        await writer.wait_closed()
        await until(lambda: trace[-1][0] == "lost")
        assert trace == ["factory", "factory", ("made", "p"), ("data", "p", b"hello"), ("eof", "p"),
                         ("lost", "p", None)], trace  # fmt: skip
        assert accept_tasks() == []
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


@pytest.mark.nodebug
@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner")
def test_tls_connection_in_handshake_closed_at_the_end_of_run(loop_factory, tls_cert_dir):
    # asyncio.run cancels pending tasks when the main coroutine returns: the accept task of a
    # connection still in its handshake, whose cancellation closes that connection.
    server_context, _ = tls_contexts(tls_cert_dir)
    clients = []

    async def main():
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, "127.0.0.1", 0, ssl=server_context
        )
        port = server.sockets[0].getsockname()[1]
        clients.append(socket.create_connection(("127.0.0.1", port)))
        await until(lambda: len(accept_tasks()) == 1)
        server.close()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    (client,) = clients
    client.settimeout(5)
    assert client.recv(100) == b""
    client.close()


def test_patched_socket_init_runs_for_accepted_connections(loop, monkeypatch):
    # socket.accept() makes the connection's object with socket.socket(..., fileno=fd); a
    # patched __init__ sees it on both loops (ferroloop otherwise skips the Python frame).
    original = socket.socket.__init__
    accepted = []

    def spy_init(self, family=-1, type=-1, proto=-1, fileno=None):
        original(self, family, type, proto, fileno)
        if fileno is not None:
            accepted.append((self.family, self.type))

    server, port, transports = keeping_server(loop)
    monkeypatch.setattr(socket.socket, "__init__", spy_init)
    client = socket.create_connection(("127.0.0.1", port))
    loop.run_until_complete(until(lambda: transports))
    monkeypatch.undo()
    assert accepted == [(socket.AF_INET, socket.SOCK_STREAM)]
    assert not transports[0].get_extra_info("socket")._sock.getblocking()
    client.close()
    transports[0].close()
    server.close()
    loop.run_until_complete(server.wait_closed())
