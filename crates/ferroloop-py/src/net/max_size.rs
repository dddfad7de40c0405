//! `max_size` on ferroloop's slotted transports: asyncio's class attribute (256 KiB, the most
//! one read asks for), which an instance may override as on asyncio's transport.
//!
//! asyncio reads `self.max_size` on every read. On a plain attribute that is a generic lookup
//! (the class's, then the instance's `__dict__`), some 200 instructions of a read that
//! otherwise costs a few hundred. The slotted `_SelectorTransport` (`_stream_transport.py`,
//! and the datagram class built on it) has a [`MaxSize`] here instead: a data descriptor that
//! reads asyncio's value, or the instance's own once one was set. Setting or deleting
//! `transport.max_size` goes through it into the instance's `__dict__`, as on asyncio's class,
//! and marks the process: from then on every read is the generic one. Until then a native
//! read takes the value from the descriptor (one type-cache lookup shows the class still has
//! it), without looking at the instance.
//!
//! What differs (docs/deviations.md): a value written into `transport.__dict__` directly,
//! rather than set as an attribute, is not seen while no transport has had `max_size` set.

use std::sync::atomic::{AtomicBool, Ordering};

use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::ffi::{instance_dict, type_lookup};

/// Set once any transport's `max_size` was set or deleted through [`MaxSize`].
static OVERRIDDEN: AtomicBool = AtomicBool::new(false);

/// The slotted transports' `max_size` (see the module docs).
#[pyclass(module = "ferroloop._core", name = "_MaxSize", frozen)]
pub struct MaxSize {
    /// asyncio's class attribute.
    default: Py<PyAny>,
    /// The same, when it is an int that fits.
    size: Option<isize>,
}

#[pymethods]
impl MaxSize {
    #[new]
    fn new(default: Bound<'_, PyAny>) -> Self {
        let size = default.extract::<isize>().ok();
        MaxSize {
            default: default.unbind(),
            size,
        }
    }

    fn __get__<'py>(
        &self,
        py: Python<'py>,
        obj: Option<Bound<'py, PyAny>>,
        _owner: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match obj {
            Some(obj) if !obj.is_none() => {
                if OVERRIDDEN.load(Ordering::Relaxed) {
                    if let Some(own) = own_attributes(&obj)?.get_item(intern!(py, "max_size"))? {
                        return Ok(own);
                    }
                }
                Ok(self.default.bind(py).clone())
            }
            // `type(transport).max_size`: asyncio's class attribute.
            _ => Ok(self.default.clone_ref(py).into_bound(py)),
        }
    }

    fn __set__(&self, obj: &Bound<'_, PyAny>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        OVERRIDDEN.store(true, Ordering::Relaxed);
        own_attributes(obj)?.set_item(intern!(obj.py(), "max_size"), value)
    }

    /// `del transport.max_size`: the instance's own value goes, and reads give asyncio's
    /// again; without one, the `AttributeError` a plain attribute raises.
    fn __delete__(&self, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = obj.py();
        OVERRIDDEN.store(true, Ordering::Relaxed);
        let attributes = own_attributes(obj)?;
        if attributes.contains(intern!(py, "max_size"))? {
            return attributes.del_item(intern!(py, "max_size"));
        }
        Err(PyAttributeError::new_err(format!(
            "'{}' object has no attribute 'max_size'",
            obj.get_type().name()?
        )))
    }
}

/// The instance's `__dict__` (made if it has none yet).
fn own_attributes<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    instance_dict(obj).ok_or_else(|| {
        PyAttributeError::new_err("this transport has no __dict__ for its own max_size")
    })
}

/// `transport.max_size` as an int, without the generic lookup, when it is the [`MaxSize`] of
/// the transport's class and no transport ever had its own; `None` when the caller must look
/// it up.
#[inline]
pub(crate) fn known(transport: &Bound<'_, PyAny>) -> Option<isize> {
    if OVERRIDDEN.load(Ordering::Relaxed) {
        return None;
    }
    let py = transport.py();
    let found = type_lookup(&transport.get_type(), intern!(py, "max_size"))?;
    found.cast::<MaxSize>().ok()?.get().size
}
