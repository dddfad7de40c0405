"""TLS connections: asyncio's ``SSLProtocol`` on each loop. On ferroloop (3.11+) it runs on
ferroloop's socket transport, and its data path (``get_buffer``, ``buffer_updated``, the TLS
transport's ``write``) is native (crates/ferroloop-py/src/net/tls.rs); every test here runs on
both loops, or records what the application sees on both and compares."""

import asyncio
import os
import socket
import ssl
import sys

import pytest

import ferroloop
from ferroloop import _sslproto

from conftest import is_ferroloop

NATIVE_TLS = sys.version_info >= (3, 11)
# 3.10's SSLProtocol is an older design (_SSLPipe) with other observable steps (no
# eof_received on close_notify, transports left to the garbage collector): ferroloop runs it
# unchanged there, on its own socket transport; CPython's test_ssl and test_sslproto (the
# conformance suites) cover it.
pytestmark = pytest.mark.skipif(not NATIVE_TLS, reason="asyncio's SSLProtocol of 3.11+")


@pytest.fixture
def contexts(tls_cert_dir):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(
        os.path.join(tls_cert_dir, "cert.pem"), os.path.join(tls_cert_dir, "key.pem")
    )
    client = ssl.create_default_context(cafile=os.path.join(tls_cert_dir, "cert.pem"))
    return server, client


class Recorder(asyncio.Protocol):
    """A server protocol that records what it is told and echoes unless told otherwise."""

    def __init__(self, trace, echo=True):
        self.trace = trace
        self.echo = echo
        self.received = bytearray()
        self.made = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.trace.append("made")
        self.made.set_result(None)

    def data_received(self, data):
        assert type(data) is bytes
        self.received += data
        if self.echo:
            self.transport.write(data)

    def eof_received(self):
        self.trace.append("eof")

    def pause_writing(self):
        self.trace.append("pause_writing")

    def resume_writing(self):
        self.trace.append("resume_writing")

    def connection_lost(self, exc):
        self.trace.append(("lost", type(exc).__name__ if exc else None))
        if not self.lost.done():
            self.lost.set_result(exc)


async def serve(contexts, protocol):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: protocol, "127.0.0.1", 0, ssl=contexts[0])
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=contexts[1], server_hostname="localhost"
    )
    await asyncio.wait_for(protocol.made, 10)
    return server, reader, writer


async def close_all(server, writer, protocol):
    """Close the client, wait for the server's connection_lost (its exception, if any), and
    close the server."""
    writer.close()
    await writer.wait_closed()
    exc = await asyncio.wait_for(protocol.lost, 10)
    server.close()
    await server.wait_closed()
    return exc


def spy_on_sslproto(monkeypatch):
    """Replace ``asyncio.sslproto.SSLProtocol`` with a subclass, ``Spy``: the list of the
    protocols made from it, and the class."""
    made = []

    class Spy(asyncio.sslproto.SSLProtocol):
        def __init__(self, *args, **kwargs):
            made.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(asyncio.sslproto, "SSLProtocol", Spy)
    return made, Spy


