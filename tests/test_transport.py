"""Socket transports' read path (ferroloop reads natively for plain protocols): what the
protocol sees, errors, end of file, pausing, protocol switches, and the transport's lifetime,
compared between asyncio's loop and ferroloop."""

import asyncio
import gc
import socket
import weakref

import pytest


class Recorder(asyncio.Protocol):
    def __init__(self, keep_open=False, fail_on=None):
        self.events = []
        self.keep_open = keep_open
        self.fail_on = fail_on
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.events.append(("data", bytes(data)))
        if self.fail_on is not None and self.fail_on in data:
            raise ValueError("protocol failed")

    def eof_received(self):
        self.events.append("eof")
        return self.keep_open

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))


class Buffered(asyncio.BufferedProtocol):
    def __init__(self):
        self.events = []
        self.buf = bytearray(4)

    def connection_made(self, transport):
        self.events.append("made")

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.events.append(("data", bytes(self.buf[:nbytes])))

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(("lost", type(exc).__name__ if exc else None))


async def _settle(loop, seconds=0.02):
    await asyncio.sleep(seconds)


async def _connect(loop, protocol):
    a, b = socket.socketpair()
    transport, _ = await loop.create_connection(lambda: protocol, sock=b)
    a.setblocking(False)
    return a, transport


def test_data_eof_and_close(loop):
    async def main():
        proto = Recorder()
        a, transport = await _connect(loop, proto)
        assert isinstance(transport, asyncio.Transport)
        assert type(transport).__name__ == "_SelectorSocketTransport"
        a.send(b"hello")
        await _settle(loop)
        a.send(b"world")
        await _settle(loop)
        a.shutdown(socket.SHUT_WR)
        await _settle(loop)
        a.close()
        return proto.events

    assert loop.run_until_complete(main()) == [
        "made",
        ("data", b"hello"),
        ("data", b"world"),
        "eof",
        ("lost", None),
    ]


def test_eof_kept_open_still_writes(loop):
    async def main():
        proto = Recorder(keep_open=True)
        a, transport = await _connect(loop, proto)
        a.shutdown(socket.SHUT_WR)
        await _settle(loop)
        transport.write(b"after eof")
        await _settle(loop)
        got = a.recv(100)
        transport.close()
        await _settle(loop)
        a.close()
        return got, proto.events

    assert loop.run_until_complete(main()) == (b"after eof", ["made", "eof", ("lost", None)])


@pytest.mark.expect_errors
def test_data_received_failure_is_fatal(loop, loop_errors):
    async def main():
        proto = Recorder(fail_on=b"!")
        a, transport = await _connect(loop, proto)
        a.send(b"boom!")
        await _settle(loop)
        a.close()
        return proto.events

    assert loop.run_until_complete(main()) == ["made", ("data", b"boom!"), ("lost", "ValueError")]
    assert [e["message"] for e in loop_errors] == [
        "Fatal error: protocol.data_received() call failed."
    ]
    assert type(loop_errors[0]["exception"]) is ValueError


def test_connection_reset_while_reading(loop):
    async def main():
        proto = Recorder()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        transport, _ = await loop.create_connection(lambda: proto, *listener.getsockname())
        peer, _ = listener.accept()
        listener.close()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()
        await _settle(loop, 0.05)
        return proto.events

    assert loop.run_until_complete(main()) == ["made", ("lost", "ConnectionResetError")]


def test_pause_and_resume_reading(loop):
    async def main():
        proto = Recorder()
        a, transport = await _connect(loop, proto)
        transport.pause_reading()
        a.send(b"held")
        await _settle(loop)
        held = list(proto.events)
        transport.resume_reading()
        await _settle(loop)
        transport.close()
        await _settle(loop)
        a.close()
        return held, proto.events

    held, events = loop.run_until_complete(main())
    assert held == ["made"]
    assert events == ["made", ("data", b"held"), ("lost", None)]


def test_max_size_bounds_each_read(loop):
    async def main():
        proto = Recorder()
        a, transport = await _connect(loop, proto)
        transport.max_size = 3
        a.send(b"abcdefgh")
        await _settle(loop)
        transport.close()
        await _settle(loop)
        a.close()
        return proto.events

    assert loop.run_until_complete(main()) == [
        "made",
        ("data", b"abc"),
        ("data", b"def"),
        ("data", b"gh"),
        ("lost", None),
    ]


