import asyncio
import os
import socket

import pytest


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_add_reader_fd(loop, pair):
    a, b = pair
    got = []

    def on_read():
        got.append(b.recv(100))
        loop.remove_reader(b.fileno())
        loop.stop()

    loop.add_reader(b.fileno(), on_read)
    loop.call_soon(a.send, b"data")
    loop.run_forever()
    assert got == [b"data"]


def test_add_reader_fileobj(loop, pair):
    a, b = pair
    got = []

    def on_read(x):
        got.append((x, b.recv(100)))
        assert loop.remove_reader(b) is True
        loop.stop()

    loop.add_reader(b, on_read, "arg")
    a.send(b"x")
    loop.run_forever()
    assert got == [("arg", b"x")]


def test_add_writer(loop, pair):
    a, b = pair
    got = []

    def on_write():
        got.append(a.send(b"w"))
        assert loop.remove_writer(a) is True
        loop.stop()

    loop.add_writer(a, on_write)
    loop.run_forever()
    assert got == [1]
    assert b.recv(10) == b"w"


def test_level_triggered_reader(loop, pair):
    a, b = pair
    calls = []

    def on_read():
        calls.append(1)  # does not drain
        if len(calls) == 3:
            loop.remove_reader(b)
            loop.stop()

    loop.add_reader(b, on_read)
    a.send(b"x")
    loop.run_forever()
    assert len(calls) == 3
    assert b.recv(10) == b"x"


def test_level_triggered_reader_one_per_iteration(loop, pair):
    a, b = pair
    trace = []

    def on_read():
        trace.append("r")

    def tick(n):
        trace.append(("tick", n))
        if n < 3:
            loop.call_soon(tick, n + 1)
        else:
            loop.remove_reader(b)
            loop.stop()

    a.send(b"x")
    loop.add_reader(b, on_read)
    loop.call_soon(tick, 0)
    loop.run_forever()
    assert trace.count("r") >= 3


def test_level_triggered_writer(loop, pair):
    a, b = pair
    calls = []

    def on_write():
        calls.append(1)
        if len(calls) == 3:
            loop.remove_writer(a)
            loop.stop()

    loop.add_writer(a, on_write)
    loop.run_forever()
    assert len(calls) == 3


def test_remove_return_values(loop, pair):
    a, b = pair
    assert loop.remove_reader(b) is False
    assert loop.remove_writer(a) is False
    loop.add_reader(b, print)
    loop.add_writer(a, print)
    assert loop.remove_reader(b) is True
    assert loop.remove_reader(b) is False
    assert loop.remove_writer(a) is True
    assert loop.remove_writer(a) is False


def test_reader_and_writer_same_fd(loop, pair):
    a, b = pair
    got = []

    def on_read():
        got.append(("r", a.recv(10)))
        loop.remove_reader(a)
        loop.stop()

    def on_write():
        got.append("w")
        loop.remove_writer(a)
        b.send(b"z")

    loop.add_reader(a, on_read)
    loop.add_writer(a, on_write)
    loop.run_forever()
    assert got == ["w", ("r", b"z")]
    # removing the writer left the reader working and vice versa
    assert loop.remove_writer(a) is False


def test_replace_reader_cancels_old_handle(loop, pair):
    a, b = pair
    got = []
    loop.add_reader(b, got.append, "old")
    old = loop._selector.get_key(b).data[0] if hasattr(loop, "_selector") else None
    loop.add_reader(b, lambda: (got.append(b.recv(10)), loop.remove_reader(b), loop.stop()))
    if old is not None:
        assert old.cancelled()
    a.send(b"n")
    loop.run_forever()
    assert got == [b"n"]


def test_replace_reader_cancels_old_handle_via_remove(loop, pair):
    # the handle object is not exposed by ferroloop's API; check behaviour: old callback never runs
    a, b = pair
    got = []
    for i in range(5):
        loop.add_reader(b, got.append, i)
    loop.remove_reader(b)
    loop.add_reader(
        b, lambda: (got.append(("last", b.recv(10))), loop.remove_reader(b), loop.stop())
    )
    a.send(b"q")
    loop.run_forever()
    assert got == [("last", b"q")]


def test_remove_reader_inside_batch_prevents_callback(loop, pair):
    a, b = pair
    got = []
    a.send(b"x")
    b.send(b"y")
    loop.add_reader(a, lambda: (got.append("a"), loop.remove_reader(b)))
    loop.add_reader(b, lambda: got.append("b"))
    loop.call_later(0.02, loop.stop)
    loop.run_forever()
    loop.remove_reader(a)
    loop.remove_reader(b)
    # whichever fired first, after 'a' ran 'b' never runs again
    if got[0] == "a":
        assert "b" not in got


class FileLike:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd


