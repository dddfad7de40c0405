//! `Handle` and `TimerHandle`: what `call_soon`, `call_later`, `call_at` and `add_reader`
//! return, and what the ready queue and the timer heap hold.
//!
//! They behave as `asyncio.Handle` / `asyncio.TimerHandle`: same methods, same private
//! attributes (`_callback`, `_args`, `_cancelled`, `_when`, ...), same `repr`, same ordering
//! and equality for timers, and `isinstance(h, asyncio.Handle)` is true because `__class__`
//! names the asyncio class (the check `isinstance` falls back to; see
//! `docs/decisions/0002-handles.md`).
//!
//! Rules:
//! 1. Handles are not tracked by the cyclic GC. A one-shot handle drops its callback and
//!    arguments the moment it has run or is cancelled, so `self.h = loop.call_later(d, self.cb)`
//!    leaves no cycle behind; the loop drops the callbacks of handles still pending at close.
//! 2. Reader/writer handles (`Kind::Io`) run many times and keep their callback until
//!    `remove_reader`/`remove_writer` cancels them.
//! 3. A handle never holds its loop: it holds the loop's [`LoopShared`], which holds a weak
//!    reference to the loop object.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyTuple, PyType};

pub use crate::ffi::Args;
use crate::ffi::{
    call_in_context, call_in_snapshot, context_with_vars, copy_of, snapshot_vars, SnapshotRun,
};
use crate::gil_cell::GilCell;
use crate::net::call_native;
use crate::python_hooks::{asyncio_handle, asyncio_timer_handle, call_hook};
use crate::shared::{LoopShared, RunningSnapshot};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `call_soon`, `call_soon_threadsafe`: runs once.
    Soon,
    /// `call_later`, `call_at`: runs once, at `when`.
    Timer,
    /// `add_reader`, `add_writer`: runs on every readiness report.
    Io,
}

pub struct HandleState {
    /// The deadline of a timer; NaN for other handles.
    pub when: f64,
    pub callback: Option<Py<PyAny>>,
    pub args: Option<Args>,
    pub context: Option<Py<PyAny>>,
    /// `context` is a snapshot shared with other handles (see `Loop::context_snapshot`): the
    /// callback runs in a fresh copy of it, so nothing it sets leaks into the others.
    pub shared_context: bool,
    pub cancelled: bool,
    /// Timers: in the loop's heap (asyncio's `TimerHandle._scheduled`).
    pub scheduled: bool,
    /// asyncio's `_repr`: the repr frozen at cancellation in debug mode.
    pub repr: Option<Py<PyAny>>,
    /// asyncio's `_source_traceback` (debug mode only).
    pub source_traceback: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._core", name = "Handle", subclass, frozen, weakref)]
pub struct Handle {
    pub(crate) shared: Arc<LoopShared>,
    pub(crate) kind: Kind,
    pub(crate) state: GilCell<HandleState>,
}

/// A `TimerHandle` is a `Handle` whose `when` is meaningful.
#[pyclass(module = "ferroloop._core", name = "TimerHandle", extends = Handle, frozen)]
pub struct TimerHandle;

impl Handle {
    #[allow(clippy::too_many_arguments)] // one per field of a handle; built in one place
    pub fn new(
        shared: Arc<LoopShared>,
        kind: Kind,
        when: f64,
        callback: Py<PyAny>,
        args: Option<Args>,
        context: Py<PyAny>,
        shared_context: bool,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        Handle {
            shared,
            kind,
            state: GilCell::new(HandleState {
                when,
                callback: Some(callback),
                args,
                context: Some(context),
                shared_context,
                cancelled: false,
                scheduled: kind == Kind::Timer,
                repr: None,
                source_traceback,
            }),
        }
    }

