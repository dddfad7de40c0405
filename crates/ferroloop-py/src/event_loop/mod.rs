//! `ferroloop._core.Loop`: the native base class of `ferroloop.Loop`.
//!
//! It owns the ready queue, the timer heap and the reactor, and runs asyncio's
//! `BaseEventLoop._run_once` algorithm natively. Everything that runs once per loop or per
//! connection lives in Python (`python/ferroloop/_loop.py`).
//!
//! Rules:
//! 1. One iteration runs exactly the callbacks that were ready when it started (`ntodo`);
//!    `stop()` never cuts a batch short; I/O callbacks are queued after the poll, then due
//!    timers in heap order. A `KeyboardInterrupt`/`SystemExit` from a callback propagates and
//!    leaves the rest of the batch queued.
//! 2. The GIL is released only around a blocking poll. A poll that would not block is skipped
//!    when no fd is registered.
//! 3. `state` is never borrowed across a call into Python (see `gil_cell.rs`).
//!
//! The reactor side (polling, `add_reader`/`add_writer` bookkeeping) is in [`io`].

mod fast;
mod io;

pub(crate) use fast::{fastcall_def, install_fast_methods, install_methods, MethodDef};

use io::{FdKey, IoHandles};

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferroloop_core::reactor::{self, FdMap, Interest, IoEvent, Poller, Registrar};
use ferroloop_core::time::clock::CLOCK_RESOLUTION;
use ferroloop_core::time::{monotonic, TimerEntry, TimerHeap};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyInt, PyTuple};

use crate::errors::os_error;
use crate::ffi::{call_with_keywords, construct, KeywordNames};
use crate::ffi::{check_signals, current_frame, instance_attribute, sole_owner, untrack};
use crate::ffi::{new_context, thread_state, ThreadState};
use crate::gil_cell::GilCell;
use crate::handles::{check_callable, report_error, Args, Handle, Kind, TimerHandle};
use crate::net::sock_ops;
use crate::python_hooks::{
    asyncio_base_create_future, asyncio_base_create_task, asyncio_future, asyncio_task, call_hook,
};
use crate::shared::LoopShared;

static KW_LOOP: KeywordNames = KeywordNames::new(&["loop"]);
static KW_LOOP_NAME: KeywordNames = KeywordNames::new(&["loop", "name"]);
static KW_LOOP_NAME_CONTEXT: KeywordNames = KeywordNames::new(&["loop", "name", "context"]);

/// How many ran `call_soon` handles a busy loop keeps for reuse: a loop that never waits
/// reuses the handles of its largest bursts (the memory those bursts needed anyway).
const HANDLE_POOL_MAX: usize = 1 << 18;
/// How many it keeps when it goes idle (about to block in its poll) or stops.
const HANDLE_POOL_IDLE: usize = 1024;
/// How many fired or cancelled timer handles a loop keeps for reuse.
const TIMER_POOL_SIZE: usize = 1024;
/// Reader and writer handles kept for reuse (see `LoopState::io_pool`).
const IO_POOL_SIZE: usize = 1024;
/// Seconds a surplus of pooled handles is kept before an idle loop gives it back.
const HANDLE_POOL_GRACE: f64 = 1.0;

/// Iterations that do not block check for pending signals this often (see `run_once_impl`).
const SIGNAL_CHECK_INTERVAL: u32 = 16;

/// asyncio: `base_events._MIN_SCHEDULED_TIMER_HANDLES`.
const MIN_SCHEDULED_TIMER_HANDLES: usize = 100;
/// asyncio: `base_events.MAXIMUM_SELECT_TIMEOUT`.
const MAXIMUM_SELECT_TIMEOUT: f64 = 24.0 * 3600.0;

/// An entry of the ready queue.
enum Ready {
    Native(Py<Handle>),
    /// A handle made elsewhere (`asyncio.Handle` given to `_add_callback`, e.g. by asyncio's
    /// signal machinery): run through its `_run` method.
    Foreign(Py<PyAny>),
}

struct Timer {
    when: f64,
    handle: Py<Handle>,
}

impl TimerEntry for Timer {
    #[inline]
    fn when(&self) -> f64 {
        self.when
    }
}

