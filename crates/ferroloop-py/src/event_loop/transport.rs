//! The read path of asyncio's socket transport, natively.
//!
//! ferroloop's socket transports are asyncio's own `_SelectorSocketTransport` (a subclass of
//! it, `ferroloop._loop._SelectorSocketTransport`, so every method, attribute and error is
//! asyncio's), with one change: the reader callback that asyncio's code registers as
//! `self._read_ready` is a [`TransportReader`]. When the transport reads for a plain
//! `Protocol` (`_read_ready_cb` is `_read_ready__data_received`) and its socket is a plain
//! `socket.socket`, the reader does what `_read_ready__data_received` does: the `recv` of up
//! to `max_size` bytes, `protocol.data_received(data)`, `_read_ready__on_eof()` at end of
//! file, `_fatal_error(exc, message)` with asyncio's messages on errors. For anything else (a
//! `BufferedProtocol`, an SSL transport's protocol, a patched method) it calls
//! `_read_ready_cb()`, asyncio's own code.
//!
//! What this saves per read: two Python frames, a `socket.recv` that allocates `max_size`
//! (256 KiB) and shrinks the result, and the attribute lookups between them.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use pyo3::PyTraverseError;

use crate::gil_cell::GilCell;

use super::sock::{
    byte_buffer, fileno, is_plain_socket, recv_bytes, recvfrom_bytes, send, SCRATCH_SIZE,
};

static DATA_RECEIVED_PATH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASYNCIO_WRITE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASYNCIO_DATAGRAM_READ_READY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `asyncio.selector_events.<class_name>.<name>`, looked up once.
fn asyncio_method<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    class_name: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("asyncio.selector_events")?
                .getattr(class_name)?
                .getattr(name)?
                .unbind(),
        )
    })
    .map(|f| f.bind(py))
}

extern "C" {
    /// `PyMethod_Type` and `PyMethod_Function` of CPython's C API (bound methods), which
    /// pyo3's ffi does not declare.
    static mut PyMethod_Type: ffi::PyTypeObject;
    fn PyMethod_Function(method: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// True if `callback` is asyncio's `_read_ready__data_received` bound to a transport.
fn is_data_received_path(callback: &Bound<'_, PyAny>) -> PyResult<bool> {
    let function = asyncio_method(
        callback.py(),
        &DATA_RECEIVED_PATH,
        "_SelectorSocketTransport",
        "_read_ready__data_received",
    )?;
    // SAFETY: the GIL is held; `callback` is alive. PyMethod_Function is called only on a
    // bound method (exact type checked first) and returns a borrowed reference.
    unsafe {
        let raw = callback.as_ptr();
        if ffi::Py_TYPE(raw) != std::ptr::addr_of_mut!(PyMethod_Type) {
            return Ok(false);
        }
        Ok(PyMethod_Function(raw) == function.as_ptr())
    }
}

/// asyncio's `transport._fatal_error(exc, message)`.
fn fatal_error(
    transport: &Bound<'_, PyAny>,
    error: PyErr,
    message: &Bound<'_, PyString>,
) -> PyResult<()> {
    let py = transport.py();
    transport.call_method1(intern!(py, "_fatal_error"), (error.into_value(py), message))?;
    Ok(())
}

fn is_exit(error: &PyErr, py: Python<'_>) -> bool {
    error.is_instance_of::<PyKeyboardInterrupt>(py) || error.is_instance_of::<PySystemExit>(py)
}

/// The reader callback of one socket transport (see the module docs).
#[pyclass(module = "ferroloop._core", name = "_TransportReader")]
pub struct TransportReader {
    transport: TransportRef,
}

/// A native callback's transport and the transport's `__dict__`, where its attributes are read
/// (a generic attribute lookup walks the transport's eight base classes first), falling back
/// to a plain lookup for what is not there (class attributes such as `max_size`). Both are
/// dropped by the cyclic GC's `__clear__`: the transport holds the callback.
struct TransportRef {
    transport: Option<Py<PyAny>>,
    attributes: Option<Py<PyDict>>,
}

impl TransportRef {
    fn new(transport: Py<PyAny>, attributes: Py<PyDict>) -> Self {
        TransportRef {
            transport: Some(transport),
            attributes: Some(attributes),
        }
    }

    /// The transport and its `__dict__`, unless cleared.
    fn bind<'py>(&self, py: Python<'py>) -> Option<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        match (&self.transport, &self.attributes) {
            (Some(transport), Some(attributes)) => {
                Some((transport.bind(py).clone(), attributes.bind(py).clone()))
            }
            _ => None,
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.attributes)
    }

    fn clear(&mut self) {
        self.transport = None;
        self.attributes = None;
    }
}

