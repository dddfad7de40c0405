//! The writer callback of a stream transport: what asyncio's `_write_ready` (up to 3.11) or
//! `_write_sendmsg` (3.12+) does when the socket is writable again after a `write` it could
//! not send at once, natively.
//!
//! asyncio registers `self._write_ready` with `_add_writer` when a write leaves data in the
//! buffer. On ferroloop's slotted stream transport (decision 0009) that attribute is a
//! [`TransportWriter`] (3.12+: until something sets `_write_ready`; `_stream_transport.py`),
//! which takes asyncio's steps on the same attributes: one `send` of the whole `bytearray`
//! (up to 3.11), or one `sendmsg` of the first `SC_IOV_MAX` pieces of the `deque` (3.12+),
//! then `del buffer[:n]` or asyncio's `_adjust_leftover_buffer`, `_maybe_resume_protocol()`,
//! and once the buffer is empty `_remove_writer`, the `_empty_waiter`'s result, and
//! `_call_connection_lost(None)` after `close()` or `shutdown(SHUT_WR)` after `write_eof()`.
//! A send error is asyncio's `_fatal_error(exc, 'Fatal write error on socket transport')`
//! after the same clean-up. Anything else (another socket type, a buffer piece that is not
//! a plain bytes-like object, an empty buffer) is asyncio's own method.

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PySlice};
use pyo3::PyTraverseError;

use ferroloop_core::sys::net;

use super::buffer::{byte_buffer, Buffer};
use super::socket::{retry_interrupted, send};
use super::stream_lifecycle;
use super::stream_lifecycle::fatal_error;
use super::stream_lifecycle::SocketSlot;
use super::transport::{asyncio_method, get, is_exit, Attributes, TransportRef};

static ASYNCIO_WRITE_READY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// asyncio's `selector_events.SC_IOV_MAX`: the most pieces one `sendmsg` takes.
static SC_IOV_MAX: PyOnceLock<usize> = PyOnceLock::new();

/// The name of asyncio's writer method on the running version.
fn asyncio_name(py: Python<'_>) -> PyResult<&'static str> {
    Ok(stream_lifecycle::asyncio(py)?
        .write_ready
        .unwrap_or("_write_ready"))
}

/// The writer callback of one stream transport (see the module docs).
#[pyclass(module = "ferroloop._core", name = "_TransportWriter", frozen)]
pub struct TransportWriter {
    transport: TransportRef,
}

#[pymethods]
impl TransportWriter {
    #[new]
    fn new(transport: Py<PyAny>) -> Self {
        TransportWriter {
            transport: TransportRef::new(transport, None),
        }
    }

    /// The name asyncio's messages give the method this replaces.
    #[getter]
    fn __qualname__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("_SelectorSocketTransport.{}", asyncio_name(py)?))
    }

    pub(crate) fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some((transport, attributes)) = self.transport.bind(py) else {
            return Ok(());
        };
        let sock = SocketSlot::of(&transport, &attributes)?;
        let buffer = get!(py, transport, attributes, "_write_buffer")?;
        // asyncio's `assert self._buffer`, and sockets of other types: its own method.
        if buffer.is_none() || buffer.len()? == 0 || !sock.is_plain()? {
            return asyncio_write_ready(&transport);
        }
        if get!(py, transport, attributes, "_conn_lost")?.is_truthy()? {
            return Ok(());
        }
        let fd = sock.fileno()?;
        let sent = if buffer.is_exact_instance_of::<PyByteArray>() {
            let Some(data) = byte_buffer(&buffer) else {
                return asyncio_write_ready(&transport);
            };
            send(py, fd, data.as_slice())
        } else if buffer
            .get_type()
            .is(stream_lifecycle::asyncio(py)?.buffer_factory.bind(py))
        {
            let Some(pieces) = first_pieces(&buffer)? else {
                return asyncio_write_ready(&transport);
            };
            let slices: Vec<&[u8]> = pieces.iter().map(Buffer::as_slice).collect();
            retry_interrupted(py, || net::send_vectored(fd, &slices))
        } else {
            return asyncio_write_ready(&transport);
        };
        let sent = match sent {
            Ok(Some(n)) => n,
            // asyncio: BlockingIOError, InterruptedError: wait for the next report.
            Ok(None) => return Ok(()),
            Err(error) if is_exit(&error, py) => return Err(error),
            Err(error) => return write_failed(&transport, &attributes, &buffer, error),
        };
        if buffer.is_exact_instance_of::<PyByteArray>() {
            if sent > 0 {
                buffer.del_item(PySlice::new(py, 0, sent as isize, 1))?;
            }
        } else {
            adjust_leftover_buffer(&buffer, sent)?;
        }
        transport.call_method0(intern!(py, "_maybe_resume_protocol"))?;
        // The buffer as asyncio reads it again: `resume_writing` may have written more.
        if get!(py, transport, attributes, "_write_buffer")?.len()? != 0 {
            return Ok(());
        }
        let sock_fd = get!(py, transport, attributes, "_sock_fd")?;
        get!(py, transport, attributes, "_loop")?
            .call_method1(intern!(py, "_remove_writer"), (sock_fd,))?;
        let waiter = get!(py, transport, attributes, "_empty_waiter")?;
        if !waiter.is_none() {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        if get!(py, transport, attributes, "_closing")?.is_truthy()? {
            transport.call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
        } else if get!(py, transport, attributes, "_eof")?.is_truthy()? {
            sock.object(&transport)?
                .call_method1(intern!(py, "shutdown"), (libc::SHUT_WR,))?;
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.transport.traverse(&visit)
    }

    fn __clear__(&self, py: Python<'_>) {
        self.transport.clear(py);
    }
}

