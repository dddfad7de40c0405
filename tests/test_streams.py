"""The streams API over native transports: what runs beneath ``StreamReader`` for each
received chunk (``StreamReaderProtocol.data_received``, ``StreamReader.feed_data``,
``_wakeup_waiter``; ferroloop does those natively, ``net/streams.rs``). Every test runs on
asyncio's loop and on ferroloop and checks asyncio's behaviour: the data, the waiter, pausing at
twice the limit, the errors, and that a patched class or instance still gets its own code."""

import asyncio
import gc
import sys

import pytest

from conftest import is_ferroloop, socket_pair


async def _connected(loop, limit=2**16, reader=None):
    """A streams connection over one end of a socketpair: (reader, writer, protocol, peer)."""
    a, b = socket_pair()
    reader = reader or asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=a)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return reader, writer, protocol, b


async def _until(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


def _close(writer, peer):
    writer.close()
    peer.close()


@pytest.mark.nodebug
def test_data_wakes_a_waiting_read_and_is_buffered_in_order(loop):
    async def main():
        reader, writer, _, peer = await _connected(loop)
        read = asyncio.ensure_future(reader.read(100))
        await _until(lambda: reader._waiter is not None)
        waiter = reader._waiter
        peer.send(b"first ")
        assert await read == b"first "
        assert waiter.done() and waiter.result() is None
        assert reader._waiter is None
        peer.send(b"second ")
        await _until(lambda: len(reader._buffer) == 7)
        peer.send(b"third")
        await _until(lambda: len(reader._buffer) == 12)
        assert type(reader._buffer) is bytearray
        assert await reader.read(100) == b"second third"
        _close(writer, peer)

    loop.run_until_complete(main())


@pytest.mark.nodebug
def test_reading_pauses_past_twice_the_limit_and_resumes(loop):
    async def main():
        reader, writer, _, peer = await _connected(loop, limit=16)
        peer.send(b"x" * 32)
        await _until(lambda: len(reader._buffer) == 32)
        # Exactly twice the limit: not more, not paused.
        assert reader._paused is False
        assert writer.transport.is_reading()
        peer.send(b"y")
        await _until(lambda: len(reader._buffer) == 33)
        assert reader._paused is True
        assert not writer.transport.is_reading()
        assert await reader.read(100) == b"x" * 32 + b"y"
        assert reader._paused is False
        assert writer.transport.is_reading()
        _close(writer, peer)

    loop.run_until_complete(main())


@pytest.mark.nodebug
def test_a_limit_that_is_not_an_int(loop):
    async def main():
        reader, writer, _, peer = await _connected(loop)
        reader._limit = 8.5  # twice: 17.0
        peer.send(b"x" * 17)
        await _until(lambda: len(reader._buffer) == 17)
        assert reader._paused is False
        peer.send(b"x")
        await _until(lambda: len(reader._buffer) == 18)
        assert reader._paused is True
        _close(writer, peer)

    loop.run_until_complete(main())


@pytest.mark.nodebug
def test_a_transport_that_cannot_pause_is_forgotten(loop):
    async def main():
        reader, writer, _, peer = await _connected(loop, limit=4)
        calls = []

        def pause_reading():
            calls.append("pause")
            raise NotImplementedError

        writer.transport.pause_reading = pause_reading
        peer.send(b"x" * 9)
        await _until(lambda: len(reader._buffer) == 9)
        assert calls == ["pause"]
        assert reader._transport is None
        assert reader._paused is False
        peer.send(b"y" * 9)
        await _until(lambda: len(reader._buffer) == 18)
        assert calls == ["pause"]
        _close(writer, peer)

    loop.run_until_complete(main())


@pytest.mark.nodebug
def test_a_cancelled_waiter_is_left_alone(loop):
    async def main():
        reader, writer, _, peer = await _connected(loop)
        read = asyncio.ensure_future(reader.read(100))
        await _until(lambda: reader._waiter is not None)
        reader._waiter.cancel()
        peer.send(b"data")
        with pytest.raises(asyncio.CancelledError):
            await read
        await _until(lambda: len(reader._buffer) == 4)
        assert reader._waiter is None
        assert await reader.read(100) == b"data"
        _close(writer, peer)

    loop.run_until_complete(main())


@pytest.mark.nodebug
def test_data_for_a_reader_that_is_gone_is_dropped(loop):
    async def main():
        reader = asyncio.StreamReader(loop=loop)
        a, peer = socket_pair()
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=a)
        del reader
        gc.collect()
        assert protocol._stream_reader is None
        peer.send(b"nobody reads this")
        await asyncio.sleep(0.05)
        assert not transport.is_closing()
        transport.close()
        peer.close()

    loop.run_until_complete(main())


@pytest.mark.expect_errors
@pytest.mark.nodebug
@pytest.mark.skipif(sys.flags.optimize > 0, reason="asyncio's check is an assert")
def test_data_after_feed_eof_is_asyncios_assertion(loop, loop_errors):
    async def main():
        reader, writer, _, peer = await _connected(loop)
        reader.feed_eof()
        peer.send(b"late")
        await _until(lambda: loop_errors)
        await _until(writer.transport.is_closing)
        peer.close()

    loop.run_until_complete(main())
    (ctx,) = loop_errors
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert type(ctx["exception"]) is AssertionError
    assert str(ctx["exception"]) == "feed_data after feed_eof"


