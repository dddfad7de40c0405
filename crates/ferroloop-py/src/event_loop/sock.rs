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

use std::cell::RefCell;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};

use ferroloop_core::reactor::Interest;
use ferroloop_core::sys::net;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple, PyType, PyWeakrefMethods, PyWeakrefReference};
use pyo3::PyTraverseError;

use super::Loop;
use crate::errors::os_error;
use crate::ffi::{call_with_keywords, check_signals, KeywordNames};
use crate::handles::Handle;

static SOCKET_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static KW_CONTEXT: KeywordNames = KeywordNames::new(&["context"]);

/// Received data up to this size goes through a per-thread buffer, so a `sock_recv(sock,
/// 65536)` that gets 1 KiB allocates 1 KiB, not 64. It is the size asyncio's socket
/// transports ask for (`max_size`).
pub(super) const SCRATCH_SIZE: usize = 256 * 1024;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; SCRATCH_SIZE]);
}

/// `type(sock) is socket.socket`.
pub(super) fn is_plain_socket(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
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
pub(super) fn fileno(sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
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

/// A buffer exported by a Python object, released on drop.
pub(super) struct Buffer {
    view: ffi::Py_buffer,
}

impl Buffer {
    /// `PyObject_GetBuffer(obj, flags)`.
    pub(super) fn get(obj: &Bound<'_, PyAny>, flags: std::os::raw::c_int) -> PyResult<Buffer> {
        // SAFETY: the GIL is held; `view` is written by PyObject_GetBuffer on success and
        // released once in `drop`; on failure an exception is set, which we fetch.
        unsafe {
            let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
            if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) < 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            Ok(Buffer {
                view: view.assume_init(),
            })
        }
    }

    pub(super) fn len(&self) -> usize {
        self.view.len as usize
    }

    pub(super) fn as_slice(&self) -> &[u8] {
        if self.view.len == 0 {
            return &[];
        }
        // SAFETY: an exported buffer is `len` readable bytes at `buf` while it is held.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `view` was filled by a successful PyObject_GetBuffer and is released once.
        // Buffers are only held with the GIL (they live inside functions taking `py`).
        unsafe { ffi::PyBuffer_Release(&mut self.view) }
    }
}

/// `data` as one contiguous run of bytes, if it is a `bytes`, `bytearray` or `memoryview`
/// (exactly those types) whose `len()` is its byte count, as asyncio's send arithmetic
/// (`n == len(data)`, `data[n:]`) assumes. `None` for anything else: asyncio's code then
/// raises its error, or counts the way it does (a memoryview of items wider than a byte).
pub(super) fn byte_buffer(data: &Bound<'_, PyAny>) -> Option<Buffer> {
    let raw = data.as_ptr();
    // SAFETY: type checks of a live object.
    let byte_type = unsafe {
        ffi::PyBytes_CheckExact(raw) != 0
            || ffi::PyByteArray_CheckExact(raw) != 0
            || ptr::eq(ffi::Py_TYPE(raw), ptr::addr_of_mut!(ffi::PyMemoryView_Type))
    };
    if !byte_type {
        return None;
    }
    let buffer = Buffer::get(data, ffi::PyBUF_SIMPLE).ok()?;
    (data.len().ok() == Some(buffer.len())).then_some(buffer)
}

/// Retry an interrupted call after running the signal handlers (PEP 475, as `socket` does).
fn retry_interrupted<T>(
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

/// `recvfrom(fd)` of up to `n <= SCRATCH_SIZE` bytes: the data and the sender; `None` if it
/// would block.
pub(super) fn recvfrom_bytes<'py>(
    py: Python<'py>,
    fd: RawFd,
    n: usize,
) -> PyResult<Option<(Bound<'py, PyAny>, net::SockAddr)>> {
    let n = n.min(SCRATCH_SIZE);
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        // SAFETY: the scratch buffer is SCRATCH_SIZE >= n writable bytes.
        let Some((len, sender)) =
            retry_interrupted(py, || unsafe { net::recvfrom(fd, scratch.as_mut_ptr(), n) })?
        else {
            return Ok(None);
        };
        // SAFETY: the GIL is held; the scratch buffer holds `len` received bytes.
        let data = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyBytes_FromStringAndSize(scratch.as_ptr().cast(), len as ffi::Py_ssize_t),
            )?
        };
        Ok(Some((data, sender)))
    })
}

