//! What the native parts of socket and datagram transports share: the transport and its
//! `__dict__` as a native callback holds them, attribute lookups in that dict, asyncio's own
//! methods looked up once, and asyncio's `_fatal_error`.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicIsize, Ordering};

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString};
use pyo3::{IntoPyObjectExt, PyTraverseError};

use crate::ffi::{while_handling, Slots};

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
    let exc = error.into_value(py).into_bound(py).into_any();
    while_handling(&exc, || {
        transport.call_method1(intern!(py, "_fatal_error"), (&exc, message))
    })?;
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
///
/// The callbacks are `frozen` pyclasses (no borrow flag: an idle connection's reader is 48
/// bytes, a pymalloc size class below the 56 a flag made it), so the one thing that changes,
/// the cleared reference, lives in an `UnsafeCell`.
pub(crate) struct TransportRef {
    held: UnsafeCell<Option<Held>>,
}

/// The transport and, for asyncio's own classes, its `__dict__`.
type Held = (Py<PyAny>, Option<Py<PyDict>>);

// SAFETY: the cell is read and written only with the GIL held: `bind` and `clear` take a
// `Python` token, and `traverse` runs inside the cyclic GC, which holds it. None of them lets
// a reference into the cell outlive the call or calls into Python while holding one (`clear`
// takes the value out first and drops it after), so no access overlaps another. As for
// `GilCell`, the module is declared `gil_used = true`.
unsafe impl Sync for TransportRef {}

impl TransportRef {
    pub(crate) fn new(transport: Py<PyAny>, attributes: Option<Py<PyDict>>) -> Self {
        TransportRef {
            held: UnsafeCell::new(Some((transport, attributes))),
        }
    }

    /// The transport and its attributes, unless cleared.
    pub(crate) fn bind<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<(Bound<'py, PyAny>, Attributes<'py>)> {
        // SAFETY: see `impl Sync`; the clones below run no Python code.
        let held = unsafe { &*self.held.get() };
        let (transport, attributes) = held.as_ref()?;
        let attributes = attributes.as_ref().map(|a| a.bind(py).clone());
        Some((transport.bind(py).clone(), attributes))
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: see `impl Sync`; visiting runs no Python code.
        if let Some((transport, attributes)) = unsafe { &*self.held.get() } {
            visit.call(transport)?;
            visit.call(attributes)?;
        }
        Ok(())
    }

    pub(crate) fn clear(&self, _py: Python<'_>) {
        // SAFETY: see `impl Sync`. Taken out before it is dropped: dropping can run Python
        // code (a `__del__`) that reaches this reference again.
        let held = unsafe { (*self.held.get()).take() };
        drop(held);
    }
}

/// `transport.<name>` for a literal name, through [`attr_at`]: each use keeps the slot's
/// offset for that name, and interns the name only when the slot does not answer. The slots
/// are the slotted stream transport's ([`SLOTS`]), or those of the table given with `in`.
macro_rules! get {
    ($py:expr, $transport:expr, $attributes:expr, $name:literal) => {
        $crate::net::transport::get!(in $crate::net::transport::SLOTS;
            $py, $transport, $attributes, $name)
    };
    (in $table:path; $py:expr, $transport:expr, $attributes:expr, $name:literal) => {{
        static OFFSET: $crate::net::transport::SlotOffset =
            $crate::net::transport::SlotOffset::new();
        $crate::net::transport::attr_at(
            &$transport,
            &$attributes,
            || pyo3::intern!($py, $name),
            &OFFSET,
            &$table,
        )
    }};
}
pub(crate) use get;

/// `transport.<name> = value` for a literal name, through [`set_attr_at`] (slots as for
/// [`get!`]).
macro_rules! set {
    ($py:expr, $transport:expr, $attributes:expr, $name:literal, $value:expr) => {
        $crate::net::transport::set!(in $crate::net::transport::SLOTS;
            $py, $transport, $attributes, $name, $value)
    };
    (in $table:path; $py:expr, $transport:expr, $attributes:expr, $name:literal, $value:expr) => {{
        static OFFSET: $crate::net::transport::SlotOffset =
            $crate::net::transport::SlotOffset::new();
        $crate::net::transport::set_attr_at(
            &$transport,
            &$attributes,
            || pyo3::intern!($py, $name),
            $value,
            &OFFSET,
            &$table,
        )
    }};
}
pub(crate) use set;

/// The offset of one name's slot in a slotted class ([`SLOTS`], [`DATAGRAM_SLOTS`]), found at
/// its first use:
/// a `static` per use of [`get!`] and [`set!`], so that reading a slot is a type check and a
/// load, without the name's lookup in [`Slots`]' table.
pub(crate) struct SlotOffset(AtomicIsize);

impl SlotOffset {
    /// Not looked up yet.
    const UNKNOWN: isize = isize::MIN;
    /// The name is not one of the slots.
    const NONE: isize = -1;

    #[allow(clippy::new_without_default)] // for statics
    pub(crate) const fn new() -> Self {
        SlotOffset(AtomicIsize::new(Self::UNKNOWN))
    }

    /// The offset, once known to be a slot's.
    #[inline(always)]
    fn known(&self) -> Option<isize> {
        let offset = self.0.load(Ordering::Relaxed);
        (offset >= 0).then_some(offset)
    }

    fn get(&self, slots: &Slots, name: &Bound<'_, PyString>) -> Option<isize> {
        match self.0.load(Ordering::Relaxed) {
            Self::UNKNOWN => {
                let offset = slots.offset_of(name);
                self.0
                    .store(offset.unwrap_or(Self::NONE), Ordering::Relaxed);
                offset
            }
            Self::NONE => None,
            offset => Some(offset),
        }
    }
}

