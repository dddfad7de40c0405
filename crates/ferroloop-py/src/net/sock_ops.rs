//! The data path of `sock_recv`, `sock_recv_into` and `sock_sendall`, natively.
//!
//! asyncio's versions (`BaseSelectorEventLoop`) try the call at once and, when it would block,
//! create a future, add a reader (or writer) whose callback retries, and add a done callback
//! to the future that removes the reader. ferroloop does the same steps in the same order,
//! with three differences in cost, none in behaviour:
//! - the system call is made here: "would block" is an `EAGAIN`, not a `BlockingIOError`
//!   raised and caught (CPython formats its message through the locale, some 4,000
//!   instructions each time);
//! - the reader callback and the done callback are one native object, [`SockWait`], instead
//!   of a bound method and a `functools.partial`;
//! - both run in one private context of the loop instead of a copy of the current one: they
//!   read no context variable, and what they wake up runs in its own context.
//!
//! The Python coroutines (`ferroloop._loop.Loop.sock_recv` & co.) call the `_sock_*_native`
//! methods, which give back the result, a future to await, or `NotImplemented` when the call
//! is not a plain one: a socket of another type than `socket.socket` (an `ssl.SSLSocket`, a
//! subclass, a mock), an argument of an unusual type, or debug mode (which checks that the
//! socket is non-blocking). Those take asyncio's own code, with its errors.
//!
//! The calls pass `MSG_DONTWAIT` (see `ferroloop_core::sys::net`): a socket left in blocking
//! mode by mistake makes the coroutine wait instead of blocking the whole loop.

use std::os::fd::RawFd;

use ferroloop_core::reactor::Interest;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyWeakrefReference};
use pyo3::PyTraverseError;

use super::buffer::{byte_buffer, recv_bytes, Buffer};
use super::socket::{fileno, is_plain_socket, recv_into, send};
use super::transport::instance_attr;
use crate::event_loop::Loop;
use crate::ffi::{
    call_with_keywords, is_exact_int, memoryview, KeywordNames, BUFFER_SIMPLE, BUFFER_WRITABLE,
};
use crate::handles::Handle;

static KW_CONTEXT: KeywordNames = KeywordNames::new(&["context"]);

/// asyncio's `_ensure_fd_no_transport(fd)`, called only when the fd is a key of
/// `loop._transports` (a `WeakValueDictionary`, whose entries are in `.data`): the method
/// costs a `KeyError` raised and caught for every fd without a transport.
pub(crate) fn ensure_fd_no_transport(slf: &Bound<'_, Loop>, fd: RawFd) -> PyResult<()> {
    let py = slf.py();
    let transports = instance_attr(slf.as_any(), intern!(py, "_transports"))?;
    if let Ok(data) = transports.getattr(intern!(py, "data")) {
        if let Ok(data) = data.cast_into::<PyDict>() {
            if !data.contains(fd)? {
                return Ok(());
            }
        }
    }
    slf.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    Ok(())
}

/// What a wait retries when its fd is ready.
enum Operation {
    Recv {
        n: usize,
    },
    RecvInto {
        buf: Py<PyAny>,
    },
    /// `view` is `memoryview(data)`; `sent` bytes of it are out.
    SendAll {
        view: Py<PyAny>,
        sent: usize,
    },
}

/// One `sock_*` call waiting for its fd: the reader (or writer) callback, called with no
/// argument, and the future's done callback, called with the future.
#[pyclass(module = "ferroloop._core", name = "_SockWait")]
pub struct SockWait {
    operation: Option<Operation>,
    future: Option<Py<PyAny>>,
    sock: Option<Py<PyAny>>,
    event_loop: Option<Py<Loop>>,
    handle: Option<Py<Handle>>,
    fd: RawFd,
    interest: Interest,
}

enum Outcome<'py> {
    Result(Bound<'py, PyAny>),
    Exception(PyErr),
    Again,
}

