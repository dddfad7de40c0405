//! Socket data calls that never block: what the loop's native `sock_recv`, `sock_recv_into`
//! and `sock_sendall` make.
//!
//! They pass `MSG_DONTWAIT`, so a socket left in blocking mode cannot stall the loop: it
//! reports `WouldBlock` and the caller waits for readiness instead. Errors are returned as
//! they are, `Interrupted` included: the caller decides whether a signal handler has to run
//! before it tries again.

use std::io;
use std::os::fd::RawFd;

/// Flags of every send: no `SIGPIPE` where the platform has the flag (CPython ignores
/// `SIGPIPE` at start-up, but an embedding application may not).
#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// `recv(fd, buf, len, MSG_DONTWAIT)`.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes (it may be uninitialised).
#[inline]
pub unsafe fn recv(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `buf` is writable for `len` bytes; the kernel writes at
    // most `len` bytes there. An invalid fd only makes the call fail.
    result(unsafe { libc::recv(fd, buf.cast(), len, libc::MSG_DONTWAIT) })
}

/// `send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL)`.
#[inline]
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice; the kernel only reads it. An invalid fd only makes the
    // call fail.
    result(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), SEND_FLAGS) })
}

/// True for the errors that mean "not now, wait for readiness" (`EAGAIN`/`EWOULDBLOCK`).
#[inline]
pub fn would_block(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::WouldBlock
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn recv_and_send_never_block_even_on_a_blocking_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        // SAFETY: `buf` is writable for its length.
        let err = unsafe { recv(b.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap_err();
        assert!(would_block(&err));
        assert_eq!(send(a.as_raw_fd(), b"hello").unwrap(), 5);
        // SAFETY: as above.
        let n = unsafe { recv(b.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap();
        assert_eq!(&buf[..n], b"hello");
        // Fill the socket buffer: the send reports WouldBlock instead of waiting.
        let chunk = vec![0u8; 1 << 16];
        let err = loop {
            match send(a.as_raw_fd(), &chunk) {
                Ok(_) => continue,
                Err(err) => break err,
            }
        };
        assert!(would_block(&err));
    }

    #[test]
    fn errors_are_the_os_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send(a.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
        let mut buf = [0u8; 1];
        // SAFETY: `buf` is writable for its length.
        let err = unsafe { recv(-1, buf.as_mut_ptr(), 1) }.unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }
}
