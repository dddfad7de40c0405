//! The Python side of cold paths: asyncio's types, and the helpers of `ferroloop._hooks`
//! and `ferroloop._watchdog`, which those modules register here when they are imported
//! (`_core._register_hooks`, `_core._register_watchdog_report`): the native module never
//! looks a ferroloop module up by name.
//!
//! Hot paths never come here. Error reporting, debug-mode checks, reprs and logging are done
//! by small Python functions so that their output is byte-for-byte asyncio's.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

static ASYNCIO_HANDLE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ASYNCIO_TIMER_HANDLE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ASYNCIO_FUTURE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ASYNCIO_TASK: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static ASYNCIO_BASE_CREATE_TASK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static ASYNCIO_BASE_CREATE_FUTURE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static HOOKS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub fn asyncio_handle(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    ASYNCIO_HANDLE.import(py, "asyncio.events", "Handle")
}

pub fn asyncio_timer_handle(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    ASYNCIO_TIMER_HANDLE.import(py, "asyncio.events", "TimerHandle")
}

/// `asyncio.Future` (the C implementation when available, as asyncio's own loop uses).
pub fn asyncio_future(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    ASYNCIO_FUTURE.import(py, "asyncio.futures", "Future")
}

/// `asyncio.Task`, looked up in `asyncio.tasks` as `BaseEventLoop.create_task` does.
pub fn asyncio_task(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    ASYNCIO_TASK.import(py, "asyncio.tasks", "Task")
}

/// `asyncio.base_events.BaseEventLoop.create_future`, the running version's own.
pub fn asyncio_base_create_future(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    ASYNCIO_BASE_CREATE_FUTURE
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("asyncio.base_events")?
                    .getattr("BaseEventLoop")?
                    .getattr("create_future")?
                    .unbind(),
            )
        })
        .map(|f| f.bind(py))
}

/// `asyncio.base_events.BaseEventLoop.create_task`, the running version's own.
pub fn asyncio_base_create_task(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    ASYNCIO_BASE_CREATE_TASK
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(
                py.import("asyncio.base_events")?
                    .getattr("BaseEventLoop")?
                    .getattr("create_task")?
                    .unbind(),
            )
        })
        .map(|f| f.bind(py))
}

static WATCHDOG_REPORT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn registered<'py>(
    py: Python<'py>,
    cell: &'py PyOnceLock<Py<PyAny>>,
    what: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get(py).map(|obj| obj.bind(py)).ok_or_else(|| {
        pyo3::exceptions::PyRuntimeError::new_err(format!(
            "ferroloop._core: {what} was not registered (import ferroloop, not ferroloop._core \
             alone)"
        ))
    })
}

fn register(py: Python<'_>, cell: &PyOnceLock<Py<PyAny>>, obj: Bound<'_, PyAny>) {
    // Registered once per process (a module imported again registers the same functions).
    let _ = cell.set(py, obj.unbind());
}

/// `ferroloop._hooks` registers itself (the object whose functions [`call_hook`] calls).
#[pyfunction]
pub fn _register_hooks(hooks: Bound<'_, PyAny>) {
    register(hooks.py(), &HOOKS, hooks);
}

/// `ferroloop._watchdog` registers its `_report` function.
#[pyfunction]
pub fn _register_watchdog_report(report: Bound<'_, PyAny>) {
    register(report.py(), &WATCHDOG_REPORT, report);
}

/// The registered hooks object (`ferroloop._hooks`).
pub fn hooks(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    registered(py, &HOOKS, "ferroloop._hooks")
}

/// The registered watchdog report function (`ferroloop._watchdog._report`).
pub fn watchdog_report(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    registered(py, &WATCHDOG_REPORT, "ferroloop._watchdog._report")
}

/// Call `ferroloop._hooks.<name>(*args)`.
pub fn call_hook<'py, A>(py: Python<'py>, name: &str, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    hooks(py)?.getattr(name)?.call1(args)
}
