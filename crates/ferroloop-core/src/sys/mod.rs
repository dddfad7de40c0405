//! Thin wrappers over system calls: most of the core's `unsafe` blocks live here. The two
//! others are the reactor's `epoll_ctl` (`reactor/mod.rs`, Linux) and the timer heap's `Hole`
//! (`time/timer_heap.rs`, tested under Miri by `scripts/test`).

pub mod clock;
pub mod net;
pub mod steal;
pub mod thread;
