//! TLS: the data path of asyncio's `SSLProtocol` (3.11+) once the handshake is done, natively.
//!
//! ferroloop's TLS connections are asyncio's own `SSLProtocol` and `_SSLProtocolTransport`
//! (subclassed in `ferroloop._sslproto`, so every attribute, method, state and error is
//! asyncio's), on ferroloop's socket transport. Three methods of the subclasses are C methods
//! (`methods.rs`) that run the code below: `SSLProtocol.get_buffer` and `buffer_updated` (the
//! socket transport's reads) and `_SSLProtocolTransport.write` (the application's writes).
//! Each does what asyncio's method does, step for step, in the state where the connection
//! spends its life (`WRAPPED`, nothing held back); in any other case it calls asyncio's own
//! method or step (`_do_handshake`, `_do_flush`, `_do_read__buffered`, `_do_write`,
//! `_control_app_writing`, `_fatal_error`, ...), so handshakes, shutdown, flow control and
//! errors are asyncio's code.
//!
//! The socket transport's reader (`stream.rs`) calls the steps of `get_buffer` and
//! `buffer_updated` directly ([`Direct`]) while those are the class's own C methods (not
//! replaced on the class, not shadowed on the instance), as the method calls would run them.
//!
//! What this saves per record: the Python frames of `buffer_updated`, `_do_read`,
//! `_do_read__copied`, `_process_outgoing`, `_control_app_writing`, `_control_ssl_reading`,
//! `write`, `_write_appdata` and `_do_write`, the enum class attribute lookups of their state
//! checks, `ssl.SSLObject`'s Python `read`/`write` wrappers, and the `SSLWantReadError` that
//! ends each of asyncio's read loops: when nothing is left to decrypt (the incoming BIO and the
//! SSL object's own buffer are empty) the next `read` could only raise it, so it is not made.

use pyo3::exceptions::{PyException, PyTypeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PySlice, PyString, PyTuple, PyType};

use super::streams;
use super::transport::{self, dict_attr};
use crate::ffi::{
    bytes_len, descriptor_get, instance_dict, type_lookup, while_handling, BytesBuilder, Slots,
};

/// What the native methods compare with, given once by `ferroloop._sslproto`.
struct Constants {
    /// `SSLProtocolState` members.
    wrapped: Py<PyAny>,
    do_handshake: Py<PyAny>,
    flushing: Py<PyAny>,
    shutdown: Py<PyAny>,
    /// ferroloop's `SSLProtocol` subclass.
    protocol_class: Py<PyType>,
    /// `ssl.SSLObject`: for exactly it, `read`, `write` and `pending` are called on its C
    /// object (`_sslobj`), as its Python methods do.
    ssl_object: Py<PyType>,
    /// `sslproto.SSLAgainErrors`.
    again_errors: Py<PyAny>,
    /// The class's own `get_buffer` and `buffer_updated` (its C methods, `methods.rs`): while
    /// an instance's lookup finds them, the socket transport's reader calls the steps below
    /// directly ([`Direct`]).
    get_buffer: Py<PyAny>,
    buffer_updated: Py<PyAny>,
    /// `ssl.MemoryBIO` and its `read`, `write` and `pending`.
    bio: Exact,
    /// The C object inside an `ssl.SSLObject` (`_ssl._SSLSocket`) and its `read`, `write` and
    /// `pending`.
    ssl: Exact,
}

/// A C type and its `read`, `write` and `pending`, taken from the class once: on an object of
/// exactly that type, `obj.<name>(...)` is the class's method (or getter) called with `obj` as
/// its first argument, without the attribute lookup and the bound method. Both types are
/// immutable (no instance dict, no assignable attributes), so that is what the lookup would
/// find. `None` (every call a plain one) on a Python without them.
struct Exact(Option<Members>);

struct Members {
    class: Py<PyType>,
    read: Py<PyAny>,
    write: Py<PyAny>,
    pending: Py<PyAny>,
}

impl Exact {
    /// `<module>.<class>` and its members.
    fn of(py: Python<'_>, module: &str, class: &str) -> Self {
        let found = || -> PyResult<Members> {
            let class = py.import(module)?.getattr(class)?.cast_into::<PyType>()?;
            let member = |name: &str| class.getattr(name).map(Bound::unbind);
            Ok(Members {
                read: member("read")?,
                write: member("write")?,
                pending: member("pending")?,
                class: class.unbind(),
            })
        };
        Exact(found().ok())
    }

