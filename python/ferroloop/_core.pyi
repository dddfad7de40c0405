# Types of ferroloop._core, the native module built from crates/ferroloop-py (see its lib.rs
# for what the module exports). Checked against the built module by
# `python -m mypy.stubtest ferroloop._core` in scripts/test; what stubtest cannot check is in
# tests/typing/stubtest_allowlist.txt, each line with its reason.
#
# Names with a leading underscore are the private protocol between the Python half
# (_loop.py, _metrics.py, _watchdog.py) and the native half: not public API, typed so that the
# Python half is checked against them.

import asyncio
import contextvars
import socket
import ssl
import weakref
from collections.abc import Callable, Coroutine, Generator
from types import NotImplementedType
from typing import Any, Final, Literal, TypedDict, TypeVar, final

from typing_extensions import TypeVarTuple, Unpack, disjoint_base

_T = TypeVar("_T")
_Ts = TypeVarTuple("_Ts")

__all__ = [
    "Loop",
    "_TransportReader",
    "_TransportWriter",
    "_DatagramReader",
    "_Acceptor",
    "_TransportStep",
    "_PendingExtra",
    "_AcceptedFd",
    "_SocketAttribute",
    "_MaxSize",
    "_ExtraAttribute",
    "_new_socket_transport",
    "_install_datagram_methods",
    "_install_stream_methods",
    "_install_tls_methods",
    "_release_stream_callbacks",
    "_register_hooks",
    "_register_watchdog_report",
    "_tls_constants",
    "_contract_probes",
    "_sole_owner",
    "_weaklist_offset",
    "_context_key_matches",
    "Handle",
    "TimerHandle",
    "_metrics",
    "_histogram_bounds",
    "_set_callback_timing",
    "_reset_metrics",
    "Watchdog",
    "__version__",
    "BUILD_PROFILE",
]

__version__: Final[str]
# "debug" or "release": what `python -m ferroloop --info` reports.
BUILD_PROFILE: Final[Literal["debug", "release"]]

