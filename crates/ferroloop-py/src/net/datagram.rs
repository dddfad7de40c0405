//! The read path of asyncio's datagram transport, natively (see [`DatagramReader`]), and its
//! `sendto` when the datagram goes out at once.

use pyo3::exceptions::PyRuntimeError;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyString};
use pyo3::PyTraverseError;

use ferroloop_core::sys::net;

use super::buffer::{byte_buffer, recvfrom_bytes, SCRATCH_SIZE};
use super::max_size;
use super::socket::{
    fileno, ipv4_address, ipv6_address, is_plain_socket, retry_interrupted, socket_kind, UnixPath,
};
use super::transport::{
    asyncio_method, fatal_error, get, is_exit, Attributes, TransportRef, DATAGRAM_SLOTS,
};
use crate::ffi::{fs_encode, keep_spare_bytes};
use crate::gil_cell::GilCell;

static ASYNCIO_DATAGRAM_READ_READY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// ferroloop's Python `sendto` of the slotted class (asyncio's, but for an unnamed Unix
/// peer), kept when the native method replaces it (`methods.rs`).
pub(crate) static PYTHON_SENDTO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Whether asyncio's `sendto` drops an empty datagram (up to 3.12; 3.13 sends it).
static DROPS_EMPTY: PyOnceLock<bool> = PyOnceLock::new();

/// A datagram transport's attributes: always its slots (the class is
/// `ferroloop._datagram_transport`'s slotted one), through [`DATAGRAM_SLOTS`].
const SLOTS_ONLY: Attributes<'static> = None;

/// `transport.<name>` on the slotted datagram transport (a plain lookup on anything else).
macro_rules! dget {
    ($py:expr, $transport:expr, $name:literal) => {
        get!(in DATAGRAM_SLOTS; $py, $transport, SLOTS_ONLY, $name)
    };
}

/// Where a datagram goes.
enum Destination {
    /// The connected peer: `send`.
    Peer,
    /// An IPv4 or IPv6 address: `sendto`.
    To(Address),
}

/// `("a.b.c.d", port)` as an IPv4 address and port, if it is exactly that (anything else,
/// a host name included, is left to `socket.sendto`).
fn ipv4_destination(addr: &Bound<'_, PyAny>) -> Option<Address> {
    let (host, port): (String, u16) = addr.extract().ok()?;
    let host: std::net::Ipv4Addr = host.parse().ok()?;
    Some(Address::Ipv4(host.octets(), port))
}

/// `("x:y::z", port[, flowinfo[, scope_id]])` with a numeric IPv6 address, if it is exactly
/// that with values `socket` accepts (anything else, a host name or a `%scope` included, is
/// left to `socket.sendto` and its errors).
fn ipv6_destination(addr: &Bound<'_, PyAny>) -> Option<Address> {
    let tuple = addr.cast::<pyo3::types::PyTuple>().ok()?;
    let (host, port, flowinfo, scope_id) = match tuple.len() {
        2 => {
            let (host, port): (String, u16) = tuple.extract().ok()?;
            (host, port, 0, 0)
        }
        3 => {
            let (host, port, flowinfo): (String, u16, u32) = tuple.extract().ok()?;
            (host, port, flowinfo, 0)
        }
        4 => tuple.extract::<(String, u16, u32, u32)>().ok()?,
        _ => return None,
    };
    // socket: "flowinfo must be 0-1048575."
    if flowinfo > 0xF_FFFF {
        return None;
    }
    let host: std::net::Ipv6Addr = host.parse().ok()?;
    Some(Address::Ipv6(host.octets(), port, flowinfo, scope_id))
}

/// A Unix socket path given as `str` (encoded as `os.fsencode` does, without NUL) or `bytes`,
/// if it is one the native `sendto` takes: not empty, and short enough for `sun_path` with
/// its terminating NUL under `socket`'s rule for either kind of name (anything else is left
/// to `socket.sendto` and its errors).
fn unix_destination(addr: &Bound<'_, PyAny>) -> Option<Address> {
    let path = if addr.is_exact_instance_of::<PyString>() {
        let encoded = fs_encode(addr).ok()?;
        let path = encoded.as_bytes();
        // socket refuses a str with an embedded NUL (ValueError).
        if path.contains(&0) {
            return None;
        }
        UnixPath::new(path)?
    } else if addr.is_exact_instance_of::<PyBytes>() {
        UnixPath::new(addr.cast::<PyBytes>().ok()?.as_bytes())?
    } else {
        return None;
    };
    Some(Address::Unix(path))
}

