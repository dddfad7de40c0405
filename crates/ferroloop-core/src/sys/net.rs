//! Socket calls that never block: what the loop's native `sock_recv`, `sock_recv_into`,
//! `sock_sendall`, transports and accept loop make.
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
    let head = buf.align_offset(COPY_ALIGN);
    if len >= SPLIT_AT && head != 0 {
        // SAFETY: as above; `head < COPY_ALIGN <= len`, so both parts lie inside `buf`.
        return unsafe { recv_split(fd, buf, len, head) };
    }
    // SAFETY: the caller guarantees `buf` is writable for `len` bytes; the kernel writes at
    // most `len` bytes there. An invalid fd only makes the call fail.
    result(unsafe { libc::recv(fd, buf.cast(), len, libc::MSG_DONTWAIT) })
}

/// The alignment the kernel's copy to user memory wants of its destination: on AMD EPYC
/// (Zen) `rep movsb` into an address that is not 64-byte aligned runs at less than half
/// speed, which made a 100 KiB echo cost twice uvloop's CPU.
const COPY_ALIGN: usize = 64;

/// Below this many bytes a misaligned destination costs less than `recvmsg`'s extra work.
const SPLIT_AT: usize = 4096;

/// `recv` into a misaligned buffer as `recvmsg` with two pieces: the `head` bytes up to the
/// next 64-byte boundary, then the aligned rest, which is where the bulk of a large read lands.
/// The bytes and the result are those of one `recv`.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes and `head < len`.
#[cold]
unsafe fn recv_split(fd: RawFd, buf: *mut u8, len: usize, head: usize) -> io::Result<usize> {
    let mut pieces = [
        libc::iovec {
            iov_base: buf.cast(),
            iov_len: head,
        },
        libc::iovec {
            // SAFETY: `head < len`, inside the caller's buffer.
            iov_base: unsafe { buf.add(head) }.cast(),
            iov_len: len - head,
        },
    ];
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = pieces.as_mut_ptr();
    message.msg_iovlen = 2 as _;
    // SAFETY: both pieces are writable parts of the caller's buffer; `message` outlives the
    // call.
    result(unsafe { libc::recvmsg(fd, &mut message, libc::MSG_DONTWAIT) })
}

/// The sender of a datagram, as the kernel wrote it.
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl std::fmt::Debug for SockAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockAddr")
            .field("family", &self.storage.ss_family)
            .field("len", &self.len)
            .finish()
    }
}

impl SockAddr {
    /// The IPv4 address and port (host byte order), if that is what it is.
    pub fn ipv4(&self) -> Option<([u8; 4], u16)> {
        if self.storage.ss_family as libc::c_int != libc::AF_INET
            || (self.len as usize) < std::mem::size_of::<libc::sockaddr_in>()
        {
            return None;
        }
        // SAFETY: the family is AF_INET and the kernel wrote a whole sockaddr_in, which
        // sockaddr_storage is large and aligned enough to hold.
        let sin = unsafe {
            &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()
        };
        Some((
            sin.sin_addr.s_addr.to_ne_bytes(),
            u16::from_be(sin.sin_port),
        ))
    }
}

impl SockAddr {
    /// The IPv6 address, port (host byte order), flow information (host byte order) and
    /// scope, if that is what it is.
    pub fn ipv6(&self) -> Option<([u8; 16], u16, u32, u32)> {
        if self.storage.ss_family as libc::c_int != libc::AF_INET6
            || (self.len as usize) < std::mem::size_of::<libc::sockaddr_in6>()
        {
            return None;
        }
        // SAFETY: the family is AF_INET6 and the kernel wrote a whole sockaddr_in6, which
        // sockaddr_storage is large and aligned enough to hold.
        let sin6 = unsafe {
            &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
        };
        Some((
            sin6.sin6_addr.s6_addr,
            u16::from_be(sin6.sin6_port),
            u32::from_be(sin6.sin6_flowinfo),
            sin6.sin6_scope_id,
        ))
    }
}

