//! The C method tables of ferroloop's subclasses of asyncio's transport and protocol
//! classes: methods that do asyncio's work natively in the case they cover and call asyncio's
//! own method, with the same arguments, in any other (so its errors and messages stay
//! asyncio's). Being methods of the class, not bound methods stored in each instance, they
//! cost an idle connection nothing.
//!
//! - `ferroloop._stream_transport._SelectorSocketTransport` (the slotted class) and
//!   `ferroloop._loop._SelectorSocketTransport` (TCP and Unix streams): `write` and `close`.
//!   On a transport whose reader callback (`_read_ready`) is a native [`TransportReader`], they
//!   are the reader's `write` and `stream_lifecycle::close`; on any other (made in debug mode,
//!   or after `connection_lost`, when the reader is gone) asyncio's (the slotted class's copy
//!   of it). The slotted class also gets `__del__`, native for a closed transport.
//! - `ferroloop._datagram_transport._SelectorDatagramTransport` (the slotted datagram class):
//!   `sendto`, the reader's native send on a transport whose `_reader` slot holds a
//!   [`DatagramReader`], the class's Python `sendto` otherwise.
//! - `ferroloop._sslproto.SSLProtocol`: `get_buffer` and `buffer_updated`; and its
//!   `_SSLProtocolTransport`: `write` (`tls.rs`).

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::impl_::trampoline::get_trampoline_function;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{intern, Borrowed};

use super::datagram::{DatagramReader, PYTHON_SENDTO};
use super::stream::{asyncio_write, is_slotted, slotted_of, Slotted, TransportReader, SLOTTED};
use super::stream_lifecycle;
use super::tls;
use super::transport::{
    asyncio_class_method, asyncio_method, get, Attributes, DATAGRAM_SLOTS, SLOTS,
};
use crate::event_loop::{fastcall_def, install_methods, MethodDef};
use crate::ffi::Slots;

static ASYNCIO_CLOSE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The transport's native reader, if `_read_ready` is one (on the slotted class, the
/// `_reader` slot behind that property).
fn native_reader<'py>(transport: &Bound<'py, PyAny>) -> Option<Bound<'py, TransportReader>> {
    let py = transport.py();
    let reader = match is_slotted(transport) {
        true => get!(py, transport, None, "_reader"),
        false => transport.getattr(intern!(py, "_read_ready")),
    };
    reader.ok()?.cast_into::<TransportReader>().ok()
}

/// How many keyword arguments a vectorcall passes.
///
/// # Safety
/// `kwnames` is a vectorcall's names: NULL or a tuple.
unsafe fn keyword_count(kwnames: *mut ffi::PyObject) -> ffi::Py_ssize_t {
    match kwnames.is_null() {
        true => 0,
        // SAFETY: a tuple of names when it is not NULL (the caller's).
        false => unsafe { ffi::PyTuple_GET_SIZE(kwnames) },
    }
}

/// `method(transport, *args, **kwargs)` for a fast call's arguments.
///
/// # Safety
/// `args`, `nargs` and `kwnames` are a vectorcall's arguments (CPython's, unchanged).
unsafe fn delegate(
    method: &Bound<'_, PyAny>,
    transport: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    let py = method.py();
    // SAFETY: (the caller's) a vectorcall's names.
    let keywords = unsafe { keyword_count(kwnames) };
    let mut vector = Vec::with_capacity((1 + nargs + keywords) as usize);
    vector.push(transport);
    // SAFETY: a vectorcall passes `nargs` positional then `keywords` keyword values.
    vector.extend_from_slice(unsafe {
        std::slice::from_raw_parts(args, (nargs + keywords) as usize)
    });
    // SAFETY: borrowed references, alive for the call; the result is a new reference or NULL
    // with an exception set.
    let result = unsafe {
        ffi::PyObject_Vectorcall(
            method.as_ptr(),
            vector.as_ptr(),
            (nargs + 1) as usize,
            kwnames,
        )
    };
    if result.is_null() {
        return Err(PyErr::fetch(py));
    }
    Ok(result)
}