/// `sock.recv(n)` on a socket's fd; `None` if it would block.
pub(super) fn recv_bytes<'py>(
    py: Python<'py>,
    fd: RawFd,
    n: usize,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let bytes_from = |data: *const u8, len: usize| {
        // SAFETY: the GIL is held; `data` is readable for `len` bytes (written by recv).
        unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyBytes_FromStringAndSize(data.cast(), len as ffi::Py_ssize_t),
            )
        }
    };
    if n <= SCRATCH_SIZE {
        let received = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            // SAFETY: the scratch buffer is SCRATCH_SIZE >= n writable bytes.
            retry_interrupted(py, || unsafe { net::recv(fd, scratch.as_mut_ptr(), n) })?
                .map(|len| bytes_from(scratch.as_ptr(), len))
                .transpose()
        })?;
        return Ok(received);
    }
    let mut data: Vec<u8> = Vec::new();
    data.try_reserve_exact(n)
        .map_err(|_| pyo3::exceptions::PyMemoryError::new_err(()))?;
    // SAFETY: `data` has capacity for n bytes; recv writes at most n.
    retry_interrupted(py, || unsafe { net::recv(fd, data.as_mut_ptr(), n) })?
        .map(|len| bytes_from(data.as_ptr(), len))
        .transpose()
}

/// `sock.recv_into(buf)` on a socket's fd; `None` if it would block.
fn recv_into(py: Python<'_>, fd: RawFd, buffer: &Buffer) -> PyResult<Option<usize>> {
    let (data, len) = (buffer.view.buf as *mut u8, buffer.len());
    // SAFETY: a writable exported buffer is `len` writable bytes at `buf` while it is held.
    retry_interrupted(py, || unsafe { net::recv(fd, data, len) })
}

/// `sock.send(data)` on a socket's fd; `None` if it would block.
pub(super) fn send(py: Python<'_>, fd: RawFd, data: &[u8]) -> PyResult<Option<usize>> {
    retry_interrupted(py, || net::send(fd, data))
}

/// asyncio's `_ensure_fd_no_transport(fd)`, called only when the fd is a key of
/// `loop._transports` (a `WeakValueDictionary`, whose entries are in `.data`): the method
/// costs a `KeyError` raised and caught for every fd without a transport.
fn ensure_fd_no_transport(slf: &Bound<'_, Loop>, fd: RawFd) -> PyResult<()> {
    let py = slf.py();
    let transports = slf.getattr(intern!(py, "_transports"))?;
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
                let buffer = Buffer::get(buf.bind(py), ffi::PyBUF_WRITABLE)?;
                match recv_into(py, fd, &buffer)? {
                    Some(n) => Outcome::Result(n.into_pyobject(py)?.into_any()),
                    None => Outcome::Again,
                }
            }
            Some(Operation::SendAll { view, sent }) => {
                let buffer = Buffer::get(view.bind(py), ffi::PyBUF_SIMPLE)?;
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
            let this = event_loop.get();
            this.state
                .borrow_mut(py)
                .parked_owners
                .insert(fd, owner.into_any().unbind());
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
    let same_file = {
        let state = slf.get().state.borrow(py);
        match state.parked_owners.get(&fd) {
            Some(owner) => owner
                .bind(py)
                .cast::<PyWeakrefReference>()
                .ok()
                .and_then(|owner| owner.upgrade())
                .is_some_and(|owner| owner.is(sock)),
            None => false,
        }
    };
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
pub(super) fn recv_start<'py>(
    slf: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let plain = !slf.get().is_debug()
        && is_plain_socket(sock)?
        // SAFETY: type check of a live object.
        && unsafe { ffi::PyLong_CheckExact(n.as_ptr()) } != 0;
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
pub(super) fn recv_into_start<'py>(
    slf: &Bound<'py, Loop>,
    sock: &Bound<'py, PyAny>,
    buf: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    if slf.get().is_debug() || !is_plain_socket(sock)? {
        return Ok(use_asyncio(py));
    }
    // Not a writable buffer: asyncio's code raises `recv_into`'s TypeError.
    let Ok(buffer) = Buffer::get(buf, ffi::PyBUF_WRITABLE) else {
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
pub(super) fn sendall_start<'py>(
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
    // SAFETY: the GIL is held; PyMemoryView_FromObject returns a new reference or NULL with
    // an exception set.
    let view =
        unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyMemoryView_FromObject(data.as_ptr()))? };
    let operation = Operation::SendAll {
        view: view.unbind(),
        sent,
    };
    wait(slf, sock, fd, operation, Interest::WRITE)
}
