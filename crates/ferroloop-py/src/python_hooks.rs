//! The Python side of cold paths: asyncio's types and the helpers in `ferroloop._loop`.
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

/// The `ferroloop._hooks` module.
pub fn hooks(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    HOOKS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("ferroloop._hooks")?.into_any().unbind())
        })
        .map(|m| m.bind(py))
}

/// Call `ferroloop._hooks.<name>(*args)`.
pub fn call_hook<'py, A>(py: Python<'py>, name: &str, args: A) -> PyResult<Bound<'py, PyAny>>
where
    A: pyo3::call::PyCallArgs<'py>,
{
    hooks(py)?.getattr(name)?.call1(args)
}
