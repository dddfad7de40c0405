//! The accept loop of a listening socket, natively ([`Acceptor`]).
//!
//! asyncio's `BaseSelectorEventLoop._start_serving` registers `_accept_connection` as the
//! listening socket's reader. On each readiness report it accepts up to `backlog` connections
//! (`sock.accept()`, then `conn.setblocking(False)`), and for each one creates a task running
//! the coroutine `_accept_connection2`, whose first step calls the protocol factory and makes
//! the transport (which schedules `connection_made`), then awaits a waiter future that the
//! transport resolves one iteration later.
//!
//! For a plain listening socket (a `socket.socket`, outside debug mode) ferroloop registers
//! an [`Acceptor`] instead (see `ferroloop._loop.Loop._start_serving`). It makes the same steps
//! at the same iterations without the task: `accept4` (non-blocking and close-on-exec in one
//! system call), the `socket.socket` object made for that fd as `socket.accept()` makes it,
//! the peer's address as `accept()` gives it, and `call_soon` of the connection step, which
//! calls the protocol factory and `loop._make_socket_transport(conn, protocol, extra=
//! {"peername": addr}, server=server)` in the next iteration, as the task's first step would
//! (natively, see `stream_lifecycle.rs`, when that method is ferroloop's own).
//! As in asyncio outside debug mode, an exception there is dropped (the task swallowed it).
//!
//! An IPv4, IPv6 or Unix connection that gets ferroloop's slotted transport has no
//! `socket.socket` made for it at accept (an IPv6 or Unix peer's address is made from what
//! `accept` gave, as `socket.accept()` makes it): the step gets the fd in an [`AcceptedFd`]
//! (which closes it if the step never runs), and the transport's `_socket` slot holds the fd
//! number until something reads `transport._sock` (see `stream_lifecycle.rs`, `extra.rs`). A
//! server whose connections nobody asks for their socket makes none: an object and ~3,000
//! instructions less per connection, and 96 bytes less per idle one.
//!
//! A TLS server's batch is native as well, but each connection is asyncio's own task, made at
//! the same point: `loop.create_task(loop._accept_connection2(protocol_factory, conn,
//! {"peername": addr}, sslcontext, server, *rest))`. That task lives for the handshake, where
//! code can see it: `asyncio.all_tasks()` lists it, and the end of `asyncio.run` cancels it,
//! which closes a connection still in its handshake. Its cost beside the handshake's is small.
//!
//! Errors of `accept` are asyncio's: `EAGAIN` and `ECONNABORTED` end the batch; `EMFILE`,
//! `ENFILE`, `ENOBUFS` and `ENOMEM` go to `loop._accept_out_of_resources`, which reports them
//! and retries after asyncio's delay, as asyncio's code does (which goes on with the batch:
//! each accept still to make fails, reports and schedules a retry); any other error is raised out of
//! the callback (the loop reports it). In debug mode, or when the loop's debug flag was turned
//! on since, each batch is asyncio's own `_accept_connection`.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::PyTraverseError;

use ferroloop_core::sys::net;

use super::socket::{
    accepted_socket, fileno, init_patched, ipv4_address, ipv6_address, retry_interrupted,
    socket_kind, unix_address, PeerAddress, SocketKind,
};
use super::stream_lifecycle::{local_address_of, make_socket_transport, TransportSocket};
use crate::event_loop::Loop;
use crate::ffi::{exact_int_i64, instance_dict, type_lookup, untrack};
use crate::handles::Args;

