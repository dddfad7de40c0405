//! A stream transport's life outside its data path, natively: construction, the start of
//! reading, end of file, `close()` and `connection_lost`.
//!
//! The transport is asyncio's `_SelectorSocketTransport`: the running version's class rebuilt
//! with `__slots__` (`ferroloop._stream_transport`, decision 0009), or ferroloop's subclass of
//! it for the class a caller passes. [`new_socket_transport`] makes the instance and gives it
//! every attribute asyncio's `__init__` chain gives it (on the slotted class, the `extra` dict
//! of an accepted IPv4, IPv6 or Unix connection and the write buffer are made when first read:
//! `extra.rs`, `_stream_transport.py`), with the same values, makes the same calls
//! (`server._attach`, `loop._transports[fd] = transport`, `TCP_NODELAY`) and schedules the same
//! callbacks in the same order (`connection_made`, the start of reading, the waiter's result).
//! Every method that is not replaced here, and every other case (debug mode, another socket type),
//! is asyncio's own code working on those attributes.
//!
//! Replaced: `_read_ready__on_eof` (inside the native reader), `close` (a C method of the
//! class, as `write`: `methods.rs`), and the `_call_connection_lost` that `close` schedules, whose callable names
//! itself `_SelectorSocketTransport._call_connection_lost` as asyncio's bound method does, so
//! that "Exception in callback ..." reads the same. A `_call_connection_lost` scheduled by
//! asyncio's own code (the write path's flush, `abort`, `_force_close`) is the Python method.
//! `tests/test_stream_transport.py` compares the attributes and every step with a transport
//! made by asyncio's `__init__`.

use std::sync::Mutex;

use pyo3::exceptions::{PyConnectionError, PyOSError, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};

use ferroloop_core::reactor::Interest;
use ferroloop_core::sys::net;

use super::extra::PendingExtra;
use super::server::{attach_transport, detach_transport};
use super::sock_ops::ensure_fd_no_transport;
use super::socket::{
    accepted_socket_of, close_socket, fileno, ipv4_address, ipv6_address, socket_kind, PeerAddress,
    UnixPath,
};
use super::stream::TransportReader;
use super::stream::{is_slotted, write_buffer_empty, SLOTTED, UNSET_BUFFERED};
use super::transport::{get, instance_attr, is_exit, set, Attributes};
use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::ffi::{descriptor_set, dict_discard, exact_int_i32, instance_dict, object_new, untrack};
use crate::handles::Args;

/// The attributes that are slots on every stream transport class (`BaseTransport`'s and
/// `_FlowControlMixin`'s, and the slotted class's own), never `__dict__` entries: at their
/// offsets on the slotted class, a plain `setattr` on the others.
const SLOTS_ONLY: Attributes<'static> = None;

/// The families whose accepted connections get their socket object only when it is read.
pub(crate) const LAZY_FAMILIES: [i32; 3] = [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX];

/// The socket a transport is made for: a socket object, or an accepted IPv4, IPv6 or Unix
/// connection's fd whose socket object is made only when `transport._sock` is first read (see
/// `server.rs`).
#[derive(Clone, Copy)]
pub(crate) enum TransportSocket<'a, 'py> {
    Object(&'a Bound<'py, PyAny>),
    Unmade {
        fd: std::os::fd::RawFd,
        /// The connection's `(family, type, proto)`, shared by a server's connections: what
        /// its pending `extra` holds, to make the object.
        kind: &'a Bound<'py, PyTuple>,
    },
}

/// A transport's socket as native code reads it: the object in `_sock` (`None` once closed),
/// or, on the slotted class, the fd of a socket object not made yet (`_socket` holds the fd
/// number then, an int; the connection's kind is in its pending `extra`, `extra.rs`). Reading
/// never makes the object.
pub(crate) enum SocketSlot<'py> {
    Object(Bound<'py, PyAny>),
    Unmade(std::os::fd::RawFd),
}

impl<'py> SocketSlot<'py> {
    #[inline]
    pub(crate) fn of(
        transport: &Bound<'py, PyAny>,
        attributes: &Attributes<'py>,
    ) -> PyResult<Self> {
        let py = transport.py();
        if attributes.is_some() {
            return Ok(SocketSlot::Object(get!(
                py, transport, attributes, "_sock"
            )?));
        }
        let sock = get!(py, transport, SLOTS_ONLY, "_socket")?;
        match exact_int_i32(&sock) {
            Some(fd) => Ok(SocketSlot::Unmade(fd)),
            None => Ok(SocketSlot::Object(sock)),
        }
    }

    /// A `socket.socket` (or one not made yet), which native reads and writes serve.
    #[inline]
    pub(crate) fn is_plain(&self) -> PyResult<bool> {
        match self {
            SocketSlot::Unmade(_) => Ok(true),
            SocketSlot::Object(sock) => super::socket::is_plain_socket(sock),
        }
    }

