//! The timer heap.
//!
//! asyncio keeps its `TimerHandle`s in a list managed by `heapq`, compared by deadline only.
//! Timers with equal deadlines therefore come out in the order heapq's exact sift algorithm
//! gives, which is not always the order they were scheduled in. To produce the same callback
//! order as asyncio in every case, this heap runs the same algorithm (`heappush`, `heappop`,
//! `heapify` with `_siftdown`/`_siftup` as in CPython's `Modules/_heapqmodule.c`) on the same
//! comparison (`a.when() < b.when()`).
//!
//! Cancellation is lazy: a cancelled entry stays in the heap until it reaches the top or until
//! [`TimerHeap::purge`] compacts the heap (asyncio's purge rule lives in the caller).

/// What the heap needs of an entry.
pub trait TimerEntry {
    /// The deadline, in `loop.time()` seconds.
    fn when(&self) -> f64;
}

/// A binary min-heap ordered by deadline, exactly as `heapq` orders asyncio's timers.
#[derive(Debug)]
pub struct TimerHeap<T> {
    items: Vec<T>,
}

impl<T> Default for TimerHeap<T> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

impl<T: TimerEntry> TimerHeap<T> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The entry with the earliest deadline.
    pub fn peek(&self) -> Option<&T> {
        self.items.first()
    }

    /// `heapq.heappush`.
    pub fn push(&mut self, item: T) {
        self.items.push(item);
        let last = self.items.len() - 1;
        self.sift_down(0, last);
    }

    /// `heapq.heappop`.
    pub fn pop(&mut self) -> Option<T> {
        let last = self.items.pop()?;
        if self.items.is_empty() {
            return Some(last);
        }
        let top = std::mem::replace(&mut self.items[0], last);
        self.sift_up(0);
        Some(top)
    }

    /// Keep the entries for which `keep` is true (in their current order), then `heapify`:
    /// the body of asyncio's purge of cancelled timers. Returns the removed entries, so the
    /// caller decides when they are dropped.
    pub fn purge(&mut self, mut keep: impl FnMut(&T) -> bool) -> Vec<T> {
        let (kept, removed): (Vec<T>, Vec<T>) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|item| keep(item));
        self.items = kept;
        self.heapify();
        removed
    }

    /// Remove every entry.
    pub fn drain(&mut self) -> std::vec::Drain<'_, T> {
        self.items.drain(..)
    }

    /// Entries in heap order (not sorted).
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.items.iter()
    }

    /// `heapq.heapify`.
    fn heapify(&mut self) {
        let n = self.items.len();
        for i in (0..n / 2).rev() {
            self.sift_up(i);
        }
    }

    /// heapq's `_siftdown(heap, startpos, pos)`: move the item at `pos` towards the root.
    fn sift_down(&mut self, start: usize, pos: usize) {
        let mut hole = Hole::new(&mut self.items, pos);
        hole.rise(start);
    }

    /// heapq's `_siftup(heap, pos)`: move the smaller child up until a leaf is reached, put the
    /// item there, then sift it down again.
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // heapq's `not a < b`, verbatim
    fn sift_up(&mut self, pos: usize) {
        let end = self.items.len();
        let start = pos;
        let mut hole = Hole::new(&mut self.items, pos);
        let mut child = 2 * pos + 1;
        while child < end {
            let right = child + 1;
            if right < end {
                // `child = right` unless the left child is earlier, as arithmetic: which child
                // wins is data, and a branch on it is mispredicted half the time.
                child += usize::from(!(hole.when_at(child) < hole.when_at(right)));
            }
            hole.move_to(child);
            child = 2 * hole.pos + 1;
        }
        hole.rise(start);
    }
}

