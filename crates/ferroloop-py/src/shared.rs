//! `LoopShared`: the part of a loop that its handles and other threads may reach.
//!
//! Handles hold an `Arc<LoopShared>` rather than the loop object, so no reference cycle runs
//! through untracked handles (see `handles.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use ferroloop_core::metrics::Probe;
use ferroloop_core::reactor::Waker;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

pub struct LoopShared {
    /// `loop.get_debug()`; read by handles when they are cancelled.
    pub debug: AtomicBool,
    /// asyncio's `_timer_cancelled_count`: cancelled timers still in the heap.
    pub timer_cancelled: AtomicUsize,
    /// True while the loop's thread is (about to be) blocked in the poll with the GIL
    /// released and nobody has woken it yet. Set by the loop thread under the GIL before it
    /// polls; cleared by the first waker (so one eventfd write per park, however many threads
    /// post callbacks while the loop waits to get the GIL back) or by the loop after the poll.
    pub parked: AtomicBool,
    pub waker: Arc<Waker>,
    /// A weak reference to the loop object (set once, right after construction).
    pub loop_weakref: PyOnceLock<Py<PyAny>>,
    /// Metrics counters and the watchdog's view of the loop (see `metrics.rs`, `watchdog.rs`).
    pub probe: Probe,
}

impl LoopShared {
    pub fn new(waker: Arc<Waker>) -> Self {
        LoopShared {
            debug: AtomicBool::new(false),
            timer_cancelled: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            waker,
            loop_weakref: PyOnceLock::new(),
            probe: Probe::new(),
        }
    }

    /// Wake the loop if it is blocked in its poll and no one woke it yet.
    ///
    /// Callers have pushed their callback under the GIL before calling this; the loop sets
    /// `parked` under the GIL after checking its ready queue was empty. So either the loop saw
    /// the callback, or `parked` is true here and this call (or an earlier one) writes the
    /// eventfd.
    #[inline]
    pub fn wake_if_parked(&self) {
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }

    pub fn loop_object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let weakref = self
            .loop_weakref
            .get(py)
            .ok_or_else(|| PyRuntimeError::new_err("handle has no event loop"))?;
        let target = weakref.bind(py).call0()?;
        if target.is_none() {
            return Err(PyRuntimeError::new_err(
                "the event loop of this handle is gone",
            ));
        }
        Ok(target.unbind())
    }
}