def test_echo_of_every_size(loop, contexts):
    """Records of every size, one at a time and many in one go, both ways; the connection's
    objects are asyncio's classes (ferroloop's subclasses of them on 3.11+)."""
    sizes = [1, 1000, 16384, 16385, 100_000, 1 << 20]
    payload = os.urandom(max(sizes))
    trace = []

    async def main():
        protocol = Recorder(trace)
        server, reader, writer = await serve(contexts, protocol)
        for size in sizes:
            writer.write(payload[:size])
            await writer.drain()
            assert await reader.readexactly(size) == payload[:size]
        # Many records arriving at once, decrypted in one go.
        writer.writelines([payload[:1000]] * 50)
        await writer.drain()
        assert await reader.readexactly(50_000) == payload[:1000] * 50
        app = protocol.transport
        assert isinstance(app, asyncio.Transport)
        assert isinstance(app._ssl_protocol, asyncio.sslproto.SSLProtocol)
        if is_ferroloop(loop) and NATIVE_TLS:
            assert type(app._ssl_protocol) is _sslproto.SSLProtocol
            assert type(writer.transport._ssl_protocol) is _sslproto.SSLProtocol
            raw = app._ssl_protocol._transport
            # ferroloop's socket transport beneath the TLS layer: the slotted class, made
            # natively; in debug mode, made by asyncio's __init__, ferroloop's subclass.
            expected = (
                ferroloop._loop._SelectorSocketTransport
                if loop.get_debug()
                else ferroloop._stream_transport._SelectorSocketTransport
            )
            assert type(raw) is expected
        # Reprs read as asyncio's (exception handler contexts, warnings, logs).
        assert repr(app).startswith("<asyncio.sslproto._SSLProtocolTransport object at ")
        assert repr(app._ssl_protocol).startswith("<asyncio.sslproto.SSLProtocol object at ")
        assert app.get_extra_info("peercert") is None  # the client sent none
        assert app.get_extra_info("cipher") is not None
        writer.close()
        await writer.wait_closed()
        assert await asyncio.wait_for(protocol.lost, 10) is None
        server.close()
        await server.wait_closed()
        return len(protocol.received)

    total = loop.run_until_complete(main())
    assert total == sum(sizes) + 50_000
    assert trace == ["made", "eof", ("lost", None)]


def test_protocol_attributes_as_asyncio(contexts):
    """The attributes of a live connection's ``SSLProtocol`` and TLS transport, names and
    types, are asyncio's on ferroloop. There, those the native data path reads on every record
    are slots rather than ``__dict__`` entries (``docs/deviations.md``)."""

    def attributes(obj):
        names = set(vars(obj))
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            names.update([slots] if isinstance(slots, str) else slots)
        # The loop's own type differs, by design.
        return {
            name: "loop" if name == "_loop" else type(getattr(obj, name)).__name__
            for name in names
            if hasattr(obj, name)
        }

    async def main():
        protocol = Recorder([])
        server, reader, writer = await serve(contexts, protocol)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        app = protocol.transport
        seen = attributes(app._ssl_protocol), attributes(app)
        slotted = [name for name in ("_state", "_ssl_protocol") if name not in vars(app)]
        slotted += [name for name in ("_state", "_incoming") if name not in vars(app._ssl_protocol)]
        await close_all(server, writer, protocol)
        return seen, slotted

    asyncio_seen, asyncio_slotted = asyncio.run(main())
    ferroloop_seen, ferroloop_slotted = ferroloop.run(main())
    assert "_state" in asyncio_seen[0] and "_ssl_protocol" in asyncio_seen[1]
    assert ferroloop_seen == asyncio_seen
    assert asyncio_slotted == ["_state"]  # a transport has no `_state`
    assert ferroloop_slotted == ["_state", "_ssl_protocol", "_state", "_incoming"]


def test_app_write_flow_control_calls(contexts):
    """With a write high-water mark of 0, each write and each read pauses or resumes the
    application's writing: the calls come in asyncio's order on ferroloop."""

    async def main():
        trace = []

        class Proto(Recorder):
            def connection_made(self, transport):
                super().connection_made(transport)
                transport.set_write_buffer_limits(high=0, low=0)

            def data_received(self, data):
                trace.append(("data", len(data)))
                self.transport.write(data[:10])
                trace.append("wrote")
                self.transport.write(data[10:])
                trace.append("wrote")

        protocol = Proto(trace, echo=False)
        server, reader, writer = await serve(contexts, protocol)
        for size in (100, 5000):
            writer.write(b"x" * size)
            await reader.readexactly(size)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(protocol.lost, 10)
        server.close()
        await server.wait_closed()
        return trace

    traces = {}
    for name, run in (("asyncio", asyncio.run), ("ferroloop", ferroloop.run)):
        traces[name] = run(main())
    assert "pause_writing" in traces["asyncio"] and "resume_writing" in traces["asyncio"]
    assert traces["ferroloop"] == traces["asyncio"]


