//! Turning OS errors into Python exceptions, in one place.
//!
//! `OSError(errno, strerror)` makes CPython pick the subclass (`ConnectionResetError`,
//! `FileNotFoundError`, ...) and fill `errno`, exactly as the `socket` module does.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3::PyErr;

/// `OSError(errno, strerror)` for `err`, made when first needed (no GIL is needed here).
pub fn os_error(err: io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, strerror(errno))),
        None => PyOSError::new_err(err.to_string()),
    }
}

/// [`os_error`], made now: for the data paths, whose callers look at the error at once (a
/// lazy one is made twice over, by CPython's `PyErr_SetObject` and then its normalization).
pub fn os_error_now(py: Python<'_>, err: io::Error) -> PyErr {
    let Some(errno) = err.raw_os_error() else {
        return os_error(err);
    };
    match py
        .get_type::<PyOSError>()
        .call1((errno, message(py, errno)))
    {
        Ok(exc) => PyErr::from_value(exc),
        Err(error) => error,
    }
}

/// The messages made so far, by errno, and the message locale they are in.
struct Messages {
    locale: Vec<u8>,
    texts: HashMap<i32, Py<PyString>>,
}

static MESSAGES: Mutex<Option<Messages>> = Mutex::new(None);

/// `strerror(errno)` as a Python string, made once per errno (glibc's `strerror` looks up a
/// translation every time) while the message locale (`LC_MESSAGES`) stays the same.
fn message(py: Python<'_>, errno: i32) -> Bound<'_, PyString> {
    // SAFETY: with a NULL locale, setlocale only returns the current name (a C string that
    // stays valid until the next setlocale call; it is read at once, under the lock).
    let name = unsafe { libc::setlocale(libc::LC_MESSAGES, std::ptr::null()) };
    let locale: &[u8] = match name.is_null() {
        true => b"",
        // SAFETY: a non-NULL result is a NUL-terminated string.
        false => unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes(),
    };
    let mut messages = MESSAGES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if messages.as_ref().is_some_and(|m| m.locale != locale) {
        // Another locale's strings (dropping them runs no Python code).
        *messages = None;
    }
    messages
        .get_or_insert_with(|| Messages {
            locale: locale.to_vec(),
            texts: HashMap::new(),
        })
        .texts
        .entry(errno)
        .or_insert_with(|| PyString::new(py, &strerror(errno)).unbind())
        .bind(py)
        .clone()
}

fn strerror(errno: i32) -> String {
    // SAFETY: strerror returns a pointer to a static (or thread-local) C string.
    unsafe { std::ffi::CStr::from_ptr(libc::strerror(errno)) }
        .to_string_lossy()
        .into_owned()
}
