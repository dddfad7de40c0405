//! `LoopShared`: the part of a loop that its handles and other threads may reach.
//!
//! Handles hold an `Arc<LoopShared>` rather than the loop object, so no reference cycle runs
//! through untracked handles (see `handles.rs`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ferroloop_core::metrics::Probe;
use ferroloop_core::reactor::Waker;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::ffi::{
    context_key, copy_context, current_context_key, ref_count, snapshot_vars, ContextKey,
};
use crate::gil_cell::GilCell;

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
    /// The eventfd that interrupts the poll; `None` once the loop is closed. Behind a lock so
    /// that a thread about to wake the loop never writes to the fd after `close()` released it
    /// (and its number went to another file).
    waker: Mutex<Option<Arc<Waker>>>,
    /// A weak reference to the loop object (set once, right after construction).
    pub loop_weakref: PyOnceLock<Py<PyAny>>,
    /// Metrics counters and the watchdog's view of the loop (see `metrics.rs`, `watchdog.rs`).
    pub probe: Probe,
    /// The context snapshots shared by pending handles (see `docs/decisions/0003`).
    pub snapshots: GilCell<Snapshots>,
}

/// Context snapshots: handles scheduled while the caller's context keeps the same contents
/// share one snapshot, and their callbacks run in it.
#[derive(Default)]
pub struct Snapshots {
    /// The last snapshot taken, with the key of its contents.
    pub current: Option<(ContextKey, Py<PyAny>)>,
    /// Snapshots whose contents a callback changed (they now belong to that callback's
    /// handle), by address, each with its replacement: a context with the original contents,
    /// in which the other handles that shared it run. A replacement can be retired in turn, so
    /// a handle's snapshot resolves through a chain of them. A reader's handle owns the
    /// snapshot it changed for as long as the reader stays registered, so entries can live as
    /// long as connections: the map finds one without a scan.
    retired: HashMap<usize, Retired, BuildHasherDefault<AddressHasher>>,
    /// The length at which `retired` is next swept of the snapshots nobody else references.
    sweep_at: usize,
    /// The snapshot a callback is running in, and the mapping it had when the callback started
    /// (addresses only: both are kept alive by that run).
    pub running: RunningSnapshot,
}

struct Retired {
    old: Py<PyAny>,
    replacement: Py<PyAny>,
}

/// Hashes an object's address (the keys of [`Snapshots::retired`]).
#[derive(Default)]
struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, address: usize) {
        // The low bits choose the bucket: fold the high ones into them.
        let address = address as u64;
        self.0 = (address ^ (address >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

impl Snapshots {
    /// The context a handle that shares `snapshot` runs in: the end of its chain of
    /// replacements.
    fn resolve<'py>(&self, snapshot: Bound<'py, PyAny>) -> Bound<'py, PyAny> {
        let mut context = snapshot;
        // No cycle: a replacement is a new context when it is made, and a key stays alive
        // (its address unused by another object) as long as it is in the map.
        while let Some(entry) = self.retired.get(&(context.as_ptr() as usize)) {
            context = entry.replacement.bind(context.py()).clone();
        }
        context
    }

    /// [`resolve`](Self::resolve), pointing `snapshot`'s entry at the end of its chain; the
    /// replacement it pointed at before, to drop once the snapshots are no longer borrowed.
    fn resolve_shortening<'py>(
        &mut self,
        snapshot: Bound<'py, PyAny>,
    ) -> (Bound<'py, PyAny>, Option<Py<PyAny>>) {
        let key = snapshot.as_ptr() as usize;
        let resolved = self.resolve(snapshot);
        let stale = match self.retired.get_mut(&key) {
            Some(entry) if !entry.replacement.is(&resolved) => Some(std::mem::replace(
                &mut entry.replacement,
                resolved.clone().unbind(),
            )),
            _ => None,
        };
        (resolved, stale)
    }

    /// Remove the entries whose snapshot only the map references (no handle shares it, and no
    /// chain runs through it); they are returned, to drop once the snapshots are no longer
    /// borrowed.
    fn sweep(&mut self) -> Vec<Retired> {
        let unreferenced: Vec<usize> = self
            .retired
            .iter()
            .filter(|(_, entry)| ref_count(&entry.old) <= 1)
            .map(|(key, _)| *key)
            .collect();
        unreferenced
            .into_iter()
            .filter_map(|key| self.retired.remove(&key))
            .collect()
    }
}

#[derive(Default, Clone, Copy)]
pub struct RunningSnapshot {
    snapshot: usize,
    vars: usize,
}

impl LoopShared {
    pub fn new(waker: Arc<Waker>) -> Self {
        LoopShared {
            debug: AtomicBool::new(false),
            timer_cancelled: AtomicUsize::new(0),
            parked: AtomicBool::new(false),
            waker: Mutex::new(Some(waker)),
            loop_weakref: PyOnceLock::new(),
            probe: Probe::new(),
            snapshots: GilCell::new(Snapshots::default()),
        }
    }

