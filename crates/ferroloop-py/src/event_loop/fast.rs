//! The hottest loop methods as plain `METH_FASTCALL | METH_KEYWORDS` C methods.
//!
//! `call_soon`, `call_soon_threadsafe`, `call_later` and `call_at` are called once per
//! callback, often from C (asyncio's `Future` schedules its done callbacks through
//! `loop.call_soon(cb, fut, context=ctx)`). pyo3's generic argument parsing costs more than the
//! rest of `call_soon` together; these entries parse their `(first, callback, *args,
//! context=None)` signature by hand. A panic becomes a Python exception as in any pyo3 method.
//! Called from a callback of the running loop (the common case) they skip pyo3's per-call
//! bookkeeping, which the loop's own `_run_until_stopped` already did for the thread;
//! anywhere else they go through pyo3's trampoline (see [`enter`]).
//!
//! The descriptors are added to `_core.Loop` when the module is initialised
//! ([`install_fast_methods`]); the methods behave exactly as the Python signatures of asyncio's
//! `BaseEventLoop` (positional-or-keyword parameters, keyword-only `context`, the same
//! `TypeError`s for missing, duplicate and unknown arguments).

use std::ffi::{c_int, CStr};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::impl_::trampoline::get_trampoline_function;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

use super::{delay_to_when, Loop};
use crate::handles::Args;

/// What a `(first, callback, *args, context=None)` call passed.
struct CallArgs<'py> {
    /// `delay` / `when` (methods with a leading parameter only).
    first: Option<Bound<'py, PyAny>>,
    callback: Bound<'py, PyAny>,
    args: Option<Args>,
    context: Option<Bound<'py, PyAny>>,
}

/// The Python-level description of one method: its name (for messages) and its leading
/// parameter, if any.
struct Signature {
    qualname: &'static str,
    first: Option<&'static str>,
}

const CALL_SOON: Signature = Signature {
    qualname: "BaseEventLoop.call_soon",
    first: None,
};
const CALL_SOON_THREADSAFE: Signature = Signature {
    qualname: "BaseEventLoop.call_soon_threadsafe",
    first: None,
};
const CALL_LATER: Signature = Signature {
    qualname: "BaseEventLoop.call_later",
    first: Some("delay"),
};
const CALL_AT: Signature = Signature {
    qualname: "BaseEventLoop.call_at",
    first: Some("when"),
};

/// Is the keyword `name` the parameter `wanted`? Keyword names are nearly always the interned
/// strings compiled into the caller's code, so a pointer comparison settles it.
#[inline]
fn keyword_is(name: &Bound<'_, PyAny>, wanted: &Bound<'_, PyString>) -> bool {
    name.as_ptr() == wanted.as_ptr() || name.eq(wanted).unwrap_or(false)
}

/// A keyword-names tuple known to be `("context",)`. asyncio's C `Future` passes the same
/// tuple, of a string that is not interned, every time it schedules a done callback; knowing
/// it saves a string comparison per call. Holds a strong reference, taken once and never
/// released, so the address cannot be reused by another object.
static CONTEXT_KWNAMES: AtomicPtr<ffi::PyObject> = AtomicPtr::new(ptr::null_mut());

fn remember_context_kwnames(names: &Bound<'_, PyTuple>) {
    let raw = names.as_ptr();
    if CONTEXT_KWNAMES
        .compare_exchange(ptr::null_mut(), raw, Ordering::Relaxed, Ordering::Relaxed)
        .is_ok()
    {
        // The reference the static holds (see above).
        std::mem::forget(names.clone());
    }
}

/// Parse a vectorcall argument array against `sig`.
///
/// # Safety
/// `args` points to `nargs` positional arguments followed by one value per name in
/// `kwnames` (a tuple of str, or NULL), all borrowed for the duration of the call.
#[inline(always)]
unsafe fn parse<'py>(
    py: Python<'py>,
    sig: &Signature,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<CallArgs<'py>> {
    let leading = usize::from(sig.first.is_some());
    if nargs == leading as ffi::Py_ssize_t + 1 {
        // SAFETY: the caller guarantees `args[..nargs + len(kwnames)]` are live borrowed
        // objects.
        let arg = |i: usize| unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) };
        let context = if kwnames.is_null() {
            // The common call: `call_soon(callback)`, `call_later(delay, callback)`.
            Some(None)
        } else if kwnames == CONTEXT_KWNAMES.load(Ordering::Relaxed) {
            // asyncio's C `Future` and `Task`: `call_soon(callback, context=ctx)`.
            Some(Some(arg(leading + 1)))
        } else {
            None
        };
        if let Some(context) = context {
            return Ok(CallArgs {
                first: (leading == 1).then(|| arg(0)),
                callback: arg(leading),
                args: None,
                context,
            });
        }
    }
    // SAFETY: as above.
    unsafe { parse_general(py, sig, args, nargs, kwnames) }
}