/// The length of `sockaddr_un`'s `sun_path`: the longest Unix socket path, in bytes.
pub const UNIX_PATH_MAX: usize = 108;

impl SockAddr {
    /// The bytes of a Unix socket address's path as the kernel wrote them (`len` minus the
    /// family): empty for an unnamed socket, starting with a NUL byte for Linux's abstract
    /// namespace, else a path with its terminating NUL byte if it fitted.
    pub fn unix(&self) -> Option<&[u8]> {
        if self.storage.ss_family as libc::c_int != libc::AF_UNIX {
            return None;
        }
        let start = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        let len = (self.len as usize).saturating_sub(start).min(UNIX_PATH_MAX);
        // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_un, and the
        // family says the kernel wrote one; `len` bytes of `sun_path` are within it.
        let sun = unsafe {
            &*(&self.storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>()
        };
        // SAFETY: `sun_path` is `UNIX_PATH_MAX` bytes (`c_char`, one byte each).
        Some(unsafe { std::slice::from_raw_parts(sun.sun_path.as_ptr().cast::<u8>(), len) })
    }
}

/// `getsockname(fd)`: the socket's own address.
pub fn local_address(fd: RawFd) -> io::Result<SockAddr> {
    let mut addr = SockAddr {
        // SAFETY: all-zero is a valid sockaddr_storage (plain integers).
        storage: unsafe { std::mem::zeroed() },
        len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    };
    let storage = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: `storage` is writable for `addr.len` bytes, and the kernel updates `addr.len`.
    // An invalid fd only makes the call fail.
    if unsafe { libc::getsockname(fd, storage, &mut addr.len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(addr)
}

/// `recvfrom(fd, buf, len, MSG_DONTWAIT)`: the byte count and the sender.
///
/// # Safety
/// `buf` must be valid for writes of `len` bytes (it may be uninitialised).
#[inline]
pub unsafe fn recvfrom(fd: RawFd, buf: *mut u8, len: usize) -> io::Result<(usize, SockAddr)> {
    let mut addr = SockAddr {
        // SAFETY: all-zero is a valid sockaddr_storage (plain integers).
        storage: unsafe { std::mem::zeroed() },
        len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    };
    // SAFETY: the caller guarantees `buf` is writable for `len` bytes; `addr.storage` is
    // writable for `addr.len` bytes, and the kernel updates `addr.len`.
    let n = unsafe {
        libc::recvfrom(
            fd,
            buf.cast(),
            len,
            libc::MSG_DONTWAIT,
            (&mut addr.storage as *mut libc::sockaddr_storage).cast(),
            &mut addr.len,
        )
    };
    result(n).map(|n| (n, addr))
}

/// `send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL)`.
#[inline]
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is a valid slice; the kernel only reads it. An invalid fd only makes the
    // call fail.
    result(unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), SEND_FLAGS) })
}

/// `sendmsg(fd, <pieces>, MSG_DONTWAIT | MSG_NOSIGNAL)`: the pieces in order, as one send
/// (at most `IOV_MAX` of them: the kernel refuses more with `EMSGSIZE`).
pub fn send_vectored(fd: RawFd, pieces: &[&[u8]]) -> io::Result<usize> {
    let mut vectors: Vec<libc::iovec> = pieces
        .iter()
        .map(|piece| libc::iovec {
            iov_base: piece.as_ptr() as *mut libc::c_void,
            iov_len: piece.len(),
        })
        .collect();
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = vectors.as_mut_ptr();
    message.msg_iovlen = vectors.len() as _;
    // SAFETY: every vector points into a live slice of the caller's; the kernel only reads
    // them, and `message` and `vectors` outlive the call.
    result(unsafe { libc::sendmsg(fd, &message, SEND_FLAGS) })
}

