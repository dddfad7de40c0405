//! What the tests of `docs/cpython-contract.md` observe: the layout facts ferroloop probes at
//! run time and its refcount-based shortcuts, exposed as private functions of `_core` so that
//! `tests/test_cpython_contract.py` can check them on every supported CPython.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::ffi;

/// `_core._contract_probes()`: `{"context_offsets": (thread_state_context, context_vars) or
/// None, "header_size": ...}`; `None` means the probe failed, and ferroloop then never
/// shares context snapshots (correct, only slower).
#[pyfunction]
fn _contract_probes(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let probes = PyDict::new(py);
    probes.set_item("context_offsets", ffi::context_offsets(py))?;
    probes.set_item("header_size", ffi::OBJECT_HEADER_SIZE)?;
    Ok(probes)
}

/// `_core._sole_owner(obj)`: what the handle pool's reuse test says of `obj` (pass a
/// temporary: the argument itself is a borrowed reference).
#[pyfunction]
fn _sole_owner(obj: &Bound<'_, PyAny>) -> bool {
    ffi::sole_owner(obj)
}

/// `_core._weaklist_offset(obj)`: `type(obj).tp_weaklistoffset`.
#[pyfunction]
fn _weaklist_offset(obj: &Bound<'_, PyAny>) -> isize {
    ffi::weaklist_offset(obj)
}

/// `_core._context_key_matches(ctx)`: whether the key read through the probed thread-state
/// offset while `ctx` is entered equals the key read from `ctx` itself (`None` if the
/// offsets are unknown). Call it from inside `ctx.run`.
#[pyfunction]
fn _context_key_matches(py: Python<'_>, context: Py<PyAny>) -> Option<bool> {
    let current = ffi::current_context_key(py)?;
    Some(ffi::context_key(py, &context)? == current)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_contract_probes, m)?)?;
    m.add_function(wrap_pyfunction!(_sole_owner, m)?)?;
    m.add_function(wrap_pyfunction!(_weaklist_offset, m)?)?;
    m.add_function(wrap_pyfunction!(_context_key_matches, m)?)?;
    m.add_function(wrap_pyfunction!(crate::python_hooks::_register_hooks, m)?)?;
    m.add_function(wrap_pyfunction!(
        crate::python_hooks::_register_watchdog_report,
        m
    )?)?;
    Ok(())
}
