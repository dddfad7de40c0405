//! Turning OS errors into Python exceptions, in one place.
//!
//! `OSError(errno, strerror)` makes CPython pick the subclass (`ConnectionResetError`,
//! `FileNotFoundError`, ...) and fill `errno`, exactly as the `socket` module does.

use std::io;

use pyo3::exceptions::PyOSError;
use pyo3::PyErr;

pub fn os_error(err: io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => {
            // SAFETY: strerror returns a pointer to a static (or thread-local) C string.
            let message = unsafe { std::ffi::CStr::from_ptr(libc::strerror(errno)) }
                .to_string_lossy()
                .into_owned();
            PyOSError::new_err((errno, message))
        }
        None => PyOSError::new_err(err.to_string()),
    }
}