@disjoint_base
class Loop:
    """The native core of ``ferroloop.Loop`` (which subclasses it with asyncio's loop)."""

    # asyncio.BaseEventLoop's attributes, kept natively.
    _debug: bool
    _closed: bool
    _stopping: bool
    _task_factory: Callable[..., Any] | None
    def __new__(cls, *args: object, **kwargs: object) -> Loop: ...
    # The methods asyncio's loop has, with asyncio's signatures (typeshed's). The handles they
    # return are this module's Handle and TimerHandle, whose __class__ is asyncio's (so
    # isinstance(h, asyncio.Handle) holds): typed as asyncio's, as AbstractEventLoop has them.
    def time(self) -> float: ...
    def stop(self) -> None: ...
    def is_closed(self) -> bool: ...
    def get_debug(self) -> bool: ...
    def create_future(self) -> asyncio.Future[Any]: ...
    def create_task(
        self,
        coro: Coroutine[Any, Any, _T] | Generator[Any, None, _T],
        *,
        name: object = None,
        context: contextvars.Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Task[_T]: ...
    def run_forever(self) -> None: ...
    def call_soon(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle: ...
    def call_soon_threadsafe(
        self,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle: ...
    def call_later(
        self,
        delay: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle: ...
    def call_at(
        self,
        when: float,
        callback: Callable[[Unpack[_Ts]], object],
        *args: Unpack[_Ts],
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle: ...
    # The private protocol with _loop.py.
    def _bind_weakref(self, weakref: weakref.ReferenceType[Any]) -> None: ...
    def _run_once(self) -> None: ...
    def _run_forever_caller(self) -> Any: ...
    def _run_until_stopped(self) -> None: ...
    def _add_callback(self, handle: Handle) -> None: ...
    def _write_to_self(self) -> None: ...
    def _add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> Handle: ...
    def _add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> Handle: ...
    def _remove_reader(self, fd: Any) -> bool: ...
    def _remove_writer(self, fd: Any) -> bool: ...
    # The result at once, a future of it, or NotImplemented: asyncio's code takes the call.
    def _sock_recv_native(
        self, sock: socket.socket, n: int
    ) -> bytes | asyncio.Future[bytes] | NotImplementedType: ...
    def _sock_recv_into_native(
        self, sock: socket.socket, buf: Any
    ) -> int | asyncio.Future[int] | NotImplementedType: ...
    def _sock_sendall_native(
        self, sock: socket.socket, data: Any
    ) -> asyncio.Future[None] | NotImplementedType | None: ...
    def _close_native(self) -> None: ...
    # (fileobj, events: 1 read | 2 write, reader handle, writer handle), or None.
    def _fd_key(self, fd: int) -> tuple[Any, int, Handle | None, Handle | None] | None: ...
    def _lookup_fd(self, fileobj: Any) -> int | None: ...
    def _registered_fds(self) -> list[int]: ...
    # (ready callbacks, timers, registered fds)
    def _pending_counts(self) -> tuple[int, int, int]: ...
    def _handle_pool_len(self) -> int: ...
    def _io_pool_len(self) -> int: ...

@disjoint_base
class Handle:
    """asyncio.Handle's interface (ferroloop's handles are native)."""

    @property
    def _callback(self) -> Callable[..., object] | None: ...
    @property
    def _args(self) -> tuple[Any, ...] | None: ...
    @property
    def _cancelled(self) -> bool: ...
    @property
    def _context(self) -> contextvars.Context | None: ...
    @property
    def _loop(self) -> Any: ...
    @property
    def _repr(self) -> str | None: ...
    @property
    def _source_traceback(self) -> Any: ...
    def cancel(self) -> None: ...
    def cancelled(self) -> bool: ...
    def get_context(self) -> contextvars.Context | None: ...
    def __copy__(self) -> Handle: ...
    def _run(self) -> None: ...

@final
class TimerHandle(Handle):
    """asyncio.TimerHandle's interface: ordered and compared by deadline."""

    @property
    def _when(self) -> float: ...
    @property
    def _scheduled(self) -> bool: ...
    def when(self) -> float: ...
    def __hash__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    def __lt__(self, value: object, /) -> bool: ...
    def __le__(self, value: object, /) -> bool: ...
    def __gt__(self, value: object, /) -> bool: ...
    def __ge__(self, value: object, /) -> bool: ...

@final
class Watchdog:
    """The watchdog thread of one loop (see _watchdog.py)."""

    def __new__(cls, event_loop: Loop, threshold: float) -> Watchdog: ...
    @property
    def threshold(self) -> float: ...
    def is_alive(self) -> bool: ...
    def stop(self) -> None: ...
    def _forget_after_fork(self) -> None: ...

# The native transports' helpers (see crates/ferroloop-py/src/net/).

@final
class _TransportReader:
    # Named like the transport method it stands for (in tracebacks and reprs).
    @property
    def __qualname__(self) -> str: ...
    def __new__(cls, transport: Any, attributes: dict[str, Any] | None) -> _TransportReader: ...
    def __call__(self) -> None: ...

@final
class _TransportWriter:
    # Named like the transport method it stands for (in tracebacks and reprs).
    @property
    def __qualname__(self) -> str: ...
    def __new__(cls, transport: Any) -> _TransportWriter: ...
    def __call__(self) -> None: ...

@final
class _DatagramReader:
    # Named like the transport method it stands for (in tracebacks and reprs).
    @property
    def __qualname__(self) -> str: ...
    def __new__(cls, transport: Any) -> _DatagramReader: ...
    def __call__(self) -> None: ...

@final
class _Acceptor:
    # Named like the transport method it stands for (in tracebacks and reprs).
    @property
    def __qualname__(self) -> str: ...
    def __new__(
        cls,
        event_loop: Loop,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        sslcontext: ssl.SSLContext | None,
        server: Any,
        backlog: int,
        rest: tuple[Any, ...],
        transport_class: type | None,
        check_fd: bool,
    ) -> _Acceptor: ...
    def __call__(self) -> None: ...
    def _connection(self, conn: socket.socket | _AcceptedFd, addr: Any) -> None: ...

@final
class _PendingExtra:
    # net/extra.rs: an accepted IPv4 connection's extra dict, made when first read.
    def build(self, sock: socket.socket | None = None) -> dict[str, Any]: ...

@final
class _AcceptedFd:
    # net/server.rs: an accepted connection's fd on its way to the connection step.
    ...

@final
class _SocketAttribute:
    # net/extra.rs: the slotted stream transport's `_sock`, made when first read.
    def __get__(self, instance: Any, owner: Any = None, /) -> Any: ...
    def __set__(self, instance: Any, value: Any, /) -> None: ...
    def __delete__(self, instance: Any, /) -> None: ...

@final
class _ExtraAttribute:
    # net/extra.rs: the slotted stream transport's `_extra`, made when first read.
    def __get__(self, instance: Any, owner: Any = None, /) -> Any: ...
    def __set__(self, instance: Any, value: Any, /) -> None: ...
    def __delete__(self, instance: Any, /) -> None: ...

@final
class _MaxSize:
    # net/max_size.rs: the slotted transports' `max_size`, read without a generic lookup.
    def __new__(cls, default: Any) -> _MaxSize: ...
    def __get__(self, instance: Any, owner: Any = None, /) -> Any: ...
    def __set__(self, instance: Any, value: Any, /) -> None: ...
    def __delete__(self, instance: Any, /) -> None: ...

@final
class _TransportStep:
    # Named like the transport method it stands for (in tracebacks and reprs).
    @property
    def __qualname__(self) -> str: ...
    def __call__(self, *args: Any) -> None: ...

def _new_socket_transport(
    event_loop: Loop,
    cls: type,
    sock: socket.socket,
    protocol: asyncio.BaseProtocol,
    waiter: asyncio.Future[Any] | None,
    extra: dict[str, Any] | None,
    server: Any,
    check_fd: bool,
) -> Any: ...
def _install_stream_methods(cls: type, unset: Any = None) -> None: ...
def _release_stream_callbacks(attributes: dict[str, Any]) -> None: ...

# net/datagram.rs, net/methods.rs: ferroloop._datagram_transport's slotted class.
def _install_datagram_methods(cls: type) -> None: ...

# net/tls.rs, net/methods.rs: asyncio's SSLProtocol data path (3.11+).
def _install_tls_methods(protocol_cls: type, transport_cls: type) -> None: ...
def _tls_constants(
    protocol_class: type,
    transport_class: type,
    states: Any,
    ssl_object: type,
    again_errors: tuple[type, ...],
) -> None: ...

# python_hooks.rs: the Python half registers what the native half calls.
def _register_hooks(hooks: Any) -> None: ...
def _register_watchdog_report(report: Callable[..., object]) -> None: ...

# contract.rs: probes of the CPython contract, for tests/test_cpython_contract.py.
class _ContractProbes(TypedDict):
    context_offsets: tuple[int, int] | None
    header_size: int

def _contract_probes() -> _ContractProbes: ...
def _sole_owner(obj: object) -> bool: ...
def _weaklist_offset(obj: object) -> int: ...
def _context_key_matches(context: contextvars.Context) -> bool | None: ...

# Metrics (see _metrics.py, which turns these into LoopMetrics).

class _RawMetrics(TypedDict):
    iterations: int
    callbacks: int
    max_ready: int
    run_time: float
    poll_time: float
    timer_lag: float
    timers_due: int
    running: bool
    callback_timing: bool
    histogram: list[int]
    watchdog_reports: int

def _metrics(event_loop: Loop) -> _RawMetrics: ...
def _histogram_bounds() -> list[float]: ...
def _set_callback_timing(event_loop: Loop, enabled: bool) -> None: ...
def _reset_metrics(event_loop: Loop) -> None: ...