/// [`parse`] for every other call: keywords, extra positional arguments, errors.
///
/// # Safety
/// As for [`parse`].
#[inline(never)]
unsafe fn parse_general<'py>(
    py: Python<'py>,
    sig: &Signature,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<CallArgs<'py>> {
    let nargs = nargs.max(0) as usize;
    // SAFETY: the caller guarantees `args[..nargs + len(kwnames)]` are live borrowed objects.
    let arg = |i: usize| unsafe { Bound::from_borrowed_ptr(py, *args.add(i)) };
    let leading = usize::from(sig.first.is_some());
    let mut first = (leading == 1 && nargs >= 1).then(|| arg(0));
    let mut callback = (nargs > leading).then(|| arg(leading));
    let mut context = None;
    if !kwnames.is_null() && kwnames == CONTEXT_KWNAMES.load(Ordering::Relaxed) {
        context = Some(arg(nargs));
    } else if !kwnames.is_null() {
        let context_name = pyo3::intern!(py, "context");
        // SAFETY: kwnames is a live tuple (vectorcall protocol).
        let names =
            unsafe { Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>() };
        for (index, name) in names.iter().enumerate() {
            let value = arg(nargs + index);
            let slot = if keyword_is(&name, context_name) {
                &mut context
            } else if keyword_is(&name, pyo3::intern!(py, "callback")) {
                &mut callback
            } else if sig.first.is_some_and(|first_name| {
                name.cast::<PyString>()
                    .is_ok_and(|n| n.to_str().is_ok_and(|n| n == first_name))
            }) {
                &mut first
            } else {
                return Err(PyTypeError::new_err(format!(
                    "{}() got an unexpected keyword argument {}",
                    sig.qualname,
                    name.repr()?
                )));
            };
            if slot.is_some() {
                return Err(PyTypeError::new_err(format!(
                    "{}() got multiple values for argument {}",
                    sig.qualname,
                    name.repr()?
                )));
            }
            *slot = Some(value);
        }
        if names.len() == 1
            && context.is_some()
            && context_name.as_ptr() != names.get_borrowed_item(0)?.as_ptr()
        {
            remember_context_kwnames(&names);
        }
    }
    let missing = |what: &str| {
        PyTypeError::new_err(format!(
            "{}() missing 1 required positional argument: '{what}'",
            sig.qualname
        ))
    };
    if let Some(first_name) = sig.first {
        if first.is_none() {
            return Err(missing(first_name));
        }
    }
    let callback = callback.ok_or_else(|| missing("callback"))?;
    let rest = nargs.saturating_sub(leading + 1);
    let args = if rest == 0 {
        None
    } else if rest == 1 {
        Some(Args::One(arg(leading + 1).unbind()))
    } else {
        // SAFETY: PyTuple_New returns a new tuple (or NULL with an exception set); every slot
        // is filled with a new reference before the tuple is used.
        unsafe {
            let tuple = ffi::PyTuple_New(rest as ffi::Py_ssize_t);
            if tuple.is_null() {
                return Err(PyErr::fetch(py));
            }
            for i in 0..rest {
                let item = *args.add(leading + 1 + i);
                ffi::Py_INCREF(item);
                ffi::PyTuple_SET_ITEM(tuple, i as ffi::Py_ssize_t, item);
            }
            Some(Args::Tuple(
                Bound::from_owned_ptr(py, tuple)
                    .cast_into_unchecked::<PyTuple>()
                    .unbind(),
            ))
        }
    };
    Ok(CallArgs {
        first,
        callback,
        args,
        context,
    })
}

