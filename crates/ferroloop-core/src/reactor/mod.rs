//! The reactor: readiness of file descriptors, and a waker for other threads.
//!
//! Built on mio (epoll on Linux, kqueue on macOS). Two things asyncio needs that mio does not
//! give directly are handled here:
//!
//! 1. **Level-triggered readiness.** `loop.add_reader(fd, cb)` calls `cb` on every iteration
//!    while the fd stays readable, even if `cb` reads nothing. mio registers edge-triggered.
//!    On Linux the fds are registered on mio's epoll instance with `epoll_ctl` directly,
//!    level-triggered and with the bits asyncio's `EpollSelector` asks for (`EPOLLIN`,
//!    `EPOLLOUT`); mio's `poll` reports them like its own. Elsewhere (kqueue) every fd that
//!    reported an event is re-armed after the poll ([`Registrar::rearm`], a re-registration),
//!    which makes the kernel report it again at the next poll only if it is still ready. The
//!    re-arm was also how Linux worked before: one extra `epoll_ctl` per event.
//! 2. **Interest bookkeeping.** [`Registrar::set_interest`] registers, modifies or deregisters an
//!    fd according to the union of its reader and writer interests, and recovers when the fd
//!    was closed and its number reused behind our back (the kernel drops closed fds from epoll).
//!
//! The reactor comes in two halves so that registering an fd never waits for a poll in
//! progress: the [`Poller`] (the blocking wait, owned by the loop's thread) and the
//! [`Registrar`] (interest bookkeeping, usable while another thread polls: epoll allows it).
//!
//! Rules:
//! 1. Only the loop's thread calls [`Poller::poll`].
//! 2. Any thread may call [`Waker::wake`] on the shared waker.

pub mod fd_map;
pub mod interest;

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

#[cfg(not(target_os = "linux"))]
use mio::unix::SourceFd;
use mio::{Events, Poll, Registry, Token};

pub use mio::Waker;

pub use fd_map::FdMap;
pub use interest::Interest;

/// The token of the waker; fds use their own number as token. (mio reserves `usize::MAX`.)
const WAKER_TOKEN: Token = Token(usize::MAX - 1);

/// One readiness report, already mapped the way asyncio's `EpollSelector` maps epoll bits:
/// an error or hang-up makes an fd both readable and writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoEvent {
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
}

/// Create a reactor: its poller, its registrar and the waker that interrupts the poller.
pub fn new() -> io::Result<(Poller, Registrar, Arc<Waker>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?);
    let registry = poll.registry().try_clone()?;
    Ok((
        Poller {
            poll: Some(poll),
            events: Events::with_capacity(1024),
        },
        Registrar {
            registry: Some(registry),
            fds: FdMap::default(),
            pending: Vec::new(),
        },
        waker,
    ))
}

/// The blocking half: waits for readiness.
pub struct Poller {
    /// `None` once closed: the epoll fd is released with the loop's `close()`, as asyncio's
    /// selector is.
    poll: Option<Poll>,
    /// mio's event buffer, reused across polls.
    events: Events,
}

/// The bookkeeping half: which fds are registered, with which interest.
///
/// Growing an fd's interest (`add_reader`, `add_writer`) reaches the kernel at once, so an
/// invalid fd fails the call as it does on asyncio's selector. Shrinking it
/// ([`shrink_interest`](Registrar::shrink_interest): `remove_reader`, `remove_writer`) waits
/// for [`flush`](Registrar::flush), which the loop calls before every poll: a reader removed
/// and added back within one iteration (asyncio's `sock_recv` does that on every wait) then
/// costs one `epoll_ctl` instead of two.
pub struct Registrar {
    /// `None` once closed (see [`Registrar::close`]).
    registry: Option<Registry>,
    /// Per fd: the interest callers asked for and the one the kernel has.
    fds: FdMap<Slot>,
    /// Fds whose shrink is not applied yet (an fd may be listed after its slot stopped
    /// waiting; `Slot::pending` is what counts).
    pending: Vec<RawFd>,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    wanted: Interest,
    kernel: Interest,
    /// A shrink waits for the next flush (the fd is listed in `Registrar::pending`).
    pending: bool,
    /// Shrunk without a flush planned (see [`Registrar::park`]).
    parked: bool,
}

impl Slot {
    /// The kernel may hold a registration that differs from what is wanted, or that belongs
    /// to a file closed since, whose number was reused.
    fn unsure(&self) -> bool {
        self.pending || self.parked
    }
}

impl Registrar {
    /// Number of fds with a non-empty interest.
    pub fn registered(&self) -> usize {
        self.fds.values().filter(|s| !s.wanted.is_empty()).count()
    }

    /// The interest asked for `fd`.
    pub fn interest(&self, fd: RawFd) -> Interest {
        self.fds.get(&fd).map_or(Interest::NONE, |s| s.wanted)
    }