def test_object_with_fileno(loop, pair):
    a, b = pair
    fl = FileLike(b.fileno())
    got = []
    loop.add_reader(fl, lambda: (got.append(b.recv(10)), loop.stop()))
    a.send(b"f")
    loop.run_forever()
    assert loop.remove_reader(fl) is True
    assert got == [b"f"]


def test_negative_fd(loop):
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        loop.add_reader(-1, print)
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        loop.add_writer(-1, print)
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        loop.remove_reader(-1)
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -1$"):
        loop.remove_writer(-1)


def test_invalid_object(loop):
    with pytest.raises(ValueError, match=r"^Invalid file object: 'abc'$"):
        loop.add_reader("abc", print)
    with pytest.raises(ValueError, match=r"^Invalid file object: None$"):
        loop.add_writer(None, print)
    with pytest.raises(ValueError, match=r"^Invalid file object: "):
        loop.remove_reader(object())


def test_fileno_returns_negative(loop):
    with pytest.raises(ValueError, match=r"^Invalid file descriptor: -5$"):
        loop.add_reader(FileLike(-5), print)


def _same_error(loop, func):
    ref = asyncio.DefaultEventLoopPolicy().new_event_loop()
    try:
        try:
            func(ref)
        except Exception as e:  # noqa: BLE001
            expected = (type(e), str(e))
        else:
            expected = None
    finally:
        ref.close()
    try:
        func(loop)
    except Exception as e:  # noqa: BLE001
        got = (type(e), str(e))
    else:
        got = None
    return expected, got


def test_closed_fd(loop):
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError):
        loop.add_reader(r, print)
    # nothing registered
    assert loop.remove_reader(r) is False


def test_fileno_raising(loop):
    class Bad:
        def fileno(self):
            raise RuntimeError("nofileno")

    expected, got = _same_error(loop, lambda lp: lp.add_reader(Bad(), print))
    assert got == expected


@pytest.mark.parametrize("fd", [2**31 - 1, 2**31, 2**40, 2**70, 1.5, "3"])
@pytest.mark.parametrize("method", ["add_reader", "add_writer", "remove_reader", "remove_writer"])
def test_odd_fd_values_same_error_as_asyncio(loop, fd, method):
    def call(lp):
        m = getattr(lp, method)
        return m(fd, print) if method.startswith("add") else m(fd)

    expected, got = _same_error(loop, call)
    assert got == expected


def test_reader_on_pipe(loop):
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        got = []

        def on_read():
            data = os.read(r, 100)
            got.append(data)
            if not data:
                loop.remove_reader(r)
                loop.stop()

        loop.add_reader(r, on_read)
        loop.call_soon(os.write, w, b"pipe")
        loop.call_later(0.01, os.close, w)
        w_closed = True
        loop.run_forever()
        assert got == [b"pipe", b""]
    finally:
        os.close(r)
        if not w_closed:
            os.close(w)


def test_hangup_wakes_reader(loop, pair):
    a, b = pair
    got = []

    def on_read():
        got.append(b.recv(10))
        loop.remove_reader(b)
        loop.stop()

    loop.add_reader(b, on_read)
    loop.call_soon(a.close)
    loop.run_forever()
    assert got == [b""]


def test_reader_exception_goes_to_handler(loop, pair):
    a, b = pair
    seen = []
    loop.set_exception_handler(lambda lp, ctx: (seen.append(ctx), loop.stop()))

    def bad():
        loop.remove_reader(b)
        raise ValueError("reader")

    loop.add_reader(b, bad)
    a.send(b"x")
    loop.run_forever()
    assert len(seen) == 1
    assert isinstance(seen[0]["exception"], ValueError)
    assert isinstance(seen[0]["handle"], asyncio.Handle)
    assert seen[0]["message"].startswith("Exception in callback ")


def test_remove_reader_closes_registration_after_fd_closed(loop):
    a, b = socket.socketpair()
    loop.add_reader(b, print)
    fd = b.fileno()
    b.close()
    a.close()
    # asyncio's selector keeps the key and remove_reader returns True
    assert loop.remove_reader(fd) is True


def test_sock_apis(loop, pair):
    a, b = pair

    async def main():
        await loop.sock_sendall(a, b"hello")
        data = await loop.sock_recv(b, 100)
        return data

    assert loop.run_until_complete(main()) == b"hello"


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_reader_propagates(loop, pair, exc_type):
    a, b = pair
    calls = []

    def on_read():
        calls.append(1)
        if len(calls) == 1:
            raise exc_type()
        b.recv(10)
        loop.remove_reader(b)
        loop.stop()

    loop.add_reader(b, on_read)
    a.send(b"x")
    with pytest.raises(exc_type):
        loop.run_forever()
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    # still registered: the next run calls it again
    loop.run_forever()
    assert calls == [1, 1]


