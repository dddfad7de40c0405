//! Reactor tests on real fds (socket pairs).

use super::*;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;

fn poll_now(p: &mut Poller) -> Vec<IoEvent> {
    let mut out = Vec::new();
    p.poll(Some(Duration::from_millis(0)), &mut out).unwrap();
    out
}

#[test]
fn readable_is_level_triggered_after_rearm() {
    let (mut p, mut r, waker) = new().unwrap();
    let _ = &waker;
    let (mut a, b) = UnixStream::pair().unwrap();
    r.set_interest(b.as_raw_fd(), Interest::READ).unwrap();
    assert!(poll_now(&mut p).is_empty());
    a.write_all(b"x").unwrap();
    for _ in 0..3 {
        let ev = poll_now(&mut p);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].readable);
        // Nothing is read, so a level-triggered poller reports it again.
        r.rearm(b.as_raw_fd());
    }
    let mut buf = [0u8; 1];
    (&b).read_exact(&mut buf).unwrap();
    r.rearm(b.as_raw_fd());
    assert!(poll_now(&mut p).is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn linux_registrations_are_level_triggered_without_rearm() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    r.set_interest(b.as_raw_fd(), Interest::READ | Interest::WRITE)
        .unwrap();
    a.write_all(b"x").unwrap();
    for _ in 0..3 {
        let ev = poll_now(&mut p);
        assert_eq!(ev.len(), 1);
        assert!(ev[0].readable && ev[0].writable);
    }
    r.set_interest(b.as_raw_fd(), Interest::WRITE).unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].writable && !ev[0].readable);
    // The peer closing makes it readable (end of file).
    r.set_interest(b.as_raw_fd(), Interest::READ).unwrap();
    drop(a);
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].readable);
}

#[test]
fn interest_transitions() {
    let (mut p, mut r, waker) = new().unwrap();
    let _ = &waker;
    let (_a, b) = UnixStream::pair().unwrap();
    let fd = b.as_raw_fd();
    r.set_interest(fd, Interest::WRITE).unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].writable && !ev[0].readable);
    r.set_interest(fd, Interest::READ | Interest::WRITE)
        .unwrap();
    assert_eq!(r.registered(), 1);
    r.set_interest(fd, Interest::NONE).unwrap();
    assert_eq!(r.registered(), 0);
    r.rearm(fd);
    assert!(poll_now(&mut p).is_empty());
}

#[test]
fn bad_fd_is_an_error() {
    let (_p, mut r, _waker) = new().unwrap();
    let err = r.set_interest(1_000_000, Interest::READ).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    assert_eq!(r.registered(), 0);
}

#[test]
fn closed_and_reused_fd_recovers() {
    let (mut p, mut r, waker) = new().unwrap();
    let _ = &waker;
    let (a, b) = UnixStream::pair().unwrap();
    let fd = b.as_raw_fd();
    r.set_interest(fd, Interest::READ).unwrap();
    drop(b);
    drop(a);
    // The kernel dropped the fd from epoll; a new socket may get the same number.
    let (mut c, d) = UnixStream::pair().unwrap();
    let fd2 = d.as_raw_fd();
    r.set_interest(fd2, Interest::READ | Interest::WRITE)
        .unwrap();
    c.write_all(b"y").unwrap();
    let ev = poll_now(&mut p);
    assert!(ev.iter().any(|e| e.fd == fd2 && e.readable));
    r.set_interest(fd, Interest::NONE).unwrap();
}

#[test]
fn waker_interrupts_a_blocking_poll() {
    let (mut p, _r, waker) = new().unwrap();
    // The loop keeps its waker alive; a closed eventfd would drop its pending event.
    let kept = Arc::clone(&waker);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        waker.wake().unwrap();
    });
    let mut out = Vec::new();
    let start = std::time::Instant::now();
    p.poll(Some(Duration::from_secs(10)), &mut out).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(out.is_empty());
    t.join().unwrap();
    drop(kept);
}

#[test]
fn a_shrink_reaches_the_kernel_at_the_flush() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let fd = b.as_raw_fd();
    r.set_interest(fd, Interest::READ | Interest::WRITE)
        .unwrap();
    a.write_all(b"x").unwrap();
    r.shrink_interest(fd, Interest::WRITE);
    assert_eq!(r.interest(fd), Interest::WRITE);
    r.flush();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].writable && !ev[0].readable);
    r.shrink_interest(fd, Interest::NONE);
    assert_eq!(r.registered(), 0);
    r.flush();
    assert!(poll_now(&mut p).is_empty());
    // Registered afresh after a flushed removal.
    r.set_interest(fd, Interest::READ).unwrap();
    assert_eq!(poll_now(&mut p).len(), 1);
}