/// `transport.write(data)`.
///
/// # Safety
/// Called by CPython as a fast method of the transport class (see `install`).
unsafe fn write(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: CPython passes the instance (the descriptor checked its type) and `nargs`
    // arguments.
    let transport = unsafe { Borrowed::from_ptr(py, slf) }.to_owned();
    if nargs == 1 && kwnames.is_null() {
        if let Some(reader) = native_reader(&transport) {
            // SAFETY: one positional argument.
            let data = unsafe { Borrowed::from_ptr(py, *args) };
            reader.borrow().write(py, &data)?;
            return Ok(py.None().into_ptr());
        }
    }
    let method = asyncio_write(&transport)?;
    // SAFETY: CPython's arguments, unchanged.
    unsafe { delegate(&method, slf, args, nargs, kwnames) }
}

/// `transport.close()`.
///
/// # Safety
/// Called by CPython as a fast method of the transport class (see `install`).
unsafe fn close(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: as in `write`.
    let transport = unsafe { Borrowed::from_ptr(py, slf) }.to_owned();
    if nargs == 0 && kwnames.is_null() {
        if let Some(reader) = native_reader(&transport) {
            stream_lifecycle::close(&reader)?;
            return Ok(py.None().into_ptr());
        }
    }
    let method = match slotted_of(&transport) {
        Some(slotted) => slotted.close.bind(py).clone(),
        None => asyncio_method(py, &ASYNCIO_CLOSE, "_SelectorSocketTransport", "close")?.clone(),
    };
    // SAFETY: CPython's arguments, unchanged.
    unsafe { delegate(&method, slf, args, nargs, kwnames) }
}

/// `transport.__del__()` on the slotted class (run at every transport's deallocation): nothing
/// when `_sock` is `None` (the transport was closed), asyncio's `__del__` (the class's copy:
/// the `ResourceWarning` for an unclosed transport, then the socket's `close`) otherwise.
///
/// # Safety
/// Called by CPython as a fast method of the slotted class (see `install_stream_methods`).
unsafe fn finalize(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: as in `write`.
    let transport = unsafe { Borrowed::from_ptr(py, slf) }.to_owned();
    if nargs == 0 && kwnames.is_null() {
        // An empty slot (a transport whose construction failed) is asyncio's case below.
        if let Ok(sock) = get!(py, transport, None, "_socket") {
            if sock.is_none() {
                return Ok(py.None().into_ptr());
            }
        }
    }
    let Some(slotted) = slotted_of(&transport) else {
        return Err(PyRuntimeError::new_err("not a slotted stream transport"));
    };
    let method = slotted.finalize.bind(py).clone();
    // SAFETY: CPython's arguments, unchanged.
    unsafe { delegate(&method, slf, args, nargs, kwnames) }
}

/// `transport.sendto(data, addr=None)` on the slotted datagram class.
///
/// # Safety
/// Called by CPython as a fast method of the class (see `install_datagram_methods`).
unsafe fn datagram_sendto(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    const SLOTS_ONLY: Attributes<'static> = None;
    // SAFETY: as in `write`.
    let transport = unsafe { Borrowed::from_ptr(py, slf) }.to_owned();
    // `sendto(data)`, `sendto(data, addr)` or `sendto(data, addr=addr)`.
    // SAFETY: CPython's names.
    let keywords = unsafe { keyword_count(kwnames) };
    let plain = match (nargs, keywords) {
        (1, 0) | (2, 0) => true,
        // SAFETY: a tuple of one name.
        (1, 1) => unsafe { Borrowed::from_ptr(py, ffi::PyTuple_GET_ITEM(kwnames, 0)) }
            .eq(intern!(py, "addr"))?,
        _ => false,
    };
    if plain {
        let reader = get!(in DATAGRAM_SLOTS; py, transport, SLOTS_ONLY, "_reader");
        if let Ok(reader) = reader.and_then(|r| Ok(r.cast_into::<DatagramReader>()?)) {
            // SAFETY: `nargs + keywords` arguments, the data first.
            let (data, addr) = unsafe {
                let data = Borrowed::from_ptr(py, *args).to_owned();
                let addr = (nargs + keywords == 2).then(|| Borrowed::from_ptr(py, *args.add(1)));
                (data, addr.map(|a| a.to_owned()))
            };
            reader.borrow().sendto(&transport, &data, addr.as_ref())?;
            return Ok(py.None().into_ptr());
        }
    }
    let method = PYTHON_SENDTO
        .get(py)
        .ok_or_else(|| PyRuntimeError::new_err("the datagram transport class is not installed"))?
        .bind(py)
        .clone();
    // SAFETY: CPython's arguments, unchanged.
    unsafe { delegate(&method, slf, args, nargs, kwnames) }
}