/// The item being sifted, taken out of the heap's vector, and the slot it left empty (the
/// hole): entries move into the hole rather than being swapped with the item, and the item is
/// written back once, where the hole ends (also if a `when` panics). Every index a `Hole`
/// method takes is checked against the length by its caller's loop condition.
struct Hole<'a, T> {
    base: *mut T,
    len: usize,
    item: std::mem::ManuallyDrop<T>,
    when: f64,
    pos: usize,
    _items: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T: TimerEntry> Hole<'a, T> {
    #[inline]
    fn new(items: &'a mut [T], pos: usize) -> Self {
        // Asked before the item is taken out: if `when` panics, the vector still owns it
        // (taken first, the unwinding would drop the copy and the vector's original).
        let when = items[pos].when();
        // SAFETY: `pos` is in bounds (checked by the indexing above); the slot counts as empty
        // until `drop` writes an item back into the hole, and nothing reads the hole meanwhile.
        let item = unsafe { std::ptr::read(&items[pos]) };
        Hole {
            base: items.as_mut_ptr(),
            len: items.len(),
            item: std::mem::ManuallyDrop::new(item),
            when,
            pos,
            _items: std::marker::PhantomData,
        }
    }

    /// The deadline of the entry at `index` (in bounds, not the hole).
    #[inline]
    fn when_at(&self, index: usize) -> f64 {
        debug_assert!(index < self.len && index != self.pos);
        // SAFETY: in bounds (see the type's rule), and a live entry (not the hole).
        unsafe { (*self.base.add(index)).when() }
    }

    /// Move the entry at `index` (in bounds, not the hole) into the hole; the hole is now at
    /// `index`.
    #[inline]
    fn move_to(&mut self, index: usize) {
        debug_assert!(index < self.len && index != self.pos);
        // SAFETY: two distinct in-bounds slots; the hole's slot holds no live value, and the
        // source becomes the hole.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(index), self.base.add(self.pos), 1) };
        self.pos = index;
    }

    /// heapq's `_siftdown` for the held item: move the hole towards the root (not above
    /// `start`) while the item's deadline is earlier than the parent's.
    #[inline]
    fn rise(&mut self, start: usize) {
        while self.pos > start {
            let parent = (self.pos - 1) >> 1;
            if self.when < self.when_at(parent) {
                self.move_to(parent);
                continue;
            }
            break;
        }
    }
}

