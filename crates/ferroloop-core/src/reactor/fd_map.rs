//! [`FdMap`]: a hash map keyed by file descriptor numbers.
//!
//! The standard map hashes with SipHash, which resists hash flooding by untrusted keys and
//! costs tens of instructions per lookup. Fd numbers are small integers chosen by the kernel,
//! not by a peer, and the loop looks them up several times per I/O event; a multiplicative
//! hash is enough.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::os::fd::RawFd;

/// A `HashMap` from fd numbers, hashed by [`FdHasher`].
pub type FdMap<V> = HashMap<RawFd, V, BuildHasherDefault<FdHasher>>;

/// Fibonacci hashing of one integer: spreads consecutive fds over the table's buckets (the
/// map uses the top bits for its control bytes and the low ones for the bucket).
#[derive(Default, Clone, Copy)]
pub struct FdHasher(u64);

impl Hasher for FdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Only used for keys other than an fd; not on the loop's paths.
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    #[inline]
    fn write_i32(&mut self, value: i32) {
        // `as u32`: the bit pattern (fds are never negative in the map anyway).
        self.0 = u64::from(value as u32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut map: FdMap<usize> = FdMap::default();
        for fd in 0..10_000 {
            map.insert(fd, fd as usize * 2);
        }
        for fd in (0..10_000).step_by(2) {
            map.remove(&fd);
        }
        assert_eq!(map.len(), 5_000);
        assert_eq!(map.get(&9_999), Some(&19_998));
        assert_eq!(map.get(&9_998), None);
    }
}