/// `transport.<name>` for a literal name, through [`attr`].
macro_rules! get {
    ($py:expr, $transport:expr, $attributes:expr, $name:literal) => {
        attr(&$transport, &$attributes, intern!($py, $name))
    };
}

/// `transport.<name>`, looked up in its `__dict__` first.
fn attr<'py>(
    transport: &Bound<'py, PyAny>,
    attributes: &Bound<'py, PyDict>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    match attributes.get_item(name)? {
        Some(value) => Ok(value),
        None => transport.getattr(name),
    }
}

#[pymethods]
impl TransportReader {
    #[new]
    fn new(transport: Py<PyAny>, attributes: Py<PyDict>) -> Self {
        TransportReader {
            transport: TransportRef::new(transport, attributes),
        }
    }

    /// The name asyncio's messages give the method this replaces.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorSocketTransport._read_ready"
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some((transport, attributes)) = self.transport.bind(py) else {
            return Ok(());
        };
        let callback = get!(py, transport, attributes, "_read_ready_cb")?;
        if !is_data_received_path(&callback)? {
            callback.call0()?;
            return Ok(());
        }
        // asyncio: _read_ready__data_received.
        if get!(py, transport, attributes, "_conn_lost")?.is_truthy()? {
            return Ok(());
        }
        let sock = get!(py, transport, attributes, "_sock")?;
        let max_size = get!(py, transport, attributes, "max_size")?;
        let size = match max_size.extract::<isize>().map(usize::try_from) {
            Ok(Ok(size)) if is_plain_socket(&sock)? => size,
            // Not the usual socket or size: asyncio's own code, with its errors.
            _ => {
                callback.call0()?;
                return Ok(());
            }
        };
        let received = fileno(&sock).and_then(|fd| recv_bytes(py, fd, size));
        let data = match received {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(()),
            Err(error) if is_exit(&error, py) => return Err(error),
            Err(error) => {
                fatal_error(
                    &transport,
                    error,
                    intern!(py, "Fatal read error on socket transport"),
                )?;
                return Ok(());
            }
        };
        // SAFETY: `data` is a bytes object (recv_bytes makes one).
        if unsafe { ffi::PyBytes_Size(data.as_ptr()) } == 0 {
            transport.call_method0(intern!(py, "_read_ready__on_eof"))?;
            return Ok(());
        }
        let protocol = get!(py, transport, attributes, "_protocol")?;
        match protocol.call_method1(intern!(py, "data_received"), (data,)) {
            Ok(_) => Ok(()),
            Err(error) if is_exit(&error, py) => Err(error),
            Err(error) => {
                fatal_error(
                    &transport,
                    error,
                    intern!(py, "Fatal error: protocol.data_received() call failed."),
                )?;
                Ok(())
            }
        }
    }

    /// `transport.write(data)` (the transport's instance attribute `write` is this bound
    /// method): asyncio's `_SelectorSocketTransport.write` for the common case, sending at
    /// once on a plain socket with nothing buffered; `_write_rest(data, n)` (Python) buffers
    /// what the socket did not take, and every other case is asyncio's own `write`.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some((transport, attributes)) = self.transport.bind(py) else {
            return Ok(());
        };
        let plain = !get!(py, transport, attributes, "_eof")?.is_truthy()?
            && get!(py, transport, attributes, "_empty_waiter")?.is_none()
            && !get!(py, transport, attributes, "_conn_lost")?.is_truthy()?
            && get!(py, transport, attributes, "_buffer")?.len()? == 0;
        let sock = get!(py, transport, attributes, "_sock")?;
        let buffer = match plain && is_plain_socket(&sock)? {
            true => byte_buffer(data),
            false => None,
        };
        // Empty data: asyncio's write returns early (after its checks).
        let Some(buffer) = buffer.filter(|b| b.len() > 0) else {
            asyncio_method(py, &ASYNCIO_WRITE, "_SelectorSocketTransport", "write")?
                .call1((transport, data))?;
            return Ok(());
        };
        let sent = fileno(&sock).and_then(|fd| send(py, fd, buffer.as_slice()));
        let sent = match sent {
            Ok(Some(n)) if n == buffer.len() => return Ok(()),
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(error) if is_exit(&error, py) => return Err(error),
            Err(error) => {
                fatal_error(
                    &transport,
                    error,
                    intern!(py, "Fatal write error on socket transport"),
                )?;
                return Ok(());
            }
        };
        drop(buffer);
        transport.call_method1(intern!(py, "_write_rest"), (data, sent))?;
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.transport.traverse(&visit)
    }

    fn __clear__(&mut self) {
        self.transport.clear();
    }
}

/// An IPv4 sender: address and port.
type Ipv4Sender = ([u8; 4], u16);

