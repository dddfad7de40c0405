"""Datagram transports' ``sendto``: ferroloop sends natively when the datagram goes out at
once and keeps asyncio's buffering, errors and messages otherwise; tested on both loops."""

import asyncio
import errno
import os
import socket
import sys

import pytest

from conftest import ticker

PY313 = sys.version_info >= (3, 13)


class Collect(asyncio.DatagramProtocol):
    def __init__(self):
        self.datagrams = []
        self.errors = []
        self.lost = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.datagrams.append((data, addr))

    def error_received(self, exc):
        self.errors.append(exc)

    def connection_lost(self, exc):
        self.lost.append(exc)


def _udp_peer():
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    return peer


def test_sendto_addresses(loop):
    peer = _udp_peer()
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(Collect, local_addr=("127.0.0.1", 0))
    )
    here = transport.get_extra_info("sockname")
    transport.sendto(b"one", peer.getsockname())
    transport.sendto(bytearray(b"two"), peer.getsockname())
    transport.sendto(memoryview(b"three"), peer.getsockname())
    # A host name goes through socket.sendto's resolution, as on asyncio.
    transport.sendto(b"four", ("localhost", peer.getsockname()[1]))
    got = [peer.recvfrom(100) for _ in range(4)]
    assert [d for d, _ in got] == [b"one", b"two", b"three", b"four"]
    assert {a for _, a in got} == {here}
    peer.sendto(b"back", here)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert proto.datagrams == [(b"back", peer.getsockname())]
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()


def _ipv6_loopback():
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
    except OSError:
        return False
    probe.close()
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback (::1) on this machine")
@pytest.mark.expect_errors
def test_sendto_ipv6_addresses(loop, loop_errors):
    peer = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    peer.bind(("::1", 0))
    peer.settimeout(5)
    port = peer.getsockname()[1]
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(Collect, local_addr=("::1", 0))
    )
    here = transport.get_extra_info("sockname")
    transport.sendto(b"two", ("::1", port))
    transport.sendto(b"three", ("::1", port, 0))
    transport.sendto(b"four", ("0:0:0:0:0:0:0:1", port, 0, 0))
    transport.sendto(memoryview(b"five"), peer.getsockname())
    got = [peer.recvfrom(100) for _ in range(4)]
    assert [d for d, _ in got] == [b"two", b"three", b"four", b"five"]
    assert {a for _, a in got} == {here}
    # Reads: the sender's address as socket gives it; an answer to that very tuple.
    for n in range(3):
        peer.sendto(b"back%d" % n, here)
    loop.run_until_complete(asyncio.sleep(0.05))
    assert proto.datagrams == [(b"back%d" % n, peer.getsockname()) for n in range(3)]
    transport.sendto(b"reply", proto.datagrams[-1][1])
    assert peer.recvfrom(100) == (b"reply", here)
    # Addresses socket refuses: asyncio's outcome (a fatal error for a port out of range, an
    # error_received for an address of the other family), on both loops.
    transport.sendto(b"bad", ("127.0.0.1", port))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert [type(e) for e in proto.errors] == [socket.gaierror]
    transport.sendto(b"bad", ("::1", 70000))
    loop.run_until_complete(asyncio.sleep(0.05))
    [context] = loop_errors
    assert context["message"] == "Fatal write error on datagram transport"
    assert type(context["exception"]) is OverflowError
    assert transport.is_closing()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()


def test_sendto_connected(loop):
    peer = _udp_peer()
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(Collect, remote_addr=peer.getsockname())
    )
    transport.sendto(b"a")
    transport.sendto(b"b", peer.getsockname())
    with pytest.raises(ValueError) as info:
        transport.sendto(b"c", ("127.0.0.1", 1))
    assert str(info.value) == f"Invalid address: must be None or {peer.getsockname()}"
    assert [peer.recv(10) for _ in range(2)] == [b"a", b"b"]
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()


def test_sendto_bad_data(loop):
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(Collect, local_addr=("127.0.0.1", 0))
    )
    with pytest.raises(TypeError) as info:
        transport.sendto("text", ("127.0.0.1", 9))
    assert str(info.value) == "data argument must be a bytes-like object, not 'str'"
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))


