//! `write` and `close` of ferroloop's socket transport class
//! (`ferroloop._loop._SelectorSocketTransport`, asyncio's class subclassed), as C method
//! descriptors on the class.
//!
//! On a transport whose reader callback (`_read_ready`) is a native [`TransportReader`], they
//! are the reader's `write` and `stream_lifecycle::close`; on any other (made in debug mode,
//! or after `connection_lost`, when the reader is gone) and for any call with other arguments
//! than asyncio's usual ones, they call asyncio's own method with the same arguments, so its
//! errors and messages are asyncio's. Being methods of the class, not bound methods stored in
//! each transport, they cost an idle connection nothing.

use pyo3::ffi;
use pyo3::impl_::trampoline::get_trampoline_function;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use pyo3::{intern, Borrowed};

use super::stream::TransportReader;
use super::stream_lifecycle;
use super::transport::asyncio_method;
use crate::event_loop::{fastcall_def, install_methods, MethodDef};

static ASYNCIO_WRITE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASYNCIO_CLOSE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// The transport's native reader, if `_read_ready` is one.
fn native_reader<'py>(transport: &Bound<'py, PyAny>) -> Option<Bound<'py, TransportReader>> {
    let py = transport.py();
    let reader = transport.getattr(intern!(py, "_read_ready")).ok()?;
    reader.cast_into::<TransportReader>().ok()
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
    let keywords = match kwnames.is_null() {
        true => 0,
        // SAFETY: `kwnames` is a tuple of names when it is not NULL.
        false => unsafe { ffi::PyTuple_GET_SIZE(kwnames) },
    };
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
    let method = asyncio_method(py, &ASYNCIO_WRITE, "_SelectorSocketTransport", "write")?;
    // SAFETY: CPython's arguments, unchanged.
    unsafe { delegate(method, slf, args, nargs, kwnames) }
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
    let method = asyncio_method(py, &ASYNCIO_CLOSE, "_SelectorSocketTransport", "close")?;
    // SAFETY: CPython's arguments, unchanged.
    unsafe { delegate(method, slf, args, nargs, kwnames) }
}

unsafe extern "C" fn write_entry(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: pyo3's trampoline attaches, catches panics and restores errors.
    unsafe {
        get_trampoline_function!(fastcall_cfunction_with_keywords, write)(slf, args, nargs, kwnames)
    }
}

unsafe extern "C" fn close_entry(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: as above.
    unsafe {
        get_trampoline_function!(fastcall_cfunction_with_keywords, close)(slf, args, nargs, kwnames)
    }
}

static METHODS: [MethodDef; 2] = [
    fastcall_def(
        c"write",
        c"Write some data bytes to the transport.",
        write_entry,
    ),
    fastcall_def(c"close", c"Close the transport.", close_entry),
];

/// `ferroloop._core._install_stream_methods(cls)`: `cls.write` and `cls.close` become the
/// native methods. `cls` is ferroloop's subclass of `_SelectorSocketTransport`.
#[pyfunction]
#[pyo3(name = "_install_stream_methods")]
pub fn install_stream_methods(cls: &Bound<'_, PyType>) -> PyResult<()> {
    install_methods(cls, &METHODS)
}
