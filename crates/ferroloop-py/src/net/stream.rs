//! The read and write paths of asyncio's socket (stream) transport, natively.
//!
//! ferroloop's socket transports are asyncio's own `_SelectorSocketTransport`: made natively,
//! the running version's class rebuilt with `__slots__` from its own functions
//! (`ferroloop._stream_transport`, decision 0009); made by asyncio's `__init__` (debug mode,
//! socket subclasses), a subclass of it (`ferroloop._loop._SelectorSocketTransport`). Either
//! way every method, attribute and error is asyncio's, with one change: the reader callback
//! that asyncio's code registers as `self._read_ready` is a [`TransportReader`] (on the
//! slotted class, kept in its `_reader` slot). When the transport reads for a plain
//! `Protocol` (`_read_ready_cb` is `_read_ready__data_received`) and its socket is a plain
//! `socket.socket`, the reader does what `_read_ready__data_received` does: the `recv` of up
//! to `max_size` bytes, `protocol.data_received(data)`, `_read_ready__on_eof()` at end of
//! file, `_fatal_error(exc, message)` with asyncio's messages on errors. For a
//! `BufferedProtocol` (`_read_ready__get_buffer`; asyncio's `SSLProtocol` is one since 3.11)
//! it does what that method does: `get_buffer(-1)`, one `recv_into`, `buffer_updated(n)`. For
//! anything else (a patched method, another socket type) it calls `_read_ready_cb()`,
//! asyncio's own code. End of file, `close()` and `connection_lost` are in
//! `stream_lifecycle.rs`.
//!
//! What this saves per read: two Python frames, a `socket.recv` that allocates `max_size`
//! (256 KiB) and shrinks the result, and the attribute lookups between them.

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use pyo3::PyTraverseError;

use pyo3::exceptions::PyRuntimeError;

use super::buffer::{byte_buffer, recv_bytes, Buffer};
use super::max_size;
use super::socket::{recv_into, send};
use super::stream_lifecycle;
use super::stream_lifecycle::fatal_error;
use super::stream_lifecycle::SocketSlot;
use super::streams;
use super::tls;
use super::transport::{asyncio_method, get, is_exit, Attributes, TransportRef};
use crate::event_loop::Loop;
use crate::ffi::{bound_method_function, bytes_len, keep_spare_bytes, BUFFER_WRITABLE};

static DATA_RECEIVED_PATH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_BUFFER_PATH: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASYNCIO_WRITE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// ferroloop's slotted stream transport class (`ferroloop._stream_transport`) and the value
/// its `_read_cb` / `_write_cb` slots hold until `_read_ready_cb` / `_write_ready` are set.
pub(crate) struct Slotted {
    pub(crate) class: Py<PyType>,
    pub(crate) unset: Py<PyAny>,
    /// The class's copies of asyncio's `write` and `close` (whose `super()` is the copy's
    /// base), which the C methods call in the cases they do not take.
    pub(crate) write: Py<PyAny>,
    pub(crate) close: Py<PyAny>,
    /// asyncio's `__del__` (the copy), which the C `__del__` calls for an unclosed transport.
    pub(crate) finalize: Py<PyAny>,
}

pub(crate) static SLOTTED: PyOnceLock<Slotted> = PyOnceLock::new();

/// A natively made slotted transport's `_read_cb` when its protocol is a `BufferedProtocol`
/// and `_read_ready_cb` was not set since (`_stream_transport._UNSET_BUFFERED`); `unset`
/// (`False`) stands for `_read_ready__data_received`.
pub(crate) const UNSET_BUFFERED: bool = true;

/// asyncio's `write` for `transport`: the slotted class's copy, or asyncio's own.
pub(crate) fn asyncio_write<'py>(transport: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = transport.py();
    match slotted_of(transport) {
        Some(slotted) => Ok(slotted.write.bind(py).clone()),
        None => {
            Ok(asyncio_method(py, &ASYNCIO_WRITE, "_SelectorSocketTransport", "write")?.clone())
        }
    }
}