static ASYNCIO_ACCEPT_CONNECTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What an accept loop needs, dropped together by the cyclic GC's `__clear__` (the loop holds
/// the reader handle, which holds the acceptor, which holds the loop).
struct Serving {
    event_loop: Py<Loop>,
    protocol_factory: Py<PyAny>,
    sock: Py<PyAny>,
    /// The server's `SSLContext`: each connection is then asyncio's `_accept_connection2`
    /// task.
    sslcontext: Option<Py<PyAny>>,
    server: Py<PyAny>,
    /// The arguments of asyncio's `_accept_connection` after `backlog`
    /// (`ssl_handshake_timeout`, and `ssl_shutdown_timeout` from 3.11).
    rest: Py<PyTuple>,
    /// The listening socket's `(family, type, proto)`, which its connections get.
    kind: (i32, i32, i32),
    /// The same as the ints of each connection's `socket.socket` (with `SOCK_NONBLOCK` in
    /// the type where the platform has it).
    connection_kind: SocketKind,
    /// ferroloop's transport class when the loop's `_make_socket_transport` is ferroloop's
    /// own: the connection step then makes the transport natively without calling it.
    transport_class: Option<Py<PyType>>,
    /// 3.12+: the transport is made after `_ensure_fd_no_transport`.
    check_fd: bool,
    /// A Unix listener's own address, which every connection it accepts has as its local
    /// address (Linux gives an accepted Unix socket its listener's name): their `sockname`
    /// without a `getsockname` each.
    unix_sockname: Option<Py<PyAny>>,
}

/// The reader callback of a listening socket (see the module docs).
#[pyclass(module = "ferroloop._core", name = "_Acceptor")]
pub struct Acceptor {
    serving: Option<Serving>,
    backlog: usize,
}

