"""ferroloop's socket (stream) transport for TCP and Unix connections: asyncio's own
``_SelectorSocketTransport`` and ``_SelectorTransport``, rebuilt as classes with ``__slots__``.

asyncio's transport keeps its state in an instance ``__dict__`` (some fifteen entries, two of
them bound methods of itself); per idle connection that dict, its bound methods and the
``extra`` dict are most of what a loop's transport costs in memory and in allocations. Here the
same two classes are made again from the running version's own functions, with the same names
and bases (``transports._FlowControlMixin``, ``transports.Transport``) and the same attribute
names, as slots: every method is asyncio's code (a method that calls ``super()`` gets its
``__class__`` cell pointed at the copy, so it calls the copy's base as asyncio's calls its
own), every attribute asyncio's code reads is there, ``isinstance(t, asyncio.Transport)``
holds. What differs:

- ``_read_ready_cb`` and, from 3.12, ``_write_ready`` are properties: asyncio stores a bound
  method of the transport in each (64 bytes and a reference cycle per connection). Until
  something sets them they read as the bound method asyncio's ``__init__`` would have stored
  (``_read_ready__get_buffer`` or ``_read_ready__data_received`` by the protocol's type;
  ``_write_sendmsg`` or ``_write_send``), made on access; once set they read what was set.
- ``_buffer`` is a property over the ``_write_buffer`` slot: the buffer (a ``bytearray`` up to
  3.11, a 760-byte ``deque`` from 3.12) is made when first read, which asyncio's code does only
  once a send could not take everything (or to measure it); natively, an empty slot is an empty
  buffer.
- ``_extra`` is a (native) data descriptor over ``BaseTransport``'s slot: an accepted IPv4,
  IPv6 or Unix connection's dict (``peername``, ``socket``, ``sockname``, as asyncio makes
  them) is made when first read.
- ``_sock`` is a (native) data descriptor over a ``_socket`` slot: an accepted IPv4, IPv6 or
  Unix connection's ``socket.socket`` is made when first read (natively, only ``_sock_fd`` is
  needed).
- ``_read_ready`` is the native reader (``ferroloop._core._TransportReader``), kept in the
  ``_reader`` slot, while there is one; asyncio's method otherwise.
- Attributes asyncio's class does not have can still be set: they go into an instance
  ``__dict__``, made only then.
- ``type(t)`` is not ``asyncio.selector_events._SelectorSocketTransport`` (see
  ``docs/deviations.md``); its name and repr are.

Transports of this class are made natively (``crates/ferroloop-py/src/net/stream_lifecycle.rs``)
outside debug mode for plain ``socket.socket`` objects; the rest are ``ferroloop._loop``'s
subclass of asyncio's class, with its ``__dict__``.
"""

from __future__ import annotations

import collections
import types
from asyncio import selector_events as _selector_events
from asyncio import transports
from collections.abc import Callable
from typing import Any

from . import _core

# asyncio's private classes and names, which typeshed does not describe.
selector_events: Any = _selector_events

# The value of ``_read_cb`` / ``_write_cb`` until ``_read_ready_cb`` / ``_write_ready`` are set.
_UNSET = False
# A natively made transport's ``_read_cb`` until ``_read_ready_cb`` is set: which of asyncio's
# read methods its ``__init__`` (``set_protocol``) would have chosen for the protocol, decided
# when the transport is made: ``_UNSET`` for ``_read_ready__data_received``, this for
# ``_read_ready__get_buffer`` (a ``BufferedProtocol``).
_UNSET_BUFFERED = True


def _copy_namespace(source: type, skip: frozenset[str]) -> dict[str, Any]:
    """The functions and plain class attributes ``source`` defines, for a slotted copy."""
    namespace = {}
    for name, value in source.__dict__.items():
        if name in skip or name in ("__dict__", "__weakref__", "__module__", "__doc__"):
            continue
        namespace[name] = value
    return namespace


