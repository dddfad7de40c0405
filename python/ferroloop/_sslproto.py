"""TLS on ferroloop: asyncio's ``SSLProtocol`` and ``_SSLProtocolTransport`` (3.11+), subclassed
so that their data path runs natively.

Three methods are C methods of these subclasses (crates/ferroloop-py/src/net/tls.rs and
methods.rs): ``SSLProtocol.get_buffer`` and ``buffer_updated`` (each read of the socket
transport) and ``_SSLProtocolTransport.write``. They do what asyncio's methods do in the state a
connection spends its life in (``WRAPPED``, nothing held back) and call asyncio's own methods
and steps in any other case, so the handshake, shutdown, flow control, errors and messages are
the running version's asyncio. Everything else is inherited. Python 3.10's ``SSLProtocol`` is a
different design (``_SSLPipe``): it is used unchanged there.

The attributes that asyncio's code and the native methods read on every record are slots of
the subclasses (``_PROTOCOL_SLOTS``, ``_TRANSPORT_SLOTS``) rather than entries of the instance
``__dict__``, where each read was a probe of a forty-entry dict: the native methods read them at
their offsets. A slot of a subclass is a data descriptor, so asyncio's methods read and write it
as they would the dict entry; every other attribute stays in the ``__dict__``. Only ``vars()``
tells the difference (``docs/deviations.md``).

On a CPython built without the ``ssl`` module, asyncio's classes are used as they are (and
raise asyncio's error when a TLS connection is asked for).
"""

from __future__ import annotations

import sys
import types
from asyncio import base_events, sslproto
from typing import Any

from . import _core

try:
    import ssl
except ImportError:  # a CPython built without OpenSSL, which asyncio supports
    ssl = None  # type: ignore[assignment]

__all__ = ("protocol_class", "start_tls")

_ASYNCIO_SSL_PROTOCOL = sslproto.SSLProtocol

if sys.version_info >= (3, 11) and ssl is not None:

    def _asyncio_repr(self: object) -> str:
        # object's default repr as asyncio's class gives it (exception handler contexts,
        # "unclosed transport" warnings, logs): "<asyncio.sslproto.SSLProtocol object at 0x...>".
        return f"<{sslproto.__name__}.{type(self).__qualname__} object at {id(self):#x}>"

    def _slots(base: type, names: tuple[str, ...]) -> tuple[str, ...]:
        # A name the base class (or its bases) defines is left in the dict: a slot would hide
        # the class attribute until the instance set it.
        return tuple(name for name in names if not hasattr(base, name))

    # What the native data path reads per record (crates/ferroloop-py/src/net/tls.rs).
    _PROTOCOL_SLOTS = _slots(
        sslproto.SSLProtocol,
        (
            "_state",
            "_sslobj",
            "_incoming",
            "_outgoing",
            "_transport",
            "_app_protocol",
            "_app_protocol_is_buffer",
            "_ssl_buffer",
            "_ssl_buffer_view",
            "_write_backlog",
            "_write_buffer_size",
            "_app_reading_paused",
            "_app_writing_paused",
            "_ssl_reading_paused",
            "_ssl_writing_paused",
            "_incoming_high_water",
            "_incoming_low_water",
            "_outgoing_high_water",
            "_outgoing_low_water",
        ),
    )
    _TRANSPORT_SLOTS = _slots(sslproto._SSLProtocolTransport, ("_ssl_protocol",))

    class _SSLProtocolTransport(sslproto._SSLProtocolTransport):
        """asyncio's TLS transport, with a native ``write``."""

        __slots__ = _TRANSPORT_SLOTS
        __repr__ = _asyncio_repr

    class SSLProtocol(sslproto.SSLProtocol):
        """asyncio's ``SSLProtocol``, with native ``get_buffer`` and ``buffer_updated``."""

        __slots__ = _PROTOCOL_SLOTS
        __repr__ = _asyncio_repr

        def _get_app_transport(self) -> Any:
            # asyncio's method, making this module's transport class.
            if self._app_transport is None:
                if self._app_transport_created:
                    raise RuntimeError("Creating _SSLProtocolTransport twice")
                self._app_transport = _SSLProtocolTransport(self._loop, self)
                self._app_transport_created = True
            return self._app_transport

    _core._install_tls_methods(SSLProtocol, _SSLProtocolTransport)
    _core._tls_constants(
        SSLProtocol,
        _SSLProtocolTransport,
        sslproto.SSLProtocolState,
        ssl.SSLObject,
        sslproto.SSLAgainErrors,
    )

    def protocol_class() -> type:
        """The class a new TLS connection's protocol is made from: ferroloop's, unless
        ``asyncio.sslproto.SSLProtocol`` has been replaced (then the replacement, as asyncio's
        own code would use it)."""
        if sslproto.SSLProtocol is _ASYNCIO_SSL_PROTOCOL:
            return SSLProtocol
        return sslproto.SSLProtocol

else:

    def protocol_class() -> type:
        return sslproto.SSLProtocol


class _SslprotoForStartTls:
    """``asyncio.sslproto`` as ``start_tls`` sees it: ``SSLProtocol`` is
    :func:`protocol_class`'s, every other name asyncio's."""

    def __getattr__(self, name: str) -> Any:
        if name == "SSLProtocol":
            return protocol_class()
        return getattr(sslproto, name)


def _start_tls() -> Any:
    """asyncio's ``BaseEventLoop.start_tls`` (the running version's own code), reading
    ``sslproto.SSLProtocol`` through :class:`_SslprotoForStartTls`: a connection upgraded to
    TLS gets ferroloop's ``SSLProtocol``, whose data path is native, as one made with ``ssl=``
    does."""
    asyncio_start_tls = base_events.BaseEventLoop.start_tls
    namespace = dict(asyncio_start_tls.__globals__)
    namespace["sslproto"] = _SslprotoForStartTls()
    function = types.FunctionType(
        asyncio_start_tls.__code__,
        namespace,
        asyncio_start_tls.__name__,
        asyncio_start_tls.__defaults__,
        asyncio_start_tls.__closure__,
    )
    function.__kwdefaults__ = asyncio_start_tls.__kwdefaults__
    function.__qualname__ = asyncio_start_tls.__qualname__
    function.__doc__ = asyncio_start_tls.__doc__
    function.__module__ = asyncio_start_tls.__module__
    return function


start_tls = _start_tls()
