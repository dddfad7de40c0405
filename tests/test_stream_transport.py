"""Stream transports' life outside the data path: construction, the start of reading, end of
file, close and connection_lost. ferroloop makes its transports natively (outside debug mode)
with every attribute asyncio's ``__init__`` gives them; the tests compare those attributes with
asyncio's own ``__init__`` and every observable step with asyncio's loop."""

import asyncio
import socket
import sys

import pytest

import ferroloop
from ferroloop import _loop as ferro_loop_module

from conftest import active_connections, socket_pair, tcp_pair, ticker


def _state(transport, names):
    """The attributes ``names`` and the slots of asyncio's base classes of a transport, as
    (name, kind-of-value)."""

    def kind(value):
        if hasattr(value, "__self__") and hasattr(value, "__func__"):
            return ("bound", value.__func__.__qualname__, value.__self__ is transport)
        if isinstance(value, (bool, int, type(None), str, tuple)):
            return value
        return type(value).__name__

    state = {name: kind(getattr(transport, name)) for name in names}
    for slot in ("_extra", "_loop", "_protocol_paused", "_high_water", "_low_water"):
        state[slot] = kind(getattr(transport, slot))
    extra = transport._extra
    state["extra"] = {k: kind(v) for k, v in extra.items()}
    state["extra.socket._sock"] = extra["socket"]._sock is transport._sock
    return state


@pytest.mark.parametrize("make_socks", [socket_pair, tcp_pair], ids=["unix", "tcp"])
@pytest.mark.parametrize("buffered", [False, True], ids=["protocol", "buffered"])
@pytest.mark.nodebug
def test_native_construction_matches_asyncios_init(make_socks, buffered, monkeypatch):
    cls = ferro_loop_module._SelectorSocketTransport
    inits = []

    def spy_init(self, *args, **kwargs):
        inits.append(self)
        original_init(self, *args, **kwargs)

    original_init = cls.__init__
    monkeypatch.setattr(cls, "__init__", spy_init)
    loop = ferroloop.new_event_loop()
    try:
        base = asyncio.BufferedProtocol if buffered else asyncio.Protocol

        class P(base):
            def get_buffer(self, n):
                return bytearray(n)

            def buffer_updated(self, n):
                pass

        made = []
        for native in (True, False):
            s1, s2 = make_socks()
            waiter = loop.create_future()
            if native:
                t = loop._make_socket_transport(s1, P(), waiter, extra={"x": 1})
                assert inits == [], "expected the native construction"
            else:
                # asyncio's own __init__ chain (ferroloop's subclass, as in debug mode).
                t = cls(loop, s1, P(), waiter, {"x": 1})
                assert inits == [t]
            made.append((t, s1, s2, waiter))
        (native_t, *_), (python_t, *_) = made
        # Every attribute asyncio's __init__ chain gives, read the same way on ferroloop's
        # slotted class (slots, and properties for the bound methods asyncio stores).
        # 3.12+: `_write_ready` is an instance attribute (a bound `_write_sendmsg`); on the
        # native transport, ferroloop's writer until something sets it (compared below).
        names = set(vars(python_t)) - {"_read_ready", "write", "close", "_write_ready"}
        # The write buffer is made when first read (here, by _state).
        assert native_t._write_buffer is None
        assert native_t.get_write_buffer_size() == 0
        native_state = _state(native_t, names)
        assert type(native_t._write_buffer) is type(python_t._buffer)
        python_state = _state(python_t, names)
        # The two sockets differ: compare the shape of the addresses, not their values.
        for state in (native_state, python_state):
            state["_sock_fd"] = "fd"
            for key in ("sockname", "peername"):
                state["extra"][key] = type(state["extra"][key]).__name__
        assert native_state == python_state
        # The slotted class made by asyncio's own __init__ chain (its super() calls rebound to
        # the slotted copies): the same state, and asyncio's reader method.
        s1, s2 = make_socks()
        waiter = loop.create_future()
        slotted = ferroloop._stream_transport._SelectorSocketTransport(
            loop, s1, P(), waiter, {"x": 1}
        )
        made.append((slotted, s1, s2, waiter))
        slotted_state = _state(slotted, names)
        slotted_state["_sock_fd"] = "fd"
        for key in ("sockname", "peername"):
            slotted_state["extra"][key] = type(slotted_state["extra"][key]).__name__
        assert slotted_state == python_state
        assert slotted._read_ready.__func__ is (
            asyncio.selector_events._SelectorSocketTransport._read_ready
        )
        assert loop._transports[native_t._sock_fd] is native_t
        assert isinstance(python_t, asyncio.selector_events._SelectorSocketTransport)
        assert isinstance(native_t, asyncio.Transport)
        assert type(native_t) is ferroloop._stream_transport._SelectorSocketTransport
        assert vars(native_t) == {}  # nothing in an instance __dict__
        assert native_t._read_ready is native_t._reader
        writer = native_t._write_ready
        assert type(writer) is ferroloop._core._TransportWriter
        if "_write_ready" in vars(python_t):
            # The name asyncio's messages give the method ("Exception in callback ...").
            assert writer.__qualname__ == python_t._write_ready.__func__.__qualname__
            assert slotted._write_ready.__func__ is python_t._write_ready.__func__
        loop.run_until_complete(asyncio.sleep(0))
        for t, s1, s2, waiter in made:
            assert waiter.done() and waiter.result() is None
            t.close()
            s2.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()