    /// The members, when `obj` is exactly of the type.
    fn of_exact(&self, obj: &Bound<'_, PyAny>) -> Option<&Members> {
        let members = self.0.as_ref()?;
        obj.get_type()
            .is(members.class.bind(obj.py()))
            .then_some(members)
    }
}

/// `$obj.$name($args...)` through [`Exact`]'s member of that name when `$obj` is of its type,
/// else a plain method call.
macro_rules! exact_call {
    ($exact:expr, $obj:expr, $name:ident $(, $arg:expr)*) => {{
        let obj = $obj;
        match $exact.of_exact(obj) {
            Some(members) => members.$name.bind(obj.py()).call1((obj, $($arg,)*)),
            None => obj.call_method1(intern!(obj.py(), stringify!($name)), ($($arg,)*)),
        }
    }};
}

/// `bio.pending`, through the getter of `ssl.MemoryBIO` when `bio` is one.
fn bio_pending<'py>(constants: &Constants, bio: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    match constants.bio.of_exact(bio) {
        Some(members) => descriptor_get(members.pending.bind(bio.py()), bio),
        None => bio.getattr(intern!(bio.py(), "pending")),
    }
}

static CONSTANTS: PyOnceLock<Constants> = PyOnceLock::new();

/// `ferroloop._core._tls_constants(...)`: see [`Constants`].
#[pyfunction]
#[pyo3(name = "_tls_constants")]
pub fn tls_constants(
    protocol_class: &Bound<'_, PyType>,
    transport_class: &Bound<'_, PyType>,
    states: &Bound<'_, PyAny>,
    ssl_object: &Bound<'_, PyType>,
    again_errors: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    let py = states.py();
    // As the constants: a second call keeps the first tables, of the same classes.
    let _ = PROTOCOL_SLOTS.set(py, Slots::of(protocol_class)?);
    let _ = TRANSPORT_SLOTS.set(py, Slots::of(transport_class)?);
    let member = |name: &str| states.getattr(name).map(Bound::unbind);
    let own = |name: &str| -> PyResult<Py<PyAny>> {
        type_lookup(protocol_class, &PyString::new(py, name))
            .map(Bound::unbind)
            .ok_or_else(|| PyTypeError::new_err(format!("the TLS protocol class has no {name}")))
    };
    let constants = Constants {
        get_buffer: own("get_buffer")?,
        buffer_updated: own("buffer_updated")?,
        wrapped: member("WRAPPED")?,
        do_handshake: member("DO_HANDSHAKE")?,
        flushing: member("FLUSHING")?,
        shutdown: member("SHUTDOWN")?,
        protocol_class: protocol_class.clone().unbind(),
        ssl_object: ssl_object.clone().unbind(),
        again_errors: again_errors.clone().into_any().unbind(),
        bio: Exact::of(py, "ssl", "MemoryBIO"),
        ssl: Exact::of(py, "_ssl", "_SSLSocket"),
    };
    // A second call (a re-import) keeps the first constants: they are the same objects.
    let _ = CONSTANTS.set(py, constants);
    Ok(())
}

/// An `SSLProtocol` of ferroloop's class, whose attributes are read with [`get!`].
struct Protocol<'py> {
    object: Bound<'py, PyAny>,
    constants: &'py Constants,
}

/// The slots of ferroloop's `SSLProtocol` and `_SSLProtocolTransport` (`ferroloop._sslproto`):
/// the attributes asyncio's code and the steps below read on every record.
static PROTOCOL_SLOTS: PyOnceLock<Slots> = PyOnceLock::new();
static TRANSPORT_SLOTS: PyOnceLock<Slots> = PyOnceLock::new();

/// An attribute of the protocol that is one of its slots: read at its offset (a plain lookup
/// when the slot is empty, which raises asyncio's `AttributeError`, or when it is not a slot).
/// A slot of the class comes before the instance dict for every reader, as a data
/// descriptor does.
macro_rules! get {
    ($protocol:expr, $name:literal) => {
        transport::get!(in PROTOCOL_SLOTS; $protocol.py(), $protocol.object, SLOTS_FIRST, $name)
    };
}

/// For [`get!`]: the slots first, whether or not the object has an instance dict.
const SLOTS_FIRST: transport::Attributes<'static> = None;