struct LoopState {
    ready: VecDeque<Ready>,
    timers: TimerHeap<Timer>,
    io: FdMap<IoHandles>,
    registrar: Registrar,
    /// Readiness reports of the last poll; kept to reuse its allocation.
    events: Vec<IoEvent>,
    stopping: bool,
    closed: bool,
    /// Iterations run, modulo 2^32 (paces the signal check).
    tick: u32,
    /// When the surplus of the handle pool goes back (see `trim_handle_pool`).
    pool_trim_at: Option<f64>,
    /// `{"loop": self}` while the loop runs: the keyword arguments of the futures and tasks
    /// it creates, built once rather than once per object.
    loop_kwargs: Option<Py<PyDict>>,
    /// An empty `contextvars.Context` that the loop's own native callbacks run in (the
    /// readers and done callbacks of `sock_*` waits, see `net/sock_ops.rs`): they read no context
    /// variable, so copying the caller's context for them would be wasted. Only this loop's
    /// thread runs them, one at a time, so the context is never entered twice.
    private_context: Option<Py<PyAny>>,
    /// For a parked fd (see `Registrar::park`) whose reader or writer was a `sock_*` wait: a
    /// weak reference to the socket object. A later wait of the same, still open, socket on
    /// the same fd knows the fd names the same file (see `net/sock_ops.rs`).
    parked_owners: FdMap<Py<PyAny>>,
    /// `call_soon` handles that ran and that nobody else references, ready for reuse: a
    /// handle costs a few hundred instructions to allocate and free through pyo3.
    handle_pool: Vec<Py<Handle>>,
    /// The same for `TimerHandle`s (stored as their `Handle` base).
    timer_pool: Vec<Py<Handle>>,
    /// The same for reader and writer handles, kept when they are removed (`io.rs`): a
    /// server's connections each register a reader and remove it at the end, and every
    /// allocation of a GC type (which every pyo3 object is) counts towards the cyclic GC's
    /// next collection.
    io_pool: Vec<Py<Handle>>,
    /// asyncio's `_task_factory` (`set_task_factory`/`get_task_factory`).
    task_factory: Option<Py<PyAny>>,
    /// While `run_forever` runs: the frame that called it, where the loop's own machinery
    /// ends on the loop thread's stack (the watchdog shows the frames above it).
    run_forever_caller: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._core", name = "Loop", subclass, frozen)]
pub struct Loop {
    pub(crate) shared: Arc<LoopShared>,
    state: GilCell<LoopState>,
    /// The thread state of the thread inside `_run_until_stopped`, or null. A thread that
    /// finds its own thread state here runs below that pyo3 method, so the fast methods can
    /// skip pyo3's per-call bookkeeping (see `fast.rs`). Only that thread writes its own
    /// address (and clears it before it leaves), so the comparison needs no ordering.
    pub(crate) running_tstate: AtomicPtr<ThreadState>,
    /// Only the loop's thread polls; the lock is never contended and never held while Python
    /// code runs.
    poller: Mutex<Poller>,
}

impl Loop {
    fn check_closed(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.borrow(py).closed {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        Ok(())
    }

    /// `{"loop": self}` while the loop runs.
    #[inline]
    fn loop_kwargs<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyDict>> {
        self.state
            .borrow(py)
            .loop_kwargs
            .as_ref()
            .map(|k| k.bind(py).clone())
    }

    /// See `LoopState::private_context`.
    pub(crate) fn private_context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if let Some(context) = &self.state.borrow(py).private_context {
            return Ok(context.bind(py).clone());
        }
        let context = new_context(py)?;
        self.state.borrow_mut(py).private_context = Some(context.clone().unbind());
        Ok(context)
    }

    pub(crate) fn is_debug(&self) -> bool {
        self.shared.debug.load(Ordering::Relaxed)
    }

    /// Build a handle: copy the current context if none is given, record the source
    /// traceback in debug mode.
    fn make_handle(
        &self,
        py: Python<'_>,
        kind: Kind,
        when: f64,
        callback: Bound<'_, PyAny>,
        args: Option<Args>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Handle> {
        let (context, shared_context) = self.handle_context(py, context)?;
        let source_traceback = if self.is_debug() {
            Some(call_hook(py, "extract_stack", ())?.unbind())
        } else {
            None
        };
        Ok(Handle::new(
            Arc::clone(&self.shared),
            kind,
            when,
            callback.unbind(),
            args,
            context,
            shared_context,
            source_traceback,
        ))
    }

    /// The context a new handle runs in, and whether it is a shared snapshot.
    #[inline(always)]
    fn handle_context(
        &self,
        py: Python<'_>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<(Py<PyAny>, bool)> {
        Ok(match context {
            Some(context) if !context.is_none() => (context.unbind(), false),
            // Readers and writers too: the first run that sets a variable gives the handle
            // the snapshot as its own context, which keeps what later runs set.
            _ => (self.shared.context_snapshot(py)?, true),
        })
    }

    /// `call_soon`/`call_soon_threadsafe`: the checks asyncio makes (the thread check only
    /// for `call_soon`), then a handle at the end of the ready queue. Outside debug mode the
    /// handle is a pooled one when there is one (debug-mode handles carry a source traceback).
    #[inline(always)]
    pub(crate) fn schedule_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Option<Args>,
        context: Option<Bound<'_, PyAny>>,
        method: &str,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        let debug = this.is_debug();
        if debug {
            this.check_closed(py)?;
            Loop::check_callback(slf, &callback, method, method == "call_soon")?;
        } else {
            this.check_closed(py)?;
            check_callable(py, &callback, method)?;
        }
        let handle = this.pooled_or_new(py, Kind::Soon, callback, args, context)?;
        this.state
            .borrow_mut(py)
            .ready
            .push_back(Ready::Native(handle.clone_ref(py)));
        Ok(handle)
    }

