//! The blocking watchdog's thread (`ferroloop._core.Watchdog`). See `docs/observability.md`.
//!
//! One native thread per loop with a watchdog. Every `threshold / 4` it reads the loop's
//! [`Probe`](ferroloop_core::metrics::Probe) (atomics only, no GIL) and feeds a
//! [`StallDetector`]. Only when the detector finds the loop stuck does it take the GIL (a
//! CPU-bound loop thread gives it up every `sys.getswitchinterval()`; a blocking call already
//! has) and call `ferroloop._watchdog._report`, which reads the loop thread's stack and logs.
//!
//! Rules:
//! 1. The thread never touches the loop's `GilCell` state: it reads atomics, and under the
//!    GIL only Python-visible objects (`sys._current_frames()`, the current task).
//! 2. `stop()` (called by `loop.close()`) sets the stop flag, then joins with the GIL
//!    released; the thread re-checks the flag after taking the GIL before a "blocked"
//!    report, and the "released" report of a block it announced is made before it ends, so
//!    no report is made after `stop()` returned and no announced block is left open.
//! 3. A watchdog that is dropped without `stop()` (its loop was collected) only sets the flag:
//!    the thread ends at its next tick.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ferroloop_core::metrics::{Sample, StallDetector, StallEvent, StealMeter};
use ferroloop_core::sys::clock::monotonic_ns;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::metrics::shared_of;
use crate::shared::LoopShared;

