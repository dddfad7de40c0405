//! The read path of asyncio's datagram transport, natively (see [`DatagramReader`]).

use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::PyTraverseError;

use super::buffer::{recvfrom_bytes, SCRATCH_SIZE};
use super::socket::{fileno, is_plain_socket};
use super::transport::{asyncio_method, fatal_error, get, is_exit, TransportRef};
use crate::gil_cell::GilCell;

static ASYNCIO_DATAGRAM_READ_READY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

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
