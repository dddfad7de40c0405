//! A stream transport's `extra` dict (`get_extra_info`), made when first read.
//!
//! asyncio's `__init__` fills `transport._extra` at once: for an accepted connection the
//! `peername` tuple (from `accept`), `socket` (a `TransportSocket`) and `sockname`. An idle
//! connection keeps a dict, a `TransportSocket`, a tuple, a host string and a port int that
//! many servers never read, some 370 bytes. On ferroloop's slotted transport
//! (`ferroloop._stream_transport`) an accepted IPv4 connection's `_extra` slot holds a
//! [`PendingExtra`] instead: the connection's kind (its socket object is made only when read,
//! see `server.rs`), the peer's address as the kernel gave it, and the `sockname` tuple read
//! at construction (the one tuple the connections of a server share, see
//! `stream_lifecycle.rs`). The `_extra` property of that class turns it into asyncio's dict,
//! with the same keys in the same order and the same values, on first read (making the
//! socket object then); what is read afterwards is that dict. Making the socket object makes
//! the dict too, so that `extra["socket"]` wraps that object even when read after close.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::socket::{closed_socket, ipv4_address};
use super::stream_lifecycle::asyncio;
use crate::ffi::object_new;

/// An accepted IPv4 connection's `extra`, not made yet. Not tracked by the cyclic GC: what it
/// holds (a socket object or a tuple of ints, a tuple of a string and an int) holds nothing
/// back.
#[pyclass(module = "ferroloop._core", name = "_PendingExtra", frozen)]
pub struct PendingExtra {
    /// The connection's socket object, or, when the transport makes it only on demand
    /// (`server.rs`), the connection's `(family, type, proto)`.
    source: Py<PyAny>,
    peer: ([u8; 4], u16),
    sockname: Py<PyAny>,
}

impl PendingExtra {
    pub(crate) fn new(source: Py<PyAny>, peer: ([u8; 4], u16), sockname: Py<PyAny>) -> Self {
        PendingExtra {
            source,
            peer,
            sockname,
        }
    }
}

#[pymethods]
impl PendingExtra {
    /// asyncio's dict: `peername` (what `_accept_connection` passed), then what `__init__`
    /// adds, `socket` (`TransportSocket(sock)`) and `sockname`. `sock` is the transport's
    /// socket object, made (`_stream_transport._get_sock`) if it was not; `None` when the
    /// transport was closed before: then the socket object given at construction, or, if
    /// there was none, a closed socket of the connection's kind (asyncio's shows `fd=-1`
    /// then).
    #[pyo3(signature = (sock=None))]
    fn build<'py>(
        &self,
        py: Python<'py>,
        sock: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let source = self.source.bind(py);
        let sock = match sock {
            Some(sock) if !sock.is_none() => sock,
            _ => match source.cast::<PyTuple>() {
                Ok(kind) => closed_socket(py, kind)?,
                Err(_) => source.clone(),
            },
        };
        let extra = PyDict::new(py);
        extra.set_item(intern!(py, "peername"), ipv4_address(py, self.peer)?)?;
        let transport_socket = &asyncio(py)?.transport_socket;
        // trsock.TransportSocket(sock): its __init__ only sets its one slot.
        let wrapped = object_new(transport_socket.bind(py))?;
        wrapped.setattr(intern!(py, "_sock"), sock)?;
        extra.set_item(intern!(py, "socket"), wrapped)?;
        extra.set_item(intern!(py, "sockname"), self.sockname.bind(py))?;
        Ok(extra)
    }
}