/// How many senders a [`DatagramReader`] remembers the address tuples of.
const RECENT_SENDERS: usize = 8;

/// The reader callback of one datagram transport: asyncio's
/// `_SelectorDatagramTransport._read_ready` for an IPv4 socket (`socket.socket`, `AF_INET`):
/// one `recvfrom` into a per-thread buffer (asyncio's `recvfrom(max_size)` allocates
/// `max_size`, 256 KiB, for every datagram), and the sender's `(host, port)` built as `socket`
/// builds it, or reused when one of the last few datagrams came from the same sender. Other
/// sockets, and a `max_size` larger than the buffer, take asyncio's own method.
#[pyclass(module = "ferroloop._core", name = "_DatagramReader")]
pub struct DatagramReader {
    transport: TransportRef,
    /// Whether the socket is a plain IPv4 one (checked on the first datagram).
    ipv4: GilCell<Option<bool>>,
    /// Recent senders and their address tuples (a server hears from a few peers in turn),
    /// the oldest replaced first.
    senders: GilCell<Vec<(Ipv4Sender, Py<PyAny>)>>,
}

impl DatagramReader {
    /// `("a.b.c.d", port)`, as `socket`'s `makesockaddr` builds it (`inet_ntop`).
    fn address<'py>(&self, py: Python<'py>, sender: Ipv4Sender) -> PyResult<Bound<'py, PyAny>> {
        if let Some((_, address)) = self.senders.borrow(py).iter().find(|(s, _)| *s == sender) {
            return Ok(address.bind(py).clone());
        }
        let host = std::net::Ipv4Addr::from(sender.0).to_string();
        let address = (host, sender.1).into_pyobject(py)?.into_any();
        let evicted = {
            let mut senders = self.senders.borrow_mut(py);
            let evicted = (senders.len() == RECENT_SENDERS).then(|| senders.remove(0));
            senders.push((sender, address.clone().unbind()));
            evicted
        };
        drop(evicted);
        Ok(address)
    }
}

#[pymethods]
impl DatagramReader {
    #[new]
    fn new(transport: Py<PyAny>, attributes: Py<PyDict>) -> Self {
        DatagramReader {
            transport: TransportRef::new(transport, attributes),
            ipv4: GilCell::new(None),
            senders: GilCell::new(Vec::new()),
        }
    }

    /// The name asyncio's messages give the method this replaces ("Exception in callback
    /// _SelectorDatagramTransport._read_ready()").
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorDatagramTransport._read_ready"
    }

    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some((transport, attributes)) = self.transport.bind(py) else {
            return Ok(());
        };
        if get!(py, transport, attributes, "_conn_lost")?.is_truthy()? {
            return Ok(());
        }
        let sock = get!(py, transport, attributes, "_sock")?;
        let known = *self.ipv4.borrow(py);
        let ipv4 = match known {
            Some(ipv4) => ipv4,
            None => {
                let ipv4 = is_plain_socket(&sock)?
                    && sock.getattr(intern!(py, "family"))?.extract::<i32>()? == libc::AF_INET;
                *self.ipv4.borrow_mut(py) = Some(ipv4);
                ipv4
            }
        };
        let size = match get!(py, transport, attributes, "max_size")?.extract::<usize>() {
            Ok(size) if ipv4 && size <= SCRATCH_SIZE => size,
            _ => {
                asyncio_method(
                    py,
                    &ASYNCIO_DATAGRAM_READ_READY,
                    "_SelectorDatagramTransport",
                    "_read_ready",
                )?
                .call1((transport,))?;
                return Ok(());
            }
        };
        let received = fileno(&sock).and_then(|fd| recvfrom_bytes(py, fd, size));
        let (data, sender) = match received {
            Ok(Some(pair)) => pair,
            Ok(None) => return Ok(()),
            Err(error) if error.is_instance_of::<pyo3::exceptions::PyOSError>(py) => {
                get!(py, transport, attributes, "_protocol")?
                    .call_method1(intern!(py, "error_received"), (error.into_value(py),))?;
                return Ok(());
            }
            Err(error) if is_exit(&error, py) => return Err(error),
            Err(error) => {
                fatal_error(
                    &transport,
                    error,
                    intern!(py, "Fatal read error on datagram transport"),
                )?;
                return Ok(());
            }
        };
        let address = match sender.ipv4() {
            Some(sender) => self.address(py, sender)?,
            // No address from the kernel: what `makesockaddr` gives for an empty one.
            None => py.None().into_bound(py),
        };
        get!(py, transport, attributes, "_protocol")?
            .call_method1(intern!(py, "datagram_received"), (data, address))?;
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.transport.traverse(&visit)
    }

    fn __clear__(&mut self) {
        self.transport.clear();
        self.senders = GilCell::new(Vec::new());
    }
}