/// The loop a method descriptor of `_core.Loop` was called on.
///
/// # Safety
/// `slf` is a live instance of `_core.Loop` (or a subclass): method descriptors check the
/// type of `self` before they call their C function.
#[inline]
unsafe fn this<'a, 'py>(py: Python<'py>, slf: &'a *mut ffi::PyObject) -> Borrowed<'a, 'py, Loop> {
    // SAFETY: see above.
    unsafe { Borrowed::from_ptr(py, *slf).cast_unchecked::<Loop>() }
}

#[inline(always)]
unsafe fn call_soon(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: called by the method descriptor with a `_core.Loop` and vectorcall arguments.
    let (slf, call) = unsafe { (this(py, &slf), parse(py, &CALL_SOON, args, nargs, kwnames)?) };
    let handle = Loop::schedule_soon(&slf, call.callback, call.args, call.context, "call_soon")?;
    Ok(handle.into_ptr())
}

#[inline(always)]
unsafe fn call_soon_threadsafe(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: as in `call_soon`.
    let (slf, call) = unsafe {
        (
            this(py, &slf),
            parse(py, &CALL_SOON_THREADSAFE, args, nargs, kwnames)?,
        )
    };
    let handle = Loop::schedule_soon(
        &slf,
        call.callback,
        call.args,
        call.context,
        "call_soon_threadsafe",
    )?;
    slf.get().shared.wake_if_parked();
    Ok(handle.into_ptr())
}

#[inline(always)]
unsafe fn call_later(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: as in `call_soon`.
    let (slf, call) = unsafe {
        (
            this(py, &slf),
            parse(py, &CALL_LATER, args, nargs, kwnames)?,
        )
    };
    let delay = call.first.unwrap_or_else(|| py.None().into_bound(py));
    // asyncio 3.11+ checks; 3.10 fails in `self.time() + delay` (delay_to_when does that).
    if delay.is_none() && py.version_info() >= (3, 11) {
        return Err(PyTypeError::new_err("delay must not be None"));
    }
    let when = delay_to_when(slf.get(), py, &delay)?;
    let handle = Loop::schedule_timer(&slf, when, call.callback, call.args, call.context)?;
    Ok(handle.into_ptr())
}

#[inline(always)]
unsafe fn call_at(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject> {
    // SAFETY: as in `call_soon`.
    let (slf, call) = unsafe { (this(py, &slf), parse(py, &CALL_AT, args, nargs, kwnames)?) };
    let when = call.first.unwrap_or_else(|| py.None().into_bound(py));
    if when.is_none() {
        return Err(PyTypeError::new_err("when cannot be None"));
    }
    let when: f64 = when.extract()?;
    let handle = Loop::schedule_timer(&slf, when, call.callback, call.args, call.context)?;
    Ok(handle.into_ptr())
}

/// `get_debug()`: asyncio's C `Future` calls it for every future it creates. It cannot fail
/// or panic, so it needs no trampoline.
unsafe extern "C" fn get_debug(
    slf: *mut ffi::PyObject,
    _args: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls a method with the thread attached, and with a `_core.Loop` (the
    // descriptor checks the type). Py_True/Py_False are immortal-or-static singletons, returned
    // as new references.
    unsafe {
        let py = Python::assume_attached();
        let value = if this(py, &slf).get().is_debug() {
            ffi::Py_True()
        } else {
            ffi::Py_False()
        };
        ffi::Py_NewRef(value)
    }
}

/// The signature of the bodies of the fast methods.
type Body = unsafe fn(
    Python<'_>,
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> PyResult<*mut ffi::PyObject>;

/// The C entry of a fast method. On the thread that runs the loop, below its
/// `_run_until_stopped` (where callbacks call these methods), that method's pyo3 trampoline
/// counts the thread as attached until it returns, so a `Py` dropped by the body is released
/// at once: the body runs directly, with only the panic guard. Anywhere else (before the loop
/// runs, in another thread) it goes through pyo3's trampoline, which does that bookkeeping
/// (see `docs/decisions/0004`).
///
/// # Safety
/// Called by CPython as a `METH_FASTCALL | METH_KEYWORDS` method of `_core.Loop`.
#[inline(always)]
unsafe fn enter(
    body: Body,
    trampoline: ffi::PyCFunctionFastWithKeywords,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls methods with the thread attached and `slf` a `_core.Loop`.
    unsafe {
        let py = Python::assume_attached();
        let running = this(py, &slf).get().running_tstate.load(Ordering::Relaxed);
        if running.is_null() || running != ffi::PyThreadState_Get() {
            return trampoline(slf, args, nargs, kwnames);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            body(py, slf, args, nargs, kwnames)
        }));
        match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => {
                error.restore(py);
                ptr::null_mut()
            }
            Err(payload) => {
                panic_exception(payload).restore(py);
                ptr::null_mut()
            }
        }
    }
}

