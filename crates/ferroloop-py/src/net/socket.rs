//! `socket.socket` objects seen from native code: the exact-type check, the fd read from the
//! object, and the non-blocking system calls of `ferroloop_core::sys::net` with Python's
//! error conventions (an `OSError` subclass, `EINTR` retried after the signal handlers, "would
//! block" as `None`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use ferroloop_core::sys::net;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple, PyType};

use super::buffer::Buffer;
use crate::errors::os_error_now;
use crate::ffi::{
    check_signals, fs_decode, member_offset, type_lookup, untrack, Slots, OBJECT_HEADER_SIZE,
};

static SOCKET_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// `_socket.socket`'s own getters and methods: `socket.socket` wraps `family` and `type` in
/// Python properties that convert to enums (thousands of instructions each), and `close` in
/// a Python method.
struct CSocket {
    family: Py<PyAny>,
    kind: Py<PyAny>,
    proto: Py<PyAny>,
    close: Py<PyAny>,
    /// `_socket.socket.__new__` and `__init__`, and `socket.socket.__init__` (Python).
    new: Py<PyAny>,
    init: Py<PyAny>,
    python_init: Py<PyAny>,
    /// The offsets of `socket.socket`'s `_io_refs` and `_closed` slots, which its Python
    /// `__init__` sets (when they are the plain slots they are on 3.10-3.13).
    state_slots: Option<(isize, isize)>,
}

static C_SOCKET: PyOnceLock<CSocket> = PyOnceLock::new();

fn c_socket(py: Python<'_>) -> PyResult<&CSocket> {
    C_SOCKET.get_or_try_init(py, || {
        let attributes = py
            .import("_socket")?
            .getattr("socket")?
            .getattr("__dict__")?;
        let getter = |name: &str| -> PyResult<Py<PyAny>> {
            Ok(attributes.get_item(name)?.getattr("__get__")?.unbind())
        };
        let socket_class = SOCKET_TYPE.import(py, "socket", "socket")?;
        let slot = |name: &str| -> PyResult<Option<isize>> {
            Ok(socket_class
                .getattr("__dict__")?
                .get_item(name)
                .ok()
                .and_then(|descriptor| member_offset(&descriptor)))
        };
        let state_slots = slot("_io_refs")?.zip(slot("_closed")?);
        Ok::<_, PyErr>(CSocket {
            state_slots,
            family: getter("family")?,
            kind: getter("type")?,
            proto: getter("proto")?,
            close: attributes.get_item("close")?.unbind(),
            new: attributes.get_item("__new__")?.unbind(),
            init: attributes.get_item("__init__")?.unbind(),
            python_init: SOCKET_TYPE
                .import(py, "socket", "socket")?
                .getattr("__init__")?
                .unbind(),
        })
    })
}

/// `(family, type, proto)` of a socket object, as plain ints.
pub(crate) fn socket_kind(sock: &Bound<'_, PyAny>) -> PyResult<(i32, i32, i32)> {
    let py = sock.py();
    let c = c_socket(py)?;
    Ok((
        c.family.bind(py).call1((sock,))?.extract()?,
        c.kind.bind(py).call1((sock,))?.extract()?,
        c.proto.bind(py).call1((sock,))?.extract()?,
    ))
}

/// `sock.close()` of an exact `socket.socket`: what `socket.socket.close` does (mark it
/// closed; close the fd unless `makefile()` objects still use it), without its two Python
/// frames.
pub(crate) fn close_socket(sock: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = sock.py();
    sock.setattr(intern!(py, "_closed"), true)?;
    let io_refs: isize = sock.getattr(intern!(py, "_io_refs"))?.extract()?;
    if io_refs <= 0 {
        c_socket(py)?.close.bind(py).call1((sock,))?;
    }
    Ok(())
}

/// `type(sock) is socket.socket`.
pub(crate) fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    let socket_type = SOCKET_TYPE.import(sock.py(), "socket", "socket")?;
    Ok(sock.get_type().is(socket_type))
}

/// Whether `PySocketSockObject` starts with its `int sock_fd` right after the object header,
/// as in every CPython 3: unknown until checked once against `fileno()` on an open socket.
static FD_LAYOUT: AtomicU8 = AtomicU8::new(LAYOUT_UNKNOWN);
const LAYOUT_UNKNOWN: u8 = 0;
const LAYOUT_CHECKED: u8 = 1;
const LAYOUT_DIFFERENT: u8 = 2;

