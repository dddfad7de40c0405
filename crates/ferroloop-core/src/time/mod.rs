//! Time: the loop's clock and its timer heap.

pub mod clock;
pub mod timer_heap;

pub use clock::monotonic;
pub use timer_heap::{TimerEntry, TimerHeap};
