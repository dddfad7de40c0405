//! A test-only fault layer: an `LD_PRELOAD` shim that makes the system calls of an event loop
//! and its transports fail on purpose, seeded and reproducible. Nothing of it is in
//! ferroloop's build: the same shim runs under asyncio's own loop (CPython's `socket`, `select`
//! and `os` modules make the same libc calls), which is what the fault tests compare with.
//!
//! Configuration (read once, at the first intercepted call):
//!
//! ```text
//! FERROLOOP_FAULTS=SEED:RATE:SPEC,SPEC,...   e.g. 42:0.05:recv,send,accept4,epoll_wait
//!   SPEC = CALL              transient faults of that call, each call faulted with probability RATE
//!        | CALL=ERRNO        that errno instead, with probability RATE (fatal faults)
//!        | CALL=ERRNO@N      that errno on the N-th eligible call only (1-based), once
//!        | all               the transient faults of every call below
//! FERROLOOP_FAULTS_FDS=sock,fifo   which fds are eligible (default both; `sock` = sockets only)
//! FERROLOOP_FAULTS_ARM=1           inject from the start (else only once armed, see below)
//! ```
//!
//! Calls: `recv recvfrom recvmsg read send sendto sendmsg write writev accept accept4 connect
//! epoll_wait`. Transient faults: `EINTR` (every call), `EAGAIN` when the call is non-blocking
//! (an `O_NONBLOCK` fd or `MSG_DONTWAIT`) although data or room may be there, short reads and
//! writes on stream sockets and pipes (the length cut at random), `ECONNABORTED` on accept, and
//! for `epoll_wait` an `EINTR` or one spurious event (a registered fd reported with its
//! registered interests although the kernel did not report it). Fatal `connect` errors
//! (`ECONNREFUSED`, `ETIMEDOUT`) come the way a non-blocking connect reports them: the call
//! says `EINPROGRESS` and `getsockopt(SO_ERROR)` gives the errno.
//!
//! Eligible fds: sockets and pipes (by `fstat`), except 0-2 and the fds a program protects
//! (its loop's self-pipe). `epoll` and `eventfd` fds are never faulted: their faults are
//! limited to `epoll_wait`'s `EINTR` and spurious readiness of an eligible registered fd.
//!
//! Control from the program under test (found with `dlsym`, e.g. `ctypes.CDLL(None)`):
//! `ferroloop_faults_arm(int on)`, `ferroloop_faults_protect(int fd, int on)`,
//! `ferroloop_faults_report(char *buf, size_t len)` (the faults injected so far, as
//! `call.kind=count` lines; returns the length needed).
//!
//! The state is thread-safe: one xorshift64* generator advanced with compare-and-swap, atomic
//! counters and flags (no lock, so nothing can deadlock in a child between fork and exec). The same seed draws the same sequence; which
//! call gets which draw depends on the order of the calls, so a run is reproducible as far as
//! the program's own call order is (one loop thread: yes).

// The exported functions keep libc's own contracts (the caller's pointers are passed through
// to the real function), which their man pages document.
#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::OnceLock;

use libc::{epoll_event, iovec, msghdr, size_t, sockaddr, socklen_t, ssize_t};

// ---------------------------------------------------------------------------------------------
// The real functions

/// The next definition of `name` (NUL-terminated) after this library: libc's.
fn next_symbol(name: &'static [u8], cache: &AtomicUsize) -> usize {
    let mut address = cache.load(Relaxed);
    if address == 0 {
        // SAFETY: `name` is a NUL-terminated symbol name; RTLD_NEXT is a valid handle.
        address = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
        if address == 0 {
            // SAFETY: abort has no preconditions; without libc's function nothing can go on.
            unsafe { libc::abort() };
        }
        cache.store(address, Relaxed);
    }
    address
}