/// The C entry point `$entry` of the method body `$body` (`fn(py, slf, args, nargs,
/// kwnames) -> PyResult<*mut PyObject>`), run as pyo3 runs its own methods: attached, panics
/// turned into exceptions, errors restored.
macro_rules! entry {
    ($entry:ident, $body:ident) => {
        unsafe extern "C" fn $entry(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls it as a fast method with keywords; pyo3's trampoline
            // attaches, catches panics and restores errors.
            unsafe {
                get_trampoline_function!(fastcall_cfunction_with_keywords, $body)(
                    slf, args, nargs, kwnames,
                )
            }
        }
    };
}

entry!(write_entry, write);
entry!(close_entry, close);
entry!(finalize_entry, finalize);
entry!(datagram_sendto_entry, datagram_sendto);

/// The one positional argument of a call that has exactly one and no keywords.
///
/// # Safety
/// `args`, `nargs` and `kwnames` are a vectorcall's arguments.
unsafe fn single<'a, 'py>(
    py: Python<'py>,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> Option<Borrowed<'a, 'py, PyAny>> {
    if nargs == 1 && kwnames.is_null() {
        // SAFETY: one positional argument, borrowed for the call.
        Some(unsafe { Borrowed::from_ptr(py, *args) })
    } else {
        None
    }
}

