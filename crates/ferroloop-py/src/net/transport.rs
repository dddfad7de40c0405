//! What the native parts of socket and datagram transports share: the transport and its
//! `__dict__` as a native callback holds them, attribute lookups in that dict, asyncio's own
//! methods looked up once, and asyncio's `_fatal_error`.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use pyo3::{IntoPyObjectExt, PyTraverseError};

use crate::ffi::Slots;

/// `asyncio.selector_events.<class_name>.<name>`, looked up once.
pub(crate) fn asyncio_method<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    class_name: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    asyncio_class_method(py, cell, "asyncio.selector_events", class_name, name)
}

/// `<module>.<class_name>.<name>`, looked up once.
pub(crate) fn asyncio_class_method<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    class_name: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import(module)?
                .getattr(class_name)?
                .getattr(name)?
                .unbind(),
        )
    })
    .map(|f| f.bind(py))
}

/// asyncio's `transport._fatal_error(exc, message)`.
pub(crate) fn fatal_error(
    transport: &Bound<'_, PyAny>,
    error: PyErr,
    message: &Bound<'_, PyString>,
) -> PyResult<()> {
    let py = transport.py();
    transport.call_method1(intern!(py, "_fatal_error"), (error.into_value(py), message))?;
    Ok(())
}

pub(crate) fn is_exit(error: &PyErr, py: Python<'_>) -> bool {
    error.is_instance_of::<PyKeyboardInterrupt>(py) || error.is_instance_of::<PySystemExit>(py)
}

/// Where a native callback reads a transport's attributes: its `__dict__` for asyncio's own
/// classes and ferroloop's subclasses of them (a generic attribute lookup walks the
/// transport's eight base classes first), falling back to a plain lookup for what is not there
/// (class attributes such as `max_size`); `None` for ferroloop's slotted stream transport
/// (`ferroloop._stream_transport`), whose attributes are slots, read with a plain lookup.
pub(crate) type Attributes<'py> = Option<Bound<'py, PyDict>>;

/// A native callback's transport and its [`Attributes`]. Both are dropped by the cyclic GC's
/// `__clear__`: the transport holds the callback.
pub(crate) struct TransportRef {
    transport: Option<Py<PyAny>>,
    attributes: Option<Py<PyDict>>,
}

impl TransportRef {
    pub(crate) fn new(transport: Py<PyAny>, attributes: Option<Py<PyDict>>) -> Self {
        TransportRef {
            transport: Some(transport),
            attributes,
        }
    }

    /// The transport and its attributes, unless cleared.
    pub(crate) fn bind<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<(Bound<'py, PyAny>, Attributes<'py>)> {
        let transport = self.transport.as_ref()?.bind(py).clone();
        let attributes = self.attributes.as_ref().map(|a| a.bind(py).clone());
        Some((transport, attributes))
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.attributes)
    }

    pub(crate) fn clear(&mut self) {
        self.transport = None;
        self.attributes = None;
    }
}

/// `transport.<name>` for a literal name, through [`attr`].
macro_rules! get {
    ($py:expr, $transport:expr, $attributes:expr, $name:literal) => {
        $crate::net::transport::attr(&$transport, &$attributes, pyo3::intern!($py, $name))
    };
}
pub(crate) use get;

/// `transport.<name> = value` for a literal name, through [`set_attr`].
macro_rules! set {
    ($py:expr, $transport:expr, $attributes:expr, $name:literal, $value:expr) => {
        $crate::net::transport::set_attr(
            &$transport,
            &$attributes,
            pyo3::intern!($py, $name),
            $value,
        )
    };
}
pub(crate) use set;

/// The slots of ferroloop's slotted stream transport class, set when the class is installed
/// (`methods.rs`).
pub(crate) static SLOTS: PyOnceLock<Slots> = PyOnceLock::new();

/// `transport.<name>`, looked up in its `__dict__` first when it has one, else in its slots at
/// their offsets when it is one of the slotted class's ([`Slots`]).
pub(crate) fn attr<'py>(
    transport: &Bound<'py, PyAny>,
    attributes: &Attributes<'py>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    match attributes {
        Some(attributes) => dict_attr(transport, attributes, name),
        None => match SLOTS
            .get(transport.py())
            .and_then(|slots| slots.get(transport, name))
        {
            Some(value) => Ok(value),
            None => transport.getattr(name),
        },
    }
}

/// `object.<name>`, looked up in its `__dict__` (`attributes`) first.
pub(crate) fn dict_attr<'py>(
    object: &Bound<'py, PyAny>,
    attributes: &Bound<'py, PyDict>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    match attributes.get_item(name)? {
        Some(value) => Ok(value),
        None => object.getattr(name),
    }
}

/// `transport.<name> = value`: into its `__dict__` when it has one, else into the slot at its
/// offset (the slotted class), else a plain `setattr`.
pub(crate) fn set_attr<'py>(
    transport: &Bound<'py, PyAny>,
    attributes: &Attributes<'py>,
    name: &Bound<'py, PyString>,
    value: impl IntoPyObject<'py>,
) -> PyResult<()> {
    match attributes {
        Some(attributes) => attributes.set_item(name, value),
        None => {
            let value = value.into_bound_py_any(transport.py())?;
            if SLOTS
                .get(transport.py())
                .is_some_and(|slots| slots.set(transport, name, &value))
            {
                return Ok(());
            }
            transport.setattr(name, value)
        }
    }
}