macro_rules! real {
    ($name:literal, $ty:ty) => {{
        static CACHE: AtomicUsize = AtomicUsize::new(0);
        let address = next_symbol(concat!($name, "\0").as_bytes(), &CACHE);
        // SAFETY: `address` is libc's definition of the function, whose C type `$ty` is.
        unsafe { std::mem::transmute::<usize, $ty>(address) }
    }};
}

type RecvFn = unsafe extern "C" fn(c_int, *mut c_void, size_t, c_int) -> ssize_t;
type RecvfromFn = unsafe extern "C" fn(
    c_int,
    *mut c_void,
    size_t,
    c_int,
    *mut sockaddr,
    *mut socklen_t,
) -> ssize_t;
type RecvmsgFn = unsafe extern "C" fn(c_int, *mut msghdr, c_int) -> ssize_t;
type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, size_t) -> ssize_t;
type SendFn = unsafe extern "C" fn(c_int, *const c_void, size_t, c_int) -> ssize_t;
type SendtoFn = unsafe extern "C" fn(
    c_int,
    *const c_void,
    size_t,
    c_int,
    *const sockaddr,
    socklen_t,
) -> ssize_t;
type SendmsgFn = unsafe extern "C" fn(c_int, *const msghdr, c_int) -> ssize_t;
type WriteFn = unsafe extern "C" fn(c_int, *const c_void, size_t) -> ssize_t;
type WritevFn = unsafe extern "C" fn(c_int, *const iovec, c_int) -> ssize_t;
type AcceptFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
type Accept4Fn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type GetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
type EpollWaitFn = unsafe extern "C" fn(c_int, *mut epoll_event, c_int, c_int) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
enum Call {
    Recv,
    Recvfrom,
    Recvmsg,
    Read,
    Send,
    Sendto,
    Sendmsg,
    Write,
    Writev,
    Accept,
    Accept4,
    Connect,
    EpollWait,
}

const CALLS: [(&str, Call); 13] = [
    ("recv", Call::Recv),
    ("recvfrom", Call::Recvfrom),
    ("recvmsg", Call::Recvmsg),
    ("read", Call::Read),
    ("send", Call::Send),
    ("sendto", Call::Sendto),
    ("sendmsg", Call::Sendmsg),
    ("write", Call::Write),
    ("writev", Call::Writev),
    ("accept", Call::Accept),
    ("accept4", Call::Accept4),
    ("connect", Call::Connect),
    ("epoll_wait", Call::EpollWait),
];

const ERRNOS: [(&str, c_int); 9] = [
    ("ECONNRESET", libc::ECONNRESET),
    ("EPIPE", libc::EPIPE),
    ("ENOBUFS", libc::ENOBUFS),
    ("EMFILE", libc::EMFILE),
    ("ENFILE", libc::ENFILE),
    ("ENOMEM", libc::ENOMEM),
    ("ECONNREFUSED", libc::ECONNREFUSED),
    ("ETIMEDOUT", libc::ETIMEDOUT),
    ("ECONNABORTED", libc::ECONNABORTED),
];

/// What one call of the configuration does.
#[derive(Clone, Copy, Default)]
struct CallConfig {
    transient: bool,
    /// A fatal errno, and the eligible call it hits (0: each with probability `rate`).
    fatal: Option<(c_int, u64)>,
}

struct Config {
    threshold: u64,
    calls: [CallConfig; CALLS.len()],
    sockets: bool,
    fifos: bool,
}

static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);
static RNG: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);