#[pymethods]
impl SockWait {
    #[pyo3(signature = (*args))]
    fn __call__(slf: &Bound<'_, Self>, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        if args.is_empty() {
            SockWait::ready(slf)
        } else {
            SockWait::done(slf)
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.future)?;
        visit.call(&self.sock)?;
        visit.call(&self.event_loop)?;
        visit.call(&self.handle)?;
        match &self.operation {
            Some(Operation::RecvInto { buf }) => visit.call(buf)?,
            Some(Operation::SendAll { view, .. }) => visit.call(view)?,
            _ => {}
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.operation = None;
        self.future = None;
        self.sock = None;
        self.event_loop = None;
        self.handle = None;
    }
}

impl SockWait {
    /// asyncio's `_sock_recv`, `_sock_recv_into`, `_sock_sendall`: retry the call unless the
    /// future is done already (cancelled in the meantime).
    fn ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (future, sock) = {
            let this = slf.borrow();
            match (&this.future, &this.sock) {
                (Some(future), Some(sock)) => (future.bind(py).clone(), sock.bind(py).clone()),
                _ => return Ok(()),
            }
        };
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let outcome = match SockWait::attempt(slf, &sock) {
            Ok(outcome) => outcome,
            Err(error)
                if error.is_instance_of::<PyKeyboardInterrupt>(py)
                    || error.is_instance_of::<PySystemExit>(py) =>
            {
                return Err(error)
            }
            Err(error) => Outcome::Exception(error),
        };
        match outcome {
            Outcome::Again => {}
            Outcome::Result(value) => {
                future.call_method1(intern!(py, "set_result"), (value,))?;
            }
            Outcome::Exception(error) => {
                future.call_method1(intern!(py, "set_exception"), (error.into_value(py),))?;
            }
        }
        Ok(())
    }

    fn attempt<'py>(slf: &Bound<'py, Self>, sock: &Bound<'py, PyAny>) -> PyResult<Outcome<'py>> {
        let py = slf.py();
        let fd = fileno(sock)?;
        let mut this = slf.borrow_mut();
        Ok(match &mut this.operation {
            None => Outcome::Again,
            Some(Operation::Recv { n }) => match recv_bytes(py, fd, *n)? {
                Some(data) => Outcome::Result(data),
                None => Outcome::Again,
            },
            Some(Operation::RecvInto { buf }) => {
                // Fails if the buffer was released meanwhile (a memoryview), as `recv_into`.
                let buffer = Buffer::get(buf.bind(py), BUFFER_WRITABLE)?;
                match recv_into(py, fd, &buffer)? {
                    Some(n) => Outcome::Result(n.into_pyobject(py)?.into_any()),
                    None => Outcome::Again,
                }
            }
            Some(Operation::SendAll { view, sent }) => {
                let buffer = Buffer::get(view.bind(py), BUFFER_SIMPLE)?;
                let data = buffer.as_slice();
                match send(py, fd, &data[*sent..])? {
                    Some(n) => {
                        *sent += n;
                        if *sent == data.len() {
                            Outcome::Result(py.None().into_bound(py))
                        } else {
                            Outcome::Again
                        }
                    }
                    None => Outcome::Again,
                }
            }
        })
    }

    /// asyncio's `_sock_read_done`/`_sock_write_done`: remove the reader (writer) unless its
    /// handle was cancelled, which means something else replaced or removed it.
    ///
    /// While the socket is still open on the same fd, a reader's removal is parked: the
    /// kernel keeps the registration, and the socket's next wait takes it back without a
    /// system call.
    fn done(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (event_loop, handle, sock, fd, interest) = {
            let this = slf.borrow();
            match (&this.event_loop, &this.handle, &this.sock) {
                (Some(event_loop), Some(handle), Some(sock)) => (
                    event_loop.bind(py).clone(),
                    handle.bind(py).clone(),
                    sock.bind(py).clone(),
                    this.fd,
                    this.interest,
                ),
                _ => return Ok(()),
            }
        };
        if handle.get().is_cancelled(py) {
            return Ok(());
        }
        // Readers only: a socket is writable nearly all the time, so a parked writer would
        // be reported by the next poll at once, for a wake-up and the system call anyway.
        let park = interest == Interest::READ && fileno(&sock)? == fd;
        if Loop::clear_io_handle_fd(&event_loop, fd, interest, park)? && park {
            let owner = PyWeakrefReference::new(&sock)?;
            event_loop
                .get()
                .set_parked_owner(py, fd, owner.into_any().unbind());
        }
        Ok(())
    }
}