/// ferroloop's slotted class, if `transport` is of it.
pub(crate) fn slotted_of<'a>(transport: &Bound<'_, PyAny>) -> Option<&'a Slotted> {
    let py = transport.py();
    SLOTTED
        .get(py)
        .filter(|slotted| transport.get_type().is(slotted.class.bind(py)))
}

/// `not transport._buffer`: on the slotted class, whose buffer is made when first needed, an
/// empty `_write_buffer` slot (`None`) is an empty buffer.
pub(crate) fn write_buffer_empty(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
) -> PyResult<bool> {
    let py = transport.py();
    let buffer = match attributes {
        Some(_) => get!(py, transport, attributes, "_buffer")?,
        None => get!(py, transport, attributes, "_write_buffer")?,
    };
    Ok(buffer.is_none() || buffer.len()? == 0)
}

/// Whether `transport` is of ferroloop's slotted stream transport class.
pub(crate) fn is_slotted(transport: &Bound<'_, PyAny>) -> bool {
    slotted_of(transport).is_some()
}

/// The read path of a slotted transport: from the protocol's type (as asyncio's
/// `set_protocol` chooses) while `_read_ready_cb` was never set, else what it was set to.
fn slotted_read_path(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
) -> PyResult<ReadPath> {
    let py = transport.py();
    let set = get!(py, transport, attributes, "_read_cb")?;
    // Not set yet: which method asyncio's `set_protocol` chose, decided when the transport
    // was made (`_stream_transport._UNSET` / `_UNSET_BUFFERED`).
    let unset = SLOTTED.get(py).map(|slotted| slotted.unset.bind(py));
    if unset.is_some_and(|unset| set.is(unset)) {
        return Ok(ReadPath::DataReceived);
    }
    if set.is(&*pyo3::types::PyBool::new(py, UNSET_BUFFERED)) {
        return Ok(ReadPath::GetBuffer);
    }
    read_path(&set)
}

/// Which of asyncio's read paths `_read_ready_cb` is.
#[derive(PartialEq)]
enum ReadPath {
    /// `_read_ready__data_received` (a `Protocol`).
    DataReceived,
    /// `_read_ready__get_buffer` (a `BufferedProtocol`).
    GetBuffer,
    /// Something else (an SSL transport's protocol, a patched method).
    Other,
}

/// Which read path `callback` is, when it is one of asyncio's methods bound to a transport.
fn read_path(callback: &Bound<'_, PyAny>) -> PyResult<ReadPath> {
    let py = callback.py();
    let data_received = asyncio_method(
        py,
        &DATA_RECEIVED_PATH,
        "_SelectorSocketTransport",
        "_read_ready__data_received",
    )?;
    let get_buffer = asyncio_method(
        py,
        &GET_BUFFER_PATH,
        "_SelectorSocketTransport",
        "_read_ready__get_buffer",
    )?;
    let Some(function) = bound_method_function(callback) else {
        return Ok(ReadPath::Other);
    };
    Ok(if function == data_received.as_ptr() {
        ReadPath::DataReceived
    } else if function == get_buffer.as_ptr() {
        ReadPath::GetBuffer
    } else {
        ReadPath::Other
    })
}

/// End of file on a transport: natively outside debug mode, unless `_read_ready__on_eof` was
/// patched on the instance.
fn read_eof(transport: &Bound<'_, PyAny>, attributes: &Attributes<'_>) -> PyResult<()> {
    let py = transport.py();
    let patched = match attributes {
        Some(attributes) => attributes.contains(intern!(py, "_read_ready__on_eof"))?,
        None => false,
    };
    let native = !patched
        && get!(py, transport, attributes, "_loop")?
            .cast::<Loop>()
            .is_ok_and(|event_loop| !event_loop.get().is_debug());
    if native {
        return stream_lifecycle::on_eof(transport, attributes);
    }
    transport.call_method0(intern!(py, "_read_ready__on_eof"))?;
    Ok(())
}

