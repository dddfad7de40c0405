"""``ferroloop.Loop``: the event loop class users get.

The hot paths (``call_soon``, timers, the ready queue, ``_run_once``, the reactor behind
``add_reader``/``add_writer``) are native, in ``ferroloop._core.Loop``. What runs once per loop
or once per connection is not rewritten: it is the running Python version's own asyncio code
(``BaseEventLoop``, ``BaseSelectorEventLoop``, ``_UnixSelectorEventLoop``), borrowed method by
method onto this class at import, so ``run_until_complete``, ``create_task``, the exception
handler, executors, ``getaddrinfo``, the networking methods, signals and subprocesses behave
exactly as on the same version's asyncio. See ``docs/decisions/0001-borrowed-asyncio-methods.md``.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import sys
import threading
import types
import weakref
from asyncio import (
    base_events,
    constants,
    events,
    selector_events,
    trsock,
    unix_events,
)
from asyncio.log import logger
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _core, _hooks, _sslproto, _stream_transport  # noqa: F401  (_hooks registers itself)
from ._datagram_transport import _SelectorDatagramTransport
from ._metrics import MetricsMixin
from ._watchdog import WatchdogMixin

__all__ = ("Loop",)

_PY312 = sys.version_info >= (3, 12)
_PY313 = sys.version_info >= (3, 13)
# BaseEventLoop._run_forever_setup/_run_forever_cleanup: 3.13+ (tested, not assumed by version).
_HAS_RUN_FOREVER_SETUP = hasattr(base_events.BaseEventLoop, "_run_forever_setup")

# The classes whose methods are borrowed, most derived first (the first definition wins).
_SOURCES = (
    unix_events._UnixSelectorEventLoop,
    selector_events.BaseSelectorEventLoop,
    base_events.BaseEventLoop,
)

# Methods of the sources that assume asyncio's own internals (the selector, the ``_ready``
# deque, the ``_scheduled`` heap) or use zero-argument ``super()``: implemented here or
# natively instead.
_NOT_BORROWED = frozenset(
    {
        "__init__",
        "close",
        "run_forever",
        "_run_once",
        "_process_events",
        "_call_soon",
        "_add_callback",
        "_timer_handle_cancelled",
        "_write_to_self",
        "_make_self_pipe",
        "add_signal_handler",
    }
)

# Dunders worth taking from asyncio (the others are object's or are ours).
_BORROWED_DUNDERS = frozenset({"__repr__", "__del__"})


# The mixins come after _core.Loop: the native type checks of every call_soon walk the MRO up
# to _core.Loop (PyType_IsSubtype).
if TYPE_CHECKING:
    from typing_extensions import TypeVarTuple, Unpack

    _Ts = TypeVarTuple("_Ts")
    # What the borrowing below makes of Loop, for type checkers: the methods of asyncio's Unix
    # selector loop (typeshed's types), the native ones (_core.pyi) first.
    _AsyncioLoop = unix_events._UnixSelectorEventLoop
else:
    _AsyncioLoop = asyncio.AbstractEventLoop


class Loop(_core.Loop, WatchdogMixin, MetricsMixin, _AsyncioLoop):
    """An asyncio event loop with a native core. Create it with ``ferroloop.new_event_loop()``."""

    def __init__(self) -> None:
        # The running version's own initialisation: every private attribute its borrowed
        # methods rely on (_default_executor, _asyncgens, _exception_handler, ...).
        base_events.BaseEventLoop.__init__(self)
        # The native core keeps the ready queue and the timer heap.
        del self._ready, self._scheduled, self._timer_cancelled_count
        # BaseSelectorEventLoop / _UnixSelectorEventLoop state.
        self._transports = weakref.WeakValueDictionary()
        self._ssock = self._csock = None
        self._signal_handlers = {}
        if _PY313:
            # 3.13: listening UNIX sockets are unlinked when their server closes.
            self._unix_server_sockets = {}
        self._bind_weakref(weakref.ref(self))
        self._selector = _SelectorView(self)

    # run_forever is native (ferroloop._core.Loop): _run_forever_setup(), the watchdog's
    # start, the iterations, _run_forever_cleanup().

    if not _HAS_RUN_FOREVER_SETUP:
        # asyncio 3.13 split BaseEventLoop.run_forever into these two (gh-110771); earlier
        # versions have the same steps inline.
        def _run_forever_setup(self):
            self._check_closed()
            self._check_running()
            self._set_coroutine_origin_tracking(self._debug)
            self._old_agen_hooks = sys.get_asyncgen_hooks()
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)

        def _run_forever_cleanup(self):
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            if self._old_agen_hooks is not None:
                sys.set_asyncgen_hooks(*self._old_agen_hooks)
                self._old_agen_hooks = None

    def close(self):
        """Close the loop: drop pending callbacks, shut the default executor down."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        if sys is None or base_events is None or sys.is_finalizing():
            # An unclosed loop collected during interpreter shutdown, when module globals
            # (this module's, asyncio's) may already be cleared: release the native resources,
            # quietly, as asyncio's loop ends up doing.
            self._close_native()
            return
        if self._ssock is not None:
            self._close_self_pipe()
        if self._debug:
            base_events.logger.debug("Close %r", self)
        self._watchdog_close()
        self._close_native()
        self._selector = None
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        # asyncio: _UnixSelectorEventLoop.close
        # asyncio.unix_events' own `sys`, as _UnixSelectorEventLoop.close uses (tests patch it).
        # Late in interpreter shutdown the module's globals are already cleared (None).
        unix_sys = unix_events.sys
        if unix_sys is not None and not unix_sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            import warnings

            warnings.warn(  # noqa: B028 (asyncio's warning, with asyncio's stack level)
                f"Closing the loop {self!r} on interpreter shutdown "
                f"stage, skipping signal handlers removal",
                ResourceWarning,
                source=self,
            )
            self._signal_handlers.clear()

    if _PY313:
        # asyncio 3.13: _UnixSelectorEventLoop._stop_serving, which calls super(); before
        # 3.13 BaseSelectorEventLoop._stop_serving is borrowed as is.
        def _stop_serving(self, sock):
            if sock in self._unix_server_sockets:
                path = sock.getsockname()
            else:
                path = None
            selector_events.BaseSelectorEventLoop._stop_serving(self, sock)
            if path is not None:
                prev_ino = self._unix_server_sockets[sock]
                del self._unix_server_sockets[sock]
                try:
                    if os.stat(path).st_ino == prev_ino:
                        os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as err:
                    logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    # The sock_* data path: the system calls, the wait for readiness and the done callback
    # are native (``_sock_*_native``, see crates/ferroloop-py/src/net/sock_ops.rs); each
    # gives back the result, a future to await, or NotImplemented when the call is not a
    # plain one (not exactly a socket.socket, an unusual argument type, debug mode), which
    # takes asyncio's own code. They stay coroutines, as asyncio's: create_task() takes them.

    async def sock_recv(self, sock, n):
        """Receive up to ``n`` bytes from the non-blocking socket ``sock``."""
        result = self._sock_recv_native(sock, n)
        if result.__class__ is bytes:
            return result
        if result is NotImplemented:
            return await _ASYNCIO_SOCK_RECV(self, sock, n)
        return await result

    async def sock_recv_into(self, sock, buf):
        """Receive data from the non-blocking socket ``sock`` into ``buf``; return the byte
        count."""
        result = self._sock_recv_into_native(sock, buf)
        if result.__class__ is int:
            return result
        if result is NotImplemented:
            return await _ASYNCIO_SOCK_RECV_INTO(self, sock, buf)
        return await result

    async def sock_sendall(self, sock, data):
        """Send all of ``data`` on the non-blocking socket ``sock``."""
        result = self._sock_sendall_native(sock, data)
        if result is None:
            return None
        if result is NotImplemented:
            return await _ASYNCIO_SOCK_SENDALL(self, sock, data)
        return await result

    # Serving: a plain listening socket (exactly socket.socket, outside debug mode), with TLS
    # or without, gets the native accept loop (``_core._Acceptor``, see
    # crates/ferroloop-py/src/net/server.rs), which makes asyncio's steps at asyncio's
    # iterations without a task per connection; anything else is asyncio's own code.

    def _start_serving(
        self, protocol_factory, sock, sslcontext=None, server=None, backlog=100, *rest, **kwargs
    ):
        if not kwargs and not self._debug and type(sock) is socket.socket:
            # The transport is made natively unless a subclass has its own
            # _make_socket_transport.
            native = type(self)._make_socket_transport is Loop._make_socket_transport
            acceptor = _core._Acceptor(
                self,
                protocol_factory,
                sock,
                sslcontext,
                server,
                backlog,
                rest,
                _stream_transport._SelectorSocketTransport if native else None,
                _PY312,
            )
            self._add_reader(sock.fileno(), acceptor)
        else:
            _ASYNCIO_START_SERVING(
                self, protocol_factory, sock, sslcontext, server, backlog, *rest, **kwargs
            )

    def _accept_out_of_resources(
        self, exc, protocol_factory, sock, sslcontext, server, backlog, rest
    ):
        """asyncio's ``_accept_connection`` on EMFILE, ENFILE, ENOBUFS or ENOMEM: report,
        stop accepting, and start again after ``ACCEPT_RETRY_DELAY``."""
        self.call_exception_handler(
            {
                "message": "socket.accept() out of system resource",
                "exception": exc,
                "socket": trsock.TransportSocket(sock),
            }
        )
        self._remove_reader(sock.fileno())
        self.call_later(
            constants.ACCEPT_RETRY_DELAY,
            self._start_serving,
            protocol_factory,
            sock,
            sslcontext,
            server,
            backlog,
            *rest,
        )

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        if _PY312:
            self._ensure_fd_no_transport(sock)
        return _SelectorDatagramTransport(self, sock, protocol, address, waiter, extra)

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        if not self._debug and type(sock) is socket.socket:
            # asyncio's __init__ chain, natively: the same attributes, calls and callbacks
            # (see crates/ferroloop-py/src/net/stream_lifecycle.rs).
            return _core._new_socket_transport(
                self,
                _stream_transport._SelectorSocketTransport,
                sock,
                protocol,
                waiter,
                extra,
                server,
                _PY312,
            )
        if _PY312:
            self._ensure_fd_no_transport(sock)
        return _SelectorSocketTransport(self, sock, protocol, waiter, extra, server)

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        **timeouts,
    ):
        # asyncio's own steps, with ferroloop's socket transport beneath the TLS layer (asyncio's
        # method names selector_events' class): its reads (SSLProtocol is a BufferedProtocol
        # from 3.11) and writes are native. ``timeouts``: ssl_handshake_timeout, and from 3.11
        # ssl_shutdown_timeout, passed on as asyncio's method passes them.
        if _PY312:
            self._ensure_fd_no_transport(rawsock)
        ssl_protocol = _sslproto.protocol_class()(
            self, protocol, sslcontext, waiter, server_side, server_hostname, **timeouts
        )
        Loop._make_socket_transport(self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport

    # asyncio's start_tls, making ferroloop's SSLProtocol (see _sslproto.start_tls).
    start_tls = _sslproto.start_tls

    def _call_soon(self, callback, args, context):
        return self.call_soon(callback, *args, context=context)

    def _timer_handle_cancelled(self, handle):
        # Only asyncio's own TimerHandles call this, and they are never in our heap.
        pass

    def _make_self_pipe(self):
        # Created on first use (signal handlers): a loop that never needs it registers no fd.
        if self._ssock is None:
            _BORROWED_MAKE_SELF_PIPE(self)

    def add_signal_handler(
        self, sig: int, callback: Callable[[Unpack[_Ts]], object], *args: Unpack[_Ts]
    ) -> None:
        self._check_closed()
        self._make_self_pipe()
        _BORROWED_ADD_SIGNAL_HANDLER(self, sig, callback, *args)
        # asyncio's call made the self-pipe the wakeup fd with CPython's default, a warning when
        # it is full: the C signal handler then schedules the report with Py_AddPendingCall,
        # which is not async-signal-safe (a signal that lands while the interpreter pops a
        # pending call deadlocks the process), and each report is a traceback on stderr, system
        # calls for the storm that filled the pipe to interrupt. A byte that does not fit is
        # dropped silently instead, as uvloop does (asyncio drops it too, after the warning).
        # asyncio.unix_events' own `signal`, which asyncio's code uses (tests patch it).
        unix_events.signal.set_wakeup_fd(self._csock.fileno(), warn_on_full_buffer=False)

    def _read_from_self(self):
        # asyncio's reads until the socket is empty: under a storm of signals each system call
        # lets one more in, whose byte keeps that loop going, away from the other fds, for as
        # long as the storm lasts. One read per readiness report (4096 bytes, more than the
        # socket holds with the default buffer sizes); what comes later is read on the next
        # iteration, after the other ready fds.
        try:
            data = self._ssock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            self._process_self_data(data)


class _SelectorSocketTransport(selector_events._SelectorSocketTransport):
    """asyncio's socket transport (the running version's own class, subclassed), whose reader
    callback, ``write`` and ``close`` are native: ``_read_ready`` is a
    ``ferroloop._core._TransportReader``, which does what ``_read_ready__data_received`` does
    for a plain ``Protocol`` on a plain socket, and calls ``_read_ready_cb()`` otherwise;
    ``write`` (sending at once when nothing is buffered) and ``close`` are C methods of this
    class that do asyncio's work natively while the reader is there and call asyncio's methods
    otherwise. In debug mode the reader is asyncio's method, so the slow-callback log names it
    as asyncio's loop does. See crates/ferroloop-py/src/net/stream.rs and methods.rs."""

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None):
        if not loop.get_debug():
            # Before asyncio's __init__, which schedules _add_reader(fd, self._read_ready).
            self._read_ready = _core._TransportReader(self, self.__dict__)
        super().__init__(loop, sock, protocol, waiter, extra, server)

    # asyncio's write after a partial send (the slotted class's, see _stream_transport.py).
    _write_rest = _stream_transport._write_rest

    def _call_connection_lost(self, exc):
        try:
            super()._call_connection_lost(exc)
        finally:
            # The native reader and asyncio's bound methods in __dict__ hold the transport:
            # break the cycles once it is done (net/stream_lifecycle.rs, release_callbacks).
            _core._release_stream_callbacks(self.__dict__)


