"""The datagram transport's object: ferroloop's is asyncio's ``_SelectorDatagramTransport``
rebuilt with ``__slots__`` (``ferroloop/_datagram_transport.py``), its ``sendto`` a C method.
The tests compare what code can see of it with asyncio's own transport."""

import asyncio
import socket
import sys
from asyncio import selector_events

import pytest

import ferroloop
from ferroloop import _core


class Collect(asyncio.DatagramProtocol):
    def __init__(self):
        self.datagrams = []

    def datagram_received(self, data, addr):
        self.datagrams.append((data, addr))


def _kind(transport, value):
    if hasattr(value, "__self__") and hasattr(value, "__func__"):
        return ("bound", value.__func__.__qualname__, value.__self__ is transport)
    if isinstance(value, (bool, int, type(None), str, tuple)):
        return value
    return type(value).__name__


def _endpoint(loop, **kwargs):
    return loop.run_until_complete(loop.create_datagram_endpoint(Collect, **kwargs))


def _settle(loop):
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))


@pytest.mark.nodebug
@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "connected"])
def test_attributes_are_asyncios(connected):
    """Every attribute asyncio's ``__init__`` gives its transport reads the same on
    ferroloop's (as slots), and ferroloop's has no instance dict."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    kwargs = {"local_addr": ("127.0.0.1", 0)}
    if connected:
        kwargs = {"remote_addr": peer.getsockname()}
    made = {}
    for name, factory in (
        ("asyncio", asyncio.new_event_loop),
        ("ferroloop", ferroloop.new_event_loop),
    ):
        loop = factory()
        try:
            transport, _ = _endpoint(loop, **kwargs)
            made[name] = (loop, transport)
        except BaseException:
            loop.close()
            raise
    try:
        (_, theirs), (_, ours) = made["asyncio"], made["ferroloop"]
        assert type(theirs) is selector_events._SelectorDatagramTransport
        names = set(vars(theirs))
        assert "_address" in names and "_sock" in names
        skip = {"_extra", "_loop", "_protocol", "_sock", "_sock_fd", "_server", "_buffer"}
        for attribute in sorted(names - skip):
            assert _kind(ours, getattr(ours, attribute)) == _kind(
                theirs, getattr(theirs, attribute)
            ), attribute
        # Same kinds of object where the values differ by loop or socket.
        assert type(ours._buffer) is type(theirs._buffer)
        assert len(ours._buffer) == len(theirs._buffer) == 0
        assert type(ours._sock) is type(theirs._sock) is socket.socket
        assert ours._sock_fd == ours._sock.fileno()
        assert set(ours._extra) == set(theirs._extra)
        assert (ours._extra["peername"] is None) == (theirs._extra["peername"] is None)
        assert type(ours).__name__ == type(theirs).__name__
        assert type(ours).__qualname__ == type(theirs).__qualname__
        for base in (asyncio.BaseTransport, asyncio.DatagramTransport, asyncio.Transport):
            assert isinstance(ours, base) == isinstance(theirs, base), base
        assert not isinstance(ours, selector_events._SelectorDatagramTransport)
        # Slots: no instance dict until something sets an attribute asyncio has not.
        assert vars(ours) == {}
        ours.mark = 1
        assert vars(ours) == {"mark": 1}
        assert repr(ours).split(" ")[0] == repr(theirs).split(" ")[0]
    finally:
        for loop, transport in made.values():
            transport.close()
            _settle(loop)
            loop.close()
        peer.close()


@pytest.mark.nodebug
def test_read_ready_is_the_native_reader_until_connection_lost():
    loop = ferroloop.new_event_loop()
    try:
        transport, _ = _endpoint(loop, local_addr=("127.0.0.1", 0))
        reader = transport._read_ready
        assert type(reader) is _core._DatagramReader
        assert reader.__qualname__ == "_SelectorDatagramTransport._read_ready"
        transport.close()
        _settle(loop)
        after = transport._read_ready
        assert after.__func__ is selector_events._SelectorDatagramTransport._read_ready
        assert after.__self__ is transport
        assert transport._sock is None
    finally:
        loop.close()


def test_debug_mode_reads_with_asyncios_method():
    loop = ferroloop.new_event_loop()
    loop.set_debug(True)
    try:
        transport, proto = _endpoint(loop, local_addr=("127.0.0.1", 0))
        method = transport._read_ready
        assert method.__func__ is selector_events._SelectorDatagramTransport._read_ready
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.bind(("127.0.0.1", 0))
        sender.sendto(b"x", transport.get_extra_info("sockname"))
        transport.sendto(b"y", sender.getsockname())
        sender.settimeout(5)
        assert sender.recv(10) == b"y"
        for _ in range(20):
            loop.run_until_complete(asyncio.sleep(0.01))
            if proto.datagrams:
                break
        assert proto.datagrams == [(b"x", sender.getsockname())]
        sender.close()
        transport.close()
        _settle(loop)
    finally:
        loop.close()


def test_sendto_argument_forms(loop):
    """Positional, keyword and wrong calls of ``sendto``: the C method takes the forms
    asyncio's method takes and gives asyncio's errors for the rest."""
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(5)
    transport, _ = _endpoint(loop, local_addr=("127.0.0.1", 0))
    addr = peer.getsockname()
    transport.sendto(b"a", addr)
    transport.sendto(b"b", addr=addr)
    transport.sendto(data=b"c", addr=addr)
    transport.sendto(memoryview(b"xdx")[1:2], addr)
    assert [peer.recv(10) for _ in range(4)] == [b"a", b"b", b"c", b"d"]
    wrong_calls = (
        ((b"e", addr, 1), {}),
        ((b"e",), {"address": addr}),
        ((), {}),
        ((b"e", addr), {"addr": addr}),
    )
    errors = []
    for args, kwargs in wrong_calls:
        with pytest.raises(TypeError) as info:
            transport.sendto(*args, **kwargs)
        errors.append(str(info.value))
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()
    # The messages asyncio's method gives, on either loop.
    method = selector_events._SelectorDatagramTransport.sendto
    expected = []
    for args, kwargs in wrong_calls:
        with pytest.raises(TypeError) as info:
            method(object(), *args, **kwargs)
        expected.append(str(info.value))
    assert errors == expected


@pytest.mark.skipif(sys.platform != "linux", reason="Linux abstract Unix names")
def test_sendto_keyword_addr_on_unix_socket(loop, tmp_path):
    path = str(tmp_path / "peer.sock")
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(path)
    peer.settimeout(5)
    transport, _ = _endpoint(loop, family=socket.AF_UNIX, local_addr=str(tmp_path / "me.sock"))
    transport.sendto(b"u", addr=path)
    assert peer.recv(10) == b"u"
    transport.close()
    loop.run_until_complete(asyncio.sleep(0))
    peer.close()
