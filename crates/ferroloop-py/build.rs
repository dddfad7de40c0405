//! Build script of the bindings: exposes pyo3's interpreter cfgs (`Py_3_12`,
//! `Py_GIL_DISABLED`, ...) to this crate, so that `lib.rs` can refuse a free-threaded CPython
//! at build time (see `docs/cpython-contract.md`).

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
}