#[derive(Default)]
struct Control {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Control {
    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stop(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Sleep for `tick` or until stopped; true if stopped.
    fn sleep(&self, tick: Duration) -> bool {
        let guard = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .wake
            .wait_timeout_while(guard, tick, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

#[pyclass(module = "ferroloop._core", name = "Watchdog", frozen)]
pub struct Watchdog {
    control: Arc<Control>,
    thread: Mutex<Option<JoinHandle<()>>>,
    threshold: f64,
}

/// How often the thread looks at the loop for a given threshold.
fn tick_for(threshold_ns: i64) -> Duration {
    Duration::from_nanos((threshold_ns / 4).clamp(1_000_000, 250_000_000) as u64)
}

/// What one report says, in the units `ferroloop._watchdog._report` takes.
struct Report<'a> {
    kind: &'a str,
    started_ns: i64,
    duration_ns: i64,
    cpu_fraction: Option<f64>,
    /// How long the watchdog waited for the GIL (long when the loop thread held it in C code).
    gil_wait_ns: i64,
}

fn report(py: Python<'_>, shared: &LoopShared, report: Report<'_>) {
    // The loop was collected (its watchdog is ending): nobody to report to.
    let Ok(event_loop) = shared.loop_object(py) else {
        return;
    };
    let outcome = (|| -> PyResult<()> {
        let hook = crate::python_hooks::watchdog_report(py)?;
        hook.call1((
            event_loop,
            report.kind,
            shared.probe.loop_ident(),
            report.started_ns as f64 / 1e9,
            report.duration_ns as f64 / 1e9,
            report.cpu_fraction,
            report.gil_wait_ns as f64 / 1e9,
        ))?;
        Ok(())
    })();
    if let Err(error) = outcome {
        error.write_unraisable(py, None);
    }
}

fn watch(shared: Arc<LoopShared>, control: Arc<Control>, threshold_ns: i64) {
    let tick = tick_for(threshold_ns);
    let probe = &shared.probe;
    let mut detector = StallDetector::new(threshold_ns);
    let mut steal = StealMeter::default();
    // The current block was announced with a "blocked" report (so its end gets one too).
    let mut announced = false;
    let take_sample = |stopping: bool| {
        // When stopping, the loop is closing: a block announced before has ended, and its end
        // is reported now (before `stop()` returns) rather than lost.
        let running = !stopping && probe.is_running();
        let parked = shared.parked.load(Ordering::SeqCst);
        let busy = running && !parked;
        Sample {
            now_ns: monotonic_ns(),
            running,
            parked,
            progress: probe.progress(),
            cpu_ns: if busy { probe.loop_cpu_ns() } else { None },
            stolen_ns: None,
        }
    };
    // A first look right away: a block that is already going on is then dated from the
    // watchdog's start, not from its first tick.
    detector.observe(take_sample(false), None);
    loop {
        let stopping = control.sleep(tick);
        let mut sample = take_sample(stopping);
        if detector.continues(&sample) {
            sample.stolen_ns = steal.charged_ns(probe.loop_tid());
        }
        let block_end = if detector.reported() {
            probe.block_end()
        } else {
            None
        };
        match detector.observe(sample, block_end) {
            None => {}
            // Never when stopping: the sample then says "not running".
            Some(StallEvent::Blocked {
                started_ns,
                blocked_ns,
                cpu_fraction,
            }) => {
                probe.arm_block_end();
                Python::attach(|py| {
                    let attached_ns = monotonic_ns();
                    let gil_wait_ns = attached_ns - sample.now_ns;
                    if control.is_stopped() {
                        return;
                    }
                    let still_blocked = probe.progress() == sample.progress
                        && probe.is_running()
                        && !shared.parked.load(Ordering::SeqCst);
                    probe.count_report();
                    // The loop thread ran again to let go of the GIL, so its CPU's steal while
                    // the host held that CPU (the guest accounts it only when the CPU runs
                    // again) is counted by now: the share is measured again, up to now.
                    let cpu_fraction = match still_blocked && gil_wait_ns > 0 {
                        true => detector
                            .cpu_fraction(
                                attached_ns,
                                probe.loop_cpu_ns(),
                                steal.charged_ns(probe.loop_tid()),
                            )
                            .or(cpu_fraction),
                        false => cpu_fraction,
                    };
                    let (kind, duration_ns) = if still_blocked {
                        announced = true;
                        ("blocked", blocked_ns + gil_wait_ns)
                    } else {
                        // The block ended while we waited for the GIL (the loop thread held
                        // it, in C code): its stack is gone, report its length only.
                        let end = probe.take_block_end().unwrap_or(attached_ns);
                        ("unseen", end - started_ns)
                    };
                    let report_ = Report {
                        kind,
                        started_ns,
                        duration_ns,
                        cpu_fraction,
                        gil_wait_ns,
                    };
                    report(py, &shared, report_);
                });
            }
            Some(StallEvent::Released {
                started_ns,
                total_ns,
                cpu_fraction,
            }) => {
                probe.take_block_end();
                if std::mem::take(&mut announced) {
                    // A block announced with "blocked" always gets its "released", even when
                    // `stop()` was called while this thread waited for the GIL: `stop()` joins
                    // the thread, so the report still comes before it returns.
                    let released = Report {
                        kind: "released",
                        started_ns,
                        duration_ns: total_ns,
                        cpu_fraction,
                        gil_wait_ns: 0,
                    };
                    Python::attach(|py| report(py, &shared, released));
                }
            }
        }
        if stopping {
            return;
        }
    }
}

#[pymethods]
impl Watchdog {
    /// Start watching `loop` (a ferroloop loop): report when one callback holds it for longer
    /// than `threshold` seconds.
    #[new]
    fn py_new(event_loop: &Bound<'_, PyAny>, threshold: f64) -> PyResult<Self> {
        if !(threshold.is_finite() && threshold > 0.0) {
            return Err(PyValueError::new_err(format!(
                "watchdog threshold must be a positive number of seconds, got {threshold}"
            )));
        }
        let shared = shared_of(event_loop)?;
        let control = Arc::new(Control::default());
        let threshold_ns = (threshold * 1e9).min(i64::MAX as f64 / 2.0) as i64;
        let thread = {
            let control = Arc::clone(&control);
            std::thread::Builder::new()
                .name("ferroloop-watchdog".into())
                .spawn(move || watch(shared, control, threshold_ns))
                .map_err(|e| {
                    PyRuntimeError::new_err(format!("cannot start the watchdog thread: {e}"))
                })?
        };
        Ok(Watchdog {
            control,
            thread: Mutex::new(Some(thread)),
            threshold,
        })
    }

    #[getter]
    fn threshold(&self) -> f64 {
        self.threshold
    }

    /// Whether the thread is still running.
    fn is_alive(&self) -> bool {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stop the thread and wait for it to end (with the GIL released). After this returns,
    /// the watchdog reports nothing more.
    fn stop(&self, py: Python<'_>) {
        self.control.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            if thread.thread().id() == std::thread::current().id() {
                // Called from a report handler, on the watchdog thread: it ends after this.
                return;
            }
            let _ = py.detach(|| thread.join());
        }
    }

    /// In a child process after `fork()`: the thread does not exist here; forget it without
    /// joining or detaching.
    fn _forget_after_fork(&self) {
        self.control.stop();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        std::mem::forget(thread);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.control.stop();
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Watchdog>()?;
    Ok(())
}