def test_pause_reading_holds_data_back(loop, contexts):
    async def main():
        trace = []
        protocol = Recorder(trace, echo=False)
        server, reader, writer = await serve(contexts, protocol)
        writer.write(b"a" * 100)
        await writer.drain()
        while len(protocol.received) < 100:
            await asyncio.sleep(0.01)
        protocol.transport.pause_reading()
        assert not protocol.transport.is_reading()
        writer.write(b"b" * 100)
        await writer.drain()
        for _ in range(20):
            await asyncio.sleep(0.01)
        held = len(protocol.received)
        protocol.transport.resume_reading()
        while len(protocol.received) < 200:
            await asyncio.sleep(0.01)
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(protocol.lost, 10)
        server.close()
        await server.wait_closed()
        return held, bytes(protocol.received)

    held, received = loop.run_until_complete(main())
    assert held == 100
    assert received == b"a" * 100 + b"b" * 100


@pytest.mark.expect_errors
def test_error_in_data_received_is_fatal(loop, loop_errors, contexts):
    async def main():
        trace = []

        class Proto(Recorder):
            def data_received(self, data):
                raise ValueError("boom")

        protocol = Proto(trace)
        server, reader, writer = await serve(contexts, protocol)
        writer.write(b"hello")
        exc = await asyncio.wait_for(protocol.lost, 10)
        assert await reader.read() == b""
        writer.close()
        server.close()
        await server.wait_closed()
        return trace, exc

    trace, exc = loop.run_until_complete(main())
    assert type(exc) is ValueError
    assert trace == ["made", ("lost", "ValueError")]
    [context] = loop_errors
    assert context["message"] == "Fatal error on SSL protocol"
    assert type(context["exception"]) is ValueError


def test_write_arguments(loop, contexts):
    async def main():
        trace = []
        protocol = Recorder(trace, echo=False)
        server, reader, writer = await serve(contexts, protocol)
        app = protocol.transport
        with pytest.raises(TypeError, match="data: expecting a bytes-like instance, got str"):
            app.write("text")
        with pytest.raises(TypeError):
            app.write()
        app.write(b"")
        app.write(bytearray(b"12"))
        app.write(memoryview(b"345"))
        app.write(b"6")
        app.writelines([b"7", b"89"])
        assert await reader.readexactly(9) == b"123456789"
        app.close()
        app.write(b"after close")  # dropped, as asyncio drops it: no error
        assert await reader.read() == b""
        await asyncio.wait_for(protocol.lost, 10)
        writer.close()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


def test_peer_close_notify_mid_stream(loop, contexts):
    """Data then close_notify in one read: the data first, then eof_received, then the
    shutdown and connection_lost(None)."""

    async def main():
        trace = []
        protocol = Recorder(trace, echo=False)
        server, reader, writer = await serve(contexts, protocol)
        writer.write(b"last words")
        writer.close()
        await writer.wait_closed()
        assert await asyncio.wait_for(protocol.lost, 10) is None
        server.close()
        await server.wait_closed()
        return trace, bytes(protocol.received)

    trace, received = loop.run_until_complete(main())
    assert received == b"last words"
    assert trace == ["made", "eof", ("lost", None)]


class Delegate:
    """Stands for an object of asyncio's TLS machinery (a ``MemoryBIO``, the ``SSLObject``):
    counts the calls of its methods and passes everything on."""

    def __init__(self, target, calls):
        self._target = target
        self._calls = calls

    def __getattr__(self, name):
        value = getattr(self._target, name)
        if callable(value):

            def call(*args):
                self._calls.append(name)
                return value(*args)

            return call
        return value


def test_replaced_bios_and_ssl_object(loop, contexts):
    """An ``SSLProtocol`` whose BIOs and SSL object were replaced by other objects (test
    doubles, wrappers) once the handshake is done: the data path calls their methods, as
    asyncio's does, and every byte goes through them."""
    sizes = [1, 1000, 20_000, 100_000]
    payload = os.urandom(max(sizes))

    async def main():
        protocol = Recorder([])
        server, reader, writer = await serve(contexts, protocol)
        calls = {"incoming": [], "outgoing": [], "sslobj": []}
        ssl_protocol = protocol.transport._ssl_protocol
        for name in calls:
            attribute = f"_{name}"
            setattr(
                ssl_protocol, attribute, Delegate(getattr(ssl_protocol, attribute), calls[name])
            )
        for size in sizes:
            writer.write(payload[:size])
            await writer.drain()
            assert await reader.readexactly(size) == payload[:size]
        await close_all(server, writer, protocol)
        return calls

    calls = loop.run_until_complete(main())
    assert "write" in calls["incoming"]
    assert "read" in calls["outgoing"]
    assert "read" in calls["sslobj"] and "write" in calls["sslobj"]