/// The fd field of a `socket.socket` object.
///
/// # Safety
/// `sock` must be an instance of `socket.socket` itself (whose C layout starts with
/// `_socket.socket`'s), and [`FD_LAYOUT`] must have been checked.
unsafe fn fd_field(sock: &Bound<'_, PyAny>) -> RawFd {
    // SAFETY: per the contract, the object is at least a PySocketSockObject, whose first
    // field after the header is the fd (an int).
    unsafe {
        (sock.as_ptr() as *const u8)
            .add(OBJECT_HEADER_SIZE)
            .cast::<RawFd>()
            .read()
    }
}

/// `sock.fileno()` of a `socket.socket` (exactly that type): read from the object once its
/// layout was checked, which saves a method call per use.
pub(crate) fn fileno(sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    match FD_LAYOUT.load(Ordering::Relaxed) {
        // SAFETY: callers pass only exact socket.socket objects; the layout was checked.
        LAYOUT_CHECKED => Ok(unsafe { fd_field(sock) }),
        LAYOUT_DIFFERENT => sock.call_method0(intern!(sock.py(), "fileno"))?.extract(),
        _ => {
            let fd: RawFd = sock.call_method0(intern!(sock.py(), "fileno"))?.extract()?;
            if fd >= 0 {
                // SAFETY: an exact socket.socket object: at least the object header and an
                // int follow, whatever the layout; reading them is valid.
                let same = unsafe { fd_field(sock) } == fd;
                let layout = if same {
                    LAYOUT_CHECKED
                } else {
                    LAYOUT_DIFFERENT
                };
                FD_LAYOUT.store(layout, Ordering::Relaxed);
            }
            Ok(fd)
        }
    }
}

/// Retry an interrupted call after running the signal handlers (PEP 475, as `socket` does).
pub(crate) fn retry_interrupted<T>(
    py: Python<'_>,
    mut call: impl FnMut() -> std::io::Result<T>,
) -> PyResult<Option<T>> {
    loop {
        match call() {
            Ok(value) => return Ok(Some(value)),
            Err(error) if net::would_block(&error) => return Ok(None),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => check_signals(py)?,
            Err(error) => return Err(os_error_now(py, error)),
        }
    }
}

/// `sock.recv_into(buf)` on a socket's fd; `None` if it would block.
pub(crate) fn recv_into(py: Python<'_>, fd: RawFd, buffer: &Buffer) -> PyResult<Option<usize>> {
    let (data, len) = (buffer.as_mut_ptr(), buffer.len());
    // SAFETY: a writable exported buffer is `len` writable bytes at `buf` while it is held.
    retry_interrupted(py, || unsafe { net::recv(fd, data, len) })
}

/// `sock.send(data)` on a socket's fd; `None` if it would block.
pub(crate) fn send(py: Python<'_>, fd: RawFd, data: &[u8]) -> PyResult<Option<usize>> {
    retry_interrupted(py, || net::send(fd, data))
}

/// The host string of an address: the previous one's when the host is the same (a server's
/// clients often share one). Strings are immutable, and each idle connection's peer name then
/// costs a tuple and a port, not another string.
fn host_text<'py, const N: usize>(
    py: Python<'py>,
    last: &Mutex<Option<([u8; N], Py<PyString>)>>,
    host: [u8; N],
    spell: impl FnOnce([u8; N]) -> String,
) -> Bound<'py, PyString> {
    let mut last = last.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((cached, text)) = last.as_ref() {
        if *cached == host {
            return text.bind(py).clone();
        }
    }
    let text = PyString::new(py, &spell(host));
    let previous = last.replace((host, text.clone().unbind()));
    drop(last);
    drop(previous);
    text
}

/// `("a.b.c.d", port)`, an `AF_INET` address as `socket`'s `makesockaddr` gives it.
pub(crate) fn ipv4_address(
    py: Python<'_>,
    (host, port): ([u8; 4], u16),
) -> PyResult<Bound<'_, PyAny>> {
    static LAST_HOST: Mutex<Option<([u8; 4], Py<PyString>)>> = Mutex::new(None);
    let text = host_text(py, &LAST_HOST, host, |host| {
        std::net::Ipv4Addr::from(host).to_string()
    });
    Ok((text, port).into_pyobject(py)?.into_any())
}