#[test]
fn removed_and_added_back_before_the_flush() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let fd = b.as_raw_fd();
    r.set_interest(fd, Interest::READ).unwrap();
    r.shrink_interest(fd, Interest::NONE);
    r.set_interest(fd, Interest::READ).unwrap();
    r.flush();
    assert!(poll_now(&mut p).is_empty());
    a.write_all(b"x").unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].readable);
    assert_eq!(r.registered(), 1);
}

#[test]
fn removed_closed_reused_and_added_back_before_the_flush() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let fd = b.into_raw_fd();
    r.set_interest(fd, Interest::READ).unwrap();
    r.shrink_interest(fd, Interest::NONE);
    drop(a);
    // The number now names another socket, which must be registered although the interest
    // looks unchanged. `dup2` closes the old socket (the kernel drops its registration) and
    // gives the number to the new one in one step: tests run on parallel threads, and a
    // close followed by a reuse would let another test's fd take the number in between.
    let (mut c, d) = UnixStream::pair().unwrap();
    // SAFETY: `fd` is owned by this test (taken from `b`) and is closed below.
    assert_eq!(unsafe { libc::dup2(d.as_raw_fd(), fd) }, fd);
    r.set_interest(fd, Interest::READ).unwrap();
    r.flush();
    c.write_all(b"x").unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].fd, fd);
    assert!(ev[0].readable);
    r.set_interest(fd, Interest::NONE).unwrap();
    // SAFETY: closes the duplicate made above; nothing else owns it.
    unsafe { libc::close(fd) };
}

#[test]
fn parked_interest_stays_in_the_kernel_until_unparked() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let fd = b.as_raw_fd();
    r.set_interest(fd, Interest::READ).unwrap();
    r.park(fd, Interest::NONE);
    assert_eq!(r.interest(fd), Interest::NONE);
    assert_eq!(r.registered(), 0);
    // A flush leaves a parked fd alone: the kernel still reports it.
    r.flush();
    a.write_all(b"x").unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].fd, fd);
    // Reported for an interest nobody wants: unparked, the shrink reaches the kernel.
    r.unpark(fd);
    r.flush();
    assert!(poll_now(&mut p).is_empty());
    assert_eq!(r.registered(), 0);
}

#[test]
fn parked_interest_taken_back_for_the_same_file() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let fd = b.as_raw_fd();
    r.set_interest(fd, Interest::READ).unwrap();
    r.park(fd, Interest::NONE);
    r.set_interest_same_file(fd, Interest::READ).unwrap();
    assert_eq!(r.interest(fd), Interest::READ);
    // Not parked any more: a later unpark (a stale report) changes nothing.
    r.unpark(fd);
    r.flush();
    a.write_all(b"x").unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].readable);
    // Another interest than the kernel has: a real registration change.
    r.park(fd, Interest::NONE);
    r.set_interest_same_file(fd, Interest::WRITE).unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert!(ev[0].writable && !ev[0].readable);
}

#[test]
fn parked_fd_closed_and_reused_is_registered_again() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let fd = b.into_raw_fd();
    r.set_interest(fd, Interest::READ).unwrap();
    r.park(fd, Interest::NONE);
    drop(a);
    let (mut c, d) = UnixStream::pair().unwrap();
    // As in `removed_closed_reused_and_added_back_before_the_flush`: the number now names
    // another socket, in one step.
    // SAFETY: `fd` is owned by this test (taken from `b`) and is closed below.
    assert_eq!(unsafe { libc::dup2(d.as_raw_fd(), fd) }, fd);
    // Not the same file: `set_interest` must tell the kernel although it "has" READ.
    r.set_interest(fd, Interest::READ).unwrap();
    c.write_all(b"x").unwrap();
    let ev = poll_now(&mut p);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].fd, fd);
    r.set_interest(fd, Interest::NONE).unwrap();
    // SAFETY: closes the duplicate made above; nothing else owns it.
    unsafe { libc::close(fd) };
}

#[test]
fn release_all_deregisters_parked_fds() {
    let (mut p, mut r, _waker) = new().unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    r.set_interest(b.as_raw_fd(), Interest::READ).unwrap();
    r.park(b.as_raw_fd(), Interest::NONE);
    r.release_all();
    a.write_all(b"x").unwrap();
    assert!(poll_now(&mut p).is_empty());
}

#[test]
fn closed_reactor_fails_with_ebadf() {
    // That the fds are released is checked from Python (tests/test_leaks.py), in one thread:
    // here other tests open and close fds in parallel.
    let (mut p, mut r, _waker) = new().unwrap();
    let (_a, b) = UnixStream::pair().unwrap();
    r.set_interest(b.as_raw_fd(), Interest::READ).unwrap();
    r.close();
    p.close();
    let error = r.set_interest(b.as_raw_fd(), Interest::READ).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
    let mut out = Vec::new();
    let error = p.poll(Some(Duration::ZERO), &mut out).unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EBADF));
}