/// asyncio's own writer method on `transport`.
fn asyncio_write_ready(transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = transport.py();
    asyncio_method(
        py,
        &ASYNCIO_WRITE_READY,
        "_SelectorSocketTransport",
        asyncio_name(py)?,
    )?
    .call1((transport,))?;
    Ok(())
}

/// `itertools.islice(buffer, SC_IOV_MAX)` as contiguous byte buffers; `None` if one of them
/// is not a plain bytes-like object (asyncio's `sendmsg` then decides).
fn first_pieces(buffer: &Bound<'_, PyAny>) -> PyResult<Option<Vec<Buffer>>> {
    let py = buffer.py();
    let most = *SC_IOV_MAX.get_or_try_init(py, || {
        py.import("asyncio.selector_events")?
            .getattr("SC_IOV_MAX")?
            .extract::<usize>()
    })?;
    let mut pieces = Vec::new();
    for piece in buffer.try_iter()?.take(most) {
        match byte_buffer(&piece?) {
            Some(piece) => pieces.push(piece),
            None => return Ok(None),
        }
    }
    Ok(Some(pieces))
}

/// asyncio's `_adjust_leftover_buffer(nbytes)`: drop the pieces sent in full, and replace a
/// piece sent in part by the rest of it (`b[nbytes:]`).
fn adjust_leftover_buffer(buffer: &Bound<'_, PyAny>, mut sent: usize) -> PyResult<()> {
    let py = buffer.py();
    while sent > 0 {
        let piece = buffer.call_method0(intern!(py, "popleft"))?;
        let len = piece.len()?;
        if len <= sent {
            sent -= len;
        } else {
            let rest = piece.get_item(PySlice::new(py, sent as isize, isize::MAX, 1))?;
            buffer.call_method1(intern!(py, "appendleft"), (rest,))?;
            break;
        }
    }
    Ok(())
}

/// asyncio's handling of a failed send: stop writing, drop the buffer, `_fatal_error`, and
/// fail the `_empty_waiter`.
fn write_failed(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
    buffer: &Bound<'_, PyAny>,
    error: PyErr,
) -> PyResult<()> {
    let py = transport.py();
    let sock_fd = get!(py, transport, attributes, "_sock_fd")?;
    get!(py, transport, attributes, "_loop")?
        .call_method1(intern!(py, "_remove_writer"), (sock_fd,))?;
    buffer.call_method0(intern!(py, "clear"))?;
    let exc = error.into_value(py);
    fatal_error(
        transport,
        attributes,
        PyErr::from_value(exc.bind(py).clone().into_any()),
        intern!(py, "Fatal write error on socket transport"),
    )?;
    let waiter = get!(py, transport, attributes, "_empty_waiter")?;
    if !waiter.is_none() {
        waiter.call_method1(intern!(py, "set_exception"), (exc,))?;
    }
    Ok(())
}