    /// A `call_soon` (`Kind::Soon`) or reader/writer (`Kind::Io`) handle for `callback`: one
    /// from that kind's pool outside debug mode when there is one (debug-mode handles carry a
    /// source traceback), a new one otherwise.
    #[inline(always)]
    fn pooled_or_new(
        &self,
        py: Python<'_>,
        kind: Kind,
        callback: Bound<'_, PyAny>,
        args: Option<Args>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let pooled = match self.is_debug() {
            true => None,
            false => {
                let mut state = self.state.borrow_mut(py);
                match kind {
                    Kind::Io => state.io_pool.pop(),
                    _ => state.handle_pool.pop(),
                }
            }
        };
        match pooled {
            Some(handle) => {
                let (context, shared_context) = self.handle_context(py, context)?;
                handle
                    .get()
                    .reset(py, callback.unbind(), args, context, shared_context);
                Ok(handle)
            }
            None => new_untracked(
                py,
                self.make_handle(py, kind, f64::NAN, callback, args, context)?,
            ),
        }
    }

    /// Keep a `call_soon` handle that ran for reuse, if nothing else can see it.
    #[inline(always)]
    fn recycle(&self, py: Python<'_>, handle: Py<Handle>) {
        let kind = handle.get().kind;
        if kind == Kind::Io || !sole_owner(handle.bind(py).as_any()) {
            handle.drop_ref(py);
            return;
        }
        handle.get().clear(py);
        let mut state = self.state.borrow_mut(py);
        let (pool, max) = if kind == Kind::Soon {
            (&mut state.handle_pool, HANDLE_POOL_MAX)
        } else {
            (&mut state.timer_pool, TIMER_POOL_SIZE)
        };
        if pool.len() < max {
            pool.push(handle);
            return;
        }
        drop(state);
        handle.drop_ref(py);
    }

    fn check_callback(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        thread_check: bool,
    ) -> PyResult<()> {
        let py = slf.py();
        if slf.get().is_debug() {
            if thread_check {
                slf.call_method0("_check_thread")?;
            }
            slf.call_method1("_check_callback", (callback, method))?;
            Ok(())
        } else {
            check_callable(py, callback, method)
        }
    }

    pub(crate) fn schedule_timer(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: Bound<'_, PyAny>,
        args: Option<Args>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        if when.is_nan() {
            return Err(PyValueError::new_err("when must not be NaN"));
        }
        Loop::check_callback(slf, &callback, "call_at", true)?;
        let pooled = if this.is_debug() {
            None
        } else {
            this.state.borrow_mut(py).timer_pool.pop()
        };
        let (timer, base) = match pooled {
            Some(base) => {
                let (context, shared_context) = this.handle_context(py, context)?;
                base.get()
                    .reset_timer(py, when, callback.unbind(), args, context, shared_context);
                // SAFETY: the timer pool only holds `TimerHandle` objects (see `recycle`).
                let timer = unsafe { base.bind(py).clone().cast_into_unchecked::<TimerHandle>() };
                (timer.unbind(), base)
            }
            None => {
                let handle = this.make_handle(py, Kind::Timer, when, callback, args, context)?;
                let timer: Py<TimerHandle> = Py::new(
                    py,
                    PyClassInitializer::from(handle).add_subclass(TimerHandle),
                )?;
                untrack(timer.bind(py).as_any());
                let base: Py<Handle> = timer.bind(py).as_super().clone().unbind();
                (timer, base)
            }
        };
        this.state
            .borrow_mut(py)
            .timers
            .push(Timer { when, handle: base });
        Ok(timer)
    }

    fn push_ready(&self, py: Python<'_>, entry: Ready) {
        self.state.borrow_mut(py).ready.push_back(entry);
    }