_core._install_stream_methods(_SelectorSocketTransport)


class _SelectorView:
    """``loop._selector``: a read-only view of the native fd table, with the two lookups
    asyncio's borrowed code makes on it (``get_key`` in transport reprs and
    ``_ensure_fd_no_transport``'s message, ``get_map``). asyncio only registers, modifies or
    polls through the selector in ``BaseSelectorEventLoop``'s ``_add_reader`` & co. and
    ``BaseEventLoop._run_once``, which ferroloop implements natively; so the view has no
    such methods."""

    def __init__(self, loop):
        self._loop = weakref.ref(loop)

    def _key(self, fd):
        loop = self._loop()
        found = None if loop is None else loop._fd_key(fd)
        if found is None:
            return None
        fileobj, events, reader, writer = found
        return selectors.SelectorKey(fileobj, fd, events, (reader, writer))

    def get_key(self, fileobj):
        loop = self._loop()
        if loop is None:
            fd = selectors._fileobj_to_fd(fileobj)
        else:
            # asyncio's selector finds a registered socket closed since by the object.
            fd = loop._lookup_fd(fileobj)
        key = None if fd is None else self._key(fd)
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        return key

    def get_map(self):
        loop = self._loop()
        fds = [] if loop is None else loop._registered_fds()
        return {fd: key for fd in fds if (key := self._key(fd)) is not None}