#[pymethods]
impl Acceptor {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        event_loop: Py<Loop>,
        protocol_factory: Py<PyAny>,
        sock: Bound<'_, PyAny>,
        sslcontext: Option<Bound<'_, PyAny>>,
        server: Py<PyAny>,
        backlog: usize,
        rest: Py<PyTuple>,
        transport_class: Option<Py<PyType>>,
        check_fd: bool,
    ) -> PyResult<Self> {
        // asyncio's `if sslcontext:`.
        let sslcontext = match sslcontext {
            Some(context) if context.is_truthy()? => Some(context.unbind()),
            _ => None,
        };
        let kind = socket_kind(&sock)?;
        let connection_kind = SocketKind::new(sock.py(), connection_kind(kind))?;
        let unix_sockname = match kind.0 {
            libc::AF_UNIX => Some(local_address_of(sock.py(), kind.0, fileno(&sock)?)?)
                .filter(|address| !address.is_none())
                .map(Bound::unbind),
            _ => None,
        };
        Ok(Acceptor {
            serving: Some(Serving {
                event_loop,
                protocol_factory,
                kind,
                connection_kind,
                sock: sock.unbind(),
                sslcontext,
                server,
                rest,
                transport_class,
                check_fd,
                unix_sockname,
            }),
            backlog,
        })
    }

    /// The name asyncio's messages give the method this replaces ("Exception in callback
    /// BaseSelectorEventLoop._accept_connection(...)").
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "BaseSelectorEventLoop._accept_connection"
    }

    /// One readiness report: accept up to `backlog` connections.
    pub(crate) fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let this = slf.borrow();
            let Some(serving) = &this.serving else {
                return Ok(());
            };
            if serving.event_loop.get().is_debug() {
                return asyncio_accept_connection(py, serving, this.backlog);
            }
        }
        // A bound method per batch, not kept: kept, it would make the acceptor (and the
        // server and listening socket it holds) a reference cycle, garbage for the cyclic GC.
        let on_connection = slf.getattr(intern!(py, "_connection"))?.unbind();
        Acceptor::accept_batch(slf, on_connection)
    }

    /// The step of one accepted connection, one iteration after its accept (asyncio: the
    /// first step of the `_accept_connection2` task).
    fn _connection(
        &self,
        py: Python<'_>,
        conn: Bound<'_, PyAny>,
        addr: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let Some(serving) = &self.serving else {
            return Ok(());
        };
        let event_loop = serving.event_loop.bind(py);
        let native = serving.transport_class.is_some() && !event_loop.get().is_debug();
        // An fd accepted without its socket object: the transport takes it as is, or (debug
        // mode turned on since the accept) the socket object is made now.
        let accepted = match conn.cast::<AcceptedFd>() {
            Ok(fd) => Some(fd.get().take()?),
            Err(_) => None,
        };
        let (conn, mut lazy_fd) = match accepted {
            Some(fd) if native => (conn, Some(fd)),
            Some(fd) => (accepted_socket(py, &serving.connection_kind, fd)?, None),
            None => (conn, None),
        };
        let mut protocol = None;
        let outcome = (|| {
            let made = serving.protocol_factory.bind(py).call0()?;
            protocol = Some(made.clone());
            let server = serving.server.bind(py);
            // An IPv4 peer comes as the kernel gave it; an IPv6 or Unix peer's address, for a
            // connection whose socket object is not made, as `accept` gave it (see
            // `accept_batch`).
            let packed = exact_int_i64(&addr).and_then(|packed| u64::try_from(packed).ok());
            let peer = match packed {
                Some(packed) => {
                    let (host, port) = unpack_ipv4(packed);
                    Some(PeerAddress::Ipv4(host, port))
                }
                None if lazy_fd.is_some() && serving.kind.0 != libc::AF_INET => {
                    Some(PeerAddress::Made(addr.clone().unbind()))
                }
                None => None,
            };
            match &serving.transport_class {
                Some(class) if !event_loop.get().is_debug() => {
                    let (extra, peer) = match peer {
                        Some(peer) => (py.None().into_bound(py), Some(peer)),
                        None => {
                            let extra = PyDict::new(py);
                            extra.set_item(intern!(py, "peername"), &addr)?;
                            (extra.into_any(), None)
                        }
                    };
                    let sock = match lazy_fd.take() {
                        Some(fd) => TransportSocket::Unmade {
                            fd,
                            kind: serving.connection_kind.tuple(py),
                        },
                        None => TransportSocket::Object(&conn),
                    };
                    make_socket_transport(
                        event_loop,
                        class.bind(py),
                        sock,
                        Some(serving.kind),
                        &made,
                        &py.None().into_bound(py),
                        &extra,
                        peer,
                        serving.unix_sockname.as_ref().map(|a| a.bind(py).clone()),
                        server,
                        serving.check_fd,
                    )
                }
                _ => {
                    let addr = match peer {
                        Some(peer) => peer.object(py)?,
                        None => addr,
                    };
                    let extra = PyDict::new(py);
                    extra.set_item(intern!(py, "peername"), addr)?;
                    let kwargs = PyDict::new(py);
                    kwargs.set_item(intern!(py, "extra"), extra)?;
                    kwargs.set_item(intern!(py, "server"), server)?;
                    event_loop.call_method(
                        intern!(py, "_make_socket_transport"),
                        (conn, made),
                        Some(&kwargs),
                    )
                }
            }
        })();
        // The protocol factory failed: asyncio's socket object would be dropped unclosed
        // (its `ResourceWarning`, and the fd closed); made now, it is.
        if let Some(fd) = lazy_fd {
            drop(accepted_socket(py, &serving.connection_kind, fd));
        }
        match outcome {
            Ok(_) => Ok(()),
            Err(error)
                if error.is_instance_of::<PyKeyboardInterrupt>(py)
                    || error.is_instance_of::<PySystemExit>(py) =>
            {
                Err(error)
            }
            // asyncio reports it in debug mode only (the task swallows it otherwise).
            Err(error) if event_loop.get().is_debug() => {
                let context = PyDict::new(py);
                context.set_item(
                    "message",
                    "Error on transport creation for incoming connection",
                )?;
                context.set_item("exception", error.into_value(py))?;
                if let Some(protocol) = protocol {
                    context.set_item("protocol", protocol)?;
                }
                event_loop.call_method1(intern!(py, "call_exception_handler"), (context,))?;
                Ok(())
            }
            Err(_) => Ok(()),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(serving) = &self.serving {
            visit.call(&serving.event_loop)?;
            visit.call(&serving.protocol_factory)?;
            visit.call(&serving.sock)?;
            visit.call(&serving.sslcontext)?;
            visit.call(&serving.server)?;
            visit.call(&serving.rest)?;
            visit.call(&serving.transport_class)?;
            serving.connection_kind.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.serving = None;
    }
}

impl Acceptor {
    fn accept_batch(slf: &Bound<'_, Self>, on_connection: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.borrow();
        let Some(serving) = &this.serving else {
            return Ok(());
        };
        let event_loop = serving.event_loop.bind(py);
        let sock = serving.sock.bind(py);
        let on_connection = on_connection.bind(py);
        for _ in 0..this.backlog {
            let listening = fileno(sock)?;
            let (fd, peer) = match retry_interrupted(py, || net::accept(listening)) {
                Ok(Some(accepted)) => accepted,
                // The accept queue is empty.
                Ok(None) => return Ok(()),
                Err(error) => {
                    let errno = error
                        .value(py)
                        .getattr(intern!(py, "errno"))?
                        .extract::<Option<i32>>()?;
                    match errno {
                        Some(libc::ECONNABORTED) => return Ok(()),
                        // asyncio reports, pauses and goes on with the batch (each further
                        // failed accept reports and schedules a retry again).
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            event_loop.call_method1(
                                intern!(py, "_accept_out_of_resources"),
                                (
                                    error.into_value(py),
                                    serving.protocol_factory.bind(py),
                                    sock,
                                    &serving.sslcontext,
                                    serving.server.bind(py),
                                    this.backlog,
                                    serving.rest.bind(py),
                                ),
                            )?;
                            continue;
                        }
                        _ => return Err(error),
                    }
                }
            };
            // An IPv4, IPv6 or Unix connection to ferroloop's transport: its socket object is made
            // only if something asks for it (see the module docs).
            // Not when `socket.socket.__init__` is patched: whoever patched it sees each
            // connection's object made, as with `socket.accept()`.
            let unmade = serving.transport_class.is_some()
                && serving.sslcontext.is_none()
                && match serving.kind.0 {
                    libc::AF_INET => peer.ipv4().is_some(),
                    libc::AF_INET6 => peer.ipv6().is_some(),
                    libc::AF_UNIX => peer.unix().is_some(),
                    _ => false,
                }
                && !init_patched(py)?;
            let conn = if unmade {
                let conn = Bound::new(py, AcceptedFd::new(fd))?;
                untrack(conn.as_any());
                conn.into_any()
            } else {
                let conn = match accepted_socket(py, &serving.connection_kind, fd) {
                    Ok(conn) => conn,
                    Err(error) => {
                        net::close(fd);
                        return Err(error);
                    }
                };
                if let Some(sslcontext) = &serving.sslcontext {
                    let addr = match peer.ipv4() {
                        Some(address) => ipv4_address(py, address)?,
                        None => conn.call_method0(intern!(py, "getpeername"))?,
                    };
                    accept_tls_connection(serving, conn, addr, sslcontext.bind(py))?;
                    continue;
                }
                conn
            };
            // An IPv4 peer as one int (`pack_ipv4`), turned into asyncio's tuple only when
            // read; the IPv6 or Unix peer of an unmade socket: its address as
            // `socket.accept()` makes it; other families: the same address, from the
            // connection itself.
            let addr = match (peer.ipv4(), peer.ipv6(), peer.unix()) {
                (Some(address), _, _) => pack_ipv4(address).into_pyobject(py)?.into_any(),
                (None, Some(address), _) if unmade => ipv6_address(py, address)?,
                (None, None, Some(path)) if unmade => unix_address(py, path)?,
                _ => conn.call_method0(intern!(py, "getpeername"))?,
            };
            let args = PyTuple::new(py, [conn, addr])?;
            Loop::schedule_soon(
                event_loop,
                on_connection.clone(),
                Some(Args::Tuple(args.unbind())),
                None,
                "call_soon",
            )?;
        }
        Ok(())
    }
}