def _close(loop, t, peer):
    t.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()


class Trace(asyncio.Protocol):
    def __init__(self, trace, eof_result=None, eof_error=None, lost_error=None):
        self.trace = trace
        self.eof_result = eof_result
        self.eof_error = eof_error
        self.lost_error = lost_error

    def connection_made(self, transport):
        self.transport = transport
        self.trace.append("made")

    def data_received(self, data):
        self.trace.append(("data", data))

    def eof_received(self):
        self.trace.append("eof")
        if self.eof_error:
            raise self.eof_error
        return self.eof_result

    def connection_lost(self, exc):
        self.trace.append(("lost", type(exc).__name__ if exc else None))
        if self.lost_error:
            raise self.lost_error


@pytest.mark.nodebug
def test_steps_of_a_connection(loop):
    # connection_made, the start of reading and the waiter's result are scheduled by the
    # transport's construction, in that order; EOF closes it; connection_lost comes one
    # iteration after close().
    trace = []
    a, b = socket_pair()
    b.send(b"hello")
    b.shutdown(socket.SHUT_WR)
    waiter = loop.create_future()
    waiter.add_done_callback(lambda f: trace.append("waiter"))
    ticker(loop, trace, 6)
    t = loop._make_socket_transport(a, Trace(trace), waiter)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert trace[:9] == [
        ("tick", 0),
        "made",
        # the start of reading ran too; the waiter's done callback is one iteration later
        ("tick", 1),
        "waiter",
        ("data", b"hello"),
        ("tick", 2),
        "eof",
        ("tick", 3),
        ("lost", None),
    ], trace
    assert t.is_closing()
    assert t._sock is None and t._protocol is None
    assert t.get_extra_info("socket") is not None
    b.close()


def test_read_method_is_chosen_when_the_transport_is_made(loop):
    # asyncio's set_protocol (called by __init__) chooses _read_ready__get_buffer or
    # _read_ready__data_received; a protocol assigned to _protocol directly afterwards does
    # not change the choice. On ferroloop's slotted class the choice is a slot's value.
    trace = []
    for protocol, expected in (
        (Trace(trace), "_read_ready__data_received"),
        (BufferedTrace(trace), "_read_ready__get_buffer"),
    ):
        a, b = socket_pair()
        t = loop._make_socket_transport(a, protocol, None)
        assert t._read_ready_cb.__name__ == expected
        t._protocol = BufferedTrace(trace) if expected.endswith("received") else Trace(trace)
        assert t._read_ready_cb.__name__ == expected
        t.set_protocol(t._protocol)
        other = (
            "_read_ready__get_buffer"
            if expected.endswith("received")
            else ("_read_ready__data_received")
        )
        assert t._read_ready_cb.__name__ == other
        _close(loop, t, b)


@pytest.mark.nodebug
def test_eof_received_true_keeps_the_transport_half_open(loop):
    trace = []
    a, b = socket_pair()
    b.shutdown(socket.SHUT_WR)
    t = loop._make_socket_transport(a, Trace(trace, eof_result=True))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert trace == ["made", "eof"]
    assert not t.is_closing()
    assert not t.is_reading() or loop._selector.get_map().get(a.fileno()) is None
    t.write(b"still open")
    assert b.recv(100) == b"still open"
    t.close()
    loop.run_until_complete(asyncio.sleep(0))
    assert trace[-1] == ("lost", None)
    b.close()


@pytest.mark.expect_errors
@pytest.mark.nodebug
def test_eof_received_error_is_fatal(loop, loop_errors):
    trace = []
    a, b = socket_pair()
    b.shutdown(socket.SHUT_WR)
    loop._make_socket_transport(a, Trace(trace, eof_error=ValueError("eof!")))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert trace == ["made", "eof", ("lost", "ValueError")]
    (ctx,) = loop_errors
    assert ctx["message"] == "Fatal error: protocol.eof_received() call failed."
    assert isinstance(ctx["exception"], ValueError)
    b.close()