/// A Rust panic as the `pyo3_runtime.PanicException` pyo3 raises for it.
#[cold]
fn panic_exception(payload: Box<dyn std::any::Any + Send + 'static>) -> PyErr {
    let message = if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else {
        "panic from Rust code".to_owned()
    };
    pyo3::panic::PanicException::new_err((message,))
}

/// Define the C entry `$entry` of the fast method whose body is `$body` (see [`enter`]).
macro_rules! fast_entry {
    ($entry:ident, $body:ident) => {
        unsafe extern "C" fn $entry(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargs: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls it as a fast method of `_core.Loop` (see `METHODS`).
            unsafe {
                enter(
                    $body,
                    get_trampoline_function!(fastcall_cfunction_with_keywords, $body),
                    slf,
                    args,
                    nargs,
                    kwnames,
                )
            }
        }
    };
}

fast_entry!(call_soon_entry, call_soon);
fast_entry!(call_soon_threadsafe_entry, call_soon_threadsafe);
fast_entry!(call_later_entry, call_later);
fast_entry!(call_at_entry, call_at);

/// A `PyMethodDef` that lives for the whole process (CPython keeps pointers to it).
pub(crate) struct MethodDef(pub(crate) ffi::PyMethodDef);

// SAFETY: the definition is immutable after construction; CPython only reads it, under the GIL.
unsafe impl Sync for MethodDef {}

pub(crate) const fn fastcall_def(
    name: &'static CStr,
    doc: &'static CStr,
    meth: ffi::PyCFunctionFastWithKeywords,
) -> MethodDef {
    MethodDef(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: meth,
        },
        ml_flags: (ffi::METH_FASTCALL | ffi::METH_KEYWORDS) as c_int,
        ml_doc: doc.as_ptr(),
    })
}

static METHODS: [MethodDef; 5] = [
    MethodDef(ffi::PyMethodDef {
        ml_name: c"get_debug".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunction: get_debug,
        },
        ml_flags: ffi::METH_NOARGS as c_int,
        ml_doc: c"get_debug($self)\n--\n\nWhether the loop is in debug mode.".as_ptr(),
    }),
    fastcall_def(
        c"call_soon",
        c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible.",
        call_soon_entry,
    ),
    fastcall_def(
        c"call_soon_threadsafe",
        c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), but thread-safe.",
        call_soon_threadsafe_entry,
    ),
    fastcall_def(
        c"call_later",
        c"call_later($self, delay, callback, *args, context=None)\n--\n\nArrange for a callback to be called at a given time.",
        call_later_entry,
    ),
    fastcall_def(
        c"call_at",
        c"call_at($self, when, callback, *args, context=None)\n--\n\nLike call_later(), but uses an absolute time.",
        call_at_entry,
    ),
];

/// Add the fast methods to `_core.Loop`.
pub(crate) fn install_fast_methods(class: &Bound<'_, PyType>) -> PyResult<()> {
    install_methods(class, &METHODS)
}

/// Add static method definitions to `class` as method descriptors.
pub(crate) fn install_methods(
    class: &Bound<'_, PyType>,
    defs: &'static [MethodDef],
) -> PyResult<()> {
    let py = class.py();
    for def in defs {
        // SAFETY: `def` is a static method definition; PyDescr_NewMethod returns a new
        // reference or NULL with an exception set. The definition outlives the descriptor.
        let descriptor = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyDescr_NewMethod(class.as_type_ptr(), ptr::addr_of!(def.0).cast_mut()),
            )?
        };
        // SAFETY: ml_name is a static NUL-terminated string.
        let name =
            unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyUnicode_FromString(def.0.ml_name))? }
                .cast_into::<PyString>()?;
        class.setattr(name, descriptor)?;
    }
    Ok(())
}
