"""ferroloop's datagram transport (UDP, Unix datagrams): asyncio's own
``_SelectorDatagramTransport``, rebuilt with ``__slots__`` on ferroloop's slotted
``_SelectorTransport`` (``_stream_transport.py``), as decision 0009 does for stream transports.

asyncio's datagram transport keeps its state in an instance ``__dict__``; the native reader and
``sendto`` (``crates/ferroloop-py/src/net/datagram.rs``) read some ten of its attributes per
datagram, a dict lookup each. Here every attribute asyncio's ``__init__`` sets is a slot, read
natively at its offset. Every method is asyncio's code, from the running version's own class
dict; what differs:

- ``_read_ready`` is a property: the native reader (``ferroloop._core._DatagramReader``, kept in
  the ``_reader`` slot) outside debug mode, until ``connection_lost``; asyncio's method
  otherwise.
- ``sendto`` is a C method (``net/methods.rs``): the reader's native send when the transport has
  a reader, else :func:`sendto` below (asyncio's, except to an unnamed Unix peer, where it sends
  as uvloop does: ``docs/deviations.md``). asyncio's transport has no per-instance ``sendto``;
  ferroloop's earlier subclass stored a bound method in each instance.
- ``_buffer`` is the slotted ``_SelectorTransport``'s property over its ``_write_buffer`` slot;
  asyncio's ``__init__`` sets it (a ``deque``), so it is always there.
- ``type(t)`` is not ``asyncio.selector_events._SelectorDatagramTransport`` (see
  ``docs/deviations.md``); its name, bases' roles and repr are.
"""

from __future__ import annotations

import sys
import types
from asyncio import selector_events as _selector_events
from typing import Any

from . import _core
from ._stream_transport import _copy_namespace, _rebind_super, _SelectorTransport

# asyncio's private classes and names, which typeshed does not describe.
selector_events: Any = _selector_events

_PY313 = sys.version_info >= (3, 13)
# What a buffered datagram adds to _buffer_size besides its length: no such counter before
# 3.11, nothing 3.11-3.12, an 8-byte header from 3.13.
_DATAGRAM_HEADER = None if sys.version_info < (3, 11) else (8 if _PY313 else 0)

_ASYNCIO = selector_events._SelectorDatagramTransport
# The attributes asyncio's datagram __init__ adds to _SelectorTransport's: `_address`, and
# from 3.11 `_buffer_size`.
_OWN_SLOTS = ("_address", "_buffer_size") if _DATAGRAM_HEADER is not None else ("_address",)


def _read_ready(self: Any) -> Any:
    """The reader callback: the native reader while the transport has one (from its
    construction outside debug mode until ``connection_lost``), asyncio's method otherwise."""
    reader = self._reader
    if reader is not None:
        return reader
    return types.MethodType(_ASYNCIO._read_ready, self)


# asyncio's _SelectorDatagramTransport, slotted: its bases with asyncio's _SelectorTransport
# replaced by the slotted copy (3.10 has that one base; 3.11+ add DatagramTransport).
_SelectorDatagramTransport: Any = type(
    "_SelectorDatagramTransport",
    tuple(
        _SelectorTransport if base is selector_events._SelectorTransport else base
        for base in _ASYNCIO.__bases__
    ),
    {
        **_copy_namespace(_ASYNCIO, frozenset({"_read_ready"})),
        "__module__": __name__,
        "__slots__": (*_OWN_SLOTS, "_reader"),
        "_read_ready": property(_read_ready),
    },
)
_rebind_super(_SelectorDatagramTransport)

_ASYNCIO_INIT = vars(_SelectorDatagramTransport)["__init__"]
_ASYNCIO_SENDTO = vars(_SelectorDatagramTransport)["sendto"]
_ASYNCIO_SENDTO_READY = vars(_SelectorDatagramTransport)["_sendto_ready"]
_ASYNCIO_CALL_CONNECTION_LOST = _SelectorDatagramTransport._call_connection_lost


def __init__(
    self: Any,
    loop: Any,
    sock: Any,
    protocol: Any,
    address: Any = None,
    waiter: Any = None,
    extra: Any = None,
) -> None:
    # Before asyncio's __init__, which schedules _add_reader(fd, self._read_ready): the native
    # reader outside debug mode, asyncio's method in it.
    self._reader = None if loop.get_debug() else _core._DatagramReader(self)
    _ASYNCIO_INIT(self, loop, sock, protocol, address, waiter, extra)


def sendto(self: Any, data: Any, addr: Any = None) -> None:
    """asyncio's ``sendto`` (the native one, the class's C method, comes first while the
    transport has a native reader); to an unnamed Unix peer it sends as uvloop does
    (docs/deviations.md)."""
    if (
        addr is None
        and not self._address
        and not self._conn_lost
        and not self._buffer
        and self._extra["peername"] == ""
        and isinstance(data, (bytes, bytearray, memoryview))
        and (data or _PY313)
    ):
        try:
            self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            self._buffer_datagram(data, addr)
        except OSError as exc:
            self._protocol.error_received(exc)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on datagram transport")
        return
    _ASYNCIO_SENDTO(self, data, addr)


def _buffer_datagram(self: Any, data: Any, addr: Any) -> None:
    """asyncio's ``sendto`` after a send that would block: wait for writability and buffer the
    datagram (with the running version's buffer-size accounting)."""
    self._loop._add_writer(self._sock_fd, self._sendto_ready)
    self._buffer.append((bytes(data), addr))
    if _DATAGRAM_HEADER is not None:
        self._buffer_size += len(data) + _DATAGRAM_HEADER
    self._maybe_pause_protocol()


def _sendto_ready(self: Any) -> None:
    if self._extra["peername"] != "":
        _ASYNCIO_SENDTO_READY(self)
        return
    # Connected to an unnamed Unix peer (a socketpair): asyncio's method would call
    # sock.sendto(data, None), a TypeError; send as uvloop does (docs/deviations.md).
    while self._buffer:
        data, addr = self._buffer.popleft()
        if _DATAGRAM_HEADER is not None:
            self._buffer_size -= len(data) + _DATAGRAM_HEADER
        try:
            self._sock.send(data) if addr is None else self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._buffer.appendleft((data, addr))
            if _DATAGRAM_HEADER is not None:
                self._buffer_size += len(data) + _DATAGRAM_HEADER
            break
        except OSError as exc:
            self._protocol.error_received(exc)
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal_error(exc, "Fatal write error on datagram transport")
            return
    self._maybe_resume_protocol()
    if not self._buffer:
        self._loop._remove_writer(self._sock_fd)
        if self._closing:
            self._call_connection_lost(None)


def _call_connection_lost(self: Any, exc: BaseException | None) -> None:
    try:
        _ASYNCIO_CALL_CONNECTION_LOST(self, exc)
    finally:
        # The native reader holds the transport: break the cycle once it is done.
        self._reader = None


for _function, _name in (
    (__init__, "__init__"),
    (sendto, "sendto"),
    (_buffer_datagram, "_buffer_datagram"),
    (_sendto_ready, "_sendto_ready"),
    (_call_connection_lost, "_call_connection_lost"),
):
    _function.__qualname__ = f"_SelectorDatagramTransport.{_name}"
    setattr(_SelectorDatagramTransport, _name, _function)
del _function, _name

_core._install_datagram_methods(_SelectorDatagramTransport)