fn die(message: &str) -> ! {
    let write = real!("write", WriteFn);
    for part in [b"ferroloop-faults: ".as_slice(), message.as_bytes(), b"\n"] {
        // SAFETY: `part` is a valid slice for the duration of the call.
        unsafe { write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: abort has no preconditions.
    unsafe { libc::abort() }
}

fn parse(spec: &str) -> Config {
    let mut fields = spec.splitn(3, ':');
    let (Some(seed), Some(rate), Some(calls)) = (fields.next(), fields.next(), fields.next())
    else {
        die("FERROLOOP_FAULTS must be SEED:RATE:CALL[,CALL...]")
    };
    let seed: u64 = seed
        .parse()
        .unwrap_or_else(|_| die("the seed must be an integer"));
    let rate: f64 = rate
        .parse()
        .unwrap_or_else(|_| die("the rate must be a number"));
    if !(0.0..=1.0).contains(&rate) {
        die("the rate must be between 0 and 1");
    }
    let mut config = Config {
        threshold: (rate * u64::MAX as f64) as u64,
        calls: [CallConfig::default(); CALLS.len()],
        sockets: true,
        fifos: true,
    };
    for item in calls
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let (name, fatal) = match item.split_once('=') {
            Some((name, fatal)) => (name, Some(fatal)),
            None => (item, None),
        };
        if name == "all" && fatal.is_none() {
            config
                .calls
                .iter_mut()
                .for_each(|call| call.transient = true);
            continue;
        }
        let Some(&(_, call)) = CALLS.iter().find(|(known, _)| *known == name) else {
            die(&format!("unknown call {name:?}"))
        };
        let slot = &mut config.calls[call as usize];
        match fatal {
            None => slot.transient = true,
            Some(fatal) => {
                let (errno, nth) = match fatal.split_once('@') {
                    Some((errno, nth)) => (
                        errno,
                        nth.parse::<u64>()
                            .ok()
                            .filter(|nth| *nth > 0)
                            .unwrap_or_else(|| die(&format!("bad call number in {item:?}"))),
                    ),
                    None => (fatal, 0),
                };
                let Some(&(_, errno)) = ERRNOS.iter().find(|(known, _)| *known == errno) else {
                    die(&format!("unknown errno in {item:?}"))
                };
                slot.fatal = Some((errno, nth));
            }
        }
    }
    if let Ok(kinds) = std::env::var("FERROLOOP_FAULTS_FDS") {
        config.sockets = kinds.split(',').any(|kind| kind.trim() == "sock");
        config.fifos = kinds.split(',').any(|kind| kind.trim() == "fifo");
    }
    RNG.store(
        if seed == 0 {
            0x2545_F491_4F6C_DD1D
        } else {
            seed
        },
        Relaxed,
    );
    if std::env::var("FERROLOOP_FAULTS_ARM").is_ok_and(|value| value == "1") {
        ARMED.store(true, Relaxed);
    }
    config
}

fn config() -> Option<&'static Config> {
    CONFIG
        .get_or_init(|| {
            std::env::var("FERROLOOP_FAULTS")
                .ok()
                .map(|spec| parse(&spec))
        })
        .as_ref()
}