def test_removed_reader_with_data_waiting_leaves_the_poll_waiting(loop, pair):
    # ferroloop applies removals just before its next poll: a readable fd whose reader was
    # removed must not be reported, nor make the poll return at once. One iteration waits
    # for the timer (a stale registration would make every iteration return at once).
    a, b = pair
    calls = []
    a.send(b"data")
    loop.add_reader(b.fileno(), lambda: calls.append("read"))
    loop.remove_reader(b.fileno())
    loop.call_later(0.05, calls.append, "timer")
    iterations = 0
    while not calls and iterations < 1000:
        loop._run_once()
        iterations += 1
    assert calls == ["timer"]
    assert iterations <= 3


def test_reader_removed_and_added_back_in_one_iteration(loop, pair):
    # asyncio's sock_recv removes its reader when a wait ends and adds one for the next.
    a, b = pair
    calls = []

    def first():
        calls.append(b.recv(100))
        loop.remove_reader(b.fileno())
        loop.add_reader(b.fileno(), second)
        loop.call_soon(a.send, b"two")

    def second():
        calls.append(b.recv(100))
        loop.remove_reader(b.fileno())
        loop.stop()

    loop.add_reader(b.fileno(), first)
    a.send(b"one")
    loop.run_forever()
    assert calls == [b"one", b"two"]


def test_reader_removed_fd_closed_number_reused_and_added_back(loop):
    # Between a removal and the next poll the fd may be closed and its number reused by
    # another socket: the new socket's reader must still be called.
    a, b = socket.socketpair()
    c = d = None
    calls = []

    def swap():
        nonlocal c, d
        loop.remove_reader(b.fileno())
        c, d = socket.socketpair()
        # Give b's number to the new socket: dup2 closes b's socket and reuses the number in
        # one step (a close followed by a reuse could let another thread take the number).
        number = b.detach()
        os.dup2(d.fileno(), number)
        d.close()
        d = socket.socket(fileno=number)
        a.close()
        loop.add_reader(d.fileno(), lambda: (calls.append(d.recv(100)), loop.stop()))
        c.send(b"new")

    loop.add_reader(b.fileno(), print)
    loop.call_soon(swap)
    loop.call_later(5, loop.stop)
    loop.run_forever()
    loop.remove_reader(d.fileno())
    c.close()
    d.close()
    assert calls == [b"new"]


# A socket registered by object and closed since: asyncio's selector finds the registration by
# the object (its fileno() is -1 now) and removes it.


def _closed_registered_socket(loop, pair, reader, writer):
    a, b = pair
    if reader:
        loop.add_reader(a, print)
    if writer:
        loop.add_writer(a, print)
    a.close()
    return a


def _outcome(call, *args):
    try:
        return call(*args)
    except Exception as e:  # noqa: BLE001
        return (type(e), getattr(e, "errno", None), str(e))


def test_remove_reader_of_closed_socket(loop, pair):
    a = _closed_registered_socket(loop, pair, reader=True, writer=False)
    assert loop.remove_reader(a) is True
    # Gone: the object no longer names anything.
    assert _outcome(loop.remove_reader, a) == (ValueError, None, "Invalid file descriptor: -1")


def test_remove_writer_of_closed_socket(loop, pair):
    a = _closed_registered_socket(loop, pair, reader=False, writer=True)
    assert loop.remove_writer(a) is True
    assert _outcome(loop.remove_writer, a) == (ValueError, None, "Invalid file descriptor: -1")


def test_remove_unregistered_interest_of_closed_socket(loop, pair):
    a = _closed_registered_socket(loop, pair, reader=True, writer=False)
    assert loop.remove_writer(a) is False
    assert loop.remove_reader(a) is True


@pytest.mark.parametrize("first, second", [("reader", "writer"), ("writer", "reader")])
def test_remove_one_of_two_of_closed_socket(loop, pair, first, second):
    # asyncio's selector tries to modify the closed fd's registration: EBADF, and the whole
    # registration is dropped.
    a = _closed_registered_socket(loop, pair, reader=True, writer=True)
    import errno

    got = _outcome(getattr(loop, f"remove_{first}"), a)
    assert got[:2] == (OSError, errno.EBADF)
    got = _outcome(getattr(loop, f"remove_{second}"), a)
    assert got == (ValueError, None, "Invalid file descriptor: -1")


def test_closed_socket_key_found_by_object(loop, pair):
    a = _closed_registered_socket(loop, pair, reader=True, writer=False)
    key = loop._selector.get_key(a)
    assert key.fileobj is a
    assert key.events == 1
    assert loop.remove_reader(a) is True
    assert _outcome(loop._selector.get_key, a)[0] is ValueError


def test_unregistered_closed_socket(loop):
    a, b = socket.socketpair()
    a.close()
    b.close()
    assert _outcome(loop.remove_reader, a) == (ValueError, None, "Invalid file descriptor: -1")