    /// Purge cancelled timers (asyncio's rule) and compute the poll timeout.
    fn prepare_poll(&self, py: Python<'_>) -> PyResult<Option<Duration>> {
        let mut garbage: Vec<Timer> = Vec::new();
        {
            let mut state = self.state.borrow_mut(py);
            let count = state.timers.len();
            let cancelled = self.shared.timer_cancelled.load(Ordering::Relaxed);
            if count > MIN_SCHEDULED_TIMER_HANDLES && cancelled * 2 > count {
                garbage = state.timers.purge(|t| !t.handle.get().is_cancelled(py));
                self.shared.timer_cancelled.store(0, Ordering::Relaxed);
            } else {
                while state
                    .timers
                    .peek()
                    .is_some_and(|t| t.handle.get().is_cancelled(py))
                {
                    if let Some(timer) = state.timers.pop() {
                        let _ = self.shared.timer_cancelled.fetch_update(
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                            |c| Some(c.saturating_sub(1)),
                        );
                        garbage.push(timer);
                    }
                }
            }
        }
        for timer in &garbage {
            timer.handle.get().state.borrow_mut(py).scheduled = false;
        }
        // Cancelled timers nobody holds any more are reused.
        for timer in garbage {
            self.recycle(py, timer.handle);
        }
        let next = {
            let state = self.state.borrow(py);
            if !state.ready.is_empty() || state.stopping {
                return Ok(Some(Duration::ZERO));
            }
            state.timers.peek().map(|timer| timer.when)
        };
        let Some(when) = next else {
            return Ok(None);
        };
        let timeout = (when - self.clock(py)?).clamp(0.0, MAXIMUM_SELECT_TIMEOUT);
        Ok(Some(Duration::from_secs_f64(timeout)))
    }

    /// asyncio's `self.time()` where `call_later` and `_run_once` read it: the monotonic
    /// clock, unless the loop object has a `time` attribute of its own (a test's
    /// `mock.patch.object(loop, "time")`), which is then called, as asyncio does.
    #[inline]
    pub(crate) fn clock(&self, py: Python<'_>) -> PyResult<f64> {
        // The Python loop object through the weak reference it gave (holding its __dict__
        // here would hide a reference from the cyclic GC).
        let event_loop = self.shared.loop_weakref.get(py).and_then(|weakref| {
            weakref
                .bind(py)
                .cast::<pyo3::types::PyWeakrefReference>()
                .ok()?
                .upgrade()
        });
        let patched = match event_loop {
            Some(event_loop) => instance_attribute(&event_loop, intern!(py, "time"))?,
            None => None,
        };
        match patched {
            None => Ok(monotonic()),
            Some(time) => time.call0()?.extract::<f64>(),
        }
    }

    /// Give back the handles a burst left in the pool, beyond what an idle loop keeps, once
    /// the loop has had them for `HANDLE_POOL_GRACE` seconds (a loop that keeps bursting
    /// keeps reusing them). `force`: now (the loop stops).
    fn trim_handle_pool(&self, py: Python<'_>, force: bool) {
        let surplus = {
            let mut state = self.state.borrow_mut(py);
            if state.handle_pool.len() <= HANDLE_POOL_IDLE {
                state.pool_trim_at = None;
                return;
            }
            if !force {
                let now = monotonic();
                match state.pool_trim_at {
                    None => {
                        state.pool_trim_at = Some(now + HANDLE_POOL_GRACE);
                        return;
                    }
                    Some(deadline) if now < deadline => return,
                    Some(_) => {}
                }
            }
            state.pool_trim_at = None;
            let surplus = state.handle_pool.split_off(HANDLE_POOL_IDLE);
            state.handle_pool.shrink_to(HANDLE_POOL_IDLE * 2);
            surplus
        };
        for handle in surplus {
            handle.drop_ref(py);
        }
    }

    /// Move due timers to the ready queue (asyncio: deadline before now + clock resolution).
    fn queue_due_timers(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.borrow(py).timers.is_empty() {
            return Ok(());
        }
        let end = self.clock(py)? + CLOCK_RESOLUTION;
        let mut state = self.state.borrow_mut(py);
        while state.timers.peek().is_some_and(|t| t.when < end) {
            if let Some(timer) = state.timers.pop() {
                self.shared
                    .probe
                    .timer_due(end - CLOCK_RESOLUTION - timer.when);
                timer.handle.get().state.borrow_mut(py).scheduled = false;
                state.ready.push_back(Ready::Native(timer.handle));
            }
        }
        Ok(())
    }