    /// Give a recycled `call_soon` handle its new callback (see `Loop::schedule_soon`). A
    /// pooled handle was [`clear`](Self::clear)ed: it holds nothing and is not cancelled.
    #[inline(always)]
    pub fn reset(
        &self,
        py: Python<'_>,
        callback: Py<PyAny>,
        args: Option<Args>,
        context: Py<PyAny>,
        shared_context: bool,
    ) {
        let mut state = self.state.borrow_mut(py);
        // The slots are empty: these assignments drop nothing.
        state.callback = Some(callback);
        state.args = args;
        state.context = Some(context);
        state.shared_context = shared_context;
        state.cancelled = false;
    }

    /// The deadline of a timer (NaN for other handles).
    #[inline]
    pub fn when(&self, py: Python<'_>) -> f64 {
        self.state.borrow(py).when
    }

    /// Give a recycled timer handle its new deadline and callback (see
    /// `Loop::schedule_timer`). Like [`reset`](Self::reset), for a cleared handle.
    #[inline]
    pub fn reset_timer(
        &self,
        py: Python<'_>,
        when: f64,
        callback: Py<PyAny>,
        args: Option<Args>,
        context: Py<PyAny>,
        shared_context: bool,
    ) {
        self.reset(py, callback, args, context, shared_context);
        let mut state = self.state.borrow_mut(py);
        state.when = when;
        state.scheduled = true;
    }

    /// Drop everything a handle that ran still references, before it is pooled.
    #[inline(always)]
    pub fn clear(&self, py: Python<'_>) {
        let (callback, args, context, repr, source_traceback) = {
            let mut state = self.state.borrow_mut(py);
            (
                state.callback.take(),
                state.args.take(),
                state.context.take(),
                state.repr.take(),
                state.source_traceback.take(),
            )
        };
        // Released without pyo3's check for an attached thread.
        let release = |obj: Option<Py<PyAny>>| {
            if let Some(obj) = obj {
                obj.drop_ref(py);
            }
        };
        release(callback);
        release(context);
        release(repr);
        release(source_traceback);
        if let Some(args) = args {
            args.drop_ref(py);
        }
    }