impl<T> Drop for Hole<'_, T> {
    fn drop(&mut self) {
        // SAFETY: the hole's slot is in bounds and holds no live value; the item is written
        // back exactly once.
        unsafe {
            let item = std::mem::ManuallyDrop::take(&mut self.item);
            std::ptr::write(self.base.add(self.pos), item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct T(f64, u32);
    impl TimerEntry for T {
        fn when(&self) -> f64 {
            self.0
        }
    }

    /// A direct transcription of the pure-Python heapq module, as the reference.
    fn reference_push(heap: &mut Vec<T>, item: T) {
        heap.push(item);
        let pos = heap.len() - 1;
        ref_siftdown(heap, 0, pos);
    }
    fn ref_siftdown(heap: &mut [T], start: usize, mut pos: usize) {
        let newitem = heap[pos];
        while pos > start {
            let parentpos = (pos - 1) >> 1;
            let parent = heap[parentpos];
            if newitem.0 < parent.0 {
                heap[pos] = parent;
                pos = parentpos;
                continue;
            }
            break;
        }
        heap[pos] = newitem;
    }
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // transcribes heapq's `not a < b` verbatim
    fn ref_siftup(heap: &mut [T], mut pos: usize) {
        let endpos = heap.len();
        let startpos = pos;
        let newitem = heap[pos];
        let mut childpos = 2 * pos + 1;
        while childpos < endpos {
            let rightpos = childpos + 1;
            if rightpos < endpos && !(heap[childpos].0 < heap[rightpos].0) {
                childpos = rightpos;
            }
            heap[pos] = heap[childpos];
            pos = childpos;
            childpos = 2 * pos + 1;
        }
        heap[pos] = newitem;
        ref_siftdown(heap, startpos, pos);
    }
    fn reference_pop(heap: &mut Vec<T>) -> Option<T> {
        let last = heap.pop()?;
        if heap.is_empty() {
            return Some(last);
        }
        let ret = heap[0];
        heap[0] = last;
        ref_siftup(heap, 0);
        Some(ret)
    }

    #[test]
    fn same_order_as_heapq_with_many_ties() {
        // A small deterministic generator: deadlines from a tiny set, so ties are everywhere.
        let mut seed: u64 = 0x1234_5678;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut ours = TimerHeap::new();
        let mut theirs = Vec::new();
        let ops = if cfg!(miri) { 300 } else { 5000 };
        for id in 0..ops {
            let r = next();
            if r % 3 == 0 {
                assert_eq!(ours.pop(), reference_pop(&mut theirs));
            } else {
                let t = T((r % 7) as f64, id);
                ours.push(t);
                reference_push(&mut theirs, t);
            }
            assert_eq!(ours.items, theirs);
        }
        while let Some(t) = reference_pop(&mut theirs) {
            assert_eq!(ours.pop(), Some(t));
        }
        assert!(ours.is_empty());
    }

    /// An entry that owns heap memory (so Miri sees a double drop or a leak) and counts its
    /// drops; its `when` panics while `panic_at` matches its id.
    #[derive(Debug)]
    struct Owned {
        when: Box<f64>,
        id: u32,
        drops: std::rc::Rc<std::cell::Cell<u32>>,
        panic_at: std::rc::Rc<std::cell::Cell<Option<u32>>>,
    }
    impl TimerEntry for Owned {
        fn when(&self) -> f64 {
            if self.panic_at.get() == Some(self.id) {
                panic!("when() of {} fails", self.id);
            }
            *self.when
        }
    }
    impl Drop for Owned {
        fn drop(&mut self) {
            self.drops.set(self.drops.get() + 1);
        }
    }

    /// Push, pop, purge and drain entries that own memory, with `when` panicking in the middle
    /// of sifts: every entry is dropped exactly once and the heap stays usable (what the
    /// `unsafe` of `Hole` must guarantee; run under Miri by scripts/test).
    #[test]
    fn owned_entries_dropped_once_even_when_when_panics() {
        use std::cell::Cell;
        use std::rc::Rc;
        let drops = Rc::new(Cell::new(0));
        let panic_at = Rc::new(Cell::new(None));
        let make = |id: u32, when: f64| Owned {
            when: Box::new(when),
            id,
            drops: drops.clone(),
            panic_at: panic_at.clone(),
        };
        let n: u32 = if cfg!(miri) { 40 } else { 400 };
        let mut heap = TimerHeap::new();
        let mut popped = 0u32;
        for id in 0..n {
            heap.push(make(id, f64::from((id * 7919) % 13)));
            if id % 5 == 4 {
                let a = heap.pop().expect("not empty");
                let b = heap.peek().expect("not empty").when();
                assert!(a.when() <= b);
                popped += 1;
            }
        }
        // A `when` that panics during a pop's sift and during a push's sift.
        let victim = heap.iter().nth(heap.len() / 2).expect("an entry").id;
        panic_at.set(Some(victim));
        let pop = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while heap.pop().is_some() {
                popped += 1;
            }
        }));
        assert!(pop.is_err(), "the victim's when() ran");
        // The entry that pop was returning was dropped by the unwinding, the others stay.
        popped += 1;
        let push = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            heap.push(make(victim, 0.0));
        }));
        assert!(push.is_err());
        panic_at.set(None);
        assert_eq!(
            drops.get(),
            popped,
            "each popped entry dropped once, none of the others"
        );
        let before = heap.len() as u32;
        let removed = heap.purge(|e| e.id % 2 == 0);
        let removed_count = removed.len() as u32;
        drop(removed);
        assert_eq!(drops.get(), popped + removed_count);
        let mut last = f64::MIN;
        while let Some(e) = heap.pop() {
            assert!(e.when() >= last);
            last = e.when();
        }
        assert_eq!(drops.get(), popped + before);
        for id in 0..10 {
            heap.push(make(id, 1.0));
        }
        heap.drain();
        assert_eq!(drops.get(), popped + before + 10);
    }

    #[test]
    fn retain_heapifies() {
        let mut h = TimerHeap::new();
        for i in 0..100u32 {
            h.push(T(f64::from(100 - i), i));
        }
        let removed = h.purge(|t| t.1 % 2 == 0);
        assert_eq!(h.len(), 50);
        assert_eq!(removed.len(), 50);
        let mut last = f64::MIN;
        while let Some(t) = h.pop() {
            assert!(t.0 >= last);
            last = t.0;
        }
    }
}
