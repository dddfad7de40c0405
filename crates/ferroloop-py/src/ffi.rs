//! The one corner of the bindings that calls the CPython C API directly: running a callback
//! inside a `contextvars.Context` with vectorcall, copying the current context, and checking
//! for pending signals. PyO3 has no zero-overhead wrappers for these.

use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// `contextvars.copy_context()`.
#[inline]
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held (we have `py`); PyContext_CopyCurrent returns a new reference
    // or NULL with an exception set, which `from_owned_ptr_or_err` handles.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?.unbind()) }
}

/// `context.run(callback, *args)`, discarding the result, entering the context with
/// `PyContext_Enter`/`PyContext_Exit` and calling with vectorcall.
#[inline]
pub fn call_in_context(
    py: Python<'_>,
    callback: &Py<PyAny>,
    args: Option<&Py<PyTuple>>,
    context: Option<&Py<PyAny>>,
) -> PyResult<()> {
    // SAFETY: the GIL is held. `callback`, `args` and `context` are owned references kept
    // alive by the caller for the whole call. The tuple's item array is valid for its length
    // while the tuple is alive, and vectorcall does not mutate it. Enter/Exit are paired.
    unsafe {
        if let Some(context) = context {
            if ffi::PyContext_Enter(context.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        let (items, nargs) = match args {
            Some(tuple) => {
                let raw = tuple.as_ptr() as *mut ffi::PyTupleObject;
                ((*raw).ob_item.as_ptr(), ffi::PyTuple_GET_SIZE(tuple.as_ptr()) as usize)
            }
            None => (ptr::null(), 0),
        };
        let result = ffi::PyObject_Vectorcall(callback.as_ptr(), items, nargs, ptr::null_mut());
        let outcome = if result.is_null() {
            Err(PyErr::fetch(py))
        } else {
            ffi::Py_DECREF(result);
            Ok(())
        };
        if let Some(context) = context {
            if ffi::PyContext_Exit(context.as_ptr()) < 0 {
                let exit_error = PyErr::fetch(py);
                return outcome.and(Err(exit_error));
            }
        }
        outcome
    }
}

/// Run pending Python signal handlers (`PyErr_CheckSignals`): a `KeyboardInterrupt` or any
/// exception a handler raises comes back as `Err`.
pub fn check_signals(py: Python<'_>) -> PyResult<()> {
    // SAFETY: the GIL is held; PyErr_CheckSignals sets an exception iff it returns -1.
    if unsafe { ffi::PyErr_CheckSignals() } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}