def test_sendto_empty_datagram(loop):
    peer = _udp_peer()
    peer.settimeout(0.3)
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(Collect, local_addr=("127.0.0.1", 0))
    )
    transport.sendto(b"", peer.getsockname())
    if PY313:
        assert peer.recv(10) == b""
    else:
        # Dropped before 3.13.
        with pytest.raises(socket.timeout):
            peer.recv(10)
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()


def test_sendto_error_received(loop):
    # A connected socket whose peer is gone: ECONNREFUSED comes back through error_received.
    peer = _udp_peer()
    address = peer.getsockname()
    peer.close()
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(Collect, remote_addr=address)
    )

    async def provoke():
        for _ in range(50):
            transport.sendto(b"x")
            await asyncio.sleep(0.01)
            if proto.errors:
                return

    loop.run_until_complete(provoke())
    assert proto.errors and all(isinstance(e, ConnectionRefusedError) for e in proto.errors)
    assert not transport.is_closing()
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))


def test_sendto_would_block_buffers_in_order(loop, loop_name):
    # A socketpair of datagram sockets with a small send buffer: sends that would block are
    # buffered with asyncio's accounting and go out in order once the peer reads.
    if loop_name == "asyncio":
        pytest.skip("asyncio cannot send to an unnamed Unix peer (see test_unnamed_unix_peer)")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    transport, proto = loop.run_until_complete(loop.create_datagram_endpoint(Collect, sock=a))
    count = 200
    sent = [bytes([i % 256]) * 500 for i in range(count)]
    for data in sent:
        transport.sendto(data)
    buffered = transport.get_write_buffer_size()
    assert buffered > 0
    queued = len(transport._buffer)
    header = 8 if PY313 else 0
    assert buffered == sum(len(d) + header for d, _ in transport._buffer)
    assert queued < count
    got = []

    async def read_all():
        b.setblocking(False)
        while len(got) < count:
            try:
                got.append(b.recv(1000))
            except BlockingIOError:
                await asyncio.sleep(0.001)

    loop.run_until_complete(asyncio.wait_for(read_all(), 10))
    assert got == sent
    assert transport.get_write_buffer_size() == 0
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    b.close()


@pytest.mark.parametrize("debug", [False, True], ids=["native", "debug"])
def test_unnamed_unix_peer(loop_name, loop_factory, debug):
    # asyncio calls sock.sendto(data, None) for a socket connected to an unnamed Unix peer
    # and fails with a TypeError (a fatal error: the transport closes); ferroloop sends with
    # send(), as uvloop does (docs/deviations.md).
    loop = loop_factory()
    loop.set_debug(debug)
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    transport, proto = loop.run_until_complete(loop.create_datagram_endpoint(Collect, sock=a))
    assert transport.get_extra_info("peername") == ""
    transport.sendto(b"to the peer")
    loop.run_until_complete(asyncio.sleep(0.01))
    if loop_name == "asyncio":
        assert [type(c["exception"]) for c in errors] == [TypeError]
        assert transport.is_closing()
    else:
        assert errors == []
        assert b.recv(100) == b"to the peer"
        b.send(b"back")
        loop.run_until_complete(asyncio.sleep(0.01))
        assert proto.datagrams == [(b"back", "")] or proto.datagrams == [(b"back", None)]
        transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    b.close()


@pytest.mark.nodebug
def test_datagrams_per_readiness_report(loop, loop_name):
    # asyncio delivers one datagram per iteration; ferroloop reads until the socket has no
    # more (at most 32 per readiness report), as uvloop does (docs/deviations.md).
    trace = []

    class P(Collect):
        def datagram_received(self, data, addr):
            trace.append(data)

    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
    )
    peer = _udp_peer()
    for i in range(3):
        peer.sendto(b"%d" % i, transport.get_extra_info("sockname"))
    ticker(loop, trace, 5)
    loop.run_until_complete(asyncio.sleep(0.05))
    datagrams = [b"0", b"1", b"2"]
    if loop_name == "asyncio":
        assert trace[:7] == [("tick", 0), b"0", ("tick", 1), b"1", ("tick", 2), b"2", ("tick", 3)]
    else:
        assert trace[:5] == [("tick", 0), *datagrams, ("tick", 1)]
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()


