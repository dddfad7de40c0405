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


@pytest.mark.parametrize("case", ["str", "int", "after_write_eof", "bytes_subclass", "after_close"])
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


class DatagramRecorder(asyncio.DatagramProtocol):
    def __init__(self, fail=False):
        self.events = []
        self.fail = fail

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.events.append((data, addr))
        if self.fail:
            raise ValueError("datagram_received failed")

    def error_received(self, exc):
        self.events.append(("error", type(exc).__name__))


def _udp_socket(family=socket.AF_INET, host="127.0.0.1"):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    return sock


def test_datagram_sender_on_a_dual_stack_socket(loop):
    """An IPv4 sender seen by a dual-stack IPv6 socket: an IPv4-mapped address, spelled as
    ``inet_ntop`` spells it (``::ffff:127.0.0.1``)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    port = sock.getsockname()[1]

    async def main():
        proto = DatagramRecorder()
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, sock=sock)
        sender = _udp_socket()
        sender.sendto(b"mapped", ("127.0.0.1", port))
        await _settle(loop)
        transport.sendto(b"back", proto.events[0][1])
        reply = sender.recv(16)
        sender_port = sender.getsockname()[1]
        sender.close()
        transport.close()
        await _settle(loop)
        return proto.events, reply, sender_port

    events, reply, sender_port = loop.run_until_complete(main())
    assert events == [(b"mapped", ("::ffff:127.0.0.1", sender_port, 0, 0))]
    assert reply == b"back"


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_datagrams_and_their_senders(loop, family):
    if family == "ipv6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    fam, host = (socket.AF_INET, "127.0.0.1") if family == "ipv4" else (socket.AF_INET6, "::1")

    async def main():
        proto = DatagramRecorder()
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=(host, 0))
        except OSError:
            pytest.skip("no IPv6 loopback")
        here = transport.get_extra_info("sockname")
        senders = [_udp_socket(fam, host) for _ in range(10)]  # more than ferroloop caches
        expected = []
        for round_ in range(2):
            for i, s in enumerate(senders):
                payload = f"{round_}:{i}".encode()
                s.sendto(payload, here)
                expected.append((payload, s.getsockname()))
                await asyncio.sleep(0.001)
        await _settle(loop)
        for s in senders:
            s.close()
        transport.close()
        await _settle(loop)
        return proto.events, expected

    events, expected = loop.run_until_complete(main())
    assert events == expected
    assert all(type(addr) is tuple for _, addr in events)


def test_datagram_error_received(loop):
    async def main():
        proto = DatagramRecorder()
        closed = _udp_socket()
        port = closed.getsockname()
        closed.close()
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, remote_addr=port)
        transport.sendto(b"nobody listens")
        await _settle(loop, 0.05)
        transport.close()
        await _settle(loop)
        return proto.events

    assert loop.run_until_complete(main()) == [("error", "ConnectionRefusedError")]


@pytest.mark.expect_errors
def test_datagram_received_failure_reaches_the_exception_handler(loop, loop_errors):
    async def main():
        proto = DatagramRecorder(fail=True)
        transport, _ = await loop.create_datagram_endpoint(
            lambda: proto, local_addr=("127.0.0.1", 0)
        )
        s = _udp_socket()
        s.sendto(b"x", transport.get_extra_info("sockname"))
        await _settle(loop)
        s.close()
        transport.close()
        await _settle(loop)

    loop.run_until_complete(main())
    assert [e["message"] for e in loop_errors] == [
        "Exception in callback _SelectorDatagramTransport._read_ready()"
    ]
    assert type(loop_errors[0]["exception"]) is ValueError


def test_unix_datagrams(loop, tmp_path):
    async def main():
        proto = DatagramRecorder()
        path = str(tmp_path / "dgram.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        transport, _ = await loop.create_datagram_endpoint(lambda: proto, sock=sock)
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        peer.bind(str(tmp_path / "peer.sock"))
        peer.sendto(b"hello", path)
        await _settle(loop)
        peer.close()
        transport.close()
        await _settle(loop)
        return proto.events

    assert loop.run_until_complete(main()) == [(b"hello", str(tmp_path / "peer.sock"))]


# ferroloop refills a received `bytes` object that the protocol did not keep for the next
# read of about its size (ffi::keep_spare_bytes): whatever the protocol keeps (the object, a
# memoryview of it, a hash computed from it) must stay what it was.
SIZES = [1024, 1024, 1000, 800, 1024, 700, 3000, 2900, 2999, 1024, 1024]


def _message(i, size):
    return bytes((i * 7 + k) % 251 for k in range(size))


class Keeper(asyncio.Protocol):
    """Keeps every other piece (the object or a memoryview of it) and checks each piece's
    hash against a fresh copy's."""

    def __init__(self):
        self.kept = []
        self.hashes_match = []
        self.received = asyncio.get_running_loop().create_future()
        self.pieces = 0

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.hashes_match.append(hash(data) == hash(bytes(bytearray(data))))
        if self.pieces % 4 == 1:
            self.kept.append(data)
        elif self.pieces % 4 == 3:
            self.kept.append(memoryview(data))
        self.pieces += 1
        self.last = bytes(bytearray(data))
        if not self.received.done():
            self.received.set_result(None)


def test_received_bytes_are_never_changed_behind_the_protocol(loop):
    a, b = socket.socketpair()
    a.setblocking(False)

    async def main():
        transport, protocol = await loop.create_connection(Keeper, sock=a)
        got = []
        for i, size in enumerate(SIZES):
            protocol.received = loop.create_future()
            b.sendall(_message(i, size))
            await asyncio.wait_for(protocol.received, 5)
            got.append(protocol.last)
        transport.close()
        await asyncio.sleep(0)
        return protocol, got

    protocol, got = loop.run_until_complete(main())
    b.close()
    assert got == [_message(i, size) for i, size in enumerate(SIZES)]
    assert all(protocol.hashes_match)
    kept = [bytes(piece) for piece in protocol.kept]
    assert kept == [_message(i, SIZES[i]) for i in range(len(SIZES)) if i % 4 in (1, 3)]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_data_received_propagates(loop, exc_type):
    # The native reader (called by the loop without Python's call protocol on ferroloop)
    # lets SystemExit and KeyboardInterrupt out of run_forever, as asyncio's _read_ready does;
    # the transport is not closed and reads on in the next run.
    a, b = socket.socketpair()
    a.setblocking(False)
    received = []

    class Raising(asyncio.Protocol):
        def data_received(self, data):
            received.append(bytes(data))
            if len(received) == 1:
                raise exc_type()
            loop.stop()

    transport, _ = loop.run_until_complete(loop.create_connection(Raising, sock=a))
    b.sendall(b"first")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not transport.is_closing()
    b.sendall(b"second")
    loop.run_forever()
    assert received == [b"first", b"second"]
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    b.close()