/// The native step of a TLS method: the result, or `None` to call asyncio's method.
type NativeStep<'py> =
    fn(&Bound<'py, PyAny>, &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyAny>>>;

/// One of asyncio's `sslproto` methods, looked up once: the cell, the class, the name.
type AsyncioMethod = (&'static PyOnceLock<Py<PyAny>>, &'static str, &'static str);

/// A TLS method of one positional argument: `native(self, argument)` when called that way and
/// it takes the case (`Some(result)`), else asyncio's `sslproto.<class_name>.<name>` (looked
/// up once into `cell`) with the same arguments.
///
/// # Safety
/// Called by CPython as a fast method of the class (see `install_tls_methods`); `slf`,
/// `args`, `nargs` and `kwnames` are its arguments, unchanged.
unsafe fn tls_method<'py>(
    py: Python<'py>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
    native: NativeStep<'py>,
    (cell, class_name, name): AsyncioMethod,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: CPython passes the instance (the descriptor checked its type).
    let object = unsafe { Borrowed::from_ptr(py, slf) }.to_owned();
    // SAFETY: CPython's arguments.
    if let Some(argument) = unsafe { single(py, args, nargs, kwnames) } {
        if let Some(result) = native(&object, &argument)? {
            return Ok(result.into_ptr());
        }
    }
    let method = asyncio_class_method(py, cell, "asyncio.sslproto", class_name, name)?;
    // SAFETY: CPython's arguments, unchanged.
    unsafe { delegate(method, slf, args, nargs, kwnames) }
}

/// The C entry `$entry` of the TLS method `$class.$name` whose native step is `$native` (see
/// `tls_method`).
macro_rules! tls_entry {
    ($entry:ident, $native:path, $class:literal, $name:literal) => {
        unsafe extern "C" fn $entry(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            /// # Safety
            /// See `tls_method`.
            unsafe fn body(
                py: Python<'_>,
                slf: *mut ffi::PyObject,
                args: *const *mut ffi::PyObject,
                nargs: ffi::Py_ssize_t,
                kwnames: *mut ffi::PyObject,
            ) -> PyResult<*mut ffi::PyObject> {
                static ASYNCIO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
                let asyncio = (&ASYNCIO, $class, $name);
                // SAFETY: CPython's arguments, unchanged.
                unsafe { tls_method(py, slf, args, nargs, kwnames, $native, asyncio) }
            }
            // SAFETY: CPython calls it as a fast method with keywords; pyo3's trampoline
            // attaches, catches panics and restores errors.
            unsafe {
                get_trampoline_function!(fastcall_cfunction_with_keywords, body)(
                    slf, args, nargs, kwnames,
                )
            }
        }
    };
}

tls_entry!(
    tls_get_buffer_entry,
    tls::get_buffer,
    "SSLProtocol",
    "get_buffer"
);
tls_entry!(
    tls_buffer_updated_entry,
    tls::buffer_updated,
    "SSLProtocol",
    "buffer_updated"
);
tls_entry!(
    tls_write_entry,
    tls::write,
    "_SSLProtocolTransport",
    "write"
);

static METHODS: [MethodDef; 2] = [
    fastcall_def(
        c"write",
        c"Write some data bytes to the transport.",
        write_entry,
    ),
    fastcall_def(c"close", c"Close the transport.", close_entry),
];

static SLOTTED_METHODS: [MethodDef; 1] = [fastcall_def(
    c"__del__",
    c"Warn about an unclosed transport and close its socket.",
    finalize_entry,
)];

/// `ferroloop._core._install_stream_methods(cls, unset=None)`: `cls.write` and `cls.close`
/// become the native methods. `cls` is ferroloop's subclass of `_SelectorSocketTransport`, or,
/// with `unset` (the value of its `_read_cb` / `_write_cb` slots until set), ferroloop's
/// slotted stream transport class, which native construction then makes.
#[pyfunction]
#[pyo3(name = "_install_stream_methods", signature = (cls, unset=None))]
pub fn install_stream_methods(cls: &Bound<'_, PyType>, unset: Option<Py<PyAny>>) -> PyResult<()> {
    if let Some(unset) = unset {
        let py = cls.py();
        // Before the C methods replace them: the class's own or its slotted base's.
        let own = |name: &str| -> PyResult<Py<PyAny>> { Ok(cls.getattr(name)?.unbind()) };
        let slotted = Slotted {
            class: cls.clone().unbind(),
            unset,
            write: own("write")?,
            close: own("close")?,
            finalize: own("__del__")?,
        };
        if SLOTTED.set(py, slotted).is_err() || SLOTS.set(py, Slots::of(cls)?).is_err() {
            return Err(PyRuntimeError::new_err(
                "the slotted stream transport class is installed already",
            ));
        }
        install_methods(cls, &SLOTTED_METHODS)?;
    }
    install_methods(cls, &METHODS)
}

static DATAGRAM_METHODS: [MethodDef; 1] = [fastcall_def(
    c"sendto",
    c"Send data to the transport.",
    datagram_sendto_entry,
)];

/// `ferroloop._core._install_datagram_methods(cls)`: `cls` is ferroloop's slotted datagram
/// transport class; its `sendto` (kept for the cases the native one leaves to it) becomes the
/// native method, and its slots are what the native reader and `sendto` read.
#[pyfunction]
#[pyo3(name = "_install_datagram_methods")]
pub fn install_datagram_methods(cls: &Bound<'_, PyType>) -> PyResult<()> {
    let py = cls.py();
    let sendto = cls.getattr(intern!(py, "sendto"))?.unbind();
    if PYTHON_SENDTO.set(py, sendto).is_err() || DATAGRAM_SLOTS.set(py, Slots::of(cls)?).is_err() {
        return Err(PyRuntimeError::new_err(
            "the slotted datagram transport class is installed already",
        ));
    }
    install_methods(cls, &DATAGRAM_METHODS)
}

static TLS_PROTOCOL_METHODS: [MethodDef; 2] = [
    fastcall_def(
        c"get_buffer",
        c"Called to allocate a new receive buffer.",
        tls_get_buffer_entry,
    ),
    fastcall_def(
        c"buffer_updated",
        c"Called when the buffer was updated with the received data.",
        tls_buffer_updated_entry,
    ),
];

static TLS_TRANSPORT_METHODS: [MethodDef; 1] = [fastcall_def(
    c"write",
    c"Write some data bytes to the transport.",
    tls_write_entry,
)];

/// `ferroloop._core._install_tls_methods(protocol_cls, transport_cls)`: ferroloop's
/// subclasses of `SSLProtocol` and `_SSLProtocolTransport` get the native methods.
#[pyfunction]
#[pyo3(name = "_install_tls_methods")]
pub fn install_tls_methods(
    protocol_cls: &Bound<'_, PyType>,
    transport_cls: &Bound<'_, PyType>,
) -> PyResult<()> {
    install_methods(protocol_cls, &TLS_PROTOCOL_METHODS)?;
    install_methods(transport_cls, &TLS_TRANSPORT_METHODS)
}
