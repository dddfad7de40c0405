//! ferroloop-core: the parts of the ferroloop event loop that know nothing of Python.
//!
//! * [`time`]: the monotonic clock (`loop.time()`) and the timer heap, which orders timers
//!   exactly as CPython's `heapq` orders `asyncio.TimerHandle`s.
//! * [`reactor`]: readiness notification for file descriptors on top of mio, with the
//!   level-triggered semantics `add_reader`/`add_writer` need, and a cross-thread waker.
//! * [`metrics`]: loop counters and the blocking watchdog's stall detector.
//! * [`sys`]: thin wrappers over system calls, with most of the crate's `unsafe` (the
//!   others: the reactor's `epoll_ctl` and the timer heap's `Hole`).
//!
//! This crate never depends on pyo3 (CI checks it with `cargo tree`).

pub mod metrics;
pub mod reactor;
pub mod sys;
pub mod time;
