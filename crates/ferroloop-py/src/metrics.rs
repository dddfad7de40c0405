//! `loop.metrics()`: the native side. The counters live in `LoopShared::probe`
//! (`ferroloop_core::metrics::Probe`); this only copies them out. See `docs/observability.md`.

use std::sync::Arc;

use ferroloop_core::metrics::HISTOGRAM_BOUNDS_NS;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::event_loop::Loop;
use crate::shared::LoopShared;

/// The `LoopShared` of a ferroloop loop object.
pub fn shared_of(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<LoopShared>> {
    Ok(Arc::clone(&event_loop.cast::<Loop>()?.get().shared))
}

/// `_core._metrics(loop)`: a dict of the loop's counters (wrapped by `ferroloop._metrics`).
#[pyfunction]
fn _metrics<'py>(py: Python<'py>, event_loop: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let snap = shared_of(event_loop)?.probe.snapshot();
    let dict = PyDict::new(py);
    dict.set_item("iterations", snap.iterations)?;
    dict.set_item("callbacks", snap.callbacks)?;
    dict.set_item("max_ready", snap.max_ready)?;
    dict.set_item("run_time", snap.run_time)?;
    dict.set_item("poll_time", snap.poll_time)?;
    dict.set_item("timer_lag", snap.timer_lag)?;
    dict.set_item("timers_due", snap.timers_due)?;
    dict.set_item("running", snap.running)?;
    dict.set_item("callback_timing", snap.timing)?;
    dict.set_item("histogram", snap.histogram.to_vec())?;
    dict.set_item("watchdog_reports", snap.watchdog_reports)?;
    Ok(dict)
}

/// `_core._histogram_bounds()`: the buckets' upper bounds, in seconds.
#[pyfunction]
fn _histogram_bounds() -> Vec<f64> {
    HISTOGRAM_BOUNDS_NS
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .collect()
}

/// `_core._set_callback_timing(loop, enabled)`: time every callback (the histogram).
#[pyfunction]
fn _set_callback_timing(event_loop: &Bound<'_, PyAny>, enabled: bool) -> PyResult<()> {
    shared_of(event_loop)?.probe.set_timing(enabled);
    Ok(())
}

/// `_core._reset_metrics(loop)`.
#[pyfunction]
fn _reset_metrics(event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
    shared_of(event_loop)?.probe.reset();
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_metrics, m)?)?;
    m.add_function(wrap_pyfunction!(_histogram_bounds, m)?)?;
    m.add_function(wrap_pyfunction!(_set_callback_timing, m)?)?;
    m.add_function(wrap_pyfunction!(_reset_metrics, m)?)?;
    Ok(())
}