macro_rules! call {
    ($protocol:expr, $name:literal $(, $arg:expr)*) => {
        $protocol
            .object
            .call_method1(intern!($protocol.object.py(), $name), ($($arg,)*))
    };
}

impl<'py> Protocol<'py> {
    /// `object` when it is ferroloop's `SSLProtocol` (not a subclass of it).
    fn of(object: &Bound<'py, PyAny>) -> Option<Protocol<'py>> {
        let constants = CONSTANTS.get(object.py())?;
        if !object
            .get_type()
            .is(constants.protocol_class.bind(object.py()))
        {
            return None;
        }
        Some(Protocol {
            object: object.clone(),
            constants,
        })
    }

    /// `self.max_size`: a class attribute that an instance may set in its `__dict__`, read
    /// there and then in the class, as the generic lookup would.
    fn max_size(&self) -> PyResult<Bound<'py, PyAny>> {
        let name = intern!(self.py(), "max_size");
        match instance_dict(&self.object) {
            Some(attributes) => dict_attr(&self.object, &attributes, name),
            None => self.object.getattr(name),
        }
    }

    fn py(&self) -> Python<'py> {
        self.object.py()
    }

    fn in_state(&self, state: &Bound<'py, PyAny>, member: &Py<PyAny>) -> bool {
        state.is(member.bind(self.py()))
    }

    fn flag(&self, value: PyResult<Bound<'py, PyAny>>) -> PyResult<bool> {
        value?.is_truthy()
    }

    /// The C object of `self._sslobj` when it is exactly an `ssl.SSLObject` (whose `read`,
    /// `write` and `pending` only call it), else `self._sslobj` itself; and which it is.
    fn ssl_object(&self) -> PyResult<(Bound<'py, PyAny>, bool)> {
        let sslobj = get!(self, "_sslobj")?;
        if sslobj
            .get_type()
            .is(self.constants.ssl_object.bind(self.py()))
        {
            if let Ok(inner) = sslobj.getattr(intern!(self.py(), "_sslobj")) {
                return Ok((inner, true));
            }
        }
        Ok((sslobj, false))
    }

    /// `_fatal_error(exc, 'Fatal error on SSL protocol')` for an `Exception`, as asyncio's
    /// `try`/`except Exception` around its steps does; anything else propagates.
    fn guard(&self, result: PyResult<()>) -> PyResult<()> {
        match result {
            Err(error) if error.is_instance_of::<PyException>(self.py()) => {
                let message = intern!(self.py(), "Fatal error on SSL protocol");
                let exc = error.into_value(self.py()).into_bound(self.py()).into_any();
                // Called from asyncio's `except` block, where `exc_info=True` finds it.
                while_handling(&exc, || call!(self, "_fatal_error", &exc, message))?;
                Ok(())
            }
            other => other,
        }
    }
}

/// `SSLProtocol.get_buffer(n)`, or `None` to call asyncio's (the buffer must grow, or `n`
/// is not an int).
pub(crate) fn get_buffer<'py>(
    object: &Bound<'py, PyAny>,
    n: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let (Some(protocol), Ok(n)) = (Protocol::of(object), n.extract::<isize>()) else {
        return Ok(None);
    };
    protocol_buffer(&protocol, n)
}

/// [`get_buffer`]'s step for an int `n`.
fn protocol_buffer<'py>(protocol: &Protocol<'py>, n: isize) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Ok(max_size) = protocol.max_size()?.extract::<isize>() else {
        return Ok(None);
    };
    let want = if n <= 0 || n > max_size { max_size } else { n };
    let buffer = get!(protocol, "_ssl_buffer")?;
    if (buffer.len()? as isize) < want {
        return Ok(None);
    }
    get!(protocol, "_ssl_buffer_view").map(Some)
}

/// `SSLProtocol.buffer_updated(nbytes)`: `None`, or nothing to call asyncio's (`nbytes` is
/// not an int).
pub(crate) fn buffer_updated<'py>(
    object: &Bound<'py, PyAny>,
    nbytes: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let (Some(protocol), Ok(nbytes)) = (Protocol::of(object), nbytes.extract::<isize>()) else {
        return Ok(None);
    };
    let py = protocol.py();
    received(&protocol, nbytes)?;
    Ok(Some(py.None().into_bound(py)))
}