    #[inline]
    pub fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).cancelled
    }

    /// Drop the callback and arguments (they may form reference cycles with the handle's
    /// owner). The objects are released after the borrow ends.
    pub fn release(&self, py: Python<'_>) {
        let dropped = {
            let mut state = self.state.borrow_mut(py);
            (state.callback.take(), state.args.take())
        };
        drop(dropped);
    }

    /// Run the callback, as `asyncio.Handle._run`: an exception goes to the loop's exception
    /// handler, except `SystemExit` and `KeyboardInterrupt`, which propagate. A one-shot handle
    /// releases its callback afterwards unless `keep` is set (debug mode logs it first).
    pub fn run(slf: &Bound<'_, Handle>, event_loop: &Bound<'_, PyAny>, keep: bool) -> PyResult<()> {
        let py = slf.py();
        let handle = slf.get();
        let one_shot = handle.kind != Kind::Io && !keep;
        let (callback, args, context, shared_context) = {
            let mut state = handle.state.borrow_mut(py);
            let shared_context = state.shared_context;
            let context = state.context.as_ref().map(|c| c.bind(py).clone());
            if one_shot {
                (
                    state.callback.take(),
                    state.args.take(),
                    context,
                    shared_context,
                )
            } else {
                (
                    state.callback.as_ref().map(|c| c.clone_ref(py)),
                    state.args.as_ref().map(|a| a.clone_ref(py)),
                    context,
                    shared_context,
                )
            }
        };
        let Some(callback) = callback else {
            return Ok(());
        };
        let result = match (context, shared_context) {
            (Some(snapshot), true) => {
                handle.run_in_snapshot(py, &callback, args.as_ref(), snapshot)
            }
            (context, _) => call_in_context(
                py,
                &callback,
                args.as_ref(),
                context.as_ref().map(Bound::as_unbound),
                || call_native(py, &callback, args.as_ref(), handle.kind == Kind::Io),
            ),
        };
        let Err(error) = result else {
            // Released here, without pyo3's check for an attached thread.
            callback.drop_ref(py);
            if let Some(args) = args {
                args.drop_ref(py);
            }
            return Ok(());
        };
        if one_shot && !handle.is_cancelled(py) {
            // Put them back while the error is reported: the report shows the handle's repr.
            // Not if the callback cancelled its own handle: asyncio's cancel() has dropped
            // them then, and the message reads "Exception in callback None()".
            let mut state = handle.state.borrow_mut(py);
            state.callback = Some(callback);
            state.args = args;
        }
        let outcome = report_error(py, slf, event_loop, error);
        if one_shot {
            handle.release(py);
        }
        outcome
    }

    /// Run the callback of a handle that shares a context snapshot, in the snapshot itself
    /// (see `docs/decisions/0003`). Afterwards the handle's context is the one its callback
    /// ran in, as in asyncio: `get_context()` and the exception handler (which 3.12+ runs in
    /// it) see what the callback set.
    fn run_in_snapshot(
        &self,
        py: Python<'_>,
        callback: &Py<PyAny>,
        args: Option<&Args>,
        snapshot: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let Some(before) = snapshot_vars(&snapshot) else {
            // The layout of contexts is unknown: run in a copy.
            return self.run_in_copy(py, callback, args, copy_of(py, snapshot.as_unbound())?);
        };
        let (snapshot, before, outer) = self.shared.snapshot_run_begin(snapshot, before);
        let outcome = {
            // Restores the outer run's record even if the call unwinds.
            let _restore = SnapshotRunGuard {
                shared: &self.shared,
                py,
                outer,
            };
            let native = || call_native(py, callback, args, self.kind == Kind::Io);
            call_in_snapshot(py, callback, args, native, &snapshot, before)
        };
        let (result, own) = match outcome {
            SnapshotRun::Unchanged { raised: false } => {
                self.keep_snapshot(py, snapshot);
                return Ok(());
            }
            // The exception handler may run in the handle's context: give it its own.
            SnapshotRun::Unchanged { raised: true } => {
                let error = PyErr::fetch(py);
                (Err(error), copy_of(py, snapshot.as_unbound())?)
            }
            SnapshotRun::Changed { raised, before } => {
                let result = if raised {
                    Err(PyErr::fetch(py))
                } else {
                    Ok(())
                };
                // The snapshot now holds what the callback set, and the tokens its
                // `ContextVar.set` calls returned refer to it: it becomes this handle's
                // context. The other handles that share it run in a replacement.
                let replacement = context_with_vars(py, &snapshot, before)?;
                self.shared.retire_snapshot(py, &snapshot, replacement);
                (result, snapshot.unbind())
            }
            SnapshotRun::NotRun => {
                // A callback running in the snapshot runs this handle (`handle._run()`): run
                // it in a context with the contents the snapshot had before that callback.
                let original = self.shared.snapshot_run_vars(py, &snapshot);
                let own = match original {
                    Some(vars) => context_with_vars(py, &snapshot, vars)?,
                    None => copy_of(py, snapshot.as_unbound())?,
                };
                return self.run_in_copy(py, callback, args, own);
            }
        };
        self.adopt_context(py, own);
        result
    }

    /// Run the callback in `own`, a context of its own that the handle keeps.
    fn run_in_copy(
        &self,
        py: Python<'_>,
        callback: &Py<PyAny>,
        args: Option<&Args>,
        own: Py<PyAny>,
    ) -> PyResult<()> {
        let native = || call_native(py, callback, args, self.kind == Kind::Io);
        let result = call_in_context(py, callback, args, Some(&own), native);
        self.adopt_context(py, own);
        result
    }

    /// From now on the handle has a context of its own: `own`.
    fn adopt_context(&self, py: Python<'_>, own: Py<PyAny>) {
        let previous = {
            let mut state = self.state.borrow_mut(py);
            state.shared_context = false;
            state.context.replace(own)
        };
        drop(previous);
    }

    /// After a run that changed nothing: keep sharing `snapshot` (a replacement, if the one
    /// the handle had was retired meanwhile).
    #[inline]
    fn keep_snapshot(&self, py: Python<'_>, snapshot: Bound<'_, PyAny>) {
        let mut state = self.state.borrow_mut(py);
        if state.context.as_ref().is_some_and(|c| c.is(&snapshot)) {
            return;
        }
        let previous = state.context.replace(snapshot.unbind());
        drop(state);
        if let Some(previous) = previous {
            previous.drop_ref(py);
        }
    }

    pub fn cancel_impl(slf: &Bound<'_, Handle>) -> PyResult<()> {
        let py = slf.py();
        let handle = slf.get();
        let (already, scheduled) = {
            let state = handle.state.borrow(py);
            (state.cancelled, state.scheduled)
        };
        // asyncio: TimerHandle.cancel tells the loop whenever the timer is still scheduled.
        if handle.kind == Kind::Timer && scheduled {
            handle
                .shared
                .timer_cancelled
                .fetch_add(1, Ordering::Relaxed);
        }
        if already {
            return Ok(());
        }
        let repr = if handle.shared.debug.load(Ordering::Relaxed) {
            // Keep the representation for "Executing <Handle...> took ..." style logs.
            Some(slf.repr()?.into_any().unbind())
        } else {
            None
        };
        {
            let mut state = handle.state.borrow_mut(py);
            state.cancelled = true;
            if repr.is_some() {
                state.repr = repr;
            }
        }
        handle.release(py);
        Ok(())
    }

    fn loop_object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.shared.loop_object(py)
    }
}