    /// The socket object, made now if it was not (`transport._sock`): for what only the
    /// object's own methods do.
    pub(crate) fn object(&self, transport: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            SocketSlot::Object(sock) => Ok(sock.clone()),
            SocketSlot::Unmade(_) => transport.getattr(intern!(transport.py(), "_sock")),
        }
    }

    #[inline]
    pub(crate) fn fileno(&self) -> PyResult<std::os::fd::RawFd> {
        match self {
            SocketSlot::Unmade(fd) => Ok(*fd),
            SocketSlot::Object(sock) => fileno(sock),
        }
    }
}

/// Sets what [`SocketSlot::of`] reads: `_sock`, or the slotted class's `_socket` slot under
/// its `_sock` property.
fn set_socket_slot(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = transport.py();
    match attributes {
        Some(_) => set!(py, transport, attributes, "_sock", value),
        None => set!(py, transport, SLOTS_ONLY, "_socket", value),
    }
}

/// What differs between the supported asyncio versions, read once from asyncio itself.
pub(crate) struct Asyncio {
    /// `collections.deque` (3.12+) or `bytearray` (`_buffer_factory`, up to 3.11).
    pub(crate) buffer_factory: Py<PyAny>,
    /// 3.12+: `_write_ready` is an instance attribute, `_write_sendmsg` or `_write_send`.
    pub(crate) write_ready: Option<&'static str>,
    /// 3.11+: the transport's `_add_reader` does nothing while reading is paused (3.10's
    /// only checks `_closing`).
    start_checks_paused: bool,
    /// 3.12+: `_SelectorSocketTransport.close` sets `_read_ready_cb` and `_write_ready` to
    /// `None` (breaking their cycles) before `_SelectorTransport.close`.
    close_releases_callbacks: bool,
    pub(crate) transport_socket: Py<PyType>,
    pub(crate) buffered_protocol: Py<PyType>,
    /// `BaseTransport`'s `_extra` slot (its member descriptor), which ferroloop's slotted
    /// class shadows with a property.
    pub(crate) extra_slot: Py<PyAny>,
    set_result_unless_cancelled: Py<PyAny>,
    /// `socket.socket`, whose objects' `close` is done natively.
    socket_type: Py<PyType>,
    /// `_set_write_buffer_limits()`'s defaults, 64 KiB and a quarter of it: one int object
    /// each for every transport, as asyncio's constant-folded `64 * 1024` is.
    high_water: Py<PyAny>,
    low_water: Py<PyAny>,
}

static ASYNCIO: PyOnceLock<Asyncio> = PyOnceLock::new();

pub(crate) fn asyncio(py: Python<'_>) -> PyResult<&Asyncio> {
    ASYNCIO.get_or_try_init(py, || {
        let selector_events = py.import("asyncio.selector_events")?;
        let transport = selector_events.getattr("_SelectorTransport")?;
        let buffer_factory = match transport.getattr("_buffer_factory") {
            Ok(factory) => factory,
            Err(_) => py.import("collections")?.getattr("deque")?,
        };
        let socket_transport = selector_events.getattr("_SelectorSocketTransport")?;
        let write_ready = if socket_transport.hasattr("_write_sendmsg")? {
            Some(if selector_events.getattr("_HAS_SENDMSG")?.is_truthy()? {
                "_write_sendmsg"
            } else {
                "_write_send"
            })
        } else {
            None
        };
        let close_releases_callbacks = socket_transport.getattr("__dict__")?.contains("close")?;
        let start_checks_paused = transport
            .getattr("_add_reader")?
            .getattr("__code__")?
            .getattr("co_names")?
            .contains("is_reading")?;
        Ok::<_, PyErr>(Asyncio {
            start_checks_paused,
            close_releases_callbacks,
            buffer_factory: buffer_factory.unbind(),
            write_ready,
            transport_socket: py
                .import("asyncio.trsock")?
                .getattr("TransportSocket")?
                .cast_into::<PyType>()?
                .unbind(),
            extra_slot: py
                .import("asyncio.transports")?
                .getattr("BaseTransport")?
                .getattr("__dict__")?
                .get_item("_extra")?
                .unbind(),
            buffered_protocol: py
                .import("asyncio.protocols")?
                .getattr("BufferedProtocol")?
                .cast_into::<PyType>()?
                .unbind(),
            set_result_unless_cancelled: py
                .import("asyncio.futures")?
                .getattr("_set_result_unless_cancelled")?
                .unbind(),
            socket_type: py
                .import("socket")?
                .getattr("socket")?
                .cast_into::<PyType>()?
                .unbind(),
            high_water: (64 * 1024i32).into_pyobject(py)?.into_any().unbind(),
            low_water: (16 * 1024i32).into_pyobject(py)?.into_any().unbind(),
        })
    })
}