/// Wait for `fd` to be ready for `operation`: asyncio's steps after a call that would block.
fn wait<'py>(
    slf: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    fd: RawFd,
    operation: Operation,
    interest: Interest,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let future = Loop::create_future(slf)?;
    ensure_fd_no_transport(slf, fd)?;
    let context = slf.get().private_context(py)?;
    // The same socket object, open on the same fd since its last wait was parked: the fd
    // names the same file, whose registration the kernel still has. (A socket object never
    // gets another fd: once closed or detached, its fileno() is -1 for good.)
    let same_file = slf.get().parked_owner_is(py, fd, sock);
    let waiter = Bound::new(
        py,
        SockWait {
            operation: Some(operation),
            future: Some(future.clone().unbind()),
            sock: Some(sock.clone().unbind()),
            event_loop: Some(slf.clone().unbind()),
            handle: None,
            fd,
            interest,
        },
    )?;
    let handle = Loop::set_io_handle_fd(
        slf,
        fd,
        waiter.clone().into_any(),
        None,
        Some(context.clone()),
        interest,
        same_file,
    )?;
    waiter.borrow_mut().handle = Some(handle);
    let add_done_callback = future.getattr(intern!(py, "add_done_callback"))?;
    call_with_keywords(
        py,
        &add_done_callback,
        &[waiter.as_any()],
        &KW_CONTEXT,
        &[&context],
    )?;
    Ok(future)
}

/// What the `_sock_*_native` methods return to have the coroutine run asyncio's own method.
fn use_asyncio(py: Python<'_>) -> Bound<'_, PyAny> {
    py.NotImplemented().into_bound(py)
}

/// `sock_recv(sock, n)`: the data, a future of it, or `NotImplemented`.
pub(crate) fn recv_start<'py>(
    slf: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let plain = !slf.get().is_debug() && is_plain_socket(sock)? && is_exact_int(n);
    // An int too large for a size: asyncio's code raises `socket`'s OverflowError.
    let Some(n) = plain.then(|| n.extract::<isize>().ok()).flatten() else {
        return Ok(use_asyncio(py));
    };
    let Ok(n) = usize::try_from(n) else {
        return Err(PyValueError::new_err("negative buffersize in recv"));
    };
    let fd = fileno(sock)?;
    if let Some(data) = recv_bytes(py, fd, n)? {
        return Ok(data);
    }
    wait(slf, sock, fd, Operation::Recv { n }, Interest::READ)
}

/// `sock_recv_into(sock, buf)`: the byte count, a future of it, or `NotImplemented`.
pub(crate) fn recv_into_start<'py>(
    slf: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    buf: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    if slf.get().is_debug() || !is_plain_socket(sock)? {
        return Ok(use_asyncio(py));
    }
    // Not a writable buffer: asyncio's code raises `recv_into`'s TypeError.
    let Ok(buffer) = Buffer::get(buf, BUFFER_WRITABLE) else {
        return Ok(use_asyncio(py));
    };
    let fd = fileno(sock)?;
    if let Some(n) = recv_into(py, fd, &buffer)? {
        return Ok(n.into_pyobject(py)?.into_any());
    }
    drop(buffer);
    let operation = Operation::RecvInto {
        buf: buf.clone().unbind(),
    };
    wait(slf, sock, fd, operation, Interest::READ)
}

/// `sock_sendall(sock, data)`: `None` when all of it went out at once, a future otherwise,
/// or `NotImplemented`.
pub(crate) fn sendall_start<'py>(
    slf: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    if slf.get().is_debug() || !is_plain_socket(sock)? {
        return Ok(use_asyncio(py));
    }
    let Some(buffer) = byte_buffer(data) else {
        return Ok(use_asyncio(py));
    };
    let fd = fileno(sock)?;
    let sent = send(py, fd, buffer.as_slice())?.unwrap_or(0);
    if sent == buffer.len() {
        return Ok(py.None().into_bound(py));
    }
    drop(buffer);
    let view = memoryview(data)?;
    let operation = Operation::SendAll {
        view: view.unbind(),
        sent,
    };
    wait(slf, sock, fd, operation, Interest::WRITE)
}