@pytest.mark.parametrize("where", ["instance", "class"])
def test_replaced_read_methods_are_called(loop, contexts, monkeypatch, where):
    """``get_buffer`` and ``buffer_updated`` of a live connection's ``SSLProtocol`` replaced
    (on the instance, or on its class) by wrappers: the socket transport's reads call the
    wrappers, as asyncio's ``_read_ready__get_buffer`` does (ferroloop's reader calls the
    native steps directly only while the methods are the class's own), and every byte still
    arrives."""
    sizes = [1, 1000, 20_000, 100_000]
    payload = os.urandom(max(sizes))
    calls = []

    def wrapped(method, name):
        def call(*args):
            calls.append((name, *args[-1:]))
            return method(*args)

        return call

    async def main():
        protocol = Recorder([])
        server, reader, writer = await serve(contexts, protocol)
        ssl_protocol = protocol.transport._ssl_protocol
        for name in ("get_buffer", "buffer_updated"):
            if where == "instance":
                setattr(ssl_protocol, name, wrapped(getattr(ssl_protocol, name), name))
            else:
                cls = type(ssl_protocol)
                monkeypatch.setattr(cls, name, wrapped(getattr(cls, name), name))
        for size in sizes:
            writer.write(payload[:size])
            await writer.drain()
            assert await reader.readexactly(size) == payload[:size]
        await close_all(server, writer, protocol)

    loop.run_until_complete(main())
    asked = [call for call in calls if call[0] == "get_buffer"]
    updated = [call[1] for call in calls if call[0] == "buffer_updated"]
    assert asked and all(call == ("get_buffer", -1) for call in asked)
    # The records carry the payloads and their overhead; every read was reported.
    assert len(asked) >= len(updated) > 0
    assert sum(updated) > sum(sizes)


def test_buffered_app_protocol_then_plain(loop, contexts):
    """A server whose application protocol is a ``BufferedProtocol`` with a 7-byte buffer (the
    SSL object keeps what does not fit, read on the next turn) until it has 100 bytes, then
    switches the TLS transport to a plain ``Protocol``: every byte of a 50 KB write arrives,
    once, in order, on both loops."""
    payload = os.urandom(50_000)

    async def main():
        got = bytearray()
        done = loop.create_future()

        class Plain(asyncio.Protocol):
            def data_received(self, data):
                assert type(data) is bytes
                got.extend(data)
                if len(got) >= len(payload) and not done.done():
                    done.set_result(None)

        class Small(asyncio.BufferedProtocol):
            def __init__(self):
                self.buffer = bytearray(7)
                self.made = loop.create_future()
                self.lost = loop.create_future()

            def connection_made(self, transport):
                self.transport = transport
                self.made.set_result(None)

            def get_buffer(self, sizehint):
                return self.buffer

            def buffer_updated(self, nbytes):
                got.extend(self.buffer[:nbytes])
                if len(got) >= 100:
                    self.transport.set_protocol(Plain())

            def connection_lost(self, exc):
                self.lost.set_result(exc)

        protocol = Small()
        server, reader, writer = await serve(contexts, protocol)
        writer.write(payload)
        await writer.drain()
        await asyncio.wait_for(done, 10)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return bytes(got)

    assert loop.run_until_complete(main()) == payload