/// asyncio: `loop._transports[fd] = transport`. `_transports` is a `WeakValueDictionary`,
/// whose `__setitem__` makes a `KeyedRef` with a removal callback (three Python frames); a
/// plain weak reference in its `data` is what its lookups (`[]`, `get`, `in`) read the same
/// way, and it is replaced when the fd number is reused.
fn register_transport(
    event_loop: &Bound<'_, Loop>,
    fd: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = event_loop.py();
    let transports = instance_attr(event_loop.as_any(), intern!(py, "_transports"))?;
    // The mapping's `data` dict, from its own `__dict__` (one per loop).
    match instance_attr(&transports, intern!(py, "data"))
        .ok()
        .and_then(|data| data.cast_into::<PyDict>().ok())
    {
        Some(data) => {
            let reference = pyo3::types::PyWeakrefReference::new(transport)?;
            // A weak reference without a callback holds nothing: never part of a cycle.
            untrack(reference.as_any());
            data.set_item(fd, reference)
        }
        None => transports.set_item(fd, transport),
    }
}

/// `sock.getsockname()` (or `getpeername`), `None` on `OSError`, as asyncio's `__init__`.
fn address_or_none<'py>(
    sock: &Bound<'py, PyAny>,
    method: &Bound<'py, pyo3::types::PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = sock.py();
    match sock.call_method0(method) {
        Ok(address) => Ok(address),
        Err(error) if error.is_instance_of::<pyo3::exceptions::PyOSError>(py) => {
            Ok(py.None().into_bound(py))
        }
        Err(error) => Err(error),
    }
}

/// The last local address made into its Python object, and that object.
type LastAddress<K> = Mutex<Option<(K, Py<PyAny>)>>;

/// `sock.getsockname()`, `None` on `OSError` (or another family than `key` reads), as asyncio's
/// `__init__` asks for it, without the socket object or `socket`'s own conversion. The
/// connections of one server share a local address, so the last one's object is reused: it is
/// immutable, and one for many transports saves each idle connection a tuple or a string.
fn local_address<'py, K: PartialEq>(
    py: Python<'py>,
    fd: i32,
    last: &LastAddress<K>,
    key: impl FnOnce(&net::SockAddr) -> Option<K>,
    make: impl FnOnce(Python<'py>, &K) -> PyResult<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let Some(address) = net::local_address(fd).ok().as_ref().and_then(key) else {
        return Ok(py.None().into_bound(py));
    };
    let mut last = last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((cached, object)) = last.as_ref() {
        if *cached == address {
            return Ok(object.bind(py).clone());
        }
    }
    let object = make(py, &address)?;
    let previous = last.replace((address, object.clone().unbind()));
    drop(last);
    drop(previous);
    Ok(object)
}

/// `sock.getsockname()` of a socket of `family` (`AF_INET`, `AF_INET6` or `AF_UNIX`), natively:
/// see [`local_address`].
pub(crate) fn local_address_of(py: Python<'_>, family: i32, fd: i32) -> PyResult<Bound<'_, PyAny>> {
    static IPV4: LastAddress<([u8; 4], u16)> = Mutex::new(None);
    static IPV6: LastAddress<([u8; 16], u16, u32, u32)> = Mutex::new(None);
    static UNIX: LastAddress<UnixPath> = Mutex::new(None);
    match family {
        libc::AF_INET => local_address(py, fd, &IPV4, net::SockAddr::ipv4, |py, a| {
            ipv4_address(py, *a)
        }),
        libc::AF_INET6 => local_address(py, fd, &IPV6, net::SockAddr::ipv6, |py, a| {
            ipv6_address(py, *a)
        }),
        _ => local_address(
            py,
            fd,
            &UNIX,
            |address| address.unix().map(UnixPath::received),
            |py, path| path.object(py),
        ),
    }
}

/// `ferroloop._core._new_socket_transport(loop, cls, sock, protocol, waiter, extra, server,
/// check_fd)`: asyncio's `cls(loop, sock, protocol, waiter, extra, server)` for an exact
/// `socket.socket` outside debug mode (see the module docs). `check_fd`: 3.12+'s
/// `_ensure_fd_no_transport(sock)` first.
#[pyfunction]
#[pyo3(name = "_new_socket_transport")]
#[allow(clippy::too_many_arguments)]
pub fn new_socket_transport<'py>(
    event_loop: &Bound<'py, Loop>,
    cls: &Bound<'py, PyType>,
    sock: &Bound<'py, PyAny>,
    protocol: &Bound<'py, PyAny>,
    waiter: &Bound<'py, PyAny>,
    extra: &Bound<'py, PyAny>,
    server: &Bound<'py, PyAny>,
    check_fd: bool,
) -> PyResult<Bound<'py, PyAny>> {
    make_socket_transport(
        event_loop,
        cls,
        TransportSocket::Object(sock),
        None,
        protocol,
        waiter,
        extra,
        None,
        None,
        server,
        check_fd,
    )
}