/// The next number of the seeded xorshift64* generator.
fn draw() -> u64 {
    let mut current = RNG.load(Relaxed);
    loop {
        let mut next = current;
        next ^= next >> 12;
        next ^= next << 25;
        next ^= next >> 27;
        match RNG.compare_exchange_weak(current, next, Relaxed, Relaxed) {
            Ok(_) => return next.wrapping_mul(0x2545_F491_4F6C_DD1D),
            Err(actual) => current = actual,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Eligible fds, counters

const PROTECTED_WORDS: usize = 64; // fds 0..4096
static PROTECTED: [AtomicU64; PROTECTED_WORDS] = [const { AtomicU64::new(0) }; PROTECTED_WORDS];
/// Per call, the eligible calls seen (for `CALL=ERRNO@N`).
static SEEN: [AtomicU64; CALLS.len()] = [const { AtomicU64::new(0) }; CALLS.len()];
/// A fatal connect error waiting for `getsockopt(SO_ERROR)`, per fd (0..4096).
static PENDING_CONNECT: [AtomicI32; PROTECTED_WORDS * 64] =
    [const { AtomicI32::new(0) }; PROTECTED_WORDS * 64];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(usize)]
enum Kind {
    Eintr,
    Eagain,
    Short,
    Spurious,
    Econnaborted,
    Fatal,
}
const KINDS: [&str; 6] = [
    "EINTR",
    "EAGAIN",
    "short",
    "spurious",
    "ECONNABORTED",
    "fatal",
];
static COUNTS: [AtomicU64; CALLS.len() * KINDS.len()] =
    [const { AtomicU64::new(0) }; CALLS.len() * KINDS.len()];

fn count(call: Call, kind: Kind) {
    COUNTS[call as usize * KINDS.len() + kind as usize].fetch_add(1, Relaxed);
}

fn protected(fd: c_int) -> bool {
    let fd = fd as usize;
    fd < PROTECTED_WORDS * 64 && PROTECTED[fd / 64].load(Relaxed) & (1 << (fd % 64)) != 0
}

/// What `fstat` says the fd is: (socket, pipe).
fn fd_type(fd: c_int) -> (bool, bool) {
    // SAFETY: all-zero is a valid `stat` (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is writable; an invalid fd only makes the call fail.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return (false, false);
    }
    let format = st.st_mode & libc::S_IFMT;
    (format == libc::S_IFSOCK, format == libc::S_IFIFO)
}

fn eligible(config: &Config, fd: c_int) -> bool {
    if fd <= 2 || protected(fd) {
        return false;
    }
    let (socket, fifo) = fd_type(fd);
    (socket && config.sockets) || (fifo && config.fifos)
}

/// True for a byte stream: a pipe or a `SOCK_STREAM` socket (short reads and writes there
/// lose nothing; on a datagram socket they would truncate the datagram).
fn is_stream(fd: c_int) -> bool {
    let (socket, fifo) = fd_type(fd);
    if fifo {
        return true;
    }
    if !socket {
        return false;
    }
    let mut kind: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    let getsockopt = real!("getsockopt", GetsockoptFn);
    // SAFETY: `kind` is writable for `len` bytes.
    let rc = unsafe {
        getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && kind == libc::SOCK_STREAM
}

fn nonblocking(fd: c_int, flags: c_int) -> bool {
    // SAFETY: F_GETFL takes no argument; an invalid fd only makes it fail.
    flags & libc::MSG_DONTWAIT != 0
        || unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0
}

fn set_errno(errno: c_int) {
    // SAFETY: __errno_location returns this thread's errno, always valid.
    unsafe { *libc::__errno_location() = errno };
}

// ---------------------------------------------------------------------------------------------
// The decision

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Pass,
    /// Fail with this errno, without making the call.
    Fail(c_int, Kind),
    /// Make the call with at most this many bytes.
    Short(usize),
    /// `epoll_wait`: one spurious event.
    Spurious,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    Read,
    Write,
    Accept,
    Connect,
    Poll,
}

fn family(call: Call) -> Family {
    match call {
        Call::Recv | Call::Recvfrom | Call::Recvmsg | Call::Read => Family::Read,
        Call::Send | Call::Sendto | Call::Sendmsg | Call::Write | Call::Writev => Family::Write,
        Call::Accept | Call::Accept4 => Family::Accept,
        Call::Connect => Family::Connect,
        Call::EpollWait => Family::Poll,
    }
}

/// Whether and how to fault this call. `len` is the byte count asked for (reads, writes),
/// `flags` the call's flags (`MSG_*`).
fn decide(call: Call, fd: c_int, len: usize, flags: c_int) -> Action {
    if !ARMED.load(Relaxed) {
        return Action::Pass;
    }
    let Some(config) = config() else {
        return Action::Pass;
    };
    let slot = config.calls[call as usize];
    if !slot.transient && slot.fatal.is_none() {
        return Action::Pass;
    }
    if call != Call::EpollWait && !eligible(config, fd) {
        return Action::Pass;
    }
    if let Some((errno, nth)) = slot.fatal {
        if nth > 0 {
            let seen = SEEN[call as usize].fetch_add(1, Relaxed) + 1;
            if seen == nth {
                count(call, Kind::Fatal);
                return Action::Fail(errno, Kind::Fatal);
            }
            if !slot.transient {
                return Action::Pass;
            }
        }
    }
    if draw() >= config.threshold {
        return Action::Pass;
    }
    let mut options: [Action; 4] = [Action::Pass; 4];
    let mut n = 0;
    let mut push = |action| {
        options[n] = action;
        n += 1;
    };
    if let Some((errno, 0)) = slot.fatal {
        push(Action::Fail(errno, Kind::Fatal));
    }
    if slot.transient {
        push(Action::Fail(libc::EINTR, Kind::Eintr));
        match family(call) {
            Family::Read | Family::Write => {
                if nonblocking(fd, flags) {
                    push(Action::Fail(libc::EAGAIN, Kind::Eagain));
                }
                if len > 1 && is_stream(fd) {
                    push(Action::Short(1 + (draw() % (len as u64 - 1)) as usize));
                }
            }
            Family::Accept => {
                if nonblocking(fd, flags) {
                    push(Action::Fail(libc::EAGAIN, Kind::Eagain));
                }
                push(Action::Fail(libc::ECONNABORTED, Kind::Econnaborted));
            }
            Family::Connect => {}
            Family::Poll => push(Action::Spurious),
        }
    }
    let action = options[(draw() % n as u64) as usize];
    match action {
        Action::Fail(_, kind) => count(call, kind),
        Action::Short(_) => count(call, Kind::Short),
        Action::Spurious | Action::Pass => {}
    }
    action
}

/// The length to make a read or write call with, or `None` (errno set) if it fails instead.
fn length(action: Action, len: usize) -> Option<usize> {
    match action {
        Action::Fail(errno, _) => {
            set_errno(errno);
            None
        }
        Action::Short(short) => Some(short),
        _ => Some(len),
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    let real = real!("recv", RecvFn);
    let Some(len) = length(decide(Call::Recv, fd, len, flags), len) else {
        return -1;
    };
    // SAFETY: the caller's arguments, passed through, the length possibly shorter.
    unsafe { real(fd, buf, len, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    addrlen: *mut socklen_t,
) -> ssize_t {
    let real = real!("recvfrom", RecvfromFn);
    let Some(len) = length(decide(Call::Recvfrom, fd, len, flags), len) else {
        return -1;
    };
    // SAFETY: the caller's arguments, passed through, the length possibly shorter.
    unsafe { real(fd, buf, len, flags, addr, addrlen) }
}

/// The first buffer of a message, cut to at most `max` bytes: a copy of the header that reads
/// or writes less (the caller's header and buffers are left as they are).
///
/// # Safety
/// `msg` must point to a valid `msghdr` with at least one buffer.
unsafe fn cut_msg(msg: *const msghdr, first: &mut iovec, max: usize) -> msghdr {
    // SAFETY: the caller guarantees `msg` and its first iovec are valid.
    let mut copy = unsafe { *msg };
    // SAFETY: as above.
    *first = unsafe { *copy.msg_iov };
    first.iov_len = first.iov_len.min(max);
    copy.msg_iov = first;
    copy.msg_iovlen = 1;
    copy
}

/// # Safety
/// `msg` must be valid, or null.
unsafe fn msg_first_len(msg: *const msghdr) -> usize {
    // SAFETY: the caller guarantees `msg` is valid when not null; its iov array has iovlen
    // entries.
    unsafe {
        if msg.is_null() || (*msg).msg_iovlen == 0 || (*msg).msg_iov.is_null() {
            0
        } else {
            (*(*msg).msg_iov).iov_len
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    let real = real!("recvmsg", RecvmsgFn);
    // SAFETY: the caller's message is valid for recvmsg.
    let len = unsafe { msg_first_len(msg) };
    match decide(Call::Recvmsg, fd, len, flags) {
        Action::Fail(errno, _) => {
            set_errno(errno);
            -1
        }
        Action::Short(short) => {
            let mut first = iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            // SAFETY: `len > 1`, so the message has a first buffer.
            let mut copy = unsafe { cut_msg(msg, &mut first, short) };
            // SAFETY: `copy` points into the caller's buffers, at most as long.
            let n = unsafe { real(fd, &mut copy, flags) };
            if n >= 0 {
                // SAFETY: the caller's header is writable; give back what the kernel set.
                unsafe {
                    (*msg).msg_flags = copy.msg_flags;
                    (*msg).msg_namelen = copy.msg_namelen;
                    (*msg).msg_controllen = copy.msg_controllen;
                }
            }
            n
        }
        // SAFETY: the caller's arguments, passed through.
        _ => unsafe { real(fd, msg, flags) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, len: size_t) -> ssize_t {
    let real = real!("read", ReadFn);
    let Some(len) = length(decide(Call::Read, fd, len, 0), len) else {
        return -1;
    };
    // SAFETY: the caller's arguments, passed through, the length possibly shorter.
    unsafe { real(fd, buf, len) }
}

// ---------------------------------------------------------------------------------------------
// Writes

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    let real = real!("send", SendFn);
    let Some(len) = length(decide(Call::Send, fd, len, flags), len) else {
        return -1;
    };
    // SAFETY: the caller's arguments, passed through, the length possibly shorter.
    unsafe { real(fd, buf, len, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    addrlen: socklen_t,
) -> ssize_t {
    let real = real!("sendto", SendtoFn);
    let Some(len) = length(decide(Call::Sendto, fd, len, flags), len) else {
        return -1;
    };
    // SAFETY: the caller's arguments, passed through, the length possibly shorter.
    unsafe { real(fd, buf, len, flags, addr, addrlen) }
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    let real = real!("sendmsg", SendmsgFn);
    // SAFETY: the caller's message is valid for sendmsg.
    let len = unsafe { msg_first_len(msg) };
    match decide(Call::Sendmsg, fd, len, flags) {
        Action::Fail(errno, _) => {
            set_errno(errno);
            -1
        }
        Action::Short(short) => {
            let mut first = iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            };
            // SAFETY: `len > 1`, so the message has a first buffer; the copy sends a prefix
            // of the caller's bytes.
            unsafe {
                let copy = cut_msg(msg, &mut first, short);
                real(fd, &copy, flags)
            }
        }
        // SAFETY: the caller's arguments, passed through.
        _ => unsafe { real(fd, msg, flags) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: size_t) -> ssize_t {
    let real = real!("write", WriteFn);
    let Some(len) = length(decide(Call::Write, fd, len, 0), len) else {
        return -1;
    };
    // SAFETY: the caller's arguments, passed through, the length possibly shorter.
    unsafe { real(fd, buf, len) }
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, count: c_int) -> ssize_t {
    let real = real!("writev", WritevFn);
    let len = if count > 0 && !iov.is_null() {
        // SAFETY: the caller's array has `count` valid entries.
        unsafe { (*iov).iov_len }
    } else {
        0
    };
    match decide(Call::Writev, fd, len, 0) {
        Action::Fail(errno, _) => {
            set_errno(errno);
            -1
        }
        Action::Short(short) => {
            // SAFETY: `len > 1`, so there is a first entry; write a prefix of it.
            let mut first = unsafe { *iov };
            first.iov_len = short;
            // SAFETY: `first` describes a prefix of the caller's first buffer.
            unsafe { real(fd, &first, 1) }
        }
        // SAFETY: the caller's arguments, passed through.
        _ => unsafe { real(fd, iov, count) },
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real = real!("accept", AcceptFn);
    match decide(Call::Accept, fd, 0, 0) {
        Action::Fail(errno, _) => {
            set_errno(errno);
            -1
        }
        // SAFETY: the caller's arguments, passed through.
        _ => unsafe { real(fd, addr, len) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let real = real!("accept4", Accept4Fn);
    match decide(Call::Accept4, fd, 0, 0) {
        Action::Fail(errno, _) => {
            set_errno(errno);
            -1
        }
        // SAFETY: the caller's arguments, passed through.
        _ => unsafe { real(fd, addr, len, flags) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let real = real!("connect", ConnectFn);
    let action = decide(Call::Connect, fd, 0, 0);
    // SAFETY: the caller's arguments, passed through: the connection is really attempted, the
    // fault only changes what the caller is told.
    let rc = unsafe { real(fd, addr, len) };
    // SAFETY: this thread's errno.
    let errno = unsafe { *libc::__errno_location() };
    let started = rc == 0 || errno == libc::EINPROGRESS;
    match action {
        // An interrupted connect goes on in the background, as the kernel's does.
        Action::Fail(libc::EINTR, _) if started => {
            set_errno(libc::EINTR);
            -1
        }
        Action::Fail(fatal, _) if started => {
            if nonblocking(fd, 0) && (fd as usize) < PENDING_CONNECT.len() {
                PENDING_CONNECT[fd as usize].store(fatal, Relaxed);
                set_errno(libc::EINPROGRESS);
            } else {
                set_errno(fatal);
            }
            -1
        }
        _ => {
            set_errno(errno);
            rc
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    let real = real!("getsockopt", GetsockoptFn);
    if level == libc::SOL_SOCKET
        && name == libc::SO_ERROR
        && (fd as usize) < PENDING_CONNECT.len()
        && !value.is_null()
        && !len.is_null()
    {
        let pending = PENDING_CONNECT[fd as usize].swap(0, Relaxed);
        // SAFETY: `len` is the caller's readable length of `value`.
        if pending != 0 && unsafe { *len } as usize >= std::mem::size_of::<c_int>() {
            // SAFETY: `value` is writable for `*len >= sizeof(int)` bytes; the real call
            // clears the socket's own pending error, as reading SO_ERROR does.
            unsafe {
                real(fd, level, name, value, len);
                *value.cast::<c_int>() = pending;
                *len = std::mem::size_of::<c_int>() as socklen_t;
            }
            return 0;
        }
    }
    // SAFETY: the caller's arguments, passed through.
    unsafe { real(fd, level, name, value, len) }
}

// ---------------------------------------------------------------------------------------------
// epoll

/// The fds registered on the epoll instance `epfd` with their interests and data, as the
/// kernel lists them in `/proc/self/fdinfo/EPFD` (`tfd: FD events: HEX data: HEX`): the
/// registrations themselves, whichever fd (a `dup` of it, as mio's registry is) made them.
fn registrations(epfd: c_int) -> Vec<(c_int, u32, u64)> {
    let path = format!("/proc/self/fdinfo/{epfd}\0");
    let (read, close) = (real!("read", ReadFn), real!("close", CloseFn));
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Vec::new();
    }
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        text.extend_from_slice(&buf[..n as usize]);
    }
    // SAFETY: `fd` was opened above.
    unsafe { close(fd) };
    let mut out = Vec::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("tfd:") {
            continue;
        }
        let fields: Vec<&str> = words.take(5).collect();
        if let [fd, "events:", events, "data:", data] = fields[..] {
            if let (Ok(fd), Ok(events), Ok(data)) = (
                fd.parse(),
                u32::from_str_radix(events, 16),
                u64::from_str_radix(data, 16),
            ) {
                out.push((fd, events, data));
            }
        }
    }
    out
}

/// True for the write end of a pipe. asyncio's write-pipe transport watches it for reading
/// and takes readability as "the reader closed" (EPOLLERR, the only thing the kernel reports
/// there), so a spurious EPOLLIN is not a fault a kernel makes on it.
fn write_only(fd: c_int) -> bool {
    // SAFETY: F_GETFL takes no argument; an invalid fd only makes it fail.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_ACCMODE == libc::O_WRONLY
}

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let real = real!("close", CloseFn);
    if fd >= 0 && (fd as usize) < PENDING_CONNECT.len() {
        PENDING_CONNECT[fd as usize].store(0, Relaxed);
    }
    // SAFETY: the caller's argument, passed through.
    unsafe { real(fd) }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    let real = real!("epoll_wait", EpollWaitFn);
    let action = decide(Call::EpollWait, epfd, 0, 0);
    if let Action::Fail(errno, _) = action {
        set_errno(errno);
        return -1;
    }
    // SAFETY: the caller's arguments, passed through.
    let n = unsafe { real(epfd, events, max, timeout) };
    if action != Action::Spurious || n < 0 || n >= max {
        return n;
    }
    // SAFETY: the kernel wrote `n` events there.
    let reported = unsafe { std::slice::from_raw_parts(events, n as usize) };
    let Some(config) = config() else {
        return n;
    };
    let readiness = (libc::EPOLLIN | libc::EPOLLOUT) as u32;
    let candidates: Vec<(c_int, u32, u64)> = registrations(epfd)
        .into_iter()
        .filter_map(|(fd, interests, data)| {
            let mut interests = interests & readiness;
            if interests & libc::EPOLLIN as u32 != 0 && write_only(fd) {
                interests &= !(libc::EPOLLIN as u32);
            }
            let fresh = !reported.iter().any(|event| event.u64 == data);
            (interests != 0 && fresh && eligible(config, fd)).then_some((fd, interests, data))
        })
        .collect();
    if candidates.is_empty() {
        return n;
    }
    let (_, interests, data) = candidates[(draw() % candidates.len() as u64) as usize];
    count(Call::EpollWait, Kind::Spurious);
    // SAFETY: `n < max`, so slot `n` of the caller's array is writable.
    unsafe {
        *events.add(n as usize) = epoll_event {
            events: interests,
            u64: data,
        };
    }
    n + 1
}

// ---------------------------------------------------------------------------------------------
// Control

/// Start (`on != 0`) or stop injecting faults.
#[no_mangle]
pub extern "C" fn ferroloop_faults_arm(on: c_int) {
    let _ = config();
    ARMED.store(on != 0, Relaxed);
}

/// Never fault `fd` (`on != 0`) or make it eligible again.
#[no_mangle]
pub extern "C" fn ferroloop_faults_protect(fd: c_int, on: c_int) {
    let index = fd as usize;
    if fd < 0 || index >= PROTECTED_WORDS * 64 {
        return;
    }
    let bit = 1u64 << (index % 64);
    if on != 0 {
        PROTECTED[index / 64].fetch_or(bit, Relaxed);
    } else {
        PROTECTED[index / 64].fetch_and(!bit, Relaxed);
    }
}

/// The faults injected so far, one `call.kind=count` line each (non-zero ones only), into
/// `buf` (NUL-terminated, cut to `len`). Returns the length of the whole report.
#[no_mangle]
pub unsafe extern "C" fn ferroloop_faults_report(buf: *mut c_char, len: size_t) -> size_t {
    let mut report = String::new();
    for (call_name, call) in CALLS {
        for (kind_index, kind_name) in KINDS.iter().enumerate() {
            let n = COUNTS[call as usize * KINDS.len() + kind_index].load(Relaxed);
            if n > 0 {
                report.push_str(&format!("{call_name}.{kind_name}={n}\n"));
            }
        }
    }
    if !buf.is_null() && len > 0 {
        let n = report.len().min(len - 1);
        // SAFETY: the caller's buffer is writable for `len` bytes; `n + 1 <= len`.
        unsafe {
            std::ptr::copy_nonoverlapping(report.as_ptr(), buf.cast(), n);
            *buf.add(n) = 0;
        }
    }
    report.len()
}