def _rebind_super(cls: type) -> None:
    """Point the ``__class__`` cell of every function of ``cls`` that uses zero-argument
    ``super()`` at ``cls``: ``super()`` in the copy then means the copy's base, as in
    asyncio's class it means asyncio's base."""
    for name, value in list(cls.__dict__.items()):
        if not isinstance(value, types.FunctionType):
            continue
        code = value.__code__
        if "__class__" not in code.co_freevars:
            continue
        closure = tuple(
            types.CellType(cls) if free == "__class__" else cell
            for free, cell in zip(code.co_freevars, value.__closure__ or (), strict=True)
        )
        function = types.FunctionType(
            code, value.__globals__, value.__name__, value.__defaults__, closure
        )
        function.__kwdefaults__ = value.__kwdefaults__
        function.__qualname__ = value.__qualname__
        function.__doc__ = value.__doc__
        function.__dict__.update(value.__dict__)
        setattr(cls, name, function)


def _bound_unless_set(
    slot: str, choose: Callable[[Any], Any]
) -> tuple[property, Callable[[type], None]]:
    """A property for an attribute in which asyncio stores a bound method of the transport:
    ``choose(self)`` (made on access) until something sets it, then what was set."""
    member: Any = None

    def get(self: Any) -> Any:
        value = member.__get__(self)
        return choose(self) if value is _UNSET else value

    def set_(self: Any, value: Any) -> None:
        member.__set__(self, value)

    def bind(cls: type) -> None:
        nonlocal member
        member = cls.__dict__[slot]

    return property(get, set_), bind


def _read_ready_cb_get(self: Any) -> Any:
    value = _read_member.__get__(self)
    if value is _UNSET:
        return self._read_ready__data_received
    if value is _UNSET_BUFFERED:
        return self._read_ready__get_buffer
    return value


def _read_ready_cb_set(self: Any, value: Any) -> None:
    _read_member.__set__(self, value)


# 3.12+: `_write_ready` is an attribute set by __init__ (`_write_sendmsg` or `_write_send`),
# not a method.
_WRITE_READY = hasattr(selector_events._SelectorSocketTransport, "_write_sendmsg")


def _choose_write(self: Any) -> Any:
    # 3.12+'s __init__: _write_sendmsg where the platform has sendmsg; ferroloop's native
    # version of it (crates/ferroloop-py/src/net/drain.rs).
    if selector_events._HAS_SENDMSG:
        return _core._TransportWriter(self)
    return self._write_send


class _NativeWriteReady:
    """Up to 3.11, ``_write_ready`` is a method: in its place, a non-data descriptor (an
    instance attribute still shadows it, as it shadows a method) that gives ferroloop's
    native version of it (crates/ferroloop-py/src/net/drain.rs)."""

    def __get__(self, obj: Any, cls: Any = None) -> Any:
        if obj is None:
            return self
        return _core._TransportWriter(obj)


def _get_buffer(self: Any) -> Any:
    """asyncio's write buffer (a bytearray up to 3.11, a deque from 3.12), made when first
    read: a connection that never has to wait to send never has one."""
    buffer = self._write_buffer
    if buffer is None:
        buffer = self._write_buffer = _BUFFER_FACTORY()
    return buffer


def _set_buffer(self: Any, buffer: Any) -> None:
    self._write_buffer = buffer


# 3.12+: a deque of memoryviews; up to 3.11, `_buffer_factory` (bytearray).
_BUFFER_FACTORY = getattr(selector_events._SelectorTransport, "_buffer_factory", collections.deque)


# asyncio's _SelectorTransport, slotted. `_sock = None` (a class attribute there, read by
# __del__ on a transport whose __init__ failed) is a native data descriptor over the `_socket`
# slot here: an accepted IPv4, IPv6 or Unix connection's socket object is made when first read
# (crates/ferroloop-py/src/net/extra.rs), and `None` is read while the slot is unset.
_SelectorTransport: Any = type(
    "_SelectorTransport",
    (transports._FlowControlMixin, transports.Transport),
    {
        **_copy_namespace(selector_events._SelectorTransport, frozenset({"_sock"})),
        "_buffer": property(_get_buffer, _set_buffer),
        "_sock": _core._SocketAttribute(),
        # asyncio's class attribute, which a read takes without a generic lookup.
        "max_size": _core._MaxSize(selector_events._SelectorTransport.max_size),
        "__module__": __name__,
        "__slots__": (
            "_socket",
            "_sock_fd",
            "_protocol_connected",
            "_protocol",
            "_server",
            "_write_buffer",
            "_conn_lost",
            "_closing",
            "_paused",
            "__weakref__",
            # Made only when something sets an attribute asyncio's class does not have
            # (`transport.max_size = n`, a library's own mark), as asyncio's transport allows.
            "__dict__",
        ),
    },
)
_rebind_super(_SelectorTransport)