    /// Run one ready entry.
    fn run_entry(slf: &Bound<'_, Self>, entry: Ready) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = slf.as_any();
        match entry {
            Ready::Native(entry_handle) => {
                let handle = entry_handle.bind(py);
                if handle.get().is_cancelled(py) {
                    return Ok(());
                }
                if this.is_debug() {
                    Loop::run_debug(slf, handle.as_any(), || {
                        Handle::run(handle, event_loop, true)
                    })?;
                    if handle.get().kind != Kind::Io {
                        handle.get().release(py);
                    }
                    Ok(())
                } else {
                    Handle::run(handle, event_loop, false)?;
                    this.recycle(py, entry_handle);
                    Ok(())
                }
            }
            Ready::Foreign(handle) => {
                let handle = handle.bind(py);
                if handle.getattr("_cancelled")?.is_truthy()? {
                    return Ok(());
                }
                let run = || match handle.call_method0("_run") {
                    Ok(_) => Ok(()),
                    Err(error) => report_error(py, handle, event_loop, error),
                };
                if this.is_debug() {
                    Loop::run_debug(slf, handle, run)
                } else {
                    run()
                }
            }
        }
    }

    /// asyncio's debug-mode wrapper: `_current_handle`, and the slow-callback warning.
    fn run_debug(
        slf: &Bound<'_, Self>,
        handle: &Bound<'_, PyAny>,
        run: impl FnOnce() -> PyResult<()>,
    ) -> PyResult<()> {
        let py = slf.py();
        slf.setattr("_current_handle", handle)?;
        let start = monotonic();
        let outcome = run();
        let elapsed = monotonic() - start;
        let logged = match &outcome {
            Ok(()) => call_hook(py, "log_slow_callback", (slf, handle, elapsed)).map(|_| ()),
            Err(_) => Ok(()),
        };
        slf.setattr("_current_handle", py.None())?;
        outcome.and(logged)
    }

    fn run_once_impl(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // A closed loop has no reactor left to wait on (asyncio fails on its closed selector).
        this.check_closed(py)?;
        let mut timeout = this.prepare_poll(py)?;
        // A signal that arrived while callbacks ran (not during the poll, which EINTR would
        // end) has only tripped CPython's flag: asyncio's Python loop acts on it at its next
        // bytecode, so run the handlers before a poll that may block. Python callbacks run
        // pending handlers themselves (the interpreter checks between bytecodes); every
        // SIGNAL_CHECK_INTERVAL iterations also covers a loop kept busy by C callbacks only.
        let tick = {
            let mut state = this.state.borrow_mut(py);
            state.tick = state.tick.wrapping_add(1);
            state.tick
        };
        if timeout != Some(Duration::ZERO) || tick % SIGNAL_CHECK_INTERVAL == 0 {
            check_signals(py)?;
            let state = this.state.borrow(py);
            if !state.ready.is_empty() || state.stopping {
                // A handler scheduled a callback or stopped the loop: do not block.
                timeout = Some(Duration::ZERO);
            }
        }
        if timeout != Some(Duration::ZERO) {
            this.trim_handle_pool(py, false);
        }
        this.poll_io(py, timeout)?;
        this.queue_due_timers(py)?;
        let ntodo = this.state.borrow(py).ready.len();
        let probe = &this.shared.probe;
        probe.iteration(ntodo);
        for _ in 0..ntodo {
            let entry = this.state.borrow_mut(py).ready.pop_front();
            let Some(entry) = entry else {
                break;
            };
            probe.callback_begin();
            let outcome = Loop::run_entry(slf, entry);
            probe.callback_end();
            outcome?;
        }
        Ok(())
    }
}

/// Records the running thread in `Loop::running_tstate` for the duration of
/// `_run_until_stopped`, and restores what was there (null, or an outer run's own thread
/// state if a callback ran the loop again) when it ends, whether by return or by unwinding.
struct RunningThread<'a> {
    event_loop: &'a Loop,
    outer: *mut ThreadState,
}

impl<'a> RunningThread<'a> {
    fn enter(py: Python<'_>, event_loop: &'a Loop) -> Self {
        let own = thread_state(py);
        let outer = event_loop.running_tstate.swap(own, Ordering::Relaxed);
        RunningThread { event_loop, outer }
    }
}

impl Drop for RunningThread<'_> {
    fn drop(&mut self) {
        self.event_loop
            .running_tstate
            .store(self.outer, Ordering::Relaxed);
    }
}

/// Allocate a handle and take it off the GC's lists (see `ffi::untrack`).
#[inline]
fn new_untracked(py: Python<'_>, handle: Handle) -> PyResult<Py<Handle>> {
    let handle = Py::new(py, handle)?;
    untrack(handle.bind(py).as_any());
    Ok(handle)
}

