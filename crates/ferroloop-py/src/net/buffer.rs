//! Bytes in and out of Python objects: the per-thread receive buffer that socket reads go
//! through before they become `bytes`, and the buffer protocol for what is sent.

use std::alloc::{self, Layout};
use std::cell::RefCell;
use std::os::fd::RawFd;
use std::ptr;

use ferroloop_core::sys::net;
use pyo3::prelude::*;

pub(crate) use crate::ffi::Buffer;
use crate::ffi::{bytes_from_raw, is_exact_byte_type, BUFFER_SIMPLE};

use super::socket::retry_interrupted;

/// Received data up to this size goes through a per-thread buffer, so a `sock_recv(sock,
/// 65536)` that gets 1 KiB allocates 1 KiB, not 64. It is the size asyncio's socket
/// transports ask for (`max_size`).
pub(crate) const SCRATCH_SIZE: usize = 256 * 1024;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::new());
}

/// The per-thread receive buffer: `SCRATCH_SIZE` bytes starting on a page boundary. The
/// kernel's copy into user memory (`rep movsb`) is about twice as slow on some CPUs (AMD EPYC
/// here) when the destination is not 64-byte aligned: a plain `vec![0; n]` of this size is an
/// `mmap`ed chunk that starts 16 bytes into a page, and 100 KiB echo cost 2.4x uvloop's CPU.
struct Scratch {
    start: ptr::NonNull<u8>,
}

impl Scratch {
    const LAYOUT: Layout = match Layout::from_size_align(SCRATCH_SIZE, 4096) {
        Ok(layout) => layout,
        Err(_) => panic!("invalid scratch layout"),
    };

    fn new() -> Scratch {
        // SAFETY: the layout has a non-zero size.
        let start = unsafe { alloc::alloc_zeroed(Self::LAYOUT) };
        match ptr::NonNull::new(start) {
            Some(start) => Scratch { start },
            None => alloc::handle_alloc_error(Self::LAYOUT),
        }
    }

    fn as_ptr(&self) -> *const u8 {
        self.start.as_ptr()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.start.as_ptr()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { alloc::dealloc(self.start.as_ptr(), Self::LAYOUT) }
    }
}

/// `data` as one contiguous run of bytes, if it is a `bytes`, `bytearray` or `memoryview`
/// (exactly those types) whose `len()` is its byte count, as asyncio's send arithmetic
/// (`n == len(data)`, `data[n:]`) assumes. `None` for anything else: asyncio's code then
/// raises its error, or counts the way it does (a memoryview of items wider than a byte).
pub(crate) fn byte_buffer(data: &Bound<'_, PyAny>) -> Option<Buffer> {
    if let Some(buffer) = Buffer::of_bytes(data) {
        return Some(buffer);
    }
    if !is_exact_byte_type(data) {
        return None;
    }
    let buffer = Buffer::get(data, BUFFER_SIMPLE).ok()?;
    (data.len().ok() == Some(buffer.len())).then_some(buffer)
}

/// `recvfrom(fd)` of up to `n <= SCRATCH_SIZE` bytes: the data and the sender; `None` if it
/// would block.
pub(crate) fn recvfrom_bytes<'py>(
    py: Python<'py>,
    fd: RawFd,
    n: usize,
) -> PyResult<Option<(Bound<'py, PyAny>, net::SockAddr)>> {
    let n = n.min(SCRATCH_SIZE);
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        // SAFETY: the scratch buffer is SCRATCH_SIZE >= n writable bytes.
        let Some((len, sender)) =
            retry_interrupted(py, || unsafe { net::recvfrom(fd, scratch.as_mut_ptr(), n) })?
        else {
            return Ok(None);
        };
        // SAFETY: the GIL is held; the scratch buffer holds `len` received bytes.
        let data = unsafe { bytes_from_raw(py, scratch.as_ptr(), len)? };
        Ok(Some((data, sender)))
    })
}

/// `sock.recv(n)` on a socket's fd; `None` if it would block.
pub(crate) fn recv_bytes<'py>(
    py: Python<'py>,
    fd: RawFd,
    n: usize,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let bytes_from = |data: *const u8, len: usize| {
        // SAFETY: the GIL is held; `data` is readable for `len` bytes (written by recv).
        unsafe { bytes_from_raw(py, data, len) }
    };
    if n <= SCRATCH_SIZE {
        let received = SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            // SAFETY: the scratch buffer is SCRATCH_SIZE >= n writable bytes.
            retry_interrupted(py, || unsafe { net::recv(fd, scratch.as_mut_ptr(), n) })?
                .map(|len| bytes_from(scratch.as_ptr(), len))
                .transpose()
        })?;
        return Ok(received);
    }
    let mut data: Vec<u8> = Vec::new();
    data.try_reserve_exact(n)
        .map_err(|_| pyo3::exceptions::PyMemoryError::new_err(()))?;
    // SAFETY: `data` has capacity for n bytes; recv writes at most n.
    retry_interrupted(py, || unsafe { net::recv(fd, data.as_mut_ptr(), n) })?
        .map(|len| bytes_from(data.as_ptr(), len))
        .transpose()
}