/// Puts back the record of the snapshot run that was going on before this one.
struct SnapshotRunGuard<'a, 'py> {
    shared: &'a LoopShared,
    py: Python<'py>,
    outer: RunningSnapshot,
}

impl Drop for SnapshotRunGuard<'_, '_> {
    fn drop(&mut self) {
        self.shared.snapshot_run_end(self.py, self.outer);
    }
}

/// Report a callback's exception as `asyncio.Handle._run` does; `SystemExit` and
/// `KeyboardInterrupt` are returned to propagate.
pub fn report_error(
    py: Python<'_>,
    handle: &Bound<'_, PyAny>,
    event_loop: &Bound<'_, PyAny>,
    error: PyErr,
) -> PyResult<()> {
    if error.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
        || error.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
    {
        return Err(error);
    }
    call_hook(
        py,
        "report_callback_error",
        (event_loop, handle, error.into_value(py)),
    )?;
    Ok(())
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Handle::cancel_impl(slf)
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let (context, shared) = {
            let state = self.state.borrow(py);
            (
                state.context.as_ref().map(|c| c.clone_ref(py)),
                state.shared_context,
            )
        };
        match (context, shared) {
            (Some(snapshot), true) => {
                // The caller may enter or keep this context: give the handle its own copy,
                // the one its callback will run in.
                let snapshot = self.shared.resolve_snapshot(snapshot.into_bound(py));
                let own = copy_of(py, snapshot.as_unbound())?;
                let mut state = self.state.borrow_mut(py);
                let previous = state.context.replace(own.clone_ref(py));
                state.shared_context = false;
                drop(state);
                drop(previous);
                Ok(Some(own))
            }
            (context, _) => Ok(context),
        }
    }

    /// `copy.copy(handle)`: a handle with the same callback, arguments and context.
    fn __copy__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let handle = slf.get();
        let state = handle.state.borrow(py);
        let copy = Handle {
            shared: Arc::clone(&handle.shared),
            kind: handle.kind,
            state: GilCell::new(HandleState {
                when: state.when,
                callback: state.callback.as_ref().map(|c| c.clone_ref(py)),
                args: state.args.as_ref().map(|a| a.clone_ref(py)),
                context: state.context.as_ref().map(|c| c.clone_ref(py)),
                shared_context: state.shared_context,
                cancelled: state.cancelled,
                scheduled: false,
                repr: state.repr.as_ref().map(|r| r.clone_ref(py)),
                source_traceback: state.source_traceback.as_ref().map(|t| t.clone_ref(py)),
            }),
        };
        drop(state);
        let copy = if handle.kind == Kind::Timer {
            Py::new(py, PyClassInitializer::from(copy).add_subclass(TimerHandle))?.into_any()
        } else {
            Py::new(py, copy)?.into_any()
        };
        crate::ffi::untrack(copy.bind(py));
        Ok(copy)
    }

    fn _run(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let event_loop = slf.get().loop_object(py)?;
        Handle::run(slf, event_loop.bind(py), true)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<Py<PyAny>> {
        Ok(call_hook(slf.py(), "handle_repr", (slf,))?.unbind())
    }

    #[getter(__class__)]
    fn asyncio_class(&self, py: Python<'_>) -> PyResult<Py<PyType>> {
        let class = if self.kind == Kind::Timer {
            asyncio_timer_handle(py)?
        } else {
            asyncio_handle(py)?
        };
        Ok(class.clone().unbind())
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .callback
            .as_ref()
            .map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        let state = self.state.borrow(py);
        match (&state.args, &state.callback) {
            (Some(args), _) => args.to_tuple(py).ok().map(Py::into_any),
            // A live handle without arguments has the empty tuple, as in asyncio.
            (None, Some(_)) => Some(PyTuple::empty(py).into_any().unbind()),
            (None, None) => None,
        }
    }

    #[getter]
    fn _cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.get_context(py)
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.loop_object(py)
    }

    #[getter]
    fn _repr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.borrow(py).repr.as_ref().map(|r| r.clone_ref(py))
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .source_traceback
            .as_ref()
            .map(|s| s.clone_ref(py))
    }
}