def test_records_split_across_reads(loop, contexts):
    """A client that sends its records in 5,000-byte pieces: the server's reads end inside
    records, so a record's start is taken by one read and its plaintext comes out in the
    next (ferroloop sizes that read's buffer from what is waiting and must grow it). Every
    byte arrives, in order, as ``bytes``; records then close_notify in one piece close the
    connection as asyncio does."""
    payload = os.urandom(150_000)

    async def main():
        trace = []
        protocol = Recorder(trace, echo=False)
        server = await loop.create_server(lambda: protocol, "127.0.0.1", 0, ssl=contexts[0])
        port = server.sockets[0].getsockname()[1]
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setblocking(False)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = contexts[1].wrap_bio(incoming, outgoing, server_hostname="localhost")

        async def flush(step=None):
            wire = outgoing.read()
            step = step or len(wire) or 1
            for start in range(0, len(wire), step):
                await loop.sock_sendall(raw, wire[start : start + step])
                if step < len(wire):
                    await asyncio.sleep(0.002)

        while True:
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                await flush()
                incoming.write(await asyncio.wait_for(loop.sock_recv(raw, 65536), 10))
        await flush()
        await asyncio.wait_for(protocol.made, 10)
        client.write(payload)
        await flush(5000)
        for _ in range(1000):
            if len(protocol.received) >= len(payload):
                break
            await asyncio.sleep(0.005)
        received = bytes(protocol.received)
        client.write(b"tail")
        try:
            client.unwrap()
        except ssl.SSLWantReadError:
            pass
        await flush()
        lost = await asyncio.wait_for(protocol.lost, 10)
        raw.close()
        server.close()
        await server.wait_closed()
        return received, bytes(protocol.received), lost, trace

    received, everything, lost, trace = loop.run_until_complete(main())
    assert received == payload
    assert everything == payload + b"tail"
    assert lost is None
    assert trace == ["made", "eof", ("lost", None)]


def test_replaced_sslproto_class_is_used(loop, contexts, monkeypatch):
    """A test or library that replaces ``asyncio.sslproto.SSLProtocol`` gets its class on
    ferroloop too, as on asyncio's loop."""
    made, Spy = spy_on_sslproto(monkeypatch)

    async def main():
        protocol = Recorder([])
        server, reader, writer = await serve(contexts, protocol)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        await close_all(server, writer, protocol)

    loop.run_until_complete(main())
    assert len(made) == 2 and all(type(p) is Spy for p in made)


@pytest.mark.parametrize("replaced", [False, True], ids=["asyncio-class", "replaced-class"])
def test_start_tls_both_sides(loop, contexts, monkeypatch, replaced):
    """A plain connection upgraded with ``loop.start_tls`` on both sides (as STARTTLS and
    asyncpg's PostgreSQL SSL request do): the data flows, the protocols are asyncio's class
    (ferroloop's subclass with the native data path, or a replacement of
    ``asyncio.sslproto.SSLProtocol`` if there is one, as asyncio's code would use), and
    ``start_tls`` takes asyncio's arguments and errors."""
    made, _ = spy_on_sslproto(monkeypatch) if replaced else ([], None)
    trace = []

    async def main():
        loop = asyncio.get_running_loop()
        upgraded = loop.create_future()

        class Server(Recorder):
            def data_received(self, data):
                if data == b"STARTTLS\n":
                    self.transport.write(b"GO\n")
                    upgraded.set_result(self.transport)
                    return
                super().data_received(data)

        protocol = Server(trace)
        server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO\n"
        plain = await upgraded
        with pytest.raises(TypeError, match="SSLContext"):
            await loop.start_tls(plain, protocol, object(), server_side=True)
        server_side = loop.create_task(
            loop.start_tls(plain, protocol, contexts[0], server_side=True)
        )
        await writer.start_tls(contexts[1], server_hostname="localhost")
        app = await server_side
        protocol.transport = app
        for size in (1, 16385, 100_000):
            payload = os.urandom(size)
            writer.write(payload)
            await writer.drain()
            assert await reader.readexactly(size) == payload
        ssl_protocol = app._ssl_protocol
        assert isinstance(ssl_protocol, asyncio.sslproto.SSLProtocol)
        if replaced:
            assert type(ssl_protocol).__name__ == "Spy"
        elif is_ferroloop(loop):
            assert type(ssl_protocol) is _sslproto.SSLProtocol
        assert app.get_extra_info("cipher") is not None
        await close_all(server, writer, protocol)

    loop.run_until_complete(main())
    assert trace == ["made", "eof", ("lost", None)]
    if replaced:
        assert len(made) == 2
