//! `ferroloop._core`: the native half of ferroloop. See `python/ferroloop/_loop.py` for the
//! half written in Python, and `docs/architecture.md` for how they fit.

// ferroloop relies on the GIL (its `GilCell`s, the refcount shortcuts of `ffi.rs`): a
// free-threaded CPython is refused at build time. `Py_GIL_DISABLED` is pyo3's cfg, exposed to
// this crate by build.rs.
#[cfg(Py_GIL_DISABLED)]
compile_error!(
    "ferroloop does not support free-threaded CPython (a Py_GIL_DISABLED build such as \
     python3.14t): build it for a CPython with the GIL (see docs/cpython-contract.md)"
);

mod contract;
mod errors;
mod event_loop;
mod ffi;
mod gil_cell;
mod handles;
mod metrics;
mod net;
mod python_hooks;
mod shared;
mod watchdog;

use pyo3::prelude::*;

#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::Loop>()?;
    event_loop::install_fast_methods(&m.py().get_type::<event_loop::Loop>())?;
    m.add_class::<net::TransportReader>()?;
    m.add_class::<net::TransportWriter>()?;
    m.add_class::<net::DatagramReader>()?;
    m.add_class::<net::Acceptor>()?;
    m.add_class::<net::Step>()?;
    m.add_class::<net::PendingExtra>()?;
    m.add_class::<net::AcceptedFd>()?;
    m.add_class::<net::SocketAttribute>()?;
    m.add_class::<net::ExtraAttribute>()?;
    m.add_class::<net::MaxSize>()?;
    net::register_native_callbacks(m.py());
    m.add_function(wrap_pyfunction!(net::new_socket_transport, m)?)?;
    m.add_function(wrap_pyfunction!(net::install_stream_methods, m)?)?;
    m.add_function(wrap_pyfunction!(net::install_tls_methods, m)?)?;
    m.add_function(wrap_pyfunction!(net::install_datagram_methods, m)?)?;
    m.add_function(wrap_pyfunction!(net::tls_constants, m)?)?;
    m.add_function(wrap_pyfunction!(net::release_stream_callbacks, m)?)?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    metrics::register(m)?;
    watchdog::register(m)?;
    contract::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // What `python -m ferroloop --info` reports: a debug build is much slower.
    m.add(
        "BUILD_PROFILE",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    Ok(())
}