_read_member: Any = None
_read_ready_cb = property(_read_ready_cb_get, _read_ready_cb_set)
_extra_slots: tuple[str, ...] = ()
_extra_namespace: dict[str, Any] = {"_write_ready": _NativeWriteReady()}
if _WRITE_READY:
    _write_ready, _bind_write = _bound_unless_set("_write_cb", _choose_write)
    _extra_slots = ("_write_cb",)
    _extra_namespace = {"_write_ready": _write_ready}


def _read_ready(self: Any) -> Any:
    """The reader callback: the native reader while the transport has one (from its
    construction until ``connection_lost``), asyncio's ``_read_ready`` method otherwise."""
    reader = self._reader
    if reader is not None:
        return reader
    return types.MethodType(selector_events._SelectorSocketTransport._read_ready, self)


# asyncio's _SelectorSocketTransport, slotted, on the slotted _SelectorTransport.
_SelectorSocketTransport: Any = type(
    "_SelectorSocketTransport",
    (_SelectorTransport,),
    {
        **_copy_namespace(selector_events._SelectorSocketTransport, frozenset({"_read_ready"})),
        "__module__": __name__,
        "__slots__": ("_eof", "_empty_waiter", "_read_cb", "_reader", *_extra_slots),
        "_read_ready_cb": _read_ready_cb,
        # Made on first read for an accepted IPv4, IPv6 or Unix connection (net/extra.rs).
        "_extra": _core._ExtraAttribute(),
        "_read_ready": property(_read_ready),
        **_extra_namespace,
    },
)
_rebind_super(_SelectorSocketTransport)
_read_member = _SelectorSocketTransport.__dict__["_read_cb"]
if _WRITE_READY:
    _bind_write(_SelectorSocketTransport)


def _write_rest(self: Any, data: Any, n: int) -> None:
    """asyncio's ``write`` after ``self._sock.send(data)`` took ``n`` bytes (0: it would have
    blocked) of non-empty ``data``, with an empty buffer: wait for writability and buffer the
    rest. The buffer is a bytearray up to 3.11, a deque of memoryviews since."""
    self._loop._add_writer(self._sock_fd, self._write_ready)
    if isinstance(self._buffer, bytearray):
        self._buffer.extend(data[n:])
    else:
        self._buffer.append(memoryview(data)[n:])
    self._maybe_pause_protocol()


_ASYNCIO_CALL_CONNECTION_LOST = _SelectorSocketTransport._call_connection_lost


def _call_connection_lost(self: Any, exc: BaseException | None) -> None:
    try:
        _ASYNCIO_CALL_CONNECTION_LOST(self, exc)
    finally:
        # The native reader and any bound method set in _read_ready_cb / _write_ready hold the
        # transport: break the cycles once it is done (as the native path does).
        self._reader = None
        self._read_cb = None
        if _WRITE_READY:
            self._write_cb = None


_call_connection_lost.__qualname__ = _ASYNCIO_CALL_CONNECTION_LOST.__qualname__
_SelectorSocketTransport._write_rest = _write_rest
_SelectorSocketTransport._call_connection_lost = _call_connection_lost
_ASYNCIO_INIT = vars(_SelectorSocketTransport)["__init__"]


def __init__(
    self: Any,
    loop: Any,
    sock: Any,
    protocol: Any,
    waiter: Any = None,
    extra: Any = None,
    server: Any = None,
) -> None:
    # asyncio's __init__ chain (debug mode and unusual sockets are made this way), with the
    # slots asyncio has no attribute for set first: no native reader, nothing set yet.
    self._reader = None
    self._write_buffer = None
    self._read_cb = _UNSET
    if _WRITE_READY:
        self._write_cb = _UNSET
    _ASYNCIO_INIT(self, loop, sock, protocol, waiter, extra, server)


_SelectorSocketTransport.__init__ = __init__
_core._install_stream_methods(_SelectorSocketTransport, _UNSET)