/// `(host, port, flowinfo, scope_id)`, an `AF_INET6` address as `socket`'s `makesockaddr`
/// gives it (the host as `inet_ntop` writes it).
pub(crate) fn ipv6_address(
    py: Python<'_>,
    (host, port, flowinfo, scope_id): ([u8; 16], u16, u32, u32),
) -> PyResult<Bound<'_, PyAny>> {
    static LAST_HOST: Mutex<Option<([u8; 16], Py<PyString>)>> = Mutex::new(None);
    let text = host_text(py, &LAST_HOST, host, net::ipv6_text);
    Ok((text, port, flowinfo, scope_id)
        .into_pyobject(py)?
        .into_any())
}

/// What `socket`'s `makesockaddr` gives for a Unix socket address's path as the kernel wrote
/// it ([`net::SockAddr::unix`]): `bytes` of the whole address for Linux's abstract namespace,
/// else the name up to its first NUL decoded as `os.fsdecode` does (`''` for an unnamed
/// socket).
pub(crate) fn unix_address<'py>(py: Python<'py>, path: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    if path.first() == Some(&0) {
        return Ok(pyo3::types::PyBytes::new(py, path).into_any());
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    fs_decode(py, &path[..end])
}

/// A Unix socket address's path (at most `sun_path`'s length), as the kernel gives it or as
/// a destination: bytes, the first NUL for Linux's abstract namespace.
#[derive(Clone, Copy, PartialEq)]
pub(crate) struct UnixPath {
    len: u8,
    bytes: [u8; net::UNIX_PATH_MAX],
}

impl UnixPath {
    /// A destination `path`: not empty and shorter than `sun_path` (room for the terminating
    /// NUL, which `socket` requires of every name).
    pub(crate) fn new(path: &[u8]) -> Option<Self> {
        if path.is_empty() || path.len() >= net::UNIX_PATH_MAX {
            return None;
        }
        Some(Self::received(path))
    }

    /// A sender's path as the kernel wrote it (at most `sun_path`'s length, which
    /// [`net::SockAddr::unix`] guarantees).
    pub(crate) fn received(path: &[u8]) -> Self {
        let mut bytes = [0; net::UNIX_PATH_MAX];
        let len = path.len().min(net::UNIX_PATH_MAX);
        bytes[..len].copy_from_slice(&path[..len]);
        UnixPath {
            len: len as u8,
            bytes,
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    /// What `socket`'s `makesockaddr` gives: `bytes` of the whole address for Linux's
    /// abstract namespace, else the name up to its first NUL decoded as `os.fsdecode` does
    /// (`''` for an unnamed socket).
    pub(crate) fn object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        unix_address(py, self.as_slice())
    }
}

/// An accepted connection's peer as `accept` gave it: an IPv4 address is made into asyncio's
/// `(host, port)` only when read; an IPv6 or Unix peer's address was made at accept.
pub(crate) enum PeerAddress {
    Ipv4([u8; 4], u16),
    Made(Py<PyAny>),
}

impl PeerAddress {
    /// asyncio's `extra["peername"]`.
    pub(crate) fn object<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            PeerAddress::Ipv4(host, port) => ipv4_address(py, (*host, *port)),
            PeerAddress::Made(object) => Ok(object.bind(py).clone()),
        }
    }
}

/// Whether `socket.socket.__init__` is not `socket`'s own (a library watching sockets being
/// made patched it): socket objects are then made by calling the class, so that it runs.
pub(crate) fn init_patched(py: Python<'_>) -> PyResult<bool> {
    let c = c_socket(py)?;
    let cls = SOCKET_TYPE.import(py, "socket", "socket")?;
    Ok(!type_lookup(cls, intern!(py, "__init__"))
        .is_some_and(|init| init.is(c.python_init.bind(py))))
}