@pytest.mark.nodebug
def test_close_in_datagram_received_ends_delivery(loop):
    got = []

    class P(Collect):
        def datagram_received(self, data, addr):
            got.append(data)
            self.transport.close()

    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(P, local_addr=("127.0.0.1", 0))
    )
    peer = _udp_peer()
    for i in range(3):
        peer.sendto(b"%d" % i, transport.get_extra_info("sockname"))
    loop.run_until_complete(asyncio.sleep(0.05))
    assert got == [b"0"]
    assert proto.lost == [None]
    peer.close()


def _unix_peer(path):
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path is not None:
        peer.bind(path)
    peer.settimeout(5)
    return peer


def test_unix_datagram_addresses(loop, tmp_path):
    # Senders as socket.recvfrom gives them (a path as str, an abstract name as bytes, an
    # unbound sender as None), and replies to each kind of address, str and bytes.
    here = str(tmp_path / "server")
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(Collect, local_addr=here, family=socket.AF_UNIX)
    )
    named = _unix_peer(str(tmp_path / "named"))
    abstract = _unix_peer(b"\0ferroloop-test-%d" % id(transport))
    unbound = _unix_peer(None)
    try:
        for peer, data in ((named, b"one"), (abstract, b"two"), (unbound, b"three")):
            peer.sendto(data, here)
        loop.run_until_complete(asyncio.sleep(0.05))
        assert proto.datagrams == [
            (b"one", str(tmp_path / "named")),
            (b"two", abstract.getsockname()),
            (b"three", None),
        ]
        assert isinstance(abstract.getsockname(), bytes)
        for data, addr in proto.datagrams[:2]:
            transport.sendto(data.upper(), addr)
        transport.sendto(b"bytes path", os.fsencode(str(tmp_path / "named")))
        assert named.recvfrom(100) == (b"ONE", here)
        assert abstract.recvfrom(100) == (b"TWO", here)
        assert named.recvfrom(100) == (b"bytes path", here)
        assert proto.errors == []
    finally:
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))
        for peer in (named, abstract, unbound):
            peer.close()


def test_unix_datagram_send_errors(loop, tmp_path):
    transport, proto = loop.run_until_complete(
        loop.create_datagram_endpoint(
            Collect, local_addr=str(tmp_path / "server"), family=socket.AF_UNIX
        )
    )
    try:
        transport.sendto(b"x", str(tmp_path / "nobody"))
        transport.sendto(b"x", "y" * 200)
        loop.run_until_complete(asyncio.sleep(0.01))
        assert [type(e) for e in proto.errors] == [FileNotFoundError, OSError]
        assert proto.errors[0].errno == errno.ENOENT
        assert "too long" in str(proto.errors[1])
        assert not transport.is_closing()
    finally:
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))


def test_received_datagrams_are_never_changed_behind_the_protocol(loop):
    # ferroloop refills a received datagram's bytes that the protocol did not keep for the
    # next one of about its size (ffi::keep_spare_bytes): what the protocol keeps, and the
    # hash of each datagram, stay what they were.
    sizes = [1024, 1024, 1000, 800, 1024, 700, 3000, 2900, 2999, 1024]
    messages = [bytes((i * 7 + k) % 251 for k in range(size)) for i, size in enumerate(sizes)]
    seen = []
    kept = []

    class Keep(asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            seen.append((bytes(bytearray(data)), hash(data) == hash(bytes(bytearray(data)))))
            if len(seen) % 2 == 0:
                kept.append(data)

    async def main():
        transport, _ = await loop.create_datagram_endpoint(Keep, local_addr=("127.0.0.1", 0))
        peer = _udp_peer()
        for message in messages:
            count = len(seen)
            peer.sendto(message, transport.get_extra_info("sockname"))
            for _ in range(500):
                if len(seen) > count:
                    break
                await asyncio.sleep(0.01)
        peer.close()
        transport.close()
        await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert [data for data, _ in seen] == messages
    assert all(same for _, same in seen)
    assert [bytes(d) for d in kept] == messages[1::2]
