//! A stream transport's `extra` dict (`get_extra_info`), made when first read.
//!
//! asyncio's `__init__` fills `transport._extra` at once: for an accepted connection the
//! `peername` tuple (from `accept`), `socket` (a `TransportSocket`) and `sockname`. An idle
//! connection keeps a dict, a `TransportSocket`, a tuple, a host string and a port int that
//! many servers never read, some 370 bytes. On ferroloop's slotted transport
//! (`ferroloop._stream_transport`) an accepted IPv4, IPv6 or Unix connection's `_extra` slot holds
//! a [`PendingExtra`] instead: the connection's kind (its socket object is made only when read, see
//! `server.rs`), the peer's address (an IPv4 one as the kernel gave it), and the `sockname` read at
//! construction (the one tuple or path the connections of a server share, see
//! `stream_lifecycle.rs`). The `_extra` property of that class turns it into asyncio's dict, with
//! the same keys in the same order and the same values, on first read (making the socket object
//! then); what is read afterwards is that dict. Making the socket object makes the dict too, so
//! that `extra["socket"]` wraps that object even when read after close.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict, PyTuple};

use super::socket::{accepted_socket_of, closed_socket, PeerAddress};
use super::stream_lifecycle::asyncio;
use super::transport::{get, set};
use crate::ffi::{descriptor_get, descriptor_set, is_exact_int, object_new};

/// The slots named here are the slotted stream transport's own.
const SLOTS_ONLY: super::transport::Attributes<'static> = None;

/// `transport._sock` on the slotted stream transport: the `_socket` slot, whose fd number (an
/// int) becomes the socket object on first read (see `server.rs`), of the kind the pending
/// `extra` holds, with that dict made at the same time so that its `socket` wraps the object.
/// `None` for a transport whose construction failed before the slot was set (asyncio's class
/// attribute).
fn socket_of<'py>(transport: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = transport.py();
    let sock = match get!(py, transport, SLOTS_ONLY, "_socket") {
        Ok(sock) => sock,
        Err(error) if error.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => {
            return Ok(py.None().into_bound(py));
        }
        Err(error) => return Err(error),
    };
    if !is_exact_int(&sock) {
        return Ok(sock);
    }
    let fd = sock.extract()?;
    let slot = asyncio(py)?.extra_slot.bind(py);
    let pending = descriptor_get(slot, transport)
        .ok()
        .and_then(|extra| extra.cast_into::<PendingExtra>().ok());
    let sock = match pending.as_ref().and_then(|p| p.get().kind(py)) {
        Some(kind) => accepted_socket_of(py, &kind, fd)?,
        // Code replaced `_extra` before the socket was made: `socket` finds the kind itself.
        None => {
            let sock = py
                .import("socket")?
                .getattr("socket")?
                .call((), Some(&[("fileno", fd)].into_py_dict(py)?))?;
            sock.call_method1(intern!(py, "setblocking"), (false,))?;
            sock
        }
    };
    set!(py, transport, SLOTS_ONLY, "_socket", &sock)?;
    if let Some(pending) = pending {
        let extra = pending.get().build(py, Some(sock.clone()))?;
        descriptor_set(slot, transport, extra.as_any())?;
    }
    Ok(sock)
}

/// The slotted stream transport's `_sock` (a data descriptor: [`socket_of`] on read, the
/// `_socket` slot on write).
#[pyclass(module = "ferroloop._core", name = "_SocketAttribute", frozen)]
pub struct SocketAttribute;

#[pymethods]
impl SocketAttribute {
    #[new]
    fn new() -> Self {
        SocketAttribute
    }

    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        obj: Option<Bound<'py, PyAny>>,
        _owner: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match obj {
            Some(obj) if !obj.is_none() => socket_of(&obj),
            _ => Ok(slf.clone().into_any()),
        }
    }

    fn __set__(&self, obj: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = obj.py();
        set!(py, obj, SLOTS_ONLY, "_socket", value)
    }

    /// `del transport._sock`: the slot is emptied, and reads give `None` again (asyncio's
    /// class attribute once the instance's is deleted).
    fn __delete__(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = obj.py();
        obj.get_type()
            .getattr(intern!(py, "_socket"))?
            .call_method1(intern!(py, "__delete__"), (obj,))
            .map(drop)
    }
}

/// The slotted stream transport's `_extra` (a data descriptor over `BaseTransport`'s slot): an
/// accepted IPv4, IPv6 or Unix connection's dict is made on first read, with its socket object.
#[pyclass(module = "ferroloop._core", name = "_ExtraAttribute", frozen)]
pub struct ExtraAttribute;

#[pymethods]
impl ExtraAttribute {
    #[new]
    fn new() -> Self {
        ExtraAttribute
    }

    fn __get__<'py>(
        slf: &Bound<'py, Self>,
        obj: Option<Bound<'py, PyAny>>,
        _owner: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(obj) = obj.filter(|obj| !obj.is_none()) else {
            return Ok(slf.clone().into_any());
        };
        let py = obj.py();
        let slot = asyncio(py)?.extra_slot.bind(py);
        let extra = descriptor_get(slot, &obj)?;
        if !extra.is_instance_of::<PendingExtra>() {
            return Ok(extra);
        }
        // Making the socket object makes the dict; a closed transport has none to make.
        let sock = socket_of(&obj)?;
        let extra = descriptor_get(slot, &obj)?;
        let Ok(pending) = extra.cast::<PendingExtra>() else {
            return Ok(extra);
        };
        let extra = pending.get().build(py, Some(sock))?.into_any();
        descriptor_set(slot, &obj, &extra)?;
        Ok(extra)
    }

    fn __set__(&self, obj: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        descriptor_set(asyncio(obj.py())?.extra_slot.bind(obj.py()), obj, value)
    }

    /// `del transport._extra`: `BaseTransport`'s slot is emptied, as on asyncio's class.
    fn __delete__(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = obj.py();
        asyncio(py)?
            .extra_slot
            .bind(py)
            .call_method1(intern!(py, "__delete__"), (obj,))
            .map(drop)
    }
}

/// An accepted IPv4, IPv6 or Unix connection's `extra`, not made yet. Not tracked by the cyclic GC:
/// what it holds (a socket object or a tuple of ints, addresses: tuples, strings, ints, bytes)
/// holds nothing back.
#[pyclass(module = "ferroloop._core", name = "_PendingExtra", frozen)]
pub struct PendingExtra {
    /// The connection's socket object, or, when the transport makes it only on demand
    /// (`server.rs`), the connection's `(family, type, proto)`.
    source: Py<PyAny>,
    peer: PeerAddress,
    sockname: Py<PyAny>,
}

impl PendingExtra {
    /// The connection's `(family, type, proto)`, when its socket object is not made yet.
    fn kind<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyTuple>> {
        self.source.bind(py).cast::<PyTuple>().ok().cloned()
    }

    pub(crate) fn new(source: Py<PyAny>, peer: PeerAddress, sockname: Py<PyAny>) -> Self {
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
        extra.set_item(intern!(py, "peername"), self.peer.object(py)?)?;
        let transport_socket = &asyncio(py)?.transport_socket;
        // trsock.TransportSocket(sock): its __init__ only sets its one slot.
        let wrapped = object_new(transport_socket.bind(py))?;
        wrapped.setattr(intern!(py, "_sock"), sock)?;
        extra.set_item(intern!(py, "socket"), wrapped)?;
        extra.set_item(intern!(py, "sockname"), self.sockname.bind(py))?;
        Ok(extra)
    }
}