    /// A snapshot of the caller's current context, shared by every handle scheduled while
    /// the context's contents stay the same.
    #[inline(always)]
    pub fn context_snapshot(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(key) = current_context_key(py) {
            let snapshots = self.snapshots.borrow(py);
            if let Some((cached, snapshot)) = &snapshots.current {
                if *cached == key {
                    return Ok(snapshot.clone_ref(py));
                }
            }
        }
        self.new_snapshot(py)
    }

    /// [`context_snapshot`](Self::context_snapshot) when the context changed: a new snapshot.
    #[inline(never)]
    fn new_snapshot(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let snapshot = copy_context(py)?;
        if let Some(key) = context_key(py, &snapshot) {
            let previous = self
                .snapshots
                .borrow_mut(py)
                .current
                .replace((key, snapshot.clone_ref(py)));
            drop(previous);
        }
        Ok(snapshot)
    }

    /// The context a handle sharing `snapshot` runs in: the snapshot, or its replacement if
    /// a callback changed it.
    #[inline]
    pub fn resolve_snapshot<'py>(&self, snapshot: Bound<'py, PyAny>) -> Bound<'py, PyAny> {
        let py = snapshot.py();
        let snapshots = self.snapshots.borrow(py);
        snapshots.resolve(snapshot)
    }

    /// `snapshot` was changed by a callback and now belongs to that callback's handle; the
    /// handles that share it will run in `replacement` (same original contents).
    pub fn retire_snapshot(
        &self,
        py: Python<'_>,
        snapshot: &Bound<'_, PyAny>,
        replacement: Py<PyAny>,
    ) {
        let (dropped, previous, current) = {
            let mut snapshots = self.snapshots.borrow_mut(py);
            // Forget the retired snapshots nobody else references any more, each time the map
            // has doubled since the last sweep (a sweep reads every entry).
            let dropped = if snapshots.retired.len() >= snapshots.sweep_at {
                let dropped = snapshots.sweep();
                snapshots.sweep_at = (2 * snapshots.retired.len()).max(8);
                dropped
            } else {
                Vec::new()
            };
            let previous = snapshots.retired.insert(
                snapshot.as_ptr() as usize,
                Retired {
                    old: snapshot.clone().unbind(),
                    replacement: replacement.clone_ref(py),
                },
            );
            // Handles scheduled from now on with the original contents share the replacement.
            let current = match &mut snapshots.current {
                Some((_, cached)) if cached.is(snapshot) => {
                    Some(std::mem::replace(cached, replacement))
                }
                _ => None,
            };
            (dropped, previous, current)
        };
        drop((dropped, previous, current));
    }

    /// A callback of a handle sharing `snapshot` (whose mapping is `vars`) is about to run:
    /// the context it runs in (the snapshot or its replacement), that context's mapping, and
    /// what to give back to [`snapshot_run_end`](Self::snapshot_run_end).
    #[inline]
    pub fn snapshot_run_begin<'py>(
        &self,
        snapshot: Bound<'py, PyAny>,
        vars: Bound<'py, PyAny>,
    ) -> (Bound<'py, PyAny>, Bound<'py, PyAny>, RunningSnapshot) {
        let py = snapshot.py();
        let (snapshot, vars, outer, stale) = {
            let mut snapshots = self.snapshots.borrow_mut(py);
            let (snapshot, vars, stale) = if snapshots.retired.is_empty() {
                (snapshot, vars, None)
            } else {
                let (resolved, stale) = snapshots.resolve_shortening(snapshot);
                let vars = snapshot_vars(&resolved).unwrap_or(vars);
                (resolved, vars, stale)
            };
            let running = RunningSnapshot {
                snapshot: snapshot.as_ptr() as usize,
                vars: vars.as_ptr() as usize,
            };
            let outer = std::mem::replace(&mut snapshots.running, running);
            (snapshot, vars, outer, stale)
        };
        drop(stale);
        (snapshot, vars, outer)
    }

    #[inline]
    pub fn snapshot_run_end(&self, py: Python<'_>, outer: RunningSnapshot) {
        self.snapshots.borrow_mut(py).running = outer;
    }

    /// The mapping `snapshot` had when the callback now running in it started.
    pub fn snapshot_run_vars<'py>(
        &self,
        py: Python<'py>,
        snapshot: &Bound<'py, PyAny>,
    ) -> Option<Bound<'py, PyAny>> {
        let running = self.snapshots.borrow(py).running;
        if running.snapshot != snapshot.as_ptr() as usize || running.vars == 0 {
            return None;
        }
        // SAFETY: the run that recorded `vars` is still on the stack (we were called from
        // inside it, since the snapshot is entered) and holds a reference to the mapping.
        Some(unsafe { crate::ffi::object_at(py, running.vars) })
    }

    /// Drop every snapshot (the loop is closing).
    pub fn clear_snapshots(&self, py: Python<'_>) {
        let taken = std::mem::take(&mut *self.snapshots.borrow_mut(py));
        drop(taken);
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
            let waker = self
                .waker
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(waker) = waker.as_ref() {
                let _ = waker.wake();
            }
        }
    }

    /// Release the waker's eventfd (the loop is closing).
    pub fn close_waker(&self) {
        let taken = self
            .waker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(taken);
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
