//! The identity and CPU time of threads, for the watchdog (see `crate::metrics`).

/// `pthread_self()` as an integer: what CPython's `threading.get_ident()` returns, and the key
/// of the loop thread in `sys._current_frames()`.
#[inline]
pub fn current_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as u64 }
}

/// The kernel's id of the calling thread (`gettid`).
#[inline]
pub fn current_tid() -> i32 {
    // SAFETY: SYS_gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// CPU time consumed so far by the thread `tid` of this process, in nanoseconds, or `None` if
/// the thread no longer exists.
///
/// Uses the kernel's per-thread CPU clock id (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`, the
/// encoding glibc's `pthread_getcpuclockid` uses), which, unlike a `pthread_t`, stays safe to
/// pass after the thread has exited: the call then fails with `EINVAL`.
pub fn thread_cpu_time_ns(tid: i32) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    const CPUCLOCK_SCHED: libc::clockid_t = 2;
    const CPUCLOCK_PERTHREAD: libc::clockid_t = 4;
    let clock: libc::clockid_t = ((!tid) << 3) | CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; an invalid clock id only makes the call fail.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return None;
    }
    Some((ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Time the thread `tid` of this process has been runnable so far, in nanoseconds: on a CPU
/// plus waiting for one in the run queue (`/proc/self/task/<tid>/schedstat`). Unlike CPU time
/// alone, its share of the wall time stays near 1 for CPU-bound code on a loaded machine.
/// Falls back to [`thread_cpu_time_ns`] when the kernel has no schedstat.
pub fn thread_runnable_ns(tid: i32) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    if let Ok(text) = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")) {
        let mut fields = text.split_ascii_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(on_cpu)), Some(Ok(waiting))) = (fields.next(), fields.next()) {
            return Some(on_cpu + waiting);
        }
    }
    thread_cpu_time_ns(tid)
}

/// The CPU the thread `tid` of this process last ran on (`/proc/self/task/<tid>/stat`, field
/// 39), or `None` when it cannot be read.
pub fn thread_processor(tid: i32) -> Option<usize> {
    if tid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    processor_from_stat(&text)
}

/// Field 39 of a `/proc/.../stat` line. The second field (the command name, in parentheses)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn processor_from_stat(text: &str) -> Option<usize> {
    let after_name = &text[text.rfind(')')? + 1..];
    // Field 3 is the first after the name; field 39 is the 37th after it.
    after_name.split_ascii_whitespace().nth(36)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let tid = current_tid();
        let a = thread_cpu_time_ns(tid).expect("own cpu clock");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        let b = thread_cpu_time_ns(tid).expect("own cpu clock");
        assert!(b > a);
        assert!(thread_runnable_ns(tid).expect("runnable time") > 0);
    }

    #[test]
    fn the_processor_is_read_after_the_command_name() {
        let mut line = String::from("42 (a (b) c) R");
        for field in 4..=52 {
            line.push_str(&format!(" {}", if field == 39 { 7 } else { 1000 + field }));
        }
        assert_eq!(processor_from_stat(&line), Some(7));
        assert_eq!(processor_from_stat("42 (x) R 1 2"), None);
        let own = thread_processor(current_tid()).expect("own processor");
        // SAFETY: sysconf has no preconditions.
        let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
        assert!((own as libc::c_long) < configured, "{own} of {configured}");
    }

    #[test]
    fn dead_thread_has_no_cpu_time() {
        let tid = std::thread::spawn(current_tid).join().unwrap();
        // `join` returns once the kernel clears the thread's tid word, which it does while the
        // thread is still exiting: give the kernel a moment to reap it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while thread_cpu_time_ns(tid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(thread_cpu_time_ns(tid), None);
        assert_eq!(thread_cpu_time_ns(0), None);
        assert_eq!(thread_runnable_ns(tid), None);
    }
}