def _defining_source(name):
    for source in _SOURCES:
        if name in source.__dict__:
            return source.__dict__[name]
    return None


def _borrow():
    native = set(dir(_core.Loop)) - set(dir(object))
    own = set(Loop.__dict__)
    borrowed = []
    names = set()
    for source in _SOURCES:
        names.update(source.__dict__)
    for name in sorted(names):
        if name in own or name in native or name in _NOT_BORROWED:
            continue
        if name.startswith("__") and name not in _BORROWED_DUNDERS:
            continue
        attr = _defining_source(name)
        if isinstance(attr, types.FunctionType):
            if "__class__" in attr.__code__.co_freevars:
                raise ImportError(
                    f"ferroloop cannot borrow asyncio's {name}(): it uses super(); "
                    f"implement it in ferroloop._loop.Loop"
                )
        elif not isinstance(attr, (staticmethod, classmethod, property)):
            continue
        setattr(Loop, name, attr)
        borrowed.append(name)
    return tuple(borrowed)


_ASYNCIO_START_SERVING = selector_events.BaseSelectorEventLoop._start_serving
_ASYNCIO_SOCK_RECV = selector_events.BaseSelectorEventLoop.sock_recv
_ASYNCIO_SOCK_RECV_INTO = selector_events.BaseSelectorEventLoop.sock_recv_into
_ASYNCIO_SOCK_SENDALL = selector_events.BaseSelectorEventLoop.sock_sendall
_BORROWED_MAKE_SELF_PIPE = selector_events.BaseSelectorEventLoop._make_self_pipe
_BORROWED_ADD_SIGNAL_HANDLER = unix_events._UnixSelectorEventLoop.add_signal_handler
BORROWED = _borrow()