/// The offset of `name`'s slot when `transport` is an instance of the slotted class and that
/// offset is known already: the fast path of [`attr_at`] and [`set_attr_at`], inlined at each
/// use.
#[inline(always)]
fn known_slot(
    transport: &Bound<'_, PyAny>,
    attributes: &Attributes<'_>,
    offset: &SlotOffset,
    table: &PyOnceLock<Slots>,
) -> Option<isize> {
    if attributes.is_some() {
        return None;
    }
    let offset = offset.known()?;
    table
        .get(transport.py())
        .filter(|slots| slots.holds(transport))
        .map(|_| offset)
}

/// The slots class's table and `name`'s offset in it, when `transport` is an instance of it.
fn slot_offset(
    transport: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    offset: &SlotOffset,
    table: &PyOnceLock<Slots>,
) -> Option<isize> {
    let slots = table.get(transport.py())?;
    if !slots.holds(transport) {
        return None;
    }
    offset.get(slots, name)
}

/// `transport.<name>`, looked up in its `__dict__` first when it has one, else in its slot at
/// `offset` when it is an instance of the slotted class ([`Slots`]), else a plain lookup.
/// `name` is only made (interned) when the slot's offset is not known yet or does not apply.
#[inline(always)]
pub(crate) fn attr_at<'py, 'n>(
    transport: &Bound<'py, PyAny>,
    attributes: &Attributes<'py>,
    name: impl FnOnce() -> &'n Bound<'py, PyString>,
    offset: &SlotOffset,
    table: &PyOnceLock<Slots>,
) -> PyResult<Bound<'py, PyAny>>
where
    'py: 'n,
{
    if let Some(known) = known_slot(transport, attributes, offset, table) {
        // SAFETY: `transport` is an instance of the slotted class, `known` one of its slots.
        if let Some(value) = unsafe { Slots::read_at(transport, known) } {
            return Ok(value);
        }
    }
    attr_at_slow(transport, attributes, name(), offset, table)
}

#[cold]
#[inline(never)]
fn attr_at_slow<'py>(
    transport: &Bound<'py, PyAny>,
    attributes: &Attributes<'py>,
    name: &Bound<'py, PyString>,
    offset: &SlotOffset,
    table: &PyOnceLock<Slots>,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(attributes) = attributes {
        return dict_attr(transport, attributes, name);
    }
    if let Some(offset) = slot_offset(transport, name, offset, table) {
        // SAFETY: `transport` is an instance of the slotted class, `offset` one of its slots.
        if let Some(value) = unsafe { Slots::read_at(transport, offset) } {
            return Ok(value);
        }
    }
    transport.getattr(name)
}

/// `transport.<name> = value`: into its `__dict__` when it has one, else into its slot at
/// `offset` (the slotted class), else a plain `setattr`.
#[inline(always)]
pub(crate) fn set_attr_at<'py, 'n>(
    transport: &Bound<'py, PyAny>,
    attributes: &Attributes<'py>,
    name: impl FnOnce() -> &'n Bound<'py, PyString>,
    value: impl IntoPyObject<'py>,
    offset: &SlotOffset,
    table: &PyOnceLock<Slots>,
) -> PyResult<()>
where
    'py: 'n,
{
    let value = value.into_bound_py_any(transport.py())?;
    if let Some(known) = known_slot(transport, attributes, offset, table) {
        // SAFETY: as in `attr_at`.
        unsafe { Slots::write_at(transport, known, &value) };
        return Ok(());
    }
    set_attr_at_slow(transport, attributes, name(), value, offset, table)
}

#[cold]
#[inline(never)]
fn set_attr_at_slow<'py>(
    transport: &Bound<'py, PyAny>,
    attributes: &Attributes<'py>,
    name: &Bound<'py, PyString>,
    value: Bound<'py, PyAny>,
    offset: &SlotOffset,
    table: &PyOnceLock<Slots>,
) -> PyResult<()> {
    if let Some(attributes) = attributes {
        return attributes.set_item(name, value);
    }
    match slot_offset(transport, name, offset, table) {
        // SAFETY: as in `attr_at`.
        Some(offset) => unsafe { Slots::write_at(transport, offset, &value) },
        None => transport.setattr(name, value)?,
    }
    Ok(())
}

/// The slots of ferroloop's slotted stream transport class, set when the class is installed
/// (`methods.rs`).
pub(crate) static SLOTS: PyOnceLock<Slots> = PyOnceLock::new();

/// The slots of ferroloop's slotted datagram transport class
/// (`ferroloop._datagram_transport`), set when the class is installed (`methods.rs`).
pub(crate) static DATAGRAM_SLOTS: PyOnceLock<Slots> = PyOnceLock::new();

/// `object.<name>` for an attribute that no class of `object` makes a descriptor of (state
/// that `__init__` sets): read from its `__dict__`, without the lookup through its classes
/// first; a plain lookup when the dict does not have it. Only for objects whose `__dict__`
/// exists anyway (the loop): on 3.11+ asking a plain Python object for its `__dict__` turns
/// its inline attribute values into a dict, which slows every later access.
pub(crate) fn instance_attr<'py>(
    object: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    match crate::ffi::instance_attribute(object, name)? {
        Some(value) => Ok(value),
        None => object.getattr(name),
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
        // Not in the instance dict: a plain class attribute (`max_size`) is what the generic
        // lookup would give, without its second look at the dict.
        None => match crate::ffi::plain_class_attribute(object, name) {
            Some(value) => Ok(value),
            None => object.getattr(name),
        },
    }
}
