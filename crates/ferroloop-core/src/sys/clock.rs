//! The monotonic clock, read the way CPython's `time.monotonic()` reads it.

/// Nanoseconds of `CLOCK_MONOTONIC`.
#[inline]
pub fn monotonic_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on the
    // platforms we build for, so the call cannot fail.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    // `time_t`/`c_long` are `i64` on the 64-bit targets we build for; the conversion keeps
    // 32-bit targets compiling.
    #[allow(clippy::useless_conversion)]
    let nanos = i64::from(ts.tv_sec) * 1_000_000_000 + i64::from(ts.tv_nsec);
    nanos
}