/// [`new_socket_transport`], for a socket whose `(family, type, proto)` the caller may know
/// already (an accepted connection's are its listening socket's), and whose peer the
/// caller may have from `accept` (`peer`: `extra["peername"]`, made only when read on the
/// slotted class), and whose local address the caller may know (`sockname`: a Unix
/// listener's, see `server.rs`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_socket_transport<'py>(
    event_loop: &Bound<'py, Loop>,
    cls: &Bound<'py, PyType>,
    socket: TransportSocket<'_, 'py>,
    sock_kind: Option<(i32, i32, i32)>,
    protocol: &Bound<'py, PyAny>,
    waiter: &Bound<'py, PyAny>,
    extra: &Bound<'py, PyAny>,
    peer: Option<PeerAddress>,
    sockname: Option<Bound<'py, PyAny>>,
    server: &Bound<'py, PyAny>,
    check_fd: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let py = event_loop.py();
    let asyncio = asyncio(py)?;
    // An unmade socket serves an accepted IPv4, IPv6 or Unix connection with no extra of the
    // caller's (the case the acceptor passes one for); any other gets its socket object at once.
    let made;
    let socket = match socket {
        TransportSocket::Unmade { fd, kind }
            if sock_kind.is_none_or(|(family, _, _)| !LAZY_FAMILIES.contains(&family))
                || peer.is_none()
                || !extra.is_none() =>
        {
            made = accepted_socket_of(py, kind, fd).inspect_err(|_| net::close(fd))?;
            TransportSocket::Object(&made)
        }
        socket => socket,
    };
    // Until the transport's `_socket` slot holds it (below), an unmade socket's fd is ours to
    // close when something fails.
    let close_unmade = |error: PyErr| {
        if let TransportSocket::Unmade { fd, .. } = socket {
            net::close(fd);
        }
        error
    };
    let fd = match socket {
        TransportSocket::Object(sock) => fileno(sock)?,
        TransportSocket::Unmade { fd, .. } => fd,
    };
    if check_fd {
        ensure_fd_no_transport(event_loop, fd).map_err(close_unmade)?;
    }
    let transport = object_new(cls).map_err(close_unmade)?;
    // One int for the slot and the `_transports` key: a fd above 256 is not a cached small
    // int, and each idle connection would keep two equal ones.
    let fd_object = fd.into_pyobject(py)?.into_any();
    // From here the transport owns an unmade socket's fd: its `_socket` slot says so (and the
    // transport's `__del__` closes it if it is dropped unclosed, as asyncio's closes its
    // socket). Set first, so that any failure below finds it.
    if let TransportSocket::Unmade { .. } = socket {
        if !is_slotted(&transport) {
            return Err(close_unmade(PyTypeError::new_err(
                "an unmade socket needs ferroloop's slotted transport class",
            )));
        }
        set!(py, transport, SLOTS_ONLY, "_sock_fd", &fd_object).map_err(close_unmade)?;
        // The fd number (the `_sock_fd` int itself) stands for the socket object not made
        // yet; its kind is in the pending `extra` (set below).
        set!(py, transport, SLOTS_ONLY, "_socket", &fd_object).map_err(close_unmade)?;
    }
    // A subclass of asyncio's class keeps its attributes in its `__dict__`; ferroloop's
    // slotted class in slots (its `__dict__`, for other attributes, is made only when needed).
    let attributes = match is_slotted(&transport) {
        true => None,
        false => Some(
            instance_dict(&transport)
                .ok_or_else(|| PyTypeError::new_err("a transport class without __dict__"))?,
        ),
    };
    let reader = Bound::new(
        py,
        TransportReader::new(
            transport.clone().unbind(),
            attributes.as_ref().map(|a| a.clone().unbind()),
        ),
    )?;
    let slotted = match &attributes {
        Some(attributes) => {
            attributes.set_item(intern!(py, "_read_ready"), &reader)?;
            // _SelectorSocketTransport.__init__, then _SelectorTransport.__init__.
            attributes.set_item(intern!(py, "_read_ready_cb"), py.None())?;
            None
        }
        None => {
            // The slots asyncio has no attribute for: the reader, and the values of
            // `_read_ready_cb` and `_write_ready` (the bound methods asyncio's __init__ stores,
            // made on access).
            let slotted = SLOTTED.get(py).ok_or_else(|| {
                PyTypeError::new_err("ferroloop's stream transport class is not installed")
            })?;
            set!(py, transport, SLOTS_ONLY, "_reader", &reader)?;
            set!(
                py,
                transport,
                SLOTS_ONLY,
                "_read_cb",
                slotted.unset.bind(py)
            )?;
            if asyncio.write_ready.is_some() {
                set!(
                    py,
                    transport,
                    SLOTS_ONLY,
                    "_write_cb",
                    slotted.unset.bind(py)
                )?;
            }
            Some(slotted)
        }
    };
    // _FlowControlMixin.__init__ and BaseTransport.__init__ (slots, not __dict__ entries);
    // _set_write_buffer_limits() with no argument: 64 KiB and a quarter of it.
    set!(py, transport, SLOTS_ONLY, "_loop", event_loop)?;
    set!(py, transport, SLOTS_ONLY, "_protocol_paused", false)?;
    set!(
        py,
        transport,
        SLOTS_ONLY,
        "_high_water",
        asyncio.high_water.bind(py)
    )?;
    set!(
        py,
        transport,
        SLOTS_ONLY,
        "_low_water",
        asyncio.low_water.bind(py)
    )?;
    let (family, kind, proto) = match (sock_kind, socket) {
        (Some(known), _) => known,
        (None, TransportSocket::Object(sock)) => socket_kind(sock)?,
        (None, TransportSocket::Unmade { .. }) => unreachable!("made above"),
    };
    let sockname = match (family, socket, sockname) {
        (_, _, Some(known)) => known,
        (libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX, _, None) => {
            local_address_of(py, family, fd)?
        }
        (_, TransportSocket::Object(sock), None) => {
            address_or_none(sock, intern!(py, "getsockname"))?
        }
        (_, TransportSocket::Unmade { .. }, None) => unreachable!("made above"),
    };
    match (slotted, peer, socket) {
        // An accepted IPv4, IPv6 or Unix connection on the slotted class, with no extra of the
        // caller's: the dict is made when first read (`extra.rs`). `BaseTransport`'s slot, under
        // the class's `_extra` property.
        (Some(_), Some(peer), socket) if extra.is_none() => {
            let source = match socket {
                TransportSocket::Object(sock) => sock.clone(),
                TransportSocket::Unmade { kind, .. } => kind.clone().into_any(),
            };
            let pending = Bound::new(
                py,
                PendingExtra::new(source.unbind(), peer, sockname.unbind()),
            )?;
            // What it holds (a socket object or a tuple of ints, addresses: tuples, strings,
            // ints, bytes) cannot lead back to it: it can never be part of a reference cycle
            // (see `untrack`).
            untrack(pending.as_any());
            descriptor_set(asyncio.extra_slot.bind(py), &transport, pending.as_any())?;
        }
        (_, _, TransportSocket::Unmade { .. }) => unreachable!("made above"),
        (_, peer, TransportSocket::Object(sock)) => {
            let extra = if extra.is_none() {
                PyDict::new(py).into_any()
            } else {
                extra.clone()
            };
            if let Some(peer) = peer {
                extra.set_item(intern!(py, "peername"), peer.object(py)?)?;
            }
            match slotted {
                Some(_) => descriptor_set(asyncio.extra_slot.bind(py), &transport, &extra)?,
                None => transport.setattr(intern!(py, "_extra"), &extra)?,
            }
            // trsock.TransportSocket(sock): its __init__ only sets its one slot.
            let wrapped = object_new(asyncio.transport_socket.bind(py))?;
            wrapped.setattr(intern!(py, "_sock"), sock)?;
            extra.set_item(intern!(py, "socket"), wrapped)?;
            extra.set_item(intern!(py, "sockname"), sockname)?;
            if !extra.contains(intern!(py, "peername"))? {
                extra.set_item(
                    intern!(py, "peername"),
                    address_or_none(sock, intern!(py, "getpeername"))?,
                )?;
            }
        }
    }
    match socket {
        TransportSocket::Object(sock) => set_socket_slot(&transport, &attributes, sock)?,
        // Set at the start.
        TransportSocket::Unmade { .. } => {}
    }
    set!(py, transport, attributes, "_sock_fd", &fd_object)?;
    set!(py, transport, attributes, "_protocol_connected", false)?;
    // _SelectorSocketTransport.set_protocol, then _SelectorTransport.set_protocol. On the
    // slotted class, `_read_cb` says which method asyncio chose (the `_read_ready_cb`
    // property makes the bound method on access).
    let buffered = protocol.is_instance(asyncio.buffered_protocol.bind(py))?;
    if slotted.is_none() {
        let read_path = if buffered {
            intern!(py, "_read_ready__get_buffer")
        } else {
            intern!(py, "_read_ready__data_received")
        };
        set!(
            py,
            transport,
            attributes,
            "_read_ready_cb",
            transport.getattr(read_path)?
        )?;
    } else if buffered {
        set!(py, transport, SLOTS_ONLY, "_read_cb", UNSET_BUFFERED)?;
    }
    set!(py, transport, attributes, "_protocol", protocol)?;
    set!(py, transport, attributes, "_protocol_connected", true)?;
    set!(py, transport, attributes, "_server", server)?;
    match slotted {
        // Made when first needed (the `_buffer` property), not for every connection: a 3.12+
        // deque is 760 bytes.
        Some(_) => set!(py, transport, SLOTS_ONLY, "_write_buffer", py.None())?,
        None => set!(
            py,
            transport,
            attributes,
            "_buffer",
            asyncio.buffer_factory.bind(py).call0()?
        )?,
    }
    set!(py, transport, attributes, "_conn_lost", 0)?;
    set!(py, transport, attributes, "_closing", false)?;
    set!(py, transport, attributes, "_paused", false)?;
    if !server.is_none() {
        attach_transport(server, &transport)?;
    }
    register_transport(event_loop, &fd_object, &transport)?;
    // The rest of _SelectorSocketTransport.__init__.
    set!(py, transport, attributes, "_eof", false)?;
    set!(py, transport, attributes, "_empty_waiter", py.None())?;
    if let (Some(name), None) = (asyncio.write_ready, slotted) {
        set!(
            py,
            transport,
            attributes,
            "_write_ready",
            transport.getattr(name)?
        )?;
    }
    // base_events._set_nodelay(sock).
    if (family == libc::AF_INET || family == libc::AF_INET6)
        && kind == libc::SOCK_STREAM
        && proto == libc::IPPROTO_TCP
    {
        net::set_nodelay(fd).map_err(os_error)?;
    }
    let soon = |callback: Bound<'py, PyAny>, args: Option<Args>| {
        Loop::schedule_soon(event_loop, callback, args, None, "call_soon").map(drop)
    };
    soon(
        protocol.getattr(intern!(py, "connection_made"))?,
        Some(Args::One(transport.clone().unbind())),
    )?;
    let start = Bound::new(
        py,
        Step {
            reader: reader.clone().unbind(),
            kind: StepKind::StartReading,
        },
    )?;
    soon(start.into_any(), None)?;
    if !waiter.is_none() {
        soon(
            asyncio.set_result_unless_cancelled.bind(py).clone(),
            Some(Args::Tuple(
                PyTuple::new(py, [waiter.clone(), py.None().into_bound(py)])?.unbind(),
            )),
        )?;
    }
    Ok(transport)
}