/// `socket.socket(family, kind, proto, fd)` for an fd this process owns, as `socket.accept()`
/// makes its connection's object, without the Python frame of `socket.socket.__init__`: the
/// object from `_socket.socket`'s `__new__` and `__init__`, then the two slots the Python
/// `__init__` sets (the same on 3.10-3.13). A patched `socket.socket.__init__` is called as
/// it is.
fn socket_object_of<'py>(
    py: Python<'py>,
    (family, kind, proto): (&Bound<'py, PyAny>, &Bound<'py, PyAny>, &Bound<'py, PyAny>),
    fd: RawFd,
) -> PyResult<Bound<'py, PyAny>> {
    let c = c_socket(py)?;
    let cls = SOCKET_TYPE.import(py, "socket", "socket")?;
    if init_patched(py)? {
        return cls.call1((family, kind, proto, fd));
    }
    let sock = c.new.bind(py).call1((cls,))?;
    c.init.bind(py).call1((&sock, family, kind, proto, fd))?;
    let zero = 0i32.into_pyobject(py)?.into_any();
    let not_closed = pyo3::types::PyBool::new(py, false).to_owned().into_any();
    match c.state_slots {
        // SAFETY: `sock` was made by `_socket.socket.__new__(socket.socket)`: an instance of
        // exactly the class whose slots these are.
        Some((io_refs, closed)) => unsafe {
            Slots::write_at(&sock, io_refs, &zero);
            Slots::write_at(&sock, closed, &not_closed);
        },
        None => {
            sock.setattr(intern!(py, "_io_refs"), zero)?;
            sock.setattr(intern!(py, "_closed"), not_closed)?;
        }
    }
    // `socket.socket` has `__slots__` and no `__dict__`: an int and a bool are all it holds,
    // so it can never be part of a reference cycle. Tracked, each open connection's socket
    // would be one more object for every collection of the cyclic GC to traverse (a server
    // with hundreds of connections coming and going triggered collections that cost ~15 %
    // of its instructions).
    untrack(&sock);
    Ok(sock)
}

/// A socket's `(family, type, proto)` as the Python ints `socket.socket()` takes, made once
/// for all the connections of a listening socket.
///
/// The tuple is also what the pending `extra` of a transport whose socket object is not made
/// yet holds (see `extra.rs`), shared by the server's connections.
pub(crate) struct SocketKind {
    tuple: Py<PyTuple>,
}

impl SocketKind {
    pub(crate) fn new(py: Python<'_>, (family, kind, proto): (i32, i32, i32)) -> PyResult<Self> {
        let int = |value: i32| -> PyResult<Py<PyAny>> {
            Ok(value.into_pyobject(py)?.into_any().unbind())
        };
        let (family, kind, proto) = (int(family)?, int(kind)?, int(proto)?);
        let tuple = PyTuple::new(py, [&family, &kind, &proto])?.unbind();
        Ok(SocketKind { tuple })
    }

    pub(crate) fn tuple<'py>(&self, py: Python<'py>) -> &Bound<'py, PyTuple> {
        self.tuple.bind(py)
    }

    pub(crate) fn traverse(
        &self,
        visit: &pyo3::gc::PyVisit<'_>,
    ) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.tuple)
    }
}

/// The `socket.socket` of an accepted connection's fd, as `socket.accept()` makes it: `kind`
/// is the connection's `(family, type, proto)` (a [`SocketKind::tuple`]), non-blocking as
/// asyncio sets it.
pub(crate) fn accepted_socket<'py>(
    py: Python<'py>,
    kind: &SocketKind,
    fd: RawFd,
) -> PyResult<Bound<'py, PyAny>> {
    accepted_socket_of(py, kind.tuple(py), fd)
}

/// The socket object of an accepted connection whose kind is a [`SocketKind::tuple`] (what a
/// transport's pending `extra` holds until its socket object is made, `extra.rs`).
pub(crate) fn accepted_socket_of<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyTuple>,
    fd: RawFd,
) -> PyResult<Bound<'py, PyAny>> {
    if kind.len() != 3 {
        return Err(pyo3::exceptions::PyValueError::new_err(
            "expected (family, type, proto)",
        ));
    }
    let (family, kind_, proto) = (kind.get_item(0)?, kind.get_item(1)?, kind.get_item(2)?);
    let conn = socket_object_of(py, (&family, &kind_, &proto), fd)?;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    conn.call_method1(intern!(py, "setblocking"), (false,))?;
    Ok(conn)
}

/// A closed socket object of `kind`: what `extra["socket"]` wraps for a connection closed
/// before its socket object was made (asyncio's shows `fd=-1` then).
pub(crate) fn closed_socket<'py>(
    py: Python<'py>,
    kind: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    let cls = SOCKET_TYPE.import(py, "socket", "socket")?;
    let sock = cls.call1(kind)?;
    sock.call_method0(intern!(py, "close"))?;
    Ok(sock)
}
