//! `loop.time()`.
//!
//! It must be bit-for-bit `time.monotonic()`: aiohttp and others mix the two freely. CPython
//! reads `CLOCK_MONOTONIC` in nanoseconds and converts with one division by 1e9
//! (`_PyTime_AsSecondsDouble`); so do we.

use crate::sys::clock::monotonic_ns;

/// Seconds of `CLOCK_MONOTONIC` as a float, identical to `time.monotonic()`.
#[inline]
pub fn monotonic() -> f64 {
    let ns = monotonic_ns();
    if ns % 1_000_000_000 == 0 {
        (ns / 1_000_000_000) as f64
    } else {
        ns as f64 / 1e9
    }
}

/// The resolution asyncio adds to "now" when it decides which timers are due
/// (`time.get_clock_info('monotonic').resolution`, 1 ns on Linux).
pub const CLOCK_RESOLUTION: f64 = 1e-9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(a > 0.0);
    }
}