def test_buffered_protocol_and_switching_protocols(loop):
    async def main():
        first = Buffered()
        a, transport = await _connect(loop, first)
        a.send(b"abcdef")
        await _settle(loop)
        second = Recorder()
        transport.set_protocol(second)
        a.send(b"plain")
        await _settle(loop)
        third = Buffered()
        transport.set_protocol(third)
        a.send(b"xy")
        await _settle(loop)
        transport.close()
        await _settle(loop)
        a.close()
        return first.events, second.events, third.events

    first, second, third = loop.run_until_complete(main())
    assert first == ["made", ("data", b"abcd"), ("data", b"ef")]
    assert second == [("data", b"plain")]
    assert third == [("data", b"xy"), ("lost", None)]


def test_closed_transport_is_freed(loop):
    async def main():
        proto = Recorder()
        a, transport = await _connect(loop, proto)
        ref = weakref.ref(transport)
        transport.close()
        await _settle(loop)
        a.close()
        proto.transport = None
        return ref

    ref = loop.run_until_complete(main())
    gc.collect()
    assert ref() is None


def test_unclosed_transport_is_freed_when_the_loop_closes(loop_factory):
    loop = loop_factory()

    async def main():
        proto = Recorder()
        a, transport = await _connect(loop, proto)
        proto.transport = None
        return a, weakref.ref(transport)

    a, ref = loop.run_until_complete(main())
    loop.close()
    with pytest.warns(ResourceWarning):
        gc.collect()
    a.close()
    assert ref() is None


def test_server_side_echo_many_connections(loop):
    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def client(port, payload):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(payload)
        got = await reader.readexactly(len(payload))
        writer.close()
        await writer.wait_closed()
        return got

    async def main():
        server = await loop.create_server(Echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        payloads = [bytes([i]) * (1000 * (i + 1)) for i in range(8)]
        try:
            got = await asyncio.gather(*[client(port, p) for p in payloads])
        finally:
            server.close()
            await server.wait_closed()
        return got == payloads

    assert loop.run_until_complete(main())


class FlowRecorder(Recorder):
    def pause_writing(self):
        self.events.append("pause")

    def resume_writing(self):
        self.events.append("resume")


def test_writes_in_order_through_the_buffer_with_flow_control(loop):
    import array

    async def main():
        proto = FlowRecorder()
        a, transport = await _connect(loop, proto)
        transport.set_write_buffer_limits(high=64 * 1024)
        chunks = [
            b"first",
            bytearray(b"second"),
            memoryview(b"third"),
            memoryview(array.array("i", [1, 2, 3])),
            b"x" * 3_000_000,
            b"",
            b"last",
        ]
        for chunk in chunks:
            transport.write(chunk)
        buffered = transport.get_write_buffer_size()
        got = bytearray()
        expected = b"".join(bytes(c) for c in chunks)
        while len(got) < len(expected):
            try:
                got += a.recv(1 << 20)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        transport.close()
        await _settle(loop)
        a.close()
        return bytes(got) == expected, buffered > 0, proto.events

    same, buffered, events = loop.run_until_complete(main())
    assert same and buffered
    assert events == ["made", "pause", "resume", ("lost", None)]


@pytest.mark.parametrize(
    "case", ["str", "int", "after_write_eof", "bytes_subclass", "after_close"]
)
def test_write_errors_and_odd_input_as_asyncio(loop, case):
    class Bytes(bytes):
        pass

    async def main():
        proto = Recorder()
        a, transport = await _connect(loop, proto)
        data = {"str": "text", "int": 42, "bytes_subclass": Bytes(b"sub")}.get(case, b"data")
        if case == "after_write_eof":
            transport.write_eof()
        if case == "after_close":
            transport.close()
        try:
            transport.write(data)
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - compared
            outcome = (type(exc).__name__, str(exc))
        await _settle(loop)
        try:
            received = a.recv(100)
        except BlockingIOError:
            received = None
        transport.close()
        await _settle(loop)
        a.close()
        return outcome, received

    expected = {
        "str": (("TypeError", "data argument must be a bytes-like object, not 'str'"), None),
        "int": (("TypeError", "data argument must be a bytes-like object, not 'int'"), None),
        "after_write_eof": (("RuntimeError", "Cannot call write() after write_eof()"), b""),
        "bytes_subclass": ("ok", b"sub"),
        "after_close": ("ok", b""),
    }
    assert loop.run_until_complete(main()) == expected[case]


def test_write_to_a_reset_peer_loses_the_connection(loop):
    async def main():
        proto = Recorder()
        a, transport = await _connect(loop, proto)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        a.close()
        for _ in range(3):
            transport.write(b"into the void")
            await _settle(loop)
        return proto.events

    events = loop.run_until_complete(main())
    assert events[0] == "made"
    assert events[-1][0] == "lost" and events[-1][1] in ("BrokenPipeError", "ConnectionResetError")