#[derive(Clone, Copy, PartialEq)]
enum StepKind {
    /// asyncio: `self._add_reader(self._sock_fd, self._read_ready)`, scheduled by `__init__`.
    StartReading,
    /// asyncio: `self._call_connection_lost(None)`, scheduled by `close()`.
    ConnectionLost,
}

/// A callback a native stream transport schedules, named as asyncio's bound method.
#[pyclass(module = "ferroloop._core", name = "_TransportStep")]
pub struct Step {
    reader: Py<TransportReader>,
    kind: StepKind,
}

#[pymethods]
impl Step {
    #[getter]
    fn __qualname__(&self) -> &'static str {
        match self.kind {
            StepKind::StartReading => "_SelectorTransport._add_reader",
            StepKind::ConnectionLost => "_SelectorSocketTransport._call_connection_lost",
        }
    }

    #[pyo3(signature = (*args))]
    fn __call__(&self, py: Python<'_>, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.run(py, args.get_item(0).ok())
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.reader)
    }
}

impl Step {
    /// The step, with its first argument (`connection_lost`'s exception) if it has one (also
    /// called by the loop directly: `net::call_native`).
    pub(crate) fn run(&self, py: Python<'_>, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let reader = self.reader.bind(py);
        let Some((transport, attributes)) = reader.borrow().transport.bind(py) else {
            return Ok(());
        };
        match self.kind {
            StepKind::StartReading => start_reading(reader, &transport, &attributes),
            StepKind::ConnectionLost => {
                let exc = exc.unwrap_or_else(|| py.None().into_bound(py));
                call_connection_lost(&transport, &attributes, &exc)
            }
        }
    }
}