pub(crate) fn delay_to_when(
    event_loop: &Loop,
    py: Python<'_>,
    delay: &Bound<'_, PyAny>,
) -> PyResult<f64> {
    let now = event_loop.clock(py)?;
    let when = if delay.is_exact_instance_of::<PyFloat>() || delay.is_instance_of::<PyInt>() {
        now + delay.extract::<f64>()?
    } else {
        // asyncio computes `self.time() + delay`: same result type rules, same errors.
        PyFloat::new(py, now).add(delay)?.extract::<f64>()?
    };
    if when.is_nan() {
        return Err(PyValueError::new_err("delay must not be NaN"));
    }
    Ok(when)
}

#[pymethods]
impl Loop {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Self> {
        let (poller, registrar, waker) = reactor::new().map_err(os_error)?;
        Ok(Loop {
            shared: Arc::new(LoopShared::new(waker)),
            state: GilCell::new(LoopState {
                ready: VecDeque::new(),
                timers: TimerHeap::new(),
                io: FdMap::default(),
                registrar,
                events: Vec::new(),
                stopping: false,
                closed: false,
                tick: 0,
                loop_kwargs: None,
                private_context: None,
                parked_owners: FdMap::default(),
                pool_trim_at: None,
                task_factory: None,
                run_forever_caller: None,
                handle_pool: Vec::with_capacity(HANDLE_POOL_IDLE),
                timer_pool: Vec::new(),
                io_pool: Vec::new(),
            }),
            poller: Mutex::new(poller),
            running_tstate: AtomicPtr::new(std::ptr::null_mut()),
        })
    }

    /// Give the native loop a weak reference to the Python loop object (for `Handle._loop`).
    fn _bind_weakref(&self, py: Python<'_>, weakref: Py<PyAny>) -> PyResult<()> {
        self.shared
            .loop_weakref
            .set(py, weakref)
            .map_err(|_| PyRuntimeError::new_err("loop already bound"))
    }

    fn time(&self) -> f64 {
        monotonic()
    }

    fn stop(&self, py: Python<'_>) {
        self.state.borrow_mut(py).stopping = true;
    }

    #[getter(_debug)]
    fn get_debug_attr(&self) -> bool {
        self.is_debug()
    }

    #[setter(_debug)]
    fn set_debug_attr(&self, enabled: bool) {
        self.shared.debug.store(enabled, Ordering::Relaxed);
    }

    fn is_closed(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closed
    }

    #[getter(_closed)]
    fn get_closed_attr(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closed
    }

    /// Written by asyncio's `BaseEventLoop.__init__` (`False`); closing goes through
    /// `close()`, which also drops the pending callbacks.
    #[setter(_closed)]
    fn set_closed_attr(&self, py: Python<'_>, value: bool) {
        self.state.borrow_mut(py).closed = value;
    }