@pytest.mark.expect_errors
@pytest.mark.nodebug
def test_a_buffer_with_a_memoryview_on_it_cannot_grow(loop, loop_errors):
    async def main():
        reader, writer, _, peer = await _connected(loop)
        peer.send(b"abc")
        await _until(lambda: len(reader._buffer) == 3)
        view = memoryview(reader._buffer)
        peer.send(b"def")
        await _until(lambda: loop_errors)
        await _until(writer.transport.is_closing)
        assert bytes(view) == b"abc"
        view.release()
        peer.close()

    loop.run_until_complete(main())
    (ctx,) = loop_errors
    assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
    assert type(ctx["exception"]) is BufferError


@pytest.mark.nodebug
def test_a_buffer_that_is_not_a_bytearray_gets_extend_called(loop):
    class Buffer(bytearray):
        calls = 0

        def extend(self, data):
            Buffer.calls += 1
            super().extend(data)

    async def main():
        reader, writer, _, peer = await _connected(loop)
        reader._buffer = Buffer()
        peer.send(b"abc")
        await _until(lambda: len(reader._buffer) == 3)
        assert Buffer.calls == 1
        assert await reader.read(10) == b"abc"
        _close(writer, peer)

    loop.run_until_complete(main())


@pytest.mark.nodebug
@pytest.mark.parametrize(
    "where", ["feed_data", "_wakeup_waiter", "data_received", "_stream_reader"]
)
def test_a_patched_class_runs_its_own_code(loop, monkeypatch, where):
    calls = []
    cls = (
        asyncio.StreamReaderProtocol
        if where in ("data_received", "_stream_reader")
        else (asyncio.StreamReader)
    )
    original = cls.__dict__[where]
    if isinstance(original, property):

        def getter(self):
            calls.append(where)
            return original.fget(self)

        monkeypatch.setattr(cls, where, property(getter))
    else:

        def patched(self, *args):
            calls.append(where)
            return original(self, *args)

        monkeypatch.setattr(cls, where, patched)

    async def main():
        reader, writer, _, peer = await _connected(loop)
        peer.send(b"abc")
        assert await reader.read(10) == b"abc"
        _close(writer, peer)

    loop.run_until_complete(main())
    assert where in calls


@pytest.mark.nodebug
@pytest.mark.parametrize("where", ["reader.feed_data", "protocol.data_received"])
def test_an_instance_attribute_shadows_the_method(loop, where):
    calls = []

    async def main():
        reader, writer, protocol, peer = await _connected(loop)
        target = reader if where.startswith("reader") else protocol
        name = where.split(".")[1]
        original = getattr(target, name)

        def shadow(data):
            calls.append(data)
            original(data)

        setattr(target, name, shadow)
        peer.send(b"abc")
        assert await reader.read(10) == b"abc"
        _close(writer, peer)

    loop.run_until_complete(main())
    assert calls == [b"abc"]


@pytest.mark.nodebug
def test_a_subclass_of_the_reader_runs_its_own_code(loop):
    fed = []

    class Reader(asyncio.StreamReader):
        def feed_data(self, data):
            fed.append(bytes(data))
            super().feed_data(data)

    async def main():
        reader, writer, _, peer = await _connected(loop, reader=Reader(loop=loop))
        peer.send(b"abc")
        assert await reader.read(10) == b"abc"
        _close(writer, peer)

    loop.run_until_complete(main())
    assert fed == [b"abc"]


@pytest.mark.nodebug
def test_a_server_echoes_through_the_streams_api(loop):
    """start_server and open_connection, many round trips, every byte back in order."""

    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()[:2]
        reader, writer = await asyncio.open_connection(host, port)
        sent = bytearray()
        got = bytearray()
        for i in range(200):
            chunk = bytes([i % 251]) * (1 + (i * 37) % 3000)
            sent += chunk
            writer.write(chunk)
            await writer.drain()
            while len(got) < len(sent):
                got += await reader.read(65536)
        assert got == sent
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())


@pytest.mark.nodebug
def test_which_python_frames_run_per_chunk(loop):
    """asyncio runs four frames of ``asyncio/streams.py`` for each chunk; ferroloop runs them
    natively (the profile hook sees none of them), the rest of the read stays asyncio's."""
    seen = []

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == asyncio.streams.__file__:
            seen.append(frame.f_code.co_name)

    async def main():
        reader, writer, _, peer = await _connected(loop)
        read = asyncio.ensure_future(reader.read(100))
        await _until(lambda: reader._waiter is not None)
        sys.setprofile(profile)
        try:
            peer.send(b"abc")
            assert await read == b"abc"
        finally:
            sys.setprofile(None)
        _close(writer, peer)

    loop.run_until_complete(main())
    chain = ["data_received", "_stream_reader", "feed_data", "_wakeup_waiter"]
    assert "read" in seen and "_maybe_resume_transport" in seen
    if is_ferroloop(loop):
        assert not set(chain) & set(seen), seen
    else:
        assert [name for name in seen if name in chain] == chain