/// asyncio's `_SelectorTransport._add_reader(fd, self._read_ready)`: unless the transport is
/// closing (or, from 3.11, reading was paused), register the reader.
fn start_reading(
    reader: &Bound<'_, TransportReader>,
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
) -> PyResult<()> {
    let py = reader.py();
    let paused = asyncio(py)?.start_checks_paused
        && get!(py, transport, attributes, "_paused")?.is_truthy()?;
    if paused || get!(py, transport, attributes, "_closing")?.is_truthy()? {
        return Ok(());
    }
    let fd: i32 = get!(py, transport, attributes, "_sock_fd")?.extract()?;
    let event_loop = get!(py, transport, attributes, "_loop")?;
    // `self._read_ready`: on the slotted class, a property giving the reader while there is one.
    let callback = match attributes {
        Some(_) => get!(py, transport, attributes, "_read_ready")?,
        None => get!(py, transport, attributes, "_reader")?,
    };
    match event_loop.cast::<Loop>() {
        Ok(event_loop) => {
            Loop::set_io_handle_fd(event_loop, fd, callback, None, None, Interest::READ, false)?;
        }
        Err(_) => {
            event_loop.call_method1(intern!(py, "_add_reader"), (fd, callback))?;
        }
    }
    Ok(())
}

/// asyncio's `_read_ready__on_eof` (outside debug mode, which logs first).
pub(crate) fn on_eof(transport: &Bound<'_, PyAny>, attributes: &Attributes<'_>) -> PyResult<()> {
    let py = transport.py();
    let protocol = get!(py, transport, attributes, "_protocol")?;
    let keep_open = match protocol.call_method0(intern!(py, "eof_received")) {
        Ok(keep_open) => keep_open,
        Err(error) if is_exit(&error, py) => return Err(error),
        Err(error) => {
            return fatal_error(
                transport,
                attributes,
                error,
                intern!(py, "Fatal error: protocol.eof_received() call failed."),
            )
        }
    };
    if keep_open.is_truthy()? {
        let fd = get!(py, transport, attributes, "_sock_fd")?;
        get!(py, transport, attributes, "_loop")?
            .call_method1(intern!(py, "_remove_reader"), (fd,))?;
    } else {
        transport.call_method0(intern!(py, "close"))?;
    }
    Ok(())
}