@pytest.mark.expect_errors
@pytest.mark.nodebug
def test_connection_lost_error_reported_as_asyncio(loop, loop_errors):
    trace = []
    a, b = socket_pair()
    t = loop._make_socket_transport(a, Trace(trace, lost_error=KeyError("lost!")))
    loop.run_until_complete(asyncio.sleep(0))
    t.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    (ctx,) = loop_errors
    # 3.13 shows a callback's arguments only in debug mode.
    args = "()" if sys.version_info >= (3, 13) else "(None)"
    assert ctx["message"] == (
        f"Exception in callback _SelectorSocketTransport._call_connection_lost{args}"
    )
    assert isinstance(ctx["exception"], KeyError)
    # The finally clause ran: the socket is closed, the server detached.
    assert a.fileno() == -1
    assert t._sock is None
    b.close()


@pytest.mark.nodebug
def test_close_twice_and_write_after_close(loop):
    trace = []
    a, b = socket_pair()
    t = loop._make_socket_transport(a, Trace(trace))
    loop.run_until_complete(asyncio.sleep(0))
    t.close()
    t.close()
    assert t.is_closing()
    loop.run_until_complete(asyncio.sleep(0))
    assert trace.count(("lost", None)) == 1
    b.close()


@pytest.mark.nodebug
def test_close_with_buffered_data_flushes_first(loop):
    trace = []
    a, b = socket_pair()
    t = loop._make_socket_transport(a, Trace(trace))
    loop.run_until_complete(asyncio.sleep(0))
    big = b"x" * (4 * 1024 * 1024)
    t.write(big)
    assert t.get_write_buffer_size() > 0
    t.close()
    assert ("lost", None) not in trace
    got = bytearray()

    async def drain():
        while len(got) < len(big):
            await asyncio.sleep(0)
            try:
                got.extend(b.recv(1 << 20))
            except BlockingIOError:
                pass

    loop.run_until_complete(asyncio.wait_for(drain(), 10))
    loop.run_until_complete(asyncio.sleep(0.01))
    assert bytes(got) == big
    assert trace[-1] == ("lost", None)
    assert trace.count(("lost", None)) == 1
    b.close()


@pytest.mark.nodebug
def test_pause_reading_before_start(loop):
    # pause_reading() between construction and the scheduled start of reading: no reader.
    trace = []
    a, b = socket_pair()
    b.send(b"early")
    t = loop._make_socket_transport(a, Trace(trace))
    t.pause_reading()
    loop.run_until_complete(asyncio.sleep(0.02))
    if sys.version_info >= (3, 11):
        assert trace == ["made"]
    else:
        # 3.10's transport starts reading even when paused meanwhile.
        assert trace == ["made", ("data", b"early")]
        return _close(loop, t, b)
    t.resume_reading()
    loop.run_until_complete(asyncio.sleep(0.02))
    assert trace == ["made", ("data", b"early")]
    t.close()
    loop.run_until_complete(asyncio.sleep(0))
    b.close()


@pytest.mark.nodebug
def test_abort_and_server_detach(loop):
    made = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.append(transport)

        def connection_lost(self, exc):
            made.append(("lost", exc))

    server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    c = socket.create_connection(("127.0.0.1", port))
    loop.run_until_complete(asyncio.sleep(0.05))
    (t,) = made
    assert active_connections(server) == 1
    t.abort()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert made[1] == ("lost", None)
    assert active_connections(server) == 0
    c.close()
    server.close()
    loop.run_until_complete(server.wait_closed())


