//! [`FdMap`]: a map keyed by file descriptor numbers, stored as a table indexed by the fd.
//!
//! The kernel hands out the lowest free fd number, so the fds a loop watches are small and
//! dense: a server with 5,000 connections has fds 0 to about 5,010. A table indexed by the
//! number finds an fd with two loads and no hashing, and costs one entry per fd number up to
//! the highest in use; a hash table costs 1.1 to 2.3 entries per fd (its load factor) and
//! touches its buckets at random. The table grows in chunks of `CHUNK` entries, allocated
//! when an fd in them is first inserted, so an fd far above the others (a raised
//! `RLIMIT_NOFILE`) costs one chunk and a slot in the chunk list. Numbers the table does not
//! index (negative ones, and those from `MAX_INDEXED` up) live in a short list beside it.

use std::os::fd::RawFd;

/// Entries per chunk of the table.
const CHUNK: usize = 64;

/// Fds from this number up are kept in the side list (the chunk list would be 2 MiB here).
const MAX_INDEXED: RawFd = 1 << 24;

/// A map from fd numbers to `V` (see the module docs).
pub struct FdMap<V> {
    chunks: Vec<Option<Box<[Option<V>]>>>,
    /// Entries whose fd the table does not index.
    others: Vec<(RawFd, V)>,
    len: usize,
}

impl<V> Default for FdMap<V> {
    fn default() -> Self {
        FdMap {
            chunks: Vec::new(),
            others: Vec::new(),
            len: 0,
        }
    }
}

/// The chunk and the index in it of `fd`, if the table indexes it.
#[inline]
fn position(fd: RawFd) -> Option<(usize, usize)> {
    if (0..MAX_INDEXED).contains(&fd) {
        let fd = fd as usize;
        Some((fd / CHUNK, fd % CHUNK))
    } else {
        None
    }
}

impl<V> FdMap<V> {
    /// Number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn get(&self, fd: &RawFd) -> Option<&V> {
        match position(*fd) {
            Some((chunk, index)) => self.chunks.get(chunk)?.as_ref()?[index].as_ref(),
            None => self
                .others
                .iter()
                .find(|(key, _)| key == fd)
                .map(|(_, v)| v),
        }
    }

    #[inline]
    pub fn get_mut(&mut self, fd: &RawFd) -> Option<&mut V> {
        match position(*fd) {
            Some((chunk, index)) => self.chunks.get_mut(chunk)?.as_mut()?[index].as_mut(),
            None => self
                .others
                .iter_mut()
                .find(|(key, _)| key == fd)
                .map(|(_, v)| v),
        }
    }

    pub fn contains_key(&self, fd: &RawFd) -> bool {
        self.get(fd).is_some()
    }

    /// The entry of `fd`, made with `make` if there is none.
    #[inline]
    pub fn get_or_insert_with(&mut self, fd: RawFd, make: impl FnOnce() -> V) -> &mut V {
        let Some((chunk, index)) = position(fd) else {
            let at = match self.others.iter().position(|(key, _)| *key == fd) {
                Some(at) => at,
                None => {
                    self.others.push((fd, make()));
                    self.len += 1;
                    self.others.len() - 1
                }
            };
            return &mut self.others[at].1;
        };
        if self.chunks.len() <= chunk {
            self.chunks.resize_with(chunk + 1, || None);
        }
        let entries = self.chunks[chunk].get_or_insert_with(|| (0..CHUNK).map(|_| None).collect());
        let entry = &mut entries[index];
        if entry.is_none() {
            self.len += 1;
        }
        entry.get_or_insert_with(make)
    }

    /// Set the entry of `fd`; the previous value, if there was one.
    pub fn insert(&mut self, fd: RawFd, value: V) -> Option<V> {
        let mut value = Some(value);
        let entry = self.get_or_insert_with(fd, || value.take().expect("taken once"));
        // `value` is still there if the entry existed: swap it in.
        value.map(|value| std::mem::replace(entry, value))
    }

    pub fn remove(&mut self, fd: &RawFd) -> Option<V> {
        let removed = match position(*fd) {
            Some((chunk, index)) => self.chunks.get_mut(chunk)?.as_mut()?[index].take(),
            None => {
                let at = self.others.iter().position(|(key, _)| key == fd)?;
                Some(self.others.swap_remove(at).1)
            }
        };
        if removed.is_some() {
            self.len -= 1;
        }
        removed
    }

    /// The entries, the indexed ones in fd order.
    pub fn iter(&self) -> impl Iterator<Item = (RawFd, &V)> {
        let indexed = self
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(chunk, entries)| Some((chunk, entries.as_ref()?)))
            .flat_map(|(chunk, entries)| {
                entries
                    .iter()
                    .enumerate()
                    .filter_map(move |(index, entry)| {
                        Some(((chunk * CHUNK + index) as RawFd, entry.as_ref()?))
                    })
            });
        indexed.chain(self.others.iter().map(|(fd, value)| (*fd, value)))
    }

    pub fn keys(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.iter().map(|(fd, _)| fd)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, value)| value)
    }

    /// Remove every entry; they are returned in [`iter`](Self::iter)'s order.
    pub fn drain(&mut self) -> Vec<(RawFd, V)> {
        let mut entries = Vec::with_capacity(self.len);
        for (chunk, slots) in std::mem::take(&mut self.chunks).into_iter().enumerate() {
            for (index, entry) in slots.into_iter().flat_map(Vec::from).enumerate() {
                if let Some(value) = entry {
                    entries.push(((chunk * CHUNK + index) as RawFd, value));
                }
            }
        }
        entries.append(&mut self.others);
        self.len = 0;
        entries
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.others.clear();
        self.len = 0;
    }
}