/// [`buffer_updated`]'s step for an int `nbytes`.
fn received(protocol: &Protocol<'_>, nbytes: isize) -> PyResult<()> {
    let py = protocol.py();
    let view = get!(protocol, "_ssl_buffer_view")?;
    let head = view.get_item(PySlice::new(py, 0, nbytes, 1))?;
    let constants = protocol.constants;
    exact_call!(constants.bio, &get!(protocol, "_incoming")?, write, head)?;
    let state = get!(protocol, "_state")?;
    if protocol.in_state(&state, &constants.wrapped) {
        do_read(protocol)?;
    } else if protocol.in_state(&state, &constants.do_handshake) {
        call!(protocol, "_do_handshake")?;
    } else if protocol.in_state(&state, &constants.flushing) {
        call!(protocol, "_do_flush")?;
    } else if protocol.in_state(&state, &constants.shutdown) {
        call!(protocol, "_do_shutdown")?;
    }
    Ok(())
}

/// ferroloop's `SSLProtocol` as the socket transport's reader sees it (`stream.rs`): while
/// `protocol.get_buffer` and `protocol.buffer_updated` are the class's C methods (not
/// replaced on the class, not shadowed by instance attributes), the reader calls their steps
/// as those methods would, without two method lookups, two calls and an int object per read.
pub(crate) struct Direct<'py>(Protocol<'py>);

impl<'py> Direct<'py> {
    /// `object`'s direct steps, when its methods are the class's own.
    pub(crate) fn of(object: &Bound<'py, PyAny>) -> Option<Direct<'py>> {
        let protocol = Protocol::of(object)?;
        let py = object.py();
        let constants = protocol.constants;
        let class = constants.protocol_class.bind(py);
        let names = [
            (intern!(py, "get_buffer"), &constants.get_buffer),
            (intern!(py, "buffer_updated"), &constants.buffer_updated),
        ];
        let attributes = instance_dict(object);
        for (name, method) in names {
            if !type_lookup(class, name).is_some_and(|found| found.is(method.bind(py))) {
                return None;
            }
            if let Some(attributes) = &attributes {
                if !matches!(attributes.get_item(name), Ok(None)) {
                    return None;
                }
            }
        }
        Some(Direct(protocol))
    }

    /// `protocol.get_buffer(n)`: `None` where the C method would call asyncio's (the
    /// caller calls the method then).
    pub(crate) fn get_buffer(&self, n: isize) -> PyResult<Option<Bound<'py, PyAny>>> {
        protocol_buffer(&self.0, n)
    }

    /// `protocol.buffer_updated(nbytes)`.
    pub(crate) fn buffer_updated(&self, nbytes: isize) -> PyResult<()> {
        received(&self.0, nbytes)
    }
}

/// asyncio's `_do_read` in the `WRAPPED` state.
fn do_read(protocol: &Protocol<'_>) -> PyResult<()> {
    let steps = || -> PyResult<()> {
        if !protocol.flag(get!(protocol, "_app_reading_paused"))? {
            if protocol.flag(get!(protocol, "_app_protocol_is_buffer"))? {
                call!(protocol, "_do_read__buffered")?;
            } else {
                read_copied(protocol)?;
            }
            if protocol.flag(get!(protocol, "_write_backlog"))? {
                call!(protocol, "_do_write")?;
            } else {
                process_outgoing(protocol)?;
            }
        }
        control_ssl_reading(protocol)
    };
    protocol.guard(steps())
}

/// asyncio's `_do_read__copied`: decrypt what has come, hand it to `data_received` in one
/// piece, and start the shutdown on the peer's `close_notify`.
fn read_copied(protocol: &Protocol<'_>) -> PyResult<()> {
    let (sslobj, exact) = protocol.ssl_object()?;
    let incoming = get!(protocol, "_incoming")?;
    let (data, close_notify) = match exact {
        true => read_in_place(&sslobj, &incoming, protocol.constants)?,
        false => read_chunks(&sslobj, &protocol.max_size()?, protocol.constants)?,
    };
    if let Some(data) = data {
        let app = get!(protocol, "_app_protocol")?;
        // A `StreamReaderProtocol` (the streams API over TLS): its calls natively.
        streams::data_received(&app, &data)?;
    }
    if close_notify {
        call!(protocol, "_call_eof_received")?;
        call!(protocol, "_start_shutdown")?;
    }
    Ok(())
}

/// What asyncio's read loop gives: the data decrypted (`None` when none), and whether the
/// peer's `close_notify` ended it.
type Decrypted<'py> = (Option<Bound<'py, PyAny>>, bool);