/// asyncio's step for a connection to a TLS server: a task running its `_accept_connection2`
/// coroutine, made the way `_accept_connection` makes it.
fn accept_tls_connection(
    serving: &Serving,
    conn: Bound<'_, PyAny>,
    addr: Bound<'_, PyAny>,
    sslcontext: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = conn.py();
    let event_loop = serving.event_loop.bind(py);
    let extra = PyDict::new(py);
    extra.set_item(intern!(py, "peername"), addr)?;
    let mut args = vec![
        serving.protocol_factory.bind(py).clone(),
        conn,
        extra.into_any(),
        sslcontext.clone(),
        serving.server.bind(py).clone(),
    ];
    args.extend(serving.rest.bind(py).iter());
    let accept =
        event_loop.call_method1(intern!(py, "_accept_connection2"), PyTuple::new(py, args)?)?;
    event_loop.call_method1(intern!(py, "create_task"), (accept,))?;
    Ok(())
}

/// An IPv4 address and port as one int (host in the upper 32 bits), to pass to the connection
/// step without making asyncio's `(host, port)` tuple.
fn pack_ipv4((host, port): ([u8; 4], u16)) -> u64 {
    (u64::from(u32::from_be_bytes(host)) << 16) | u64::from(port)
}

fn unpack_ipv4(packed: u64) -> ([u8; 4], u16) {
    (((packed >> 16) as u32).to_be_bytes(), packed as u16)
}