/// asyncio's `_read_ready__get_buffer` on a plain socket: `protocol.get_buffer(-1)`, one
/// `recv_into` of the buffer, `protocol.buffer_updated(n)`, with asyncio's messages.
fn read_into_protocol_buffer(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
    sock: &SocketSlot<'_>,
) -> PyResult<()> {
    let py = transport.py();
    let protocol = get!(py, transport, attributes, "_protocol")?;
    // ferroloop's `SSLProtocol` with its own methods: their steps, called directly.
    let direct = tls::Direct::of(&protocol);
    let buffer = match &direct {
        Some(direct) => direct.get_buffer(-1).transpose(),
        None => None,
    };
    let buffer = buffer
        .unwrap_or_else(|| protocol.call_method1(intern!(py, "get_buffer"), (-1,)))
        .and_then(|buf| {
            if buf.len()? == 0 {
                return Err(PyRuntimeError::new_err(
                    "get_buffer() returned an empty buffer",
                ));
            }
            Ok(buf)
        });
    let buffer = match buffer {
        Ok(buffer) => buffer,
        Err(error) if is_exit(&error, py) => return Err(error),
        Err(error) => {
            return fatal_error(
                transport,
                attributes,
                error,
                intern!(py, "Fatal error: protocol.get_buffer() call failed."),
            )
        }
    };
    // `sock.recv_into(buf)`; a buffer that is not writable gets socket's own error.
    let received = match Buffer::get(&buffer, BUFFER_WRITABLE) {
        Ok(view) => sock.fileno().and_then(|fd| recv_into(py, fd, &view)),
        Err(_) => match sock
            .object(transport)?
            .call_method1(intern!(py, "recv_into"), (&buffer,))
        {
            Ok(nbytes) => nbytes.extract::<usize>().map(Some),
            Err(error)
                if error.is_instance_of::<pyo3::exceptions::PyBlockingIOError>(py)
                    || error.is_instance_of::<pyo3::exceptions::PyInterruptedError>(py) =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        },
    };
    let nbytes = match received {
        Ok(Some(nbytes)) => nbytes,
        Ok(None) => return Ok(()),
        Err(error) if is_exit(&error, py) => return Err(error),
        Err(error) => {
            return fatal_error(
                transport,
                attributes,
                error,
                intern!(py, "Fatal read error on socket transport"),
            )
        }
    };
    drop(buffer);
    if nbytes == 0 {
        return read_eof(transport, attributes);
    }
    let updated = match &direct {
        Some(direct) => direct.buffer_updated(nbytes as isize),
        None => protocol
            .call_method1(intern!(py, "buffer_updated"), (nbytes,))
            .map(drop),
    };
    match updated {
        Ok(()) => Ok(()),
        Err(error) if is_exit(&error, py) => Err(error),
        Err(error) => fatal_error(
            transport,
            attributes,
            error,
            intern!(py, "Fatal error: protocol.buffer_updated() call failed."),
        ),
    }
}

/// The reader callback of one socket transport (see the module docs).
#[pyclass(module = "ferroloop._core", name = "_TransportReader", frozen)]
pub struct TransportReader {
    pub(crate) transport: TransportRef,
}

#[pymethods]
impl TransportReader {
    #[new]
    #[pyo3(signature = (transport, attributes))]
    pub(crate) fn new(transport: Py<PyAny>, attributes: Option<Py<PyDict>>) -> Self {
        TransportReader {
            transport: TransportRef::new(transport, attributes),
        }
    }