/// `accept(fd)` of a listening socket: the new connection's fd, non-blocking and
/// close-on-exec (`accept4` with both flags where the platform has it, `accept` and two
/// `fcntl`s elsewhere), and the peer's address.
pub fn accept(fd: RawFd) -> io::Result<(RawFd, SockAddr)> {
    let mut addr = SockAddr {
        // SAFETY: all-zero is a valid sockaddr_storage (plain integers).
        storage: unsafe { std::mem::zeroed() },
        len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
    };
    let storage = (&mut addr.storage as *mut libc::sockaddr_storage).cast();
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    // SAFETY: `storage` is writable for `addr.len` bytes, and the kernel updates `addr.len`.
    // An invalid fd only makes the call fail.
    let conn = unsafe {
        libc::accept4(
            fd,
            storage,
            &mut addr.len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    // SAFETY: as above; the flags are set on the new fd, which this function owns.
    let conn = unsafe {
        let conn = libc::accept(fd, storage, &mut addr.len);
        if conn >= 0 {
            let flags = libc::fcntl(conn, libc::F_GETFL);
            libc::fcntl(conn, libc::F_SETFL, flags | libc::O_NONBLOCK);
            libc::fcntl(conn, libc::F_SETFD, libc::FD_CLOEXEC);
        }
        conn
    };
    if conn < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((conn, addr))
}

/// `setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, 1)`.
pub fn set_nodelay(fd: RawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `one` is a readable c_int for the call; an invalid fd only makes it fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `close(fd)`, for an fd this process owns and nothing else will close.
pub fn close(fd: RawFd) {
    // SAFETY: closing an fd has no memory effects; the caller owns it.
    unsafe { libc::close(fd) };
}

/// `sendto(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL, address, len)`: the first `len` bytes
/// of `address` (a `sockaddr_*` structure) are the destination.
fn send_to<A>(fd: RawFd, data: &[u8], address: &A, len: usize) -> io::Result<usize> {
    debug_assert!(
        len <= std::mem::size_of::<A>(),
        "address length within the structure"
    );
    // SAFETY: `data` and `address` are valid for the call, `len` is within `address`; the
    // kernel only reads them.
    result(unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            SEND_FLAGS,
            (address as *const A).cast(),
            len as libc::socklen_t,
        )
    })
}

/// `sendto(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL, <IPv4 address, port>)`.
pub fn send_to_ipv4(fd: RawFd, data: &[u8], host: [u8; 4], port: u16) -> io::Result<usize> {
    // SAFETY: all-zero is a valid sockaddr_in (plain integers).
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_port = port.to_be();
    sin.sin_addr.s_addr = u32::from_ne_bytes(host);
    send_to(fd, data, &sin, std::mem::size_of::<libc::sockaddr_in>())
}

/// `sendto(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL, <IPv6 address, port, flow, scope>)`.
pub fn send_to_ipv6(
    fd: RawFd,
    data: &[u8],
    host: [u8; 16],
    port: u16,
    flowinfo: u32,
    scope_id: u32,
) -> io::Result<usize> {
    // SAFETY: all-zero is a valid sockaddr_in6 (plain integers and bytes).
    let mut sin6: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sin6.sin6_port = port.to_be();
    sin6.sin6_flowinfo = flowinfo.to_be();
    sin6.sin6_addr.s6_addr = host;
    sin6.sin6_scope_id = scope_id;
    send_to(fd, data, &sin6, std::mem::size_of::<libc::sockaddr_in6>())
}

/// `sendto(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL, <Unix socket path>)`, the path given
/// as `socket` takes it: one starting with a NUL byte is in Linux's abstract namespace (its
/// length is the address's), any other gets a terminating NUL. Paths that do not fit
/// `sun_path` (with that NUL) fail with `ENAMETOOLONG`, as the caller should not pass them.
pub fn send_to_unix(fd: RawFd, data: &[u8], path: &[u8]) -> io::Result<usize> {
    let abstract_name = path.first() == Some(&0);
    if path.len() + usize::from(!abstract_name) > UNIX_PATH_MAX {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    // SAFETY: all-zero is a valid sockaddr_un (an integer and bytes).
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (to, from) in sun.sun_path.iter_mut().zip(path) {
        *to = *from as libc::c_char;
    }
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path)
        + path.len()
        + usize::from(!abstract_name);
    send_to(fd, data, &sun, len)
}

extern "C" {
    // POSIX (glibc, musl, the BSDs and macOS); the libc crate does not declare it.
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// An IPv6 address as `inet_ntop(AF_INET6, ...)` writes it, which is how `socket` shows one
/// (`::ffff:1.2.3.4` for an IPv4-mapped address, `::1.2.3.4` for an IPv4-compatible one).
pub fn ipv6_text(host: [u8; 16]) -> String {
    // INET6_ADDRSTRLEN: the longest text and its terminating NUL.
    let mut text = [0 as libc::c_char; 46];
    // SAFETY: `host` is the 16 bytes of an in6_addr; `text` is writable for its length, which
    // the call is given. It only fails for a buffer too small, which this one is not.
    let written = unsafe {
        inet_ntop(
            libc::AF_INET6,
            host.as_ptr().cast(),
            text.as_mut_ptr(),
            text.len() as libc::socklen_t,
        )
    };
    if written.is_null() {
        return std::net::Ipv6Addr::from(host).to_string();
    }
    // SAFETY: `inet_ntop` wrote a NUL-terminated string into `text`.
    unsafe { std::ffi::CStr::from_ptr(text.as_ptr()) }
        .to_string_lossy()
        .into_owned()
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
    fn send_vectored_sends_the_pieces_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        assert_eq!(
            send_vectored(a.as_raw_fd(), &[b"ab", b"", b"cde"]).unwrap(),
            5
        );
        let mut buf = [0u8; 8];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { recv(b.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap();
        assert_eq!(&buf[..n], b"abcde");
        drop(b);
        let err = send_vectored(a.as_raw_fd(), &[b"x"]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn recv_into_a_misaligned_buffer_reads_as_one_recv() {
        let (a, b) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut storage = vec![0u8; 16_384 + 128];
        for offset in [1usize, 16, 63, 64] {
            assert_eq!(send(a.as_raw_fd(), &data[..10_000]).unwrap(), 10_000);
            let start = storage.as_ptr().align_offset(COPY_ALIGN) + offset;
            let buf = &mut storage[start..start + 16_384];
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { recv(b.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap();
            assert_eq!(n, 10_000);
            assert_eq!(&buf[..n], &data[..10_000]);
            // SAFETY: as above.
            let err = unsafe { recv(b.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap_err();
            assert!(would_block(&err));
        }
        // A short buffer on a datagram socket: the datagram is cut as by one recv.
        let (x, y) = std::os::unix::net::UnixDatagram::pair().unwrap();
        x.send(&data[..9_000]).unwrap();
        let start = storage.as_ptr().align_offset(COPY_ALIGN) + 5;
        let buf = &mut storage[start..start + 5_000];
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { recv(y.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap();
        assert_eq!(&buf[..n], &data[..5_000]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn unix_datagrams_named_abstract_and_unnamed() {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::net::UnixDatagram;
        let dir = std::env::temp_dir().join(format!("ferroloop-net-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("receiver");
        let _ = std::fs::remove_file(&path);
        let receiver = UnixDatagram::bind(&path).unwrap();
        let sender = UnixDatagram::unbound().unwrap();
        let path_bytes = path.as_os_str().as_encoded_bytes();
        assert_eq!(
            send_to_unix(sender.as_raw_fd(), b"one", path_bytes).unwrap(),
            3
        );
        let mut buf = [0u8; 16];
        // SAFETY: `buf` is writable for its length.
        let (n, from) = unsafe { recvfrom(receiver.as_raw_fd(), buf.as_mut_ptr(), 16) }.unwrap();
        assert_eq!(&buf[..n], b"one");
        // An unbound sender: no address at all (length 0), which `socket` gives as None.
        assert_eq!(from.unix(), None);
        assert_eq!(from.ipv4(), None);
        // A named sender: its path, with the terminating NUL the kernel keeps.
        let named = dir.join("sender");
        let _ = std::fs::remove_file(&named);
        let sender = UnixDatagram::bind(&named).unwrap();
        send_to_unix(sender.as_raw_fd(), b"two", path_bytes).unwrap();
        // SAFETY: as above.
        let (_, from) = unsafe { recvfrom(receiver.as_raw_fd(), buf.as_mut_ptr(), 16) }.unwrap();
        let name = from.unix().unwrap();
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        assert_eq!(&name[..end], named.as_os_str().as_encoded_bytes());
        // Linux's abstract namespace: a leading NUL, the length is the address's.
        let abstract_name = format!("\0ferroloop-net-{}", std::process::id()).into_bytes();
        let abstract_receiver =
            std::os::unix::net::SocketAddr::from_abstract_name(&abstract_name[1..])
                .and_then(|addr| UnixDatagram::bind_addr(&addr))
                .unwrap();
        send_to_unix(sender.as_raw_fd(), b"three", &abstract_name).unwrap();
        // SAFETY: as above.
        let n = unsafe { recv(abstract_receiver.as_raw_fd(), buf.as_mut_ptr(), 16) }.unwrap();
        assert_eq!(&buf[..n], b"three");
        // Too long for sun_path (with its NUL): refused before the call.
        let long = vec![b'x'; UNIX_PATH_MAX];
        let err = send_to_unix(sender.as_raw_fd(), b"x", &long).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENAMETOOLONG));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn local_address_of_an_ipv4_socket() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let addr = local_address(socket.as_raw_fd()).unwrap();
        assert_eq!(addr.ipv4(), Some(([127, 0, 0, 1], port)));
        let err = local_address(-1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    }

    #[test]
    fn recvfrom_reports_the_ipv4_sender() {
        use std::net::UdpSocket;
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 16];
        // SAFETY: `buf` is writable for its length.
        let err = unsafe { recvfrom(b.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap_err();
        assert!(would_block(&err));
        a.send_to(b"ping", b.local_addr().unwrap()).unwrap();
        // SAFETY: as above.
        let (n, addr) = unsafe { recvfrom(b.as_raw_fd(), buf.as_mut_ptr(), buf.len()) }.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(
            addr.ipv4(),
            Some(([127, 0, 0, 1], a.local_addr().unwrap().port()))
        );
    }

    #[test]
    fn accept_gives_a_non_blocking_connection_and_the_peer() {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let err = accept(listener.as_raw_fd()).unwrap_err();
        assert!(would_block(&err));
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (conn, peer) = accept(listener.as_raw_fd()).unwrap();
        assert_eq!(
            peer.ipv4(),
            Some(([127, 0, 0, 1], client.local_addr().unwrap().port()))
        );
        // SAFETY: fcntl on an fd we own.
        let flags = unsafe { libc::fcntl(conn, libc::F_GETFL) };
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        // SAFETY: as above.
        let fd_flags = unsafe { libc::fcntl(conn, libc::F_GETFD) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        let mut buf = [0u8; 1];
        // SAFETY: `buf` is writable for its length.
        let err = unsafe { recv(conn, buf.as_mut_ptr(), 1) }.unwrap_err();
        assert!(would_block(&err));
        close(conn);
    }

    #[test]
    fn send_to_ipv4_reaches_the_address() {
        use std::net::UdpSocket;
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = b.local_addr().unwrap().port();
        assert_eq!(
            send_to_ipv4(a.as_raw_fd(), b"ping", [127, 0, 0, 1], port).unwrap(),
            4
        );
        let mut buf = [0u8; 8];
        let (n, from) = b.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from, a.local_addr().unwrap());
    }

    #[test]
    fn send_to_ipv6_reaches_the_address() {
        let receiver = std::net::UdpSocket::bind("[::1]:0");
        let Ok(receiver) = receiver else {
            return; // no IPv6 loopback on this machine
        };
        let sender = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let port = receiver.local_addr().unwrap().port();
        let host = std::net::Ipv6Addr::LOCALHOST.octets();
        let n = send_to_ipv6(sender.as_raw_fd(), b"six", host, port, 0, 0).unwrap();
        assert_eq!(n, 3);
        let mut buf = [0u8; 8];
        let (n, from) = receiver.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"six");
        assert_eq!(from, sender.local_addr().unwrap());
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