/// `loop._remove_reader(fd)` / `_remove_writer(fd)`: ferroloop's own, called directly, on
/// ferroloop's loop with an int fd (what transports pass).
fn remove_io(
    event_loop: &Bound<'_, PyAny>,
    fd: &Bound<'_, PyAny>,
    interest: Interest,
) -> PyResult<()> {
    let py = event_loop.py();
    if let (Ok(event_loop), Ok(fd)) = (event_loop.cast::<Loop>(), fd.extract::<i32>()) {
        Loop::clear_io_handle_fd(event_loop, fd, interest, false)?;
        return Ok(());
    }
    let method = match interest {
        Interest::READ => intern!(py, "_remove_reader"),
        _ => intern!(py, "_remove_writer"),
    };
    event_loop.call_method1(method, (fd,))?;
    Ok(())
}

/// asyncio's `_SelectorTransport.close()`, after what 3.12+'s `_SelectorSocketTransport.close()`
/// does first.
pub(crate) fn close(reader: &Bound<'_, TransportReader>) -> PyResult<()> {
    let py = reader.py();
    let Some((transport, attributes)) = reader.borrow().transport.bind(py) else {
        return Ok(());
    };
    if asyncio(py)?.close_releases_callbacks {
        release_bound_methods(&transport, &attributes)?;
    }
    if get!(py, transport, attributes, "_closing")?.is_truthy()? {
        return Ok(());
    }
    set!(py, transport, attributes, "_closing", true)?;
    let event_loop = get!(py, transport, attributes, "_loop")?;
    let fd = get!(py, transport, attributes, "_sock_fd")?;
    remove_io(&event_loop, &fd, Interest::READ)?;
    if write_buffer_empty(&transport, &attributes)? {
        let lost = get!(py, transport, attributes, "_conn_lost")?.add(1)?;
        set!(py, transport, attributes, "_conn_lost", lost)?;
        remove_io(&event_loop, &fd, Interest::WRITE)?;
        schedule_connection_lost(reader, &event_loop, py.None().into_bound(py))?;
    }
    Ok(())
}

/// asyncio: `self._loop.call_soon(self._call_connection_lost, exc)`, the native step.
fn schedule_connection_lost(
    reader: &Bound<'_, TransportReader>,
    event_loop: &Bound<'_, PyAny>,
    exc: Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = reader.py();
    let step = Bound::new(
        py,
        Step {
            reader: reader.clone().unbind(),
            kind: StepKind::ConnectionLost,
        },
    )?;
    match event_loop.cast::<Loop>() {
        Ok(event_loop) => {
            let args = Some(Args::One(exc.unbind()));
            Loop::schedule_soon(event_loop, step.into_any(), args, None, "call_soon")?;
        }
        Err(_) => {
            event_loop.call_method1(intern!(py, "call_soon"), (step, exc))?;
        }
    }
    Ok(())
}

/// asyncio's `transport._fatal_error(exc, message)` on a stream transport.
///
/// What a peer's reset or a closed pipe gives, an `OSError` outside debug mode, asyncio's
/// method neither logs nor reports: it calls `_force_close(exc)`, done here natively on the
/// slotted class while the native reader is there (the connection's socket object, if never
/// made, is then never made: the native `_call_connection_lost` closes the fd). Every other
/// case is the transport's own method: another exception (reported to the exception handler),
/// debug mode (logged), another class, or an instance with attributes of its own (one that
/// may replace `_fatal_error` or `_force_close`).
pub(crate) fn fatal_error(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
    error: PyErr,
    message: &Bound<'_, pyo3::types::PyString>,
) -> PyResult<()> {
    let py = transport.py();
    if attributes.is_none() && error.is_instance_of::<PyOSError>(py) {
        let event_loop = get!(py, transport, SLOTS_ONLY, "_loop")?;
        let native_loop = event_loop
            .cast::<Loop>()
            .is_ok_and(|event_loop| !event_loop.get().is_debug());
        let reader = get!(py, transport, SLOTS_ONLY, "_reader")?;
        if let (true, Ok(reader)) = (native_loop, reader.cast_into::<TransportReader>()) {
            // Made (empty) here if the transport had none: it is being closed.
            let own = instance_dict(transport).is_some_and(|own| !own.is_empty());
            if !own {
                let exc = error.into_value(py).into_bound(py).into_any();
                return force_close(&reader, transport, attributes, &event_loop, exc);
            }
        }
    }
    super::transport::fatal_error(transport, error, message)
}

/// asyncio's `_SelectorTransport._force_close(exc)`: unless the connection is already lost,
/// drop what is buffered, stop reading and writing, and schedule `connection_lost(exc)`.
fn force_close(
    reader: &Bound<'_, TransportReader>,
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
    event_loop: &Bound<'_, PyAny>,
    exc: Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = transport.py();
    let lost = get!(py, transport, attributes, "_conn_lost")?;
    if lost.is_truthy()? {
        return Ok(());
    }
    let fd = get!(py, transport, attributes, "_sock_fd")?;
    if !write_buffer_empty(transport, attributes)? {
        get!(py, transport, attributes, "_buffer")?.call_method0(intern!(py, "clear"))?;
        remove_io(event_loop, &fd, Interest::WRITE)?;
    }
    if !get!(py, transport, attributes, "_closing")?.is_truthy()? {
        set!(py, transport, attributes, "_closing", true)?;
        remove_io(event_loop, &fd, Interest::READ)?;
    }
    set!(py, transport, attributes, "_conn_lost", lost.add(1)?)?;
    schedule_connection_lost(reader, event_loop, exc)
}