    /// Make `fd`'s registered interest exactly `interest` (empty means deregister), now.
    pub fn set_interest(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        let slot = self.fds.get(&fd).copied().unwrap_or_default();
        // A slot waiting for its shrink may name an fd that was closed and whose number was
        // reused since: the kernel must be told again even if the interest looks the same.
        if slot.kernel == interest && !slot.unsure() {
            return Ok(());
        }
        self.apply_now(fd, slot.kernel, interest)
    }

    /// [`set_interest`](Self::set_interest) for a caller that knows `fd` has named the same
    /// open file since this registrar last told the kernel about it (the loop knows that of a
    /// socket object that stayed open with that fd all along). A parked or pending shrink is
    /// then undone without a system call when the kernel already has `interest`.
    pub fn set_interest_same_file(&mut self, fd: RawFd, interest: Interest) -> io::Result<()> {
        if let Some(slot) = self.fds.get_mut(&fd) {
            if slot.kernel == interest {
                slot.wanted = interest;
                slot.pending = false;
                slot.parked = false;
                return Ok(());
            }
        }
        self.set_interest(fd, interest)
    }

    fn apply_now(&mut self, fd: RawFd, kernel: Interest, interest: Interest) -> io::Result<()> {
        let result = self.apply(fd, kernel, interest);
        match &result {
            Ok(()) if interest.is_empty() => {
                self.fds.remove(&fd);
            }
            Ok(()) => {
                self.fds.insert(
                    fd,
                    Slot {
                        wanted: interest,
                        kernel: interest,
                        pending: false,
                        parked: false,
                    },
                );
            }
            // Nothing changed in the kernel; the caller sees the error.
            Err(_) => {}
        }
        result
    }

    /// Shrink `fd`'s interest to `interest` at the next [`flush`](Self::flush). Errors then
    /// (the fd was closed meanwhile) are ignored, as asyncio's selector ignores them when it
    /// unregisters.
    pub fn shrink_interest(&mut self, fd: RawFd, interest: Interest) {
        let Some(slot) = self.fds.get_mut(&fd) else {
            return;
        };
        slot.wanted = interest;
        slot.parked = false;
        if !slot.pending {
            slot.pending = true;
            self.pending.push(fd);
        }
    }

    /// Shrink `fd`'s interest to `interest` without telling the kernel until it matters: the
    /// kernel keeps reporting the old interest, so the caller calls [`unpark`](Self::unpark)
    /// when a poll reports `fd` for something nobody wants any more. For a reader that is
    /// removed and then added back for the same open file (one `sock_recv` after another), the
    /// registration then costs no system call at all (see
    /// [`set_interest_same_file`](Self::set_interest_same_file)).
    pub fn park(&mut self, fd: RawFd, interest: Interest) {
        let Some(slot) = self.fds.get_mut(&fd) else {
            return;
        };
        slot.wanted = interest;
        if !slot.pending {
            slot.parked = true;
        }
    }

    /// A poll reported `fd` for an interest nobody wants: if it is parked, apply its shrink at
    /// the next flush.
    pub fn unpark(&mut self, fd: RawFd) {
        if let Some(slot) = self.fds.get_mut(&fd) {
            if slot.parked {
                slot.parked = false;
                slot.pending = true;
                self.pending.push(fd);
            }
        }
    }

    /// Deregister every fd, parked ones included (the loop is closing).
    pub fn release_all(&mut self) {
        let fds: Vec<RawFd> = self.fds.keys().collect();
        for fd in fds {
            let _ = self.set_interest(fd, Interest::NONE);
        }
        self.fds.clear();
        self.pending.clear();
    }

    /// Release every registration and close the registrar's epoll fd: registering fails with
    /// `EBADF` from now on.
    pub fn close(&mut self) {
        self.release_all();
        self.registry = None;
    }

    /// Apply the shrinks asked since the last flush. Call before every poll.
    pub fn flush(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        for fd in pending.drain(..) {
            let Some(slot) = self.fds.get_mut(&fd) else {
                continue;
            };
            if !slot.pending {
                continue;
            }
            slot.pending = false;
            slot.parked = false;
            let (kernel, wanted) = (slot.kernel, slot.wanted);
            if kernel == wanted {
                continue;
            }
            match self.apply(fd, kernel, wanted) {
                Ok(()) if !wanted.is_empty() => {
                    if let Some(slot) = self.fds.get_mut(&fd) {
                        slot.kernel = wanted;
                    }
                }
                // Deregistered, or the fd is gone: the kernel holds nothing for it any more.
                _ => {
                    self.fds.remove(&fd);
                }
            }
        }
        self.pending = pending;
    }