#[pymethods]
impl TimerHandle {
    fn when(slf: PyRef<'_, Self>) -> f64 {
        slf.as_super().when(slf.py())
    }

    #[getter]
    fn _when(slf: PyRef<'_, Self>) -> f64 {
        slf.as_super().when(slf.py())
    }

    #[getter]
    fn _scheduled(slf: PyRef<'_, Self>) -> bool {
        let py = slf.py();
        slf.as_super().state.borrow(py).scheduled
    }

    fn __hash__(slf: PyRef<'_, Self>) -> PyResult<isize> {
        let py = slf.py();
        pyo3::types::PyFloat::new(py, slf.as_super().when(py)).hash()
    }

    /// asyncio: TimerHandle.__lt__/__le__/__gt__/__ge__ compare `_when`; `__eq__` also
    /// compares callback, args and cancelled state.
    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if !other.is_instance(asyncio_timer_handle(py)?)? {
            return Ok(py.NotImplemented());
        }
        let when = slf.as_super().get().when(py);
        let other_when: f64 = other.getattr("_when")?.extract()?;
        let result = match op {
            CompareOp::Lt => when < other_when,
            CompareOp::Le => when < other_when || slf.as_any().eq(other)?,
            CompareOp::Gt => when > other_when,
            CompareOp::Ge => when > other_when || slf.as_any().eq(other)?,
            CompareOp::Eq | CompareOp::Ne => {
                let this = slf.as_any();
                let equal = when == other_when
                    && this.getattr("_callback")?.eq(other.getattr("_callback")?)?
                    && this.getattr("_args")?.eq(other.getattr("_args")?)?
                    && this
                        .getattr("_cancelled")?
                        .eq(other.getattr("_cancelled")?)?;
                if matches!(op, CompareOp::Eq) {
                    equal
                } else {
                    !equal
                }
            }
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }
}

/// `TypeError` for a callback asyncio would refuse (checked in every mode: it is cheap).
#[inline(always)]
pub fn check_callable(py: Python<'_>, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    if crate::ffi::is_callable(callback) {
        return Ok(());
    }
    not_callable(py, callback, method)
}

#[cold]
#[inline(never)]
fn not_callable(py: Python<'_>, callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    let message: String = call_hook(py, "noncallable_message", (callback, method))?.extract()?;
    Err(PyTypeError::new_err(message))
}
