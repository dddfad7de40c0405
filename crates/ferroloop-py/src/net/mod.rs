//! Network code: what runs per socket operation, per connection and per datagram.
//!
//! One file per kind of object, as uvloop's `handles/`; the system calls themselves are in
//! `ferroloop_core::sys::net`.
//!
//! - [`socket`]: `socket.socket` objects (exact-type check, fd) and the non-blocking calls
//!   with Python's error conventions.
//! - [`buffer`]: the per-thread receive buffer and the buffer protocol.
//! - [`sock_ops`]: `loop.sock_recv`, `sock_recv_into`, `sock_sendall`.
//! - [`transport`]: what stream and datagram transports share.
//! - [`stream`]: TCP and Unix stream transports: the reader callback and `write`.
//! - [`drain`]: their writer callback, which sends what `write` had to buffer.
//! - [`stream_lifecycle`]: their construction, end of file, `close` and `connection_lost`.
//! - [`streams`]: asyncio's `StreamReaderProtocol.data_received` and `StreamReader.feed_data`
//!   beneath them, for the streams API.
//! - [`extra`]: their `extra` dict, made when first read.
//! - [`max_size`]: the slotted transports' `max_size`, read without a generic lookup.
//! - [`methods`]: C methods of ferroloop's subclasses of asyncio's transports and of
//!   `SSLProtocol` (the entry points into [`stream`], [`stream_lifecycle`] and [`tls`]).
//! - [`tls`]: the data path of asyncio's `SSLProtocol` once the handshake is done.
//! - [`datagram`]: UDP and Unix datagram transports (reads).
//! - [`server`]: listening sockets: the accept loop and each accepted connection's set-up.

pub(crate) mod buffer;
pub(crate) mod datagram;
pub(crate) mod drain;
pub(crate) mod extra;
pub(crate) mod max_size;
pub(crate) mod methods;
pub(crate) mod server;
pub(crate) mod sock_ops;
pub(crate) mod socket;
pub(crate) mod stream;
pub(crate) mod stream_lifecycle;
pub(crate) mod streams;
pub(crate) mod tls;
pub(crate) mod transport;

pub(crate) use datagram::DatagramReader;
pub(crate) use drain::TransportWriter;
pub(crate) use extra::{ExtraAttribute, PendingExtra, SocketAttribute};
pub(crate) use max_size::MaxSize;
pub(crate) use methods::{install_datagram_methods, install_stream_methods, install_tls_methods};
pub(crate) use server::{AcceptedFd, Acceptor};
pub(crate) use stream::TransportReader;
pub(crate) use stream_lifecycle::{new_socket_transport, release_stream_callbacks, Step};
pub(crate) use tls::tls_constants;

use pyo3::prelude::*;

use crate::ffi::ExactType;
use crate::handles::Args;

/// The classes of the callbacks that [`call_native`] calls as Rust functions.
static READER: ExactType = ExactType::new();
static DATAGRAM_READER: ExactType = ExactType::new();
static WRITER: ExactType = ExactType::new();
static ACCEPTOR: ExactType = ExactType::new();
static STEP: ExactType = ExactType::new();

/// Remember the classes of the native callbacks (at module init).
pub(crate) fn register_native_callbacks(py: Python<'_>) {
    READER.set(&py.get_type::<TransportReader>());
    DATAGRAM_READER.set(&py.get_type::<DatagramReader>());
    WRITER.set(&py.get_type::<TransportWriter>());
    ACCEPTOR.set(&py.get_type::<Acceptor>());
    STEP.set(&py.get_type::<Step>());
}

/// Call `callback(*args)` as the Rust function it is when it is one of ferroloop's own
/// callbacks: a reader or writer (`io`: the handle is a reader's or writer's) or a stream
/// transport's step. Python's call protocol (an argument tuple, pyo3's argument parsing and
/// trampoline) costs more than a reader's whole work on a small message. `None` for any
/// other callback; else whether it returned, with its exception set when it raised (as
/// `ffi::call_discarding` leaves it). A panic becomes pyo3's `PanicException` here, as
/// pyo3's trampoline would make it, so that it never unwinds through the loop's run (and
/// past the `PyContext_Exit` of the context the callback runs in).
#[inline(always)]
pub(crate) fn call_native(
    py: Python<'_>,
    callback: &Py<PyAny>,
    args: Option<&Args>,
    io: bool,
) -> Option<bool> {
    let call = std::panic::AssertUnwindSafe(|| call_native_unguarded(py, callback, args, io));
    let outcome = match std::panic::catch_unwind(call) {
        Ok(outcome) => outcome?,
        Err(payload) => Err(panic_error(payload)),
    };
    Some(match outcome {
        Ok(()) => true,
        Err(error) => {
            error.restore(py);
            false
        }
    })
}

/// pyo3's `PanicException` for a caught panic, with its message.
#[cold]
fn panic_error(payload: Box<dyn std::any::Any + Send>) -> PyErr {
    let message = match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(message), _) => (*message).to_owned(),
        (_, Some(message)) => message.clone(),
        _ => "panic from Rust code".to_owned(),
    };
    pyo3::panic::PanicException::new_err(message)
}

#[inline(always)]
fn call_native_unguarded(
    py: Python<'_>,
    callback: &Py<PyAny>,
    args: Option<&Args>,
    io: bool,
) -> Option<PyResult<()>> {
    Some(if io {
        if args.is_some() {
            return None;
        }
        call_native_io(py, callback)?
    } else if STEP.holds(callback) {
        let exc = args.and_then(|args| args.first(py));
        // SAFETY: the exact type was checked.
        unsafe { borrowed::<Step>(callback.bind(py), |step| step.run(py, exc)) }
    } else {
        return None;
    })
}

fn call_native_io(py: Python<'_>, callback: &Py<PyAny>) -> Option<PyResult<()>> {
    let bound = callback.bind(py);
    Some(if READER.holds(callback) {
        // SAFETY: the exact type was checked.
        unsafe { borrowed::<TransportReader>(bound, |reader| reader.__call__(py)) }
    } else if DATAGRAM_READER.holds(callback) {
        // SAFETY: the exact type was checked.
        unsafe { borrowed::<DatagramReader>(bound, |reader| reader.__call__(py)) }
    } else if WRITER.holds(callback) {
        // SAFETY: the exact type was checked.
        unsafe { borrowed::<TransportWriter>(bound, |writer| writer.__call__(py)) }
    } else if ACCEPTOR.holds(callback) {
        // SAFETY: the exact type was checked.
        Acceptor::__call__(unsafe { bound.cast_unchecked::<Acceptor>() })
    } else {
        return None;
    })
}

/// `call(&callback)` with `callback` borrowed as the `T` it is.
///
/// # Safety
/// `callback`'s type is exactly `T`.
unsafe fn borrowed<T: pyo3::PyClass>(
    callback: &Bound<'_, PyAny>,
    call: impl FnOnce(&T) -> PyResult<()>,
) -> PyResult<()> {
    // SAFETY: the caller's.
    let native = unsafe { callback.cast_unchecked::<T>() };
    let native = native.try_borrow()?;
    call(&native)
}