/// An IPv4, IPv6 or Unix socket address: a datagram's sender as the kernel gave it, or where
/// one goes.
#[derive(Clone, Copy, PartialEq)]
enum Address {
    /// Address and port.
    Ipv4([u8; 4], u16),
    /// Address, port, flow information, scope.
    Ipv6([u8; 16], u16, u32, u32),
    Unix(UnixPath),
}

impl Address {
    fn of(address: &net::SockAddr) -> Option<Address> {
        if let Some((host, port)) = address.ipv4() {
            return Some(Address::Ipv4(host, port));
        }
        if let Some(path) = address.unix() {
            return Some(Address::Unix(UnixPath::received(path)));
        }
        let (host, port, flowinfo, scope_id) = address.ipv6()?;
        Some(Address::Ipv6(host, port, flowinfo, scope_id))
    }

    /// The address object `socket`'s `makesockaddr` builds: `(host, port)` for IPv4,
    /// `(host, port, flowinfo, scope_id)` for IPv6, the host as `inet_ntop` writes it; the
    /// path for Unix sockets.
    fn tuple(self, py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
        match self {
            Address::Unix(path) => path.object(py),
            Address::Ipv4(host, port) => ipv4_address(py, (host, port)),
            Address::Ipv6(host, port, flowinfo, scope_id) => {
                ipv6_address(py, (host, port, flowinfo, scope_id))
            }
        }
    }
}

/// How many datagrams one readiness report delivers at most (asyncio delivers one; libuv,
/// and so uvloop, up to 32). Reading until `EAGAIN` saves a poll per datagram on a busy
/// socket; the bound keeps other fds' turn coming (docs/deviations.md).
const DATAGRAMS_PER_EVENT: usize = 32;

/// How many senders a [`DatagramReader`] remembers the address tuples of.
const RECENT_SENDERS: usize = 8;

/// The reader callback of one datagram transport: asyncio's
/// `_SelectorDatagramTransport._read_ready` for an IPv4, IPv6 or Unix socket
/// (`socket.socket`), repeated until the socket has nothing more or [`DATAGRAMS_PER_EVENT`]
/// datagrams came: each a `recvfrom` into a per-thread buffer (asyncio's `recvfrom(max_size)`
/// allocates `max_size`, 256 KiB, for every datagram), and the sender's address built as
/// `socket` builds it (`(host, port)`, `(host, port, flowinfo, scope_id)` for IPv6, a path
/// `str` or an abstract name's `bytes` for Unix, `None` for an unbound Unix sender), or reused
/// when one of the last few datagrams came from the same sender. Other sockets, and a
/// `max_size` larger than the buffer, take asyncio's own method.
#[pyclass(module = "ferroloop._core", name = "_DatagramReader", frozen)]
pub struct DatagramReader {
    transport: TransportRef,
    /// The family of the socket when it is a plain `socket.socket`, else -1 (checked once).
    family: GilCell<Option<i32>>,
    /// Recent senders and their address tuples (a server hears from a few peers in turn),
    /// the oldest replaced first.
    senders: GilCell<Vec<(Address, Py<PyAny>)>>,
}

impl DatagramReader {
    /// The socket's family when it is a plain `socket.socket`, else -1; checked once.
    fn plain_family(&self, sock: &Bound<'_, PyAny>) -> PyResult<i32> {
        let py = sock.py();
        if let Some(family) = *self.family.borrow(py) {
            return Ok(family);
        }
        let family = match is_plain_socket(sock)? {
            true => socket_kind(sock)?.0,
            false => -1,
        };
        *self.family.borrow_mut(py) = Some(family);
        Ok(family)
    }

    /// Whether the socket is a plain IPv4, IPv6 or Unix one (`socket.socket`, `AF_INET[6]`,
    /// `AF_UNIX`).
    fn is_native(&self, sock: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(matches!(
            self.plain_family(sock)?,
            libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX
        ))
    }

