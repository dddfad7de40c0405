//! `socket.socket` objects seen from native code: the exact-type check, the fd read from the
//! object, and the non-blocking system calls of `ferroloop_core::sys::net` with Python's
//! error conventions (an `OSError` subclass, `EINTR` retried after the signal handlers, "would
//! block" as `None`).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU8, Ordering};

use ferroloop_core::sys::net;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use super::buffer::Buffer;
use crate::errors::os_error;
use crate::ffi::check_signals;

static SOCKET_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

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
            .add(std::mem::size_of::<ffi::PyObject>())
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
            Err(error) => return Err(os_error(error)),
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