/// The `(family, type, proto)` of an accepted connection's `socket.socket`: the listening
/// socket's, non-blocking as asyncio sets it: on Linux the `SOCK_NONBLOCK` bit in the type
/// makes `socket` set a zero timeout without a system call (the fd is non-blocking already).
fn connection_kind((family, kind, proto): (i32, i32, i32)) -> (i32, i32, i32) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let kind = kind | libc::SOCK_NONBLOCK;
    (family, kind, proto)
}

/// An accepted connection's fd on its way to the connection step, owned: closed if the step
/// never runs (the loop closed first). Not tracked by the cyclic GC (it holds no object).
#[pyclass(module = "ferroloop._core", name = "_AcceptedFd", frozen)]
pub struct AcceptedFd {
    fd: std::sync::atomic::AtomicI32,
}

impl AcceptedFd {
    fn new(fd: std::os::fd::RawFd) -> Self {
        AcceptedFd {
            fd: std::sync::atomic::AtomicI32::new(fd),
        }
    }

    /// The fd, once: the caller owns it from then on.
    fn take(&self) -> PyResult<std::os::fd::RawFd> {
        match self.fd.swap(-1, std::sync::atomic::Ordering::Relaxed) {
            -1 => Err(pyo3::exceptions::PyValueError::new_err(
                "the accepted connection was taken already",
            )),
            fd => Ok(fd),
        }
    }
}

impl Drop for AcceptedFd {
    fn drop(&mut self) {
        let fd = *self.fd.get_mut();
        if fd >= 0 {
            net::close(fd);
        }
    }
}

/// asyncio's own `_accept_connection` for one batch.
fn asyncio_accept_connection(py: Python<'_>, serving: &Serving, backlog: usize) -> PyResult<()> {
    let method = ASYNCIO_ACCEPT_CONNECTION.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("asyncio.selector_events")?
                .getattr("BaseSelectorEventLoop")?
                .getattr("_accept_connection")?
                .unbind(),
        )
    })?;
    let mut args = vec![
        serving.event_loop.bind(py).clone().into_any(),
        serving.protocol_factory.bind(py).clone(),
        serving.sock.bind(py).clone(),
        match &serving.sslcontext {
            Some(context) => context.bind(py).clone(),
            None => py.None().into_bound(py),
        },
        serving.server.bind(py).clone(),
        backlog.into_pyobject(py)?.into_any(),
    ];
    args.extend(serving.rest.bind(py).iter());
    method.bind(py).call1(PyTuple::new(py, args)?)?;
    Ok(())
}

/// asyncio's `Server` class and its own `_attach`/`_detach` functions, looked up once.
struct ServerClass {
    class: Py<PyType>,
    attach: Py<PyAny>,
    detach: Py<PyAny>,
    /// 3.13+: the server keeps its transports in `_clients` (`_attach(transport)`); before,
    /// it counts them in `_active_count` (`_attach()`).
    clients: bool,
}

static SERVER_CLASS: PyOnceLock<ServerClass> = PyOnceLock::new();