    /// The destination of `addr` when it is the very address tuple of a recent sender (an
    /// echo answers with the tuple it was given): no parsing.
    fn recent_sender(&self, py: Python<'_>, addr: &Bound<'_, PyAny>) -> Option<Address> {
        self.senders
            .borrow(py)
            .iter()
            .find(|(_, tuple)| tuple.as_ptr() == addr.as_ptr())
            .map(|(sender, _)| *sender)
    }

    /// `("a.b.c.d", port)`, as `socket`'s `makesockaddr` builds it (`inet_ntop`).
    fn address<'py>(&self, py: Python<'py>, sender: Address) -> PyResult<Bound<'py, PyAny>> {
        if let Some((_, address)) = self.senders.borrow(py).iter().find(|(s, _)| *s == sender) {
            return Ok(address.bind(py).clone());
        }
        let address = sender.tuple(py)?;
        let evicted = {
            let mut senders = self.senders.borrow_mut(py);
            let evicted = (senders.len() == RECENT_SENDERS).then(|| senders.remove(0));
            senders.push((sender, address.clone().unbind()));
            evicted
        };
        drop(evicted);
        Ok(address)
    }

    /// `transport.sendto(data, addr=None)` (the slotted class's C method, `methods.rs`, for a
    /// transport with this reader): asyncio's
    /// `_SelectorDatagramTransport.sendto` when the datagram can go out at once on a plain
    /// socket: connected (`send`), to an IPv4 `(host, port)` on an IPv4 socket, to a
    /// numeric IPv6 `(host, port[, flowinfo[, scope_id]])` on an IPv6 socket, or to a path
    /// (`str` or `bytes`, an abstract name included) on a Unix socket. A send that
    /// would block buffers the datagram with `_buffer_datagram`, as asyncio does; every other
    /// case is asyncio's own `sendto`. A socket connected to an unnamed Unix peer (a
    /// `socketpair`) sends with `send`, as uvloop does, where asyncio calls `sendto(data, None)`
    /// and fails (see docs/deviations.md).
    pub(crate) fn sendto(
        &self,
        transport: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = transport.py();
        let none = py.None().into_bound(py);
        let addr = addr.unwrap_or(&none);
        let asyncio = || -> PyResult<()> {
            PYTHON_SENDTO
                .get(py)
                .ok_or_else(|| {
                    PyRuntimeError::new_err("the datagram transport class is not installed")
                })?
                .call1(py, (transport, data, addr))?;
            Ok(())
        };
        let Some(buffer) = byte_buffer(data) else {
            return asyncio();
        };
        if buffer.len() == 0 {
            let drops_empty = *DROPS_EMPTY.get_or_try_init(py, || {
                py.import("sys")?.getattr("version_info")?.lt((3, 13))
            })?;
            if drops_empty {
                return Ok(());
            }
        }
        let address = dget!(py, transport, "_address")?;
        let addr = if address.is_truthy()? {
            // asyncio: `addr not in (None, self._address)` raises.
            if !addr.is_none() && !addr.is(&address) && !addr.eq(&address)? {
                return asyncio();
            }
            &address
        } else {
            addr
        };
        // `_buffer` is a property over this slot, which asyncio's `__init__` sets.
        if dget!(py, transport, "_conn_lost")?.is_truthy()?
            || dget!(py, transport, "_write_buffer")?.len()? != 0
        {
            return asyncio();
        }
        let sock = dget!(py, transport, "_sock")?;
        if !is_plain_socket(&sock)? {
            return asyncio();
        }
        let peername = dget!(py, transport, "_extra")?.get_item(intern!(py, "peername"))?;
        let unnamed_peer = addr.is_none()
            && peername
                .cast::<pyo3::types::PyString>()
                .is_ok_and(|name| name.to_str().is_ok_and(str::is_empty));
        let destination = if peername.is_truthy()? || unnamed_peer {
            Destination::Peer
        } else {
            let parse = match self.plain_family(&sock)? {
                libc::AF_INET => ipv4_destination,
                libc::AF_INET6 => ipv6_destination,
                libc::AF_UNIX => unix_destination,
                _ => return asyncio(),
            };
            match self.recent_sender(py, addr).or_else(|| parse(addr)) {
                Some(address) => Destination::To(address),
                None => return asyncio(),
            }
        };
        let fd = fileno(&sock)?;
        let sent = retry_interrupted(py, || match destination {
            Destination::Peer => net::send(fd, buffer.as_slice()),
            Destination::To(Address::Ipv4(host, port)) => {
                net::send_to_ipv4(fd, buffer.as_slice(), host, port)
            }
            Destination::To(Address::Ipv6(host, port, flowinfo, scope_id)) => {
                net::send_to_ipv6(fd, buffer.as_slice(), host, port, flowinfo, scope_id)
            }
            Destination::To(Address::Unix(path)) => {
                net::send_to_unix(fd, buffer.as_slice(), path.as_slice())
            }
        });
        drop(buffer);
        match sent {
            Ok(Some(_)) => Ok(()),
            Ok(None) => {
                transport.call_method1(intern!(py, "_buffer_datagram"), (data, addr))?;
                Ok(())
            }
            Err(error) if is_exit(&error, py) => Err(error),
            Err(error) if error.is_instance_of::<pyo3::exceptions::PyOSError>(py) => {
                dget!(py, transport, "_protocol")?
                    .call_method1(intern!(py, "error_received"), (error.into_value(py),))?;
                Ok(())
            }
            Err(error) => fatal_error(
                transport,
                error,
                intern!(py, "Fatal write error on datagram transport"),
            ),
        }
    }
}