/// asyncio's `_SelectorSocketTransport._call_connection_lost(exc)` and its base's, then
/// ferroloop's own step: the native callbacks let go of the transport.
fn call_connection_lost(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = transport.py();
    let asyncio = asyncio(py)?;
    let outcome = if get!(py, transport, attributes, "_protocol_connected")?.is_truthy()? {
        get!(py, transport, attributes, "_protocol")?
            .call_method1(intern!(py, "connection_lost"), (exc,))
            .map(drop)
    } else {
        Ok(())
    };
    // The `finally:` clause: runs whatever connection_lost did.
    let cleanup = (|| -> PyResult<()> {
        match SocketSlot::of(transport, attributes)? {
            // Never made: nothing but this transport knows the fd.
            SocketSlot::Unmade(fd) => net::close(fd),
            SocketSlot::Object(sock) if sock.get_type().is(asyncio.socket_type.bind(py)) => {
                close_socket(&sock)?
            }
            SocketSlot::Object(sock) => {
                sock.call_method0(intern!(py, "close"))?;
            }
        }
        set_socket_slot(transport, attributes, &py.None().into_bound(py))?;
        set!(py, transport, attributes, "_protocol", py.None())?;
        set!(py, transport, SLOTS_ONLY, "_loop", py.None())?;
        let server = get!(py, transport, attributes, "_server")?;
        if !server.is_none() {
            detach_transport(&server, transport)?;
            set!(py, transport, attributes, "_server", py.None())?;
        }
        Ok(())
    })();
    let outcome = match (outcome, cleanup) {
        (_, Err(error)) => Err(error),
        (outcome, Ok(())) => outcome,
    };
    let finish = (|| -> PyResult<()> {
        outcome?;
        let waiter = get!(py, transport, attributes, "_empty_waiter")?;
        if !waiter.is_none() {
            waiter.call_method1(
                intern!(py, "set_exception"),
                (PyConnectionError::new_err("Connection is closed by peer").into_value(py),),
            )?;
        }
        Ok(())
    })();
    release_callbacks(transport, attributes)?;
    finish
}

/// After `connection_lost`: let go of the native reader, which holds the transport, and set
/// the bound methods asyncio keeps in the transport (`_read_ready_cb`, 3.12+'s `_write_ready`)
/// to `None`. Each is a cycle through the transport's `__dict__`, which made every closed
/// connection (the transport, its dicts, socket objects and addresses) garbage for the cyclic
/// GC, a sixth of the CPU a short connection cost. Nothing calls them once the connection is
/// lost: the transport is off the selector for good (docs/deviations.md).
fn release_callbacks(transport: &Bound<'_, PyAny>, attributes: &Attributes<'_>) -> PyResult<()> {
    let py = transport.py();
    match attributes {
        // The reader is not there in debug mode, nor the second time.
        Some(attributes) => dict_discard(attributes, intern!(py, "_read_ready")),
        None => set!(py, transport, SLOTS_ONLY, "_reader", py.None())?,
    }
    release_bound_methods(transport, attributes)
}

/// `_read_ready_cb` and, 3.12+, `_write_ready` set to `None` (on the slotted class, the slots
/// behind those properties).
fn release_bound_methods(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
) -> PyResult<()> {
    let py = transport.py();
    let write_ready = asyncio(py)?.write_ready.is_some();
    match attributes {
        Some(_) => {
            set!(py, transport, attributes, "_read_ready_cb", py.None())?;
            if write_ready {
                set!(py, transport, attributes, "_write_ready", py.None())?;
            }
        }
        None => {
            set!(py, transport, SLOTS_ONLY, "_read_cb", py.None())?;
            if write_ready {
                set!(py, transport, SLOTS_ONLY, "_write_cb", py.None())?;
            }
        }
    }
    Ok(())
}

/// `ferroloop._core._release_stream_callbacks(attributes)`: [`release_callbacks`] for a
/// transport of ferroloop's subclass of asyncio's class, by its `__dict__` (its Python
/// `_call_connection_lost`).
#[pyfunction]
#[pyo3(name = "_release_stream_callbacks")]
pub fn release_stream_callbacks(attributes: &Bound<'_, PyDict>) -> PyResult<()> {
    let py = attributes.py();
    dict_discard(attributes, intern!(py, "_read_ready"));
    attributes.set_item(intern!(py, "_read_ready_cb"), py.None())?;
    if asyncio(py)?.write_ready.is_some() {
        attributes.set_item(intern!(py, "_write_ready"), py.None())?;
    }
    Ok(())
}