/// asyncio's read loop for an SSL object that is not exactly `ssl.SSLObject`: `read(max_size)`
/// until it raises `SSLWantReadError` (or another of `SSLAgainErrors`) or gives `b''`, the
/// chunks joined.
fn read_chunks<'py>(
    sslobj: &Bound<'py, PyAny>,
    max_size: &Bound<'py, PyAny>,
    constants: &Constants,
) -> PyResult<Decrypted<'py>> {
    let py = sslobj.py();
    let again = constants.again_errors.bind(py);
    let mut chunks: Vec<Bound<'_, PyAny>> = Vec::new();
    let mut close_notify = false;
    loop {
        let chunk = match sslobj.call_method1(intern!(py, "read"), (max_size,)) {
            Ok(chunk) => chunk,
            Err(error) if error.matches(py, again)? => break,
            Err(error) => return Err(error),
        };
        if !chunk.is_truthy()? {
            close_notify = true;
            break;
        }
        chunks.push(chunk);
    }
    let data = match chunks.len() {
        0 => None,
        1 => chunks.pop(),
        _ => Some(
            PyBytes::new(py, b"").call_method1(intern!(py, "join"), (PyList::new(py, chunks)?,))?,
        ),
    };
    Ok((data, close_notify))
}

/// The same read loop on `ssl.SSLObject`'s C object, decrypting into one `bytes` object made
/// for it: `read(n, buffer)` into its unused part, the object sized from what the incoming
/// BIO holds and grown when it is full (a record whose start was read before, plaintext the SSL
/// object kept from an earlier read), then cut to what came. asyncio's `read(max_size)`
/// allocates `max_size` (256 KiB) per record and `b''.join` copies the records again; the data
/// `data_received` gets is the same.
///
/// The loop ends where asyncio's would raise `SSLWantReadError`, without that read: when a
/// read gave less than it was offered and the incoming BIO is empty. OpenSSL's `SSL_read`
/// copies from every record it has decrypted until the buffer is full (`ssl3_read_bytes`, in
/// every OpenSSL CPython supports), so a read that leaves room has taken all the SSL object
/// held (its `pending()` is 0, which asking would cost a release and a take of the GIL); and
/// with nothing in the BIO, no further record can be decrypted. A read that fills its room
/// is followed by another.
fn read_in_place<'py>(
    sslobj: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    constants: &Constants,
) -> PyResult<Decrypted<'py>> {
    let py = sslobj.py();
    let again = constants.again_errors.bind(py);
    let encrypted = || -> Option<usize> {
        bio_pending(constants, incoming)
            .ok()?
            .extract::<usize>()
            .ok()
    };
    let mut data = BytesBuilder::new(py, encrypted().unwrap_or(0))?;
    let mut close_notify = false;
    loop {
        if data.room() == 0 {
            data.reserve(RECORD)?;
        }
        let offered = data.room();
        let read = data.fill(|view| {
            exact_call!(constants.ssl, sslobj, read, view.len()?, view)?.extract::<usize>()
        });
        match read {
            Ok(0) => {
                close_notify = true;
                break;
            }
            // Everything the SSL object held is taken, and nothing is left to decrypt: the
            // next read could only raise SSLWantReadError.
            Ok(count) if count < offered && encrypted() == Some(0) => break,
            Ok(_) => {}
            Err(error) if error.matches(py, again)? => break,
            Err(error) => return Err(error),
        }
    }
    let data = match data.is_empty() {
        true => None,
        false => Some(data.finish()?),
    };
    Ok((data, close_notify))
}

/// Room kept free for one more read: a TLS record's largest plaintext (16 KiB).
const RECORD: usize = 16 * 1024;

/// asyncio's `_process_outgoing`: what the SSL object wrote goes to the socket transport.
fn process_outgoing(protocol: &Protocol<'_>) -> PyResult<()> {
    let py = protocol.py();
    if !protocol.flag(get!(protocol, "_ssl_writing_paused"))? {
        let data = exact_call!(protocol.constants.bio, &get!(protocol, "_outgoing")?, read)?;
        if data.len()? > 0 {
            get!(protocol, "_transport")?.call_method1(intern!(py, "write"), (data,))?;
        }
    }
    control_app_writing(protocol)
}