impl<V: Default> FdMap<V> {
    /// The entry of `fd`, a default one if there is none.
    #[inline]
    pub fn get_or_default(&mut self, fd: RawFd) -> &mut V {
        self.get_or_insert_with(fd, V::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut map: FdMap<usize> = FdMap::default();
        for fd in 0..10_000 {
            assert_eq!(map.insert(fd, fd as usize * 2), None);
        }
        for fd in (0..10_000).step_by(2) {
            assert_eq!(map.remove(&fd), Some(fd as usize * 2));
        }
        assert_eq!(map.len(), 5_000);
        assert_eq!(map.get(&9_999), Some(&19_998));
        assert_eq!(map.get(&9_998), None);
        assert_eq!(map.remove(&9_998), None);
        assert_eq!(map.insert(9_999, 1), Some(19_998));
        assert_eq!(map.len(), 5_000);
        *map.get_mut(&1).unwrap() += 1;
        assert_eq!(map.get(&1), Some(&3));
        assert!(map.keys().eq((1..10_000).step_by(2)));
    }

    #[test]
    fn numbers_outside_the_table() {
        let mut map: FdMap<&str> = FdMap::default();
        for fd in [-1, MAX_INDEXED, RawFd::MAX, 3] {
            assert_eq!(map.insert(fd, "a"), None);
        }
        assert_eq!(map.insert(RawFd::MAX, "b"), Some("a"));
        assert_eq!(map.len(), 4);
        assert_eq!(map.get(&-1), Some(&"a"));
        assert_eq!(map.get(&RawFd::MAX), Some(&"b"));
        assert_eq!(map.get(&-2), None);
        assert_eq!(
            map.keys().collect::<Vec<_>>(),
            [3, -1, MAX_INDEXED, RawFd::MAX]
        );
        assert_eq!(map.remove(&-1), Some("a"));
        *map.get_or_default_with_str(MAX_INDEXED) = "c";
        assert_eq!(map.get(&MAX_INDEXED), Some(&"c"));
        let drained = map.drain();
        assert_eq!(drained, [(3, "a"), (RawFd::MAX, "b"), (MAX_INDEXED, "c")]);
        assert!(map.is_empty());
        assert_eq!(map.get(&3), None);
    }

    #[test]
    fn a_high_fd_allocates_one_chunk() {
        let mut map: FdMap<u8> = FdMap::default();
        *map.get_or_default(100_000) += 1;
        assert_eq!(map.chunks.iter().filter(|c| c.is_some()).count(), 1);
        assert_eq!(map.get(&100_000), Some(&1));
        assert!(map.contains_key(&100_000));
        assert!(!map.contains_key(&99_999));
        map.clear();
        assert_eq!(map.len(), 0);
        assert_eq!(map.values().count(), 0);
    }

    impl FdMap<&'static str> {
        fn get_or_default_with_str(&mut self, fd: RawFd) -> &mut &'static str {
            self.get_or_insert_with(fd, || "")
        }
    }
}