    /// Move the kernel's registration of `fd` from `current` to `interest`, recovering from
    /// fds closed (and their numbers reused) behind our back.
    fn apply(&self, fd: RawFd, current: Interest, interest: Interest) -> io::Result<()> {
        match (current.is_empty(), interest.is_empty()) {
            (_, true) => match self.ctl(Op::Delete, fd, interest) {
                // The fd was closed (and dropped from epoll by the kernel) before we were
                // told to stop watching it: nothing is left to undo.
                Err(e) if is_gone(&e) => Ok(()),
                other => other,
            },
            (true, false) => match self.ctl(Op::Add, fd, interest) {
                // Still registered under an fd number we had forgotten (closed and reused).
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.ctl(Op::Modify, fd, interest)
                }
                other => other,
            },
            (false, false) => match self.ctl(Op::Modify, fd, interest) {
                // The fd was closed and its number reused: register it afresh.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.ctl(Op::Add, fd, interest),
                other => other,
            },
        }
    }

    /// Register, re-register or deregister `fd` (level-triggered, see the module docs).
    #[cfg(target_os = "linux")]
    fn ctl(&self, op: Op, fd: RawFd, interest: Interest) -> io::Result<()> {
        use std::os::fd::AsRawFd;

        let op = match op {
            Op::Add => libc::EPOLL_CTL_ADD,
            Op::Modify => libc::EPOLL_CTL_MOD,
            Op::Delete => libc::EPOLL_CTL_DEL,
        };
        let mut bits = 0;
        if interest.is_readable() {
            bits |= libc::EPOLLIN;
        }
        if interest.is_writable() {
            bits |= libc::EPOLLOUT;
        }
        let mut event = libc::epoll_event {
            events: bits as u32,
            // mio's `poll` reads this back as the event's token.
            u64: fd as u64,
        };
        let registry = self.registry.as_ref().ok_or_else(closed)?;
        // SAFETY: a plain system call on mio's epoll fd (alive as long as `registry`) with a
        // valid event structure; the kernel copies it.
        let result = unsafe { libc::epoll_ctl(registry.as_raw_fd(), op, fd, &mut event) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Register, re-register or deregister `fd` through mio (edge-triggered; see `rearm`).
    #[cfg(not(target_os = "linux"))]
    fn ctl(&self, op: Op, fd: RawFd, interest: Interest) -> io::Result<()> {
        let token = Token(fd as usize);
        let registry = self.registry.as_ref().ok_or_else(closed)?;
        match (op, interest.to_mio()) {
            (Op::Delete, _) => registry.deregister(&mut SourceFd(&fd)),
            (Op::Add, Some(new)) => registry.register(&mut SourceFd(&fd), token, new),
            (Op::Modify, Some(new)) => registry.reregister(&mut SourceFd(&fd), token, new),
            (_, None) => Ok(()),
        }
    }

    /// Forget `fd` without a system call: used when the fd is known to be closed already.
    pub fn forget(&mut self, fd: RawFd) {
        self.fds.remove(&fd);
    }

    /// After a poll reported `fd`: make the next poll report it again if it is still ready.
    /// Nothing to do where registrations are level-triggered (Linux); a re-registration where
    /// they are edge-triggered. Errors mean the fd went away; the caller's next
    /// `set_interest` sorts that out, so they are ignored here.
    #[inline]
    pub fn rearm(&mut self, fd: RawFd) {
        #[cfg(not(target_os = "linux"))]
        if let (Some(interest), Some(registry)) = (
            self.fds.get(&fd).and_then(|s| s.kernel.to_mio()),
            self.registry.as_ref(),
        ) {
            let _ = registry.reregister(&mut SourceFd(&fd), Token(fd as usize), interest);
        }
        #[cfg(target_os = "linux")]
        let _ = fd;
    }
}

/// What [`Registrar::ctl`] does.
#[derive(Clone, Copy)]
enum Op {
    Add,
    Modify,
    Delete,
}

/// The error of a closed poller or registrar.
fn closed() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl Poller {
    /// Close the epoll fd: polling fails with `EBADF` from now on.
    pub fn close(&mut self) {
        self.poll = None;
    }

    /// Wait for readiness for at most `timeout` (`None`: forever) and append what happened to
    /// `out`. A signal interrupting the wait is reported as `ErrorKind::Interrupted`.
    pub fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<IoEvent>) -> io::Result<()> {
        self.poll
            .as_mut()
            .ok_or_else(closed)?
            .poll(&mut self.events, timeout)?;
        for event in self.events.iter() {
            let token = event.token();
            if token == WAKER_TOKEN {
                continue;
            }
            let failed = event.is_error() || event.is_read_closed() || event.is_write_closed();
            out.push(IoEvent {
                fd: token.0 as RawFd,
                readable: event.is_readable() || failed,
                writable: event.is_writable() || failed,
            });
        }
        Ok(())
    }
}

fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EBADF))
}

#[cfg(test)]
mod tests;