    /// The name asyncio's messages give the method this replaces.
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorSocketTransport._read_ready"
    }

    pub(crate) fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some((transport, attributes)) = self.transport.bind(py) else {
            return Ok(());
        };
        let path = match attributes {
            Some(_) => read_path(&get!(py, transport, attributes, "_read_ready_cb")?)?,
            None => slotted_read_path(&transport, &attributes)?,
        };
        // asyncio's `_read_ready()`: `self._read_ready_cb()`.
        let callback = || {
            get!(py, transport, attributes, "_read_ready_cb")?
                .call0()
                .map(drop)
        };
        if path == ReadPath::GetBuffer {
            if get!(py, transport, attributes, "_conn_lost")?.is_truthy()? {
                return Ok(());
            }
            let sock = SocketSlot::of(&transport, &attributes)?;
            if sock.is_plain()? {
                return read_into_protocol_buffer(&transport, &attributes, &sock);
            }
        }
        if path != ReadPath::DataReceived {
            return callback();
        }
        // asyncio: _read_ready__data_received.
        if get!(py, transport, attributes, "_conn_lost")?.is_truthy()? {
            return Ok(());
        }
        let sock = SocketSlot::of(&transport, &attributes)?;
        // The slotted class's descriptor, else asyncio's attribute as a generic lookup finds it.
        let known = attributes.is_none().then(|| max_size::known(&transport));
        let max_size = match known.flatten() {
            Some(size) => Ok(size),
            None => get!(py, transport, attributes, "max_size")?.extract::<isize>(),
        };
        let size = match max_size.map(usize::try_from) {
            Ok(Ok(size)) if sock.is_plain()? => size,
            // Not the usual socket or size: asyncio's own code, with its errors.
            _ => return callback(),
        };
        let received = sock.fileno().and_then(|fd| recv_bytes(py, fd, size));
        let data = match received {
            Ok(Some(data)) => data,
            Ok(None) => return Ok(()),
            Err(error) if is_exit(&error, py) => return Err(error),
            Err(error) => {
                fatal_error(
                    &transport,
                    &attributes,
                    error,
                    intern!(py, "Fatal read error on socket transport"),
                )?;
                return Ok(());
            }
        };
        // `data` is a bytes object (recv_bytes makes one).
        if bytes_len(&data) == 0 {
            return read_eof(&transport, &attributes);
        }
        let protocol = get!(py, transport, attributes, "_protocol")?;
        match streams::data_received(&protocol, &data) {
            Ok(()) => {
                keep_spare_bytes(data);
                Ok(())
            }
            Err(error) if is_exit(&error, py) => Err(error),
            Err(error) => {
                fatal_error(
                    &transport,
                    &attributes,
                    error,
                    intern!(py, "Fatal error: protocol.data_received() call failed."),
                )?;
                Ok(())
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.transport.traverse(&visit)
    }

    fn __clear__(&self, py: Python<'_>) {
        self.transport.clear(py);
    }
}

impl TransportReader {
    /// `transport.write(data)` (see `methods`): asyncio's
    /// `_SelectorSocketTransport.write` for the common case, sending at once on a plain socket
    /// with nothing buffered; `_write_rest(data, n)` (Python) buffers what the socket did not
    /// take, and every other case is asyncio's own `write`.
    pub(crate) fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some((transport, attributes)) = self.transport.bind(py) else {
            return Ok(());
        };
        let plain = !get!(py, transport, attributes, "_eof")?.is_truthy()?
            && get!(py, transport, attributes, "_empty_waiter")?.is_none()
            && !get!(py, transport, attributes, "_conn_lost")?.is_truthy()?
            && write_buffer_empty(&transport, &attributes)?;
        let sock = SocketSlot::of(&transport, &attributes)?;
        let buffer = match plain && sock.is_plain()? {
            true => byte_buffer(data),
            false => None,
        };
        // Empty data: asyncio's write returns early (after its checks).
        let Some(buffer) = buffer.filter(|b| b.len() > 0) else {
            asyncio_write(&transport)?.call1((&transport, data))?;
            return Ok(());
        };
        let sent = sock.fileno().and_then(|fd| send(py, fd, buffer.as_slice()));
        let sent = match sent {
            Ok(Some(n)) if n == buffer.len() => return Ok(()),
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(error) if is_exit(&error, py) => return Err(error),
            Err(error) => {
                fatal_error(
                    &transport,
                    &attributes,
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
}