#[pymethods]
impl DatagramReader {
    #[new]
    fn new(transport: Py<PyAny>) -> Self {
        DatagramReader {
            transport: TransportRef::new(transport, None),
            family: GilCell::new(None),
            senders: GilCell::new(Vec::new()),
        }
    }

    /// The name asyncio's messages give the method this replaces ("Exception in callback
    /// _SelectorDatagramTransport._read_ready()").
    #[getter]
    fn __qualname__(&self) -> &'static str {
        "_SelectorDatagramTransport._read_ready"
    }

    pub(crate) fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some((transport, _)) = self.transport.bind(py) else {
            return Ok(());
        };
        if dget!(py, transport, "_conn_lost")?.is_truthy()? {
            return Ok(());
        }
        let sock = dget!(py, transport, "_sock")?;
        let native = self.is_native(&sock)?;
        let max_size = match max_size::known(&transport) {
            Some(size) => usize::try_from(size).ok(),
            None => dget!(py, transport, "max_size")?.extract::<usize>().ok(),
        };
        let size = match max_size {
            Some(size) if native && size <= SCRATCH_SIZE => size,
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
        let fd = fileno(&sock)?;
        for index in 0..DATAGRAMS_PER_EVENT {
            // A datagram_received that closed the transport, or an error, ends the batch.
            if index > 0
                && (dget!(py, transport, "_conn_lost")?.is_truthy()?
                    || dget!(py, transport, "_closing")?.is_truthy()?)
            {
                break;
            }
            let (data, sender) = match recvfrom_bytes(py, fd, size) {
                Ok(Some(pair)) => pair,
                Ok(None) => break,
                Err(error) if error.is_instance_of::<pyo3::exceptions::PyOSError>(py) => {
                    dget!(py, transport, "_protocol")?
                        .call_method1(intern!(py, "error_received"), (error.into_value(py),))?;
                    break;
                }
                Err(error) if is_exit(&error, py) => return Err(error),
                Err(error) => {
                    fatal_error(
                        &transport,
                        error,
                        intern!(py, "Fatal read error on datagram transport"),
                    )?;
                    break;
                }
            };
            let address = match Address::of(&sender) {
                Some(sender) => self.address(py, sender)?,
                // No address from the kernel: what `makesockaddr` gives for an empty one.
                None => py.None().into_bound(py),
            };
            dget!(py, transport, "_protocol")?
                .call_method1(intern!(py, "datagram_received"), (&data, address))?;
            keep_spare_bytes(data);
        }
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.transport.traverse(&visit)
    }

    fn __clear__(&self, py: Python<'_>) {
        self.transport.clear(py);
        // Dropped once the borrow has ended (GilCell's rule 2).
        let senders = std::mem::take(&mut *self.senders.borrow_mut(py));
        drop(senders);
    }
}