fn server_class(py: Python<'_>) -> PyResult<&ServerClass> {
    SERVER_CLASS.get_or_try_init(py, || {
        let class = py
            .import("asyncio.base_events")?
            .getattr("Server")?
            .cast_into::<PyType>()?;
        let attach = class.getattr("_attach")?;
        let clients = attach
            .getattr("__code__")?
            .getattr("co_argcount")?
            .extract::<usize>()?
            == 2;
        Ok::<_, PyErr>(ServerClass {
            detach: class.getattr("_detach")?.unbind(),
            attach: attach.unbind(),
            class: class.unbind(),
            clients,
        })
    })
}

/// The server's class is asyncio's `Server` with `method` its own (not a subclass's or a
/// patched one): its code is what the native version does. Then its `__dict__`, where that
/// code finds `_sockets`, `_active_count` and `_clients` (made once per server on 3.11+, where
/// a plain object keeps its attributes inline until something asks for the dict).
fn plain_server<'py>(
    server: &Bound<'py, PyAny>,
    method: &str,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let py = server.py();
    let class = server_class(py)?;
    if !server.get_type().is(class.class.bind(py)) {
        return Ok(None);
    }
    let (name, original) = match method {
        "_attach" => (intern!(py, "_attach"), &class.attach),
        _ => (intern!(py, "_detach"), &class.detach),
    };
    if !type_lookup(class.class.bind(py), name).is_some_and(|found| found.is(original.bind(py))) {
        return Ok(None);
    }
    Ok(instance_dict(server))
}

/// `server._attach(transport)` (3.13+) or `server._attach()`: natively for asyncio's own
/// `Server` (`_active_count += 1`, or `_clients.add(transport)`); its `assert` and any other
/// class are the Python method.
pub(crate) fn attach_transport(
    server: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = server.py();
    let clients = server_class(py)?.clients;
    if let Some(attributes) = plain_server(server, "_attach")? {
        let serving = attributes
            .get_item(intern!(py, "_sockets"))?
            .is_some_and(|sockets| !sockets.is_none());
        let done = match (serving, clients) {
            (false, _) => false,
            (true, true) => match attributes.get_item(intern!(py, "_clients"))? {
                Some(set) => {
                    set.call_method1(intern!(py, "add"), (transport,))?;
                    true
                }
                None => false,
            },
            (true, false) => match attributes.get_item(intern!(py, "_active_count"))? {
                Some(count) => {
                    attributes.set_item(intern!(py, "_active_count"), count.add(1)?)?;
                    true
                }
                None => false,
            },
        };
        if done {
            return Ok(());
        }
    }
    if clients {
        server.call_method1(intern!(py, "_attach"), (transport,))?;
    } else {
        server.call_method0(intern!(py, "_attach"))?;
    }
    Ok(())
}

/// `server._detach(transport)` (3.13+) or `server._detach()`, natively for asyncio's own
/// `Server` as [`attach_transport`]; `_wakeup()` is the Python method.
pub(crate) fn detach_transport(
    server: &Bound<'_, PyAny>,
    transport: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = server.py();
    let clients = server_class(py)?.clients;
    if let Some(attributes) = plain_server(server, "_detach")? {
        let remaining = if clients {
            match attributes.get_item(intern!(py, "_clients"))? {
                Some(set) => {
                    set.call_method1(intern!(py, "discard"), (transport,))?;
                    Some(set.len()?)
                }
                None => None,
            }
        } else {
            match attributes.get_item(intern!(py, "_active_count"))? {
                Some(count) => match count.extract::<isize>()? {
                    count if count > 0 => {
                        attributes.set_item(intern!(py, "_active_count"), count - 1)?;
                        Some((count - 1) as usize)
                    }
                    // asyncio's `assert self._active_count > 0`.
                    _ => None,
                },
                None => None,
            }
        };
        if let Some(remaining) = remaining {
            let closed = attributes
                .get_item(intern!(py, "_sockets"))?
                .is_none_or(|sockets| sockets.is_none());
            if remaining == 0 && closed {
                server.call_method0(intern!(py, "_wakeup"))?;
            }
            return Ok(());
        }
    }
    if clients {
        server.call_method1(intern!(py, "_detach"), (transport,))?;
    } else {
        server.call_method0(intern!(py, "_detach"))?;
    }
    Ok(())
}