/// Whether asyncio's flow-control step for `size` against `high`/`low` and `paused` would act
/// (pause above the high-water mark, resume at or below the low one); `true` when a value is
/// not an int, so that asyncio's step decides.
fn flow_control_acts(
    size: PyResult<isize>,
    high: &Bound<'_, PyAny>,
    low: &Bound<'_, PyAny>,
    paused: bool,
) -> bool {
    let (Ok(size), Ok(high), Ok(low)) = (size, high.extract::<isize>(), low.extract::<isize>())
    else {
        return true;
    };
    if paused {
        size <= low
    } else {
        size >= high
    }
}

/// asyncio's `_control_app_writing`, called only when it has something to do.
fn control_app_writing(protocol: &Protocol<'_>) -> PyResult<()> {
    let outgoing = bio_pending(protocol.constants, &get!(protocol, "_outgoing")?)?;
    let backlog = get!(protocol, "_write_buffer_size")?;
    let size = outgoing
        .extract::<isize>()
        .and_then(|a| Ok(a + backlog.extract::<isize>()?));
    let paused = protocol.flag(get!(protocol, "_app_writing_paused"))?;
    let high = get!(protocol, "_outgoing_high_water")?;
    let low = get!(protocol, "_outgoing_low_water")?;
    if flow_control_acts(size, &high, &low, paused) {
        call!(protocol, "_control_app_writing")?;
    }
    Ok(())
}

/// asyncio's `_control_ssl_reading`, called only when it has something to do.
fn control_ssl_reading(protocol: &Protocol<'_>) -> PyResult<()> {
    let size = bio_pending(protocol.constants, &get!(protocol, "_incoming")?)?;
    let paused = protocol.flag(get!(protocol, "_ssl_reading_paused"))?;
    let high = get!(protocol, "_incoming_high_water")?;
    let low = get!(protocol, "_incoming_low_water")?;
    if flow_control_acts(size.extract::<isize>(), &high, &low, paused) {
        call!(protocol, "_control_ssl_reading")?;
    }
    Ok(())
}

/// `_SSLProtocolTransport.write(data)` for `bytes` on a `WRAPPED` connection with nothing
/// held back: `None`, or nothing to call asyncio's.
pub(crate) fn write<'py>(
    transport: &Bound<'py, PyAny>,
    data: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = transport.py();
    if !data.is_exact_instance_of::<PyBytes>() {
        return Ok(None);
    }
    // Not there: asyncio's method raises its error.
    let Ok(object) =
        transport::get!(in TRANSPORT_SLOTS; py, transport, SLOTS_FIRST, "_ssl_protocol")
    else {
        return Ok(None);
    };
    let Some(protocol) = Protocol::of(&object) else {
        return Ok(None);
    };
    let size = bytes_len(data);
    if size == 0 {
        return Ok(Some(py.None().into_bound(py)));
    }
    let state = get!(protocol, "_state")?;
    if !protocol.in_state(&state, &protocol.constants.wrapped)
        || protocol.flag(get!(protocol, "_write_backlog"))?
    {
        return Ok(None);
    }
    // _write_appdata((data,)): into the backlog, then _do_write, which takes it out again
    // once the SSL object has it all.
    let steps = || -> PyResult<()> {
        let (sslobj, _) = protocol.ssl_object()?;
        match exact_call!(protocol.constants.ssl, &sslobj, write, data) {
            Ok(count) => {
                let count = count.extract::<isize>()?;
                if count < size {
                    // A partial write: asyncio's loop goes on with the rest.
                    let rest = data.get_item(PySlice::new(py, count, isize::MAX, 1))?;
                    hold_back(&protocol, &rest, size - count)?;
                    call!(protocol, "_do_write")?;
                    return Ok(());
                }
            }
            Err(error) => {
                hold_back(&protocol, data, size)?;
                if !error.matches(py, protocol.constants.again_errors.bind(py))? {
                    return Err(error);
                }
            }
        }
        process_outgoing(&protocol)
    };
    protocol.guard(steps())?;
    Ok(Some(py.None().into_bound(py)))
}

/// `data` (of `size` bytes) into `_write_backlog`, counted in `_write_buffer_size`.
fn hold_back(protocol: &Protocol<'_>, data: &Bound<'_, PyAny>, size: isize) -> PyResult<()> {
    let py = protocol.py();
    get!(protocol, "_write_backlog")?.call_method1(intern!(py, "append"), (data,))?;
    let total = get!(protocol, "_write_buffer_size")?.add(size)?;
    protocol
        .object
        .setattr(intern!(py, "_write_buffer_size"), total)
}