    #[getter(_stopping)]
    fn get_stopping(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).stopping
    }

    #[setter(_stopping)]
    fn set_stopping(&self, py: Python<'_>, value: bool) {
        self.state.borrow_mut(py).stopping = value;
    }

    #[getter(_task_factory)]
    fn get_task_factory_attr(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .task_factory
            .as_ref()
            .map(|f| f.clone_ref(py))
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(&self, py: Python<'_>, factory: Option<Py<PyAny>>) {
        let factory = factory.filter(|f| !f.is_none(py));
        let previous = std::mem::replace(&mut self.state.borrow_mut(py).task_factory, factory);
        drop(previous);
    }

    /// asyncio: `BaseEventLoop.create_future`.
    pub(crate) fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        if slf.get().is_debug() {
            // The running version's own method: a debug-mode future records the stack it was
            // made on, whose last frame is then asyncio's create_future, as on asyncio's loop
            // (its repr says "created at .../base_events.py:N").
            return asyncio_base_create_future(py)?.call1((slf,));
        }
        if let Some(kwargs) = slf.get().loop_kwargs(py) {
            return construct(asyncio_future(py)?, &PyTuple::empty(py), &kwargs);
        }
        call_with_keywords(
            py,
            asyncio_future(py)?.as_any(),
            &[],
            &KW_LOOP,
            &[slf.as_any()],
        )
    }

    /// asyncio: `BaseEventLoop.create_task`. Without a task factory and outside debug mode
    /// this is `asyncio.Task(coro, loop=self, name=name, context=context)`, called natively;
    /// otherwise the running version's own `BaseEventLoop.create_task` does the work.
    #[pyo3(signature = (coro, *, name=None, context=None, **kwargs))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
        kwargs: Option<&Bound<'py, pyo3::types::PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        let simple = kwargs.is_none_or(|k| k.is_empty())
            && !this.is_debug()
            && this.state.borrow(py).task_factory.is_none();
        if !simple {
            // The running version's own method, called from here so that no ferroloop frame
            // is on the stack a debug-mode task records as its source traceback. `context`
            // is passed only when given: 3.10's create_task has no such parameter.
            let all = match kwargs {
                Some(k) => k.copy()?,
                None => pyo3::types::PyDict::new(py),
            };
            all.set_item(intern!(py, "name"), name)?;
            if let Some(context) = context {
                all.set_item(intern!(py, "context"), context)?;
            }
            return asyncio_base_create_task(py)?.call((slf, coro), Some(&all));
        }
        let none = py.None().into_bound(py);
        let name = name.unwrap_or(&none);
        let task = asyncio_task(py)?.as_any();
        match context.filter(|c| !c.is_none()) {
            None if name.is_none() => match this.loop_kwargs(py) {
                Some(kwargs) => construct(asyncio_task(py)?, &PyTuple::new(py, [coro])?, &kwargs),
                None => call_with_keywords(py, task, &[coro], &KW_LOOP, &[slf.as_any()]),
            },
            None => call_with_keywords(py, task, &[coro], &KW_LOOP_NAME, &[slf.as_any(), name]),
            Some(context) => call_with_keywords(
                py,
                task,
                &[coro],
                &KW_LOOP_NAME_CONTEXT,
                &[slf.as_any(), name, context],
            ),
        }
    }

    /// asyncio: `BaseEventLoop._run_once`.
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        Loop::run_once_impl(slf)
    }

    /// Run until `stop()` is called: `_run_forever_setup()`, the watchdog's start, the
    /// iterations, and `_run_forever_cleanup()` whatever happened. Native, so that no frame of
    /// ferroloop's is on the stack of the callbacks it runs (a debug-mode task records that
    /// stack as its source traceback).
    fn run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        slf.call_method0(intern!(py, "_run_forever_setup"))?;
        let caller = current_frame(py).map(Bound::unbind);
        let previous = std::mem::replace(
            &mut slf.get().state.borrow_mut(py).run_forever_caller,
            caller,
        );
        let outcome = slf
            .call_method0(intern!(py, "_watchdog_run_starting"))
            .and_then(|_| Loop::_run_until_stopped(slf));
        let ours = std::mem::replace(
            &mut slf.get().state.borrow_mut(py).run_forever_caller,
            previous,
        );
        drop(ours);
        // As a `finally:` clause, whose own exception would replace the body's.
        let cleanup = slf.call_method0(intern!(py, "_run_forever_cleanup"));
        match (outcome, cleanup) {
            (_, Err(error)) => Err(error),
            (outcome, Ok(_)) => outcome,
        }
    }

    /// The frame that called the running `run_forever`, or `None`.
    fn _run_forever_caller(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .run_forever_caller
            .as_ref()
            .map(|f| f.clone_ref(py))
    }

    /// The body of `run_forever`: iterate until `stop()` was called.
    fn _run_until_stopped(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let _running = slf.get().shared.probe.running();
        let _inside = RunningThread::enter(slf.py(), slf.get());
        // `{"loop": self}` for the futures and tasks created while the loop runs (see
        // `create_future`); dropped when it stops, so it makes no lasting cycle.
        let kwargs = PyDict::new(py);
        kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
        let previous = slf
            .get()
            .state
            .borrow_mut(py)
            .loop_kwargs
            .replace(kwargs.unbind());
        let outcome = (|| loop {
            Loop::run_once_impl(slf)?;
            if slf.get().state.borrow(py).stopping {
                return Ok(());
            }
        })();
        let ours = std::mem::replace(&mut slf.get().state.borrow_mut(py).loop_kwargs, previous);
        drop(ours);
        slf.get().trim_handle_pool(py, true);
        outcome
    }

    /// asyncio: `BaseEventLoop._add_callback`.
    fn _add_callback(slf: &Bound<'_, Self>, handle: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let entry = if let Ok(native) = handle.cast::<Handle>() {
            if native.get().is_cancelled(py) {
                return Ok(());
            }
            Ready::Native(native.clone().unbind())
        } else {
            if handle.getattr("_cancelled")?.is_truthy()? {
                return Ok(());
            }
            Ready::Foreign(handle.clone().unbind())
        };
        slf.get().push_ready(py, entry);
        Ok(())
    }

    /// Wake the loop if it is blocked in its poll (asyncio's self-pipe write). Only a parked
    /// loop needs the eventfd write (see `LoopShared::wake_if_parked`); asyncio's
    /// `_handle_signal` calls this once per signal from the loop's own thread, where a system
    /// call per signal is one more chance for a storm of signals to interrupt the loop.
    fn _write_to_self(&self) {
        self.shared.wake_if_parked();
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Loop::set_io_handle(slf, fd, callback, args, Interest::READ)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Loop::set_io_handle(slf, fd, callback, args, Interest::WRITE)
    }

    /// The native part of `sock_recv` (see `net/sock_ops.rs`).
    fn _sock_recv_native<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        n: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        sock_ops::recv_start(slf, sock, n)
    }

    /// The native part of `sock_recv_into` (see `net/sock_ops.rs`).
    fn _sock_recv_into_native<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        buf: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        sock_ops::recv_into_start(slf, sock, buf)
    }

    /// The native part of `sock_sendall` (see `net/sock_ops.rs`).
    fn _sock_sendall_native<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        sock_ops::sendall_start(slf, sock, data)
    }

    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Loop::clear_io_handle(slf, fd, Interest::READ)
    }

    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Loop::clear_io_handle(slf, fd, Interest::WRITE)
    }

    /// Close the native part: drop queued callbacks, timers and fd registrations.
    /// Callbacks of handles still pending are released so that no cycle through them lives on.
    fn _close_native(&self, py: Python<'_>) {
        let (ready, timers, io) = {
            let mut state = self.state.borrow_mut(py);
            state.closed = true;
            let ready: Vec<Ready> = state.ready.drain(..).collect();
            let timers: Vec<Timer> = state.timers.drain().collect();
            let io: Vec<(RawFd, IoHandles)> = state.io.drain();
            // Every registration, parked ones and removals still waiting for a poll included;
            // then the epoll fds and the eventfd go, as asyncio's close() closes its selector.
            state.registrar.close();
            state.parked_owners.clear();
            (ready, timers, io)
        };
        self.poller
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .close();
        self.shared.close_waker();
        self.shared.clear_snapshots(py);
        self.shared.timer_cancelled.store(0, Ordering::Relaxed);
        let pools = {
            let mut state = self.state.borrow_mut(py);
            (
                std::mem::take(&mut state.handle_pool),
                std::mem::take(&mut state.timer_pool),
                std::mem::take(&mut state.io_pool),
            )
        };
        drop(pools);
        for entry in &ready {
            if let Ready::Native(handle) = entry {
                handle.get().release(py);
            }
        }
        for timer in &timers {
            timer.handle.get().state.borrow_mut(py).scheduled = false;
            timer.handle.get().release(py);
        }
        // Readers and writers too: handles are invisible to the cyclic GC, so a callback that
        // holds its own handle (a `sock_*` wait does) would otherwise never be freed.
        for (_, handles) in &io {
            for handle in handles.reader.iter().chain(handles.writer.iter()) {
                handle.get().release(py);
            }
        }
        drop((ready, timers, io));
    }

    /// What is registered for `fd`: `(fileobj, events, reader, writer)` with asyncio's
    /// selector event bits (1: read, 2: write), or `None`. Backs `loop._selector.get_key()`.
    fn _fd_key(&self, py: Python<'_>, fd: RawFd) -> Option<FdKey> {
        let state = self.state.borrow(py);
        let entry = state.io.get(&fd)?;
        let fileobj = match &entry.fileobj {
            Some(fileobj) => fileobj.clone_ref(py),
            None => fd.into_pyobject(py).ok()?.into_any().unbind(),
        };
        let mut events = 0;
        if entry.reader.is_some() {
            events |= 1;
        }
        if entry.writer.is_some() {
            events |= 2;
        }
        Some((
            fileobj,
            events,
            entry.reader.as_ref().map(|h| h.clone_ref(py)),
            entry.writer.as_ref().map(|h| h.clone_ref(py)),
        ))
    }

    /// asyncio's `selectors._fileobj_to_fd` of a registered object, which finds a socket
    /// closed since by the object it was registered with (for `loop._selector.get_key()`).
    fn _lookup_fd(&self, py: Python<'_>, fileobj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
        Ok(self.lookup_fd(py, fileobj)?.0)
    }

    /// Registered fds (for `loop._selector.get_map()`).
    fn _registered_fds(&self, py: Python<'_>) -> Vec<RawFd> {
        self.state.borrow(py).io.keys().collect()
    }

    /// Number of handles in the ready queue and the timer heap (for tests and metrics).
    fn _pending_counts(&self, py: Python<'_>) -> (usize, usize, usize) {
        let state = self.state.borrow(py);
        (state.ready.len(), state.timers.len(), state.io.len())
    }

    /// Number of ran `call_soon` handles kept for reuse (for tests).
    fn _handle_pool_len(&self, py: Python<'_>) -> usize {
        self.state.borrow(py).handle_pool.len()
    }

    /// Number of removed reader and writer handles kept for reuse (for tests).
    fn _io_pool_len(&self, py: Python<'_>) -> usize {
        self.state.borrow(py).io_pool.len()
    }
}