@pytest.mark.skipif(sys.version_info < (3, 13), reason="Server.close_clients is 3.13+")
@pytest.mark.nodebug
def test_close_clients(loop):
    lost = []

    class P(asyncio.Protocol):
        def connection_lost(self, exc):
            lost.append(exc)

    server = loop.run_until_complete(loop.create_server(P, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    loop.run_until_complete(asyncio.sleep(0.05))
    server.close()
    server.close_clients()
    loop.run_until_complete(server.wait_closed())
    assert lost == [None, None, None]
    for c in clients:
        c.close()


class BufferedTrace(asyncio.BufferedProtocol):
    def __init__(self, trace, get_buffer=None, updated_error=None):
        self.trace = trace
        self.buf = bytearray(8)
        self.get_buffer_impl = get_buffer
        self.updated_error = updated_error

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        self.trace.append(("get_buffer", sizehint))
        if self.get_buffer_impl is not None:
            return self.get_buffer_impl()
        return self.buf

    def buffer_updated(self, nbytes):
        self.trace.append(("updated", bytes(self.buf[:nbytes])))
        if self.updated_error:
            raise self.updated_error

    def eof_received(self):
        self.trace.append("eof")

    def connection_lost(self, exc):
        self.trace.append(("lost", type(exc).__name__ if exc else None))


@pytest.mark.nodebug
def test_buffered_protocol_reads_in_chunks_of_its_buffer(loop):
    trace = []
    a, b = socket_pair()
    b.send(b"0123456789abcdef!")
    b.shutdown(socket.SHUT_WR)
    loop._make_socket_transport(a, BufferedTrace(trace))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert trace == [
        ("get_buffer", -1),
        ("updated", b"01234567"),
        ("get_buffer", -1),
        ("updated", b"89abcdef"),
        ("get_buffer", -1),
        ("updated", b"!"),
        ("get_buffer", -1),
        "eof",
        ("lost", None),
    ]
    b.close()


def _buffered_failure(loop, loop_errors, protocol):
    a, b = socket_pair()
    b.send(b"data")
    loop._make_socket_transport(a, protocol)
    loop.run_until_complete(asyncio.sleep(0.05))
    b.close()
    return [(c["message"], type(c["exception"]).__name__, str(c["exception"])) for c in loop_errors]


@pytest.mark.expect_errors
@pytest.mark.nodebug
def test_buffered_get_buffer_errors(loop, loop_errors):
    def boom():
        raise ValueError("no buffer")

    trace = []
    got = _buffered_failure(loop, loop_errors, BufferedTrace(trace, get_buffer=boom))
    assert got == [("Fatal error: protocol.get_buffer() call failed.", "ValueError", "no buffer")]
    assert trace[-1] == ("lost", "ValueError")


@pytest.mark.expect_errors
@pytest.mark.nodebug
def test_buffered_empty_buffer(loop, loop_errors):
    got = _buffered_failure(loop, loop_errors, BufferedTrace([], get_buffer=bytearray))
    assert got == [
        (
            "Fatal error: protocol.get_buffer() call failed.",
            "RuntimeError",
            "get_buffer() returned an empty buffer",
        )
    ]


@pytest.mark.expect_errors
@pytest.mark.nodebug
def test_buffered_read_only_buffer(loop, loop_errors):
    # socket.recv_into's own error for a buffer it cannot write.
    got = _buffered_failure(loop, loop_errors, BufferedTrace([], get_buffer=lambda: b"12345678"))
    assert len(got) == 1
    message, kind, _ = got[0]
    assert (message, kind) == ("Fatal read error on socket transport", "TypeError")


@pytest.mark.expect_errors
@pytest.mark.nodebug
def test_buffered_updated_error(loop, loop_errors):
    got = _buffered_failure(loop, loop_errors, BufferedTrace([], updated_error=KeyError("updated")))
    assert got == [("Fatal error: protocol.buffer_updated() call failed.", "KeyError", "'updated'")]


def test_write_and_close_take_asyncios_arguments(loop):
    # ferroloop's write and close are C methods of its transport class: calls with other
    # arguments than the usual ones are asyncio's methods, with asyncio's errors.
    a, b = socket_pair()
    t = loop._make_socket_transport(a, asyncio.Protocol())
    loop.run_until_complete(asyncio.sleep(0))
    try:
        assert t.write.__qualname__ == "_SelectorSocketTransport.write"
        assert t.write.__name__ == "write" and t.close.__name__ == "close"
        with pytest.raises(TypeError) as missing:
            t.write()
        with pytest.raises(TypeError) as extra:
            t.write(b"x", b"y")
        with pytest.raises(TypeError) as close_extra:
            t.close(1)
        assert str(missing.value) == (
            "_SelectorSocketTransport.write() missing 1 required positional argument: 'data'"
        )
        assert str(extra.value) == (
            "_SelectorSocketTransport.write() takes 2 positional arguments but 3 were given"
        )
        # 3.12+'s _SelectorSocketTransport has a close of its own.
        close_class = (
            "_SelectorSocketTransport" if sys.version_info >= (3, 12) else "_SelectorTransport"
        )
        assert str(close_extra.value) == (
            f"{close_class}.close() takes 1 positional argument but 2 were given"
        )
        with pytest.raises(TypeError, match="data argument must be a bytes-like object"):
            t.write("text")
        t.write(data=b"by keyword")
        assert b.recv(100) == b"by keyword"
    finally:
        _close(loop, t, b)
    assert t.is_closing() and t._sock is None


@pytest.mark.skipif(sys.version_info < (3, 12), reason="3.12+'s close() releases them")
def test_close_releases_the_callbacks_at_once_from_312(loop):
    a, b = socket_pair()
    t = loop._make_socket_transport(a, asyncio.Protocol())
    loop.run_until_complete(asyncio.sleep(0))
    assert t._read_ready_cb is not None and t._write_ready is not None
    t.close()
    assert t._read_ready_cb is None and t._write_ready is None
    loop.run_until_complete(asyncio.sleep(0))
    b.close()


# The families whose accepted connections ferroloop makes no socket object for until it is
# read. "tcp6_mapped" is an IPv4 client of a dual-stack IPv6 server (its peer is an
# IPv4-mapped address); "unix_named" and "unix_abstract" are Unix clients bound to a path, or
# to a name in Linux's abstract namespace (their peer names are a str and bytes; an unbound
# client's is '').
ACCEPTED = ["tcp", "tcp6", "tcp6_mapped", "unix", "unix_named", "unix_abstract"]


def _kind(family):
    if family == "tcp":
        return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    if family.startswith("tcp6"):
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    return (socket.AF_UNIX, socket.SOCK_STREAM, 0)


def _as_the_server_sees_it(family, address):
    """A client's own address as the server's side names it: an IPv4 client of a dual-stack
    server is an IPv4-mapped IPv6 address there."""
    if family == "tcp6_mapped":
        return ("::ffff:" + address[0], address[1], 0, 0)
    return address


async def _server(loop, factory, family):
    """A server of ``family`` and a blocking client socket connected to it."""
    if family == "tcp":
        server = await loop.create_server(factory, "127.0.0.1", 0)
        return server, socket.create_connection(server.sockets[0].getsockname())
    if family == "tcp6":
        server = await loop.create_server(factory, "::1", 0)
        return server, socket.create_connection(server.sockets[0].getsockname()[:2])
    if family == "tcp6_mapped":
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        server = await loop.create_server(factory, sock=sock)
        return server, socket.create_connection(("127.0.0.1", sock.getsockname()[1]))
    import os
    import tempfile

    directory = tempfile.mkdtemp(prefix="fl-", dir="/tmp")
    path = os.path.join(directory, "s.sock")
    server = await loop.create_unix_server(factory, path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if family == "unix_named":
        client.bind(os.path.join(directory, "c.sock"))
    elif family == "unix_abstract":
        client.bind(f"\0ferroloop-test-{os.getpid()}-{id(client)}")
    client.connect(path)
    return server, client


async def _accepted_connection(loop, family="tcp"):
    """A server (on 127.0.0.1, or a Unix socket), a blocking client socket connected to it,
    and the transport of the connection the server accepted."""
    made = loop.create_future()

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            made.set_result(transport)

    server, client = await _server(loop, P, family)
    return server, client, await made


@pytest.mark.parametrize("family", ACCEPTED)
@pytest.mark.parametrize("first_read", ["open", "after_close"])
def test_extra_of_an_accepted_connection(loop, first_read, family):
    """ferroloop makes an accepted IPv4 or Unix connection's extra dict when first read: the
    same keys, order and values as asyncio's, read while the connection is open or only once
    it is closed (the peer gone, the socket closed)."""

    async def main():
        server, client, t = await _accepted_connection(loop, family)
        address = server.sockets[0].getsockname()
        if family == "tcp6_mapped":
            address = ("::ffff:127.0.0.1", address[1], 0, 0)
        client_address = _as_the_server_sees_it(family, client.getsockname())
        seen = {}
        if first_read == "open":
            seen["open"] = (t.get_extra_info("peername"), t.get_extra_info("sockname"))
        client.close()
        t.close()
        await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        sock = t.get_extra_info("socket")
        seen["keys"] = list(t._extra)
        seen["closed"] = (t.get_extra_info("peername"), t.get_extra_info("sockname"))
        seen["socket"] = (type(sock).__name__, sock.fileno(), sock is t.get_extra_info("socket"))
        seen["missing"] = t.get_extra_info("nonexistent", "default")
        return seen, client_address, address

    seen, client_address, address = loop.run_until_complete(main())
    expected_peer = {"unix": "", "unix_named": str, "unix_abstract": bytes}.get(family, tuple)
    if isinstance(expected_peer, type):
        assert type(client_address) is expected_peer
    else:
        assert client_address == expected_peer
    assert seen["keys"] == ["peername", "socket", "sockname"]
    assert seen["closed"] == (client_address, address)
    if first_read == "open":
        assert seen["open"] == (client_address, address)
    assert seen["socket"] == ("TransportSocket", -1, True)
    assert seen["missing"] == "default"


def test_a_high_fd_is_one_int_for_the_transport_and_the_registry(loop):
    """An idle connection holds its fd number once: asyncio's ``_sock_fd`` and the key of
    ``loop._transports`` are one int object on ferroloop (a fd above 256 is not a cached small
    int). Lookups by fd find the transport on both loops."""
    import os

    held = []
    try:
        # Push the next fds above 256.
        base = socket.socket()
        held.append(base)
        while not held or held[-1].fileno() <= 300:
            held.append(socket.socket(fileno=os.dup(base.fileno())))

        async def main():
            server, client, t = await _accepted_connection(loop)
            fd = t._sock_fd
            assert fd > 256
            assert loop._transports[fd] is t
            assert loop._transports.get(fd + 0) is t
            keys = [key for key in loop._transports.data if key == fd]
            client.close()
            t.close()
            server.close()
            await server.wait_closed()
            return fd, keys

        fd, keys = loop.run_until_complete(main())
        assert len(keys) == 1
        if isinstance(loop, ferroloop.Loop):
            assert keys[0] is fd
    finally:
        for sock in held:
            sock.close()


def _fd_is_open(fd):
    import os

    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("family", ACCEPTED)
def test_an_accepted_connections_socket_object(loop, family):
    """``transport._sock`` of an accepted connection is the ``socket.socket`` that
    ``socket.accept()`` makes, the same object on every read and inside
    ``extra["socket"]``; the connection works after it was read, and closing the transport
    closes the fd. ferroloop makes that object only when it is first read."""

    async def main():
        server, client, t = await _accepted_connection(loop, family)
        fd = t._sock_fd
        slotted = type(t).__dict__.get("_socket") or type(t).__mro__[1].__dict__.get("_socket")
        # ferroloop: the fd number stands in the slot until the object is made.
        unmade = slotted is not None and slotted.__get__(t) == fd
        sock = t._sock
        seen = {
            "type": type(sock),
            "fd": sock.fileno() == fd,
            "kind": (sock.family, sock.type, sock.proto),
            "timeout": sock.gettimeout(),
            "same": t._sock is sock,
            "wrapped": t.get_extra_info("socket")._sock is sock,
            "peer": t.get_extra_info("peername")
            == _as_the_server_sees_it(family, client.getsockname()),
        }
        client.sendall(b"ping")
        t.write(b"pong")
        await asyncio.sleep(0.01)
        seen["echo"] = client.recv(10)
        t.close()
        await asyncio.sleep(0.01)
        seen["closed"] = (t._sock, _fd_is_open(fd))
        # Deleting them: asyncio's class attribute `_sock = None` shows through; `_extra`
        # (BaseTransport's slot) is gone.
        del t._sock
        seen["deleted"] = t._sock
        del t._extra
        seen["deleted extra"] = not hasattr(t, "_extra")
        client.close()
        server.close()
        await server.wait_closed()
        return seen, unmade

    seen, unmade = loop.run_until_complete(main())
    assert seen == {
        "type": socket.socket,
        "fd": True,
        "kind": _kind(family),
        "timeout": 0.0,
        "same": True,
        "wrapped": True,
        "peer": True,
        "echo": b"pong",
        "closed": (None, False),
        "deleted": None,
        "deleted extra": True,
    }
    # In debug mode each accept is asyncio's own code, which makes the object at once.
    assert unmade == (isinstance(loop, ferroloop.Loop) and not loop.get_debug())


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_an_accepted_transport_dropped_unclosed_warns_and_closes_its_fd(loop, family):
    """asyncio's ``__del__`` for an accepted connection's transport that nobody closed: the
    ``ResourceWarning`` for the transport, and its fd closed (on ferroloop, by making the
    socket object that was never read and closing it, as asyncio's ``__del__`` does)."""
    import gc
    import warnings

    box = []

    class P(asyncio.Protocol):
        def connection_made(self, transport):
            box.append(transport)

    async def main():
        server, client = await _server(loop, P, family)
        while not box:
            await asyncio.sleep(0.001)
        t = box.pop()
        fd = t._sock_fd
        t.pause_reading()  # off the selector: nothing else holds it
        await asyncio.sleep(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del t
            gc.collect()
        still_open = _fd_is_open(fd)
        client.close()
        # Not `wait_closed()`: from 3.12 it waits for the server's connections to be
        # detached, which a transport collected unclosed never is (on both loops).
        server.close()
        messages = [str(w.message) for w in caught if w.category is ResourceWarning]
        return messages, still_open

    messages, still_open = loop.run_until_complete(main())
    transports = [
        m for m in messages if m.startswith("unclosed transport <_SelectorSocketTransport")
    ]
    assert len(transports) == 1, messages
    # asyncio's socket object is garbage in the same collection, and its own finalizer may
    # warn first ("unclosed <socket.socket ...>"); ferroloop's socket objects are not
    # tracked by the cyclic GC (net/socket.rs), so only the transport's __del__ closes them.
    assert len(messages) <= 2, messages
    assert not still_open


@pytest.mark.parametrize("family", ["tcp", "unix"])
def test_a_failing_protocol_factory_closes_the_accepted_socket(loop, family):
    """The protocol factory raised for an accepted connection: asyncio drops the socket
    unclosed (its ``ResourceWarning``) and the peer sees the connection end."""
    import gc
    import warnings

    def factory():
        raise RuntimeError("no protocol")

    # asyncio reports the error in debug mode only. Only its message is kept: the exception's
    # traceback would keep asyncio's socket object (a local of the failed step) alive.
    reported = []
    loop.set_exception_handler(lambda _, context: reported.append(context["message"]))

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            server, client = await _server(loop, factory, family)
            for _ in range(5):
                await asyncio.sleep(0.01)
            gc.collect()
        client.settimeout(5)
        try:
            ended = client.recv(10) == b""
        except ConnectionResetError:
            ended = True
        client.close()
        server.close()
        await server.wait_closed()
        messages = [str(w.message) for w in caught if w.category is ResourceWarning]
        return messages, ended

    messages, ended = loop.run_until_complete(main())
    assert ended
    assert [m for m in messages if m.startswith("unclosed <socket.socket")], messages
    expected = ["Error on transport creation for incoming connection"]
    assert reported == (expected if loop.get_debug() else [])


def test_unclosed_transport_warns_and_closes_its_socket(loop):
    """A transport dropped without close(): asyncio's ResourceWarning and its socket closed
    (ferroloop's __del__ is native for a closed transport and asyncio's otherwise); a closed
    one warns nothing."""
    import gc
    import warnings

    async def main():
        a, b = socket_pair()
        c, d = socket_pair()
        t, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        closed, _ = await loop.create_connection(asyncio.Protocol, sock=c)
        t.pause_reading()  # off the selector: nothing else holds it
        closed.close()
        await asyncio.sleep(0)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del t, closed
            gc.collect()
        b.close()
        d.close()
        messages = [str(w.message) for w in caught if w.category is ResourceWarning]
        return messages, a.fileno(), c.fileno()

    messages, fd, closed_fd = loop.run_until_complete(main())
    assert len(messages) == 1 and messages[0].startswith(
        "unclosed transport <_SelectorSocketTransport"
    )
    assert fd == -1 and closed_fd == -1


class FlowTrace(Trace):
    def pause_writing(self):
        self.trace.append("pause_writing")

    def resume_writing(self):
        self.trace.append("resume_writing")


def _receive(loop, sock, size, eof=False):
    """Read ``size`` bytes from the non-blocking ``sock`` while the loop runs (and then its
    end of file if ``eof``)."""
    got = bytearray()

    async def read():
        while len(got) < size or eof:
            await asyncio.sleep(0)
            try:
                data = sock.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                return True
            got.extend(data)
        return False

    ended = loop.run_until_complete(asyncio.wait_for(read(), 20))
    return bytes(got), ended


def test_buffered_writes_drain_with_flow_control(loop):
    # A write the socket cannot take at once is buffered and sent when it is writable again
    # (natively on ferroloop: crates/ferroloop-py/src/net/drain.rs), with asyncio's
    # pause_writing/resume_writing; then write_eof after buffered data shuts the socket down
    # once the buffer is sent.
    trace = []
    a, b = socket_pair()
    b.setblocking(False)
    t = loop._make_socket_transport(a, FlowTrace(trace))
    loop.run_until_complete(asyncio.sleep(0))
    payload = bytes(range(256)) * 8192  # 2 MiB
    t.write(payload[:1000])
    t.write(payload[1000:])
    assert t.get_write_buffer_size() > 0
    assert trace == ["made", "pause_writing"]
    if not loop.get_debug() and type(loop).__module__.startswith("ferroloop"):
        assert type(t._write_ready).__name__ == "_TransportWriter"
    got, _ = _receive(loop, b, len(payload))
    assert got == payload
    loop.run_until_complete(asyncio.sleep(0.01))
    assert t.get_write_buffer_size() == 0
    assert trace == ["made", "pause_writing", "resume_writing"]
    t.write(payload)
    t.write_eof()
    got, ended = _receive(loop, b, len(payload), eof=True)
    assert got == payload and ended
    assert not t.is_closing()
    t.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert trace[-1] == ("lost", None)
    b.close()


@pytest.mark.skipif(sys.version_info < (3, 12), reason="3.12+'s writelines keeps the pieces")
def test_writelines_of_more_pieces_than_one_sendmsg_takes(loop):
    a, b = socket_pair()
    b.setblocking(False)
    t = loop._make_socket_transport(a, Trace([]))
    loop.run_until_complete(asyncio.sleep(0))
    pieces = [b"%05d|" % i * 50 for i in range(3000)]  # 900 KiB in 3,000 pieces
    t.writelines(pieces)
    t.writelines([bytearray(b"end"), memoryview(b"!")])
    expected = b"".join(pieces) + b"end!"
    got, _ = _receive(loop, b, len(expected))
    assert got == expected
    loop.run_until_complete(asyncio.sleep(0.01))
    assert t.get_write_buffer_size() == 0
    _close(loop, t, b)


@pytest.mark.expect_errors
def test_peer_gone_while_data_is_buffered(loop, loop_errors):
    # The send of buffered data fails: asyncio's _fatal_error (an OSError is not reported to
    # the exception handler), the buffer is dropped, connection_lost gets the error.
    trace = []
    a, b = socket_pair()
    t = loop._make_socket_transport(a, Trace(trace))
    loop.run_until_complete(asyncio.sleep(0))
    t.write(b"x" * (4 * 1024 * 1024))
    assert t.get_write_buffer_size() > 0
    b.close()
    loop.run_until_complete(asyncio.sleep(0.05))
    lost = [entry for entry in trace if entry[0] == "lost"]
    assert len(lost) == 1 and lost[0][1] in ("BrokenPipeError", "ConnectionResetError"), trace
    assert t.get_write_buffer_size() == 0
    assert t.is_closing()
    assert loop_errors == []


# A peer that is gone: the failed send or read is asyncio's `_fatal_error(exc, message)`. An
# OSError is neither reported to the exception handler nor logged outside debug mode; the
# transport is force-closed and `connection_lost(exc)` comes one iteration later. ferroloop does
# this natively on its own transports, without making an accepted connection's socket object.


@pytest.mark.parametrize("family", ACCEPTED)
@pytest.mark.nodebug
def test_a_peer_gone_before_the_echo(loop, loop_errors, family):
    import struct

    trace = []
    lost = loop.create_future()

    class Echo(Trace):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(data)
            self.transport.write(data)

        def connection_lost(self, exc):
            t = self.transport
            member = type(t).__dict__.get("_socket") or type(t).__mro__[1].__dict__.get("_socket")
            # ferroloop: the fd number is still in the slot, no socket object was ever made.
            unmade = member is not None and isinstance(member.__get__(t), int)
            super().connection_lost(exc)
            lost.set_result((t._conn_lost, t.is_closing(), unmade, t._sock_fd))

    async def main():
        server, client = await _server(loop, lambda: Echo(trace), family)
        if family.startswith("tcp"):
            # A reset rather than a FIN: the server's send fails (or its read does first).
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.sendall(b"ping")
        client.close()
        state = await asyncio.wait_for(lost, 5)
        await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        return state

    conn_lost, closing, unmade, fd = loop.run_until_complete(main())
    assert trace[0] == "made"
    assert trace[-1][0] == "lost"
    assert trace[-1][1] in ("BrokenPipeError", "ConnectionResetError"), trace
    assert trace.count(trace[-1]) == 1
    assert conn_lost >= 1 and closing
    assert not _fd_is_open(fd) or fd not in loop._transports
    assert loop_errors == []
    assert unmade == (isinstance(loop, ferroloop.Loop) and not loop.get_debug())


@pytest.mark.nodebug
def test_a_failed_write_force_closes_as_asyncio(loop, loop_errors):
    trace = []
    a, b = socket_pair()
    t = loop._make_socket_transport(a, Trace(trace))
    loop.run_until_complete(asyncio.sleep(0))
    b.close()
    t.write(b"to nobody")
    # _force_close: closing, the connection lost once, connection_lost not yet called.
    seen = [t.is_closing(), t._conn_lost, trace[-1]]
    # Writes after the loss only count (asyncio warns from the fifth).
    t.write(b"more")
    t.write(b"more")
    seen.append(t._conn_lost)
    loop.run_until_complete(asyncio.sleep(0))
    assert seen == [True, 1, "made", 3]
    assert trace == ["made", ("lost", "BrokenPipeError")]
    assert a.fileno() == -1 and t._sock is None
    assert t.get_write_buffer_size() == 0
    assert loop_errors == []


@pytest.mark.nodebug
def test_a_failed_write_in_debug_mode_is_logged(loop, loop_errors, caplog):
    # The transport is made outside debug mode; debug mode is turned on before the failure.
    import logging

    trace = []
    a, b = socket_pair()
    t = loop._make_socket_transport(a, Trace(trace))
    loop.run_until_complete(asyncio.sleep(0))
    loop.set_debug(True)
    b.close()
    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        t.write(b"to nobody")
    loop.run_until_complete(asyncio.sleep(0))
    loop.set_debug(False)
    records = [r for r in caplog.records if "Fatal write error on socket transport" in r.message]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert isinstance(records[0].exc_info[1], BrokenPipeError)
    assert trace == ["made", ("lost", "BrokenPipeError")]
    assert loop_errors == []


@pytest.mark.nodebug
def test_a_replaced_force_close_is_called(loop):
    # asyncio's _fatal_error calls self._force_close: a replacement on the instance is called.
    trace = []
    a, b = socket_pair()
    t = loop._make_socket_transport(a, Trace(trace))
    loop.run_until_complete(asyncio.sleep(0))
    calls = []
    t._force_close = lambda exc: calls.append(type(exc).__name__)
    b.close()
    t.write(b"to nobody")
    assert calls == ["BrokenPipeError"]
    assert not t.is_closing() and t._conn_lost == 0
    del t._force_close
    # The transport still reads: end of file closes it.
    loop.run_until_complete(asyncio.sleep(0.01))
    assert trace == ["made", "eof", ("lost", None)]
