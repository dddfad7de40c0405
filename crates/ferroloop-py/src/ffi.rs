//! The leaf of the bindings that calls the CPython C API directly (`pyo3::ffi`): running a
//! callback inside a `contextvars.Context` with vectorcall, copying the current context,
//! checking for pending signals, the buffer protocol, and the layout-based shortcuts
//! (context and thread-state offsets, `sole_owner`). PyO3 has no zero-overhead wrappers for
//! these. It imports nothing from the rest of the crate; the only other modules that use
//! `pyo3::ffi` are the C method tables of `event_loop/fast.rs` and `net/methods.rs`
//! (`scripts/test` checks this). Every internal relied on here is listed, with its checks and
//! the versions verified, in `docs/cpython-contract.md`.

use std::ptr;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

/// A handle's positional arguments. A single argument (the common case: asyncio's futures
/// schedule `callback(fut)`, user code `fut.set_result(x)`) is kept without a tuple.
pub enum Args {
    One(Py<PyAny>),
    Tuple(Py<PyTuple>),
}

impl Args {
    /// The arguments of a `*args` tuple; `None` when it is empty.
    pub fn from_tuple(args: &Bound<'_, PyTuple>) -> Option<Args> {
        match args.len() {
            0 => None,
            1 => args.get_item(0).ok().map(|arg| Args::One(arg.unbind())),
            _ => Some(Args::Tuple(args.clone().unbind())),
        }
    }

    /// Release the references (without pyo3's check for an attached thread).
    #[inline]
    pub fn drop_ref(self, py: Python<'_>) {
        match self {
            Args::One(arg) => arg.drop_ref(py),
            Args::Tuple(args) => args.drop_ref(py),
        }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Args {
        match self {
            Args::One(arg) => Args::One(arg.clone_ref(py)),
            Args::Tuple(args) => Args::Tuple(args.clone_ref(py)),
        }
    }

    /// The first argument.
    pub fn first<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        match self {
            Args::One(arg) => Some(arg.bind(py).clone()),
            Args::Tuple(args) => args.bind(py).get_item(0).ok(),
        }
    }

    /// asyncio's `_args`.
    pub fn to_tuple(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        match self {
            Args::One(arg) => Ok(PyTuple::new(py, [arg])?.unbind()),
            Args::Tuple(args) => Ok(args.clone_ref(py)),
        }
    }

    /// The arguments as a vectorcall array: a pointer to the first one and their number,
    /// valid while `self` is alive.
    #[inline]
    pub fn as_array(&self) -> (*const *mut ffi::PyObject, usize) {
        match self {
            // `Py<T>` is a transparent wrapper of the object pointer.
            Args::One(arg) => (std::ptr::from_ref(arg).cast(), 1),
            Args::Tuple(args) => {
                let raw = args.as_ptr() as *mut ffi::PyTupleObject;
                // SAFETY: a live tuple: its item array holds ob_size items.
                unsafe {
                    (
                        (*raw).ob_item.as_ptr(),
                        ffi::PyTuple_GET_SIZE(args.as_ptr()) as usize,
                    )
                }
            }
        }
    }
}

/// A class remembered by address, for an exact-type test that is one load and one compare
/// (pyo3's `cast` goes through the lazy type object and `PyType_IsSubtype`): for the hottest
/// dispatch only. The class is kept alive from [`set`](Self::set) on.
pub struct ExactType(std::sync::atomic::AtomicPtr<ffi::PyObject>);

impl ExactType {
    #[allow(clippy::new_without_default)] // for statics
    pub const fn new() -> Self {
        ExactType(std::sync::atomic::AtomicPtr::new(ptr::null_mut()))
    }

    /// Remember `class` (once: a module's class lives as long as the process).
    pub fn set(&self, class: &Bound<'_, pyo3::types::PyType>) {
        let previous = self.0.swap(
            class.clone().into_ptr(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if !previous.is_null() {
            // SAFETY: the reference `set` took before.
            unsafe { ffi::Py_DECREF(previous) };
        }
    }

    /// Whether `obj`'s type is exactly the class.
    #[inline(always)]
    pub fn holds(&self, obj: &Py<PyAny>) -> bool {
        // SAFETY: `obj` is a live object.
        let class = unsafe { ffi::Py_TYPE(obj.as_ptr()) };
        std::ptr::eq(
            class.cast::<ffi::PyObject>(),
            self.0.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

/// `contextvars.copy_context()`.
///
/// The copy stays tracked by the cyclic GC: CPython 3.11's `context_tp_dealloc` untracks
/// unconditionally, so an untracked context would crash on deallocation.
#[inline]
pub fn copy_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held (we have `py`); PyContext_CopyCurrent returns a new reference
    // or NULL with an exception set, which `from_owned_ptr_or_err` handles.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())?.unbind()) }
}

/// Remove a GC-enabled object from the cyclic GC's lists (`PyObject_GC_UnTrack`).
///
/// Used on handles: pyo3 makes every `#[pyclass]` GC-enabled, but a handle only references
/// its callback, arguments and context, drops the first two as soon as it ran or was
/// cancelled, and the loop drops them for every pending handle at close; tracking it would
/// only make collections slower. Untracking an already untracked object is a no-op, and
/// deallocation of an untracked object is valid: pyo3's `tp_dealloc` untracks with the
/// checked `PyObject_GC_UnTrack`. (Never use this on objects whose own dealloc untracks
/// unconditionally, such as 3.11's `contextvars.Context`.)
#[inline]
pub fn untrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: the GIL is held; `obj` is a live object. PyObject_GC_UnTrack checks that the
    // object is tracked before unlinking it; we only pass our own pyclass instances.
    unsafe {
        if ffi::PyObject_IS_GC(obj.as_ptr()) != 0 {
            ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
        }
    }
}

/// `context.run(callback, *args)`, discarding the result, entering the context with
/// `PyContext_Enter`/`PyContext_Exit` and calling with vectorcall, or with `native` when it
/// takes the call ([`call_discarding`]).
#[inline]
pub fn call_in_context(
    py: Python<'_>,
    callback: &Py<PyAny>,
    args: Option<&Args>,
    context: Option<&Py<PyAny>>,
    native: impl FnOnce() -> Option<bool>,
) -> PyResult<()> {
    if let Some(context) = context {
        // SAFETY: type check of a live object.
        if unsafe { ffi::PyContext_CheckExact(context.as_ptr()) } == 0 {
            // Not a Context: asyncio calls `context.run(callback, *args)`; so do we, to get
            // the same behaviour (and the same error).
            let mut call_args: Vec<Bound<'_, PyAny>> = vec![callback.bind(py).clone()];
            if let Some(args) = args {
                call_args.extend(args.to_tuple(py)?.bind(py).iter());
            }
            context
                .bind(py)
                .getattr("run")?
                .call1(PyTuple::new(py, call_args)?)?;
            return Ok(());
        }
    }
    // SAFETY: the GIL is held. `callback`, `args` and `context` are owned references kept
    // alive by the caller for the whole call. Enter/Exit are paired; Exit runs with the
    // callback's exception still set, as in `Context.run`.
    unsafe {
        if let Some(context) = context {
            if ffi::PyContext_Enter(context.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        let mut ok = call_discarding(callback, args, native);
        if let Some(context) = context {
            if ffi::PyContext_Exit(context.as_ptr()) < 0 {
                ok = false;
            }
        }
        if ok {
            Ok(())
        } else {
            Err(PyErr::fetch(py))
        }
    }
}

/// `callback(*args)` by vectorcall, the result discarded: `false` when it raised, with the
/// exception left set for the caller to fetch. `native` first: it calls ferroloop's own
/// callbacks (a transport's reader, one of its steps) as the Rust functions they are, without
/// Python's call protocol, and gives `None` for any other callback.
///
/// # Safety
/// The GIL is held; `callback` and `args` stay alive for the call.
#[inline(always)]
pub unsafe fn call_discarding(
    callback: &Py<PyAny>,
    args: Option<&Args>,
    native: impl FnOnce() -> Option<bool>,
) -> bool {
    if let Some(ok) = native() {
        return ok;
    }
    let (items, nargs) = match args {
        Some(args) => args.as_array(),
        None => (ptr::null(), 0),
    };
    // SAFETY: see above; the item array is valid while `args` lives and is not mutated.
    unsafe {
        let result = ffi::PyObject_Vectorcall(callback.as_ptr(), items, nargs, ptr::null_mut());
        if result.is_null() {
            return false;
        }
        ffi::Py_DECREF(result);
        true
    }
}

/// The calling thread's innermost Python frame (`PyEval_GetFrame`), if any.
pub fn current_frame(py: Python<'_>) -> Option<Bound<'_, PyAny>> {
    // SAFETY: the GIL is held (`py`); the frame is a borrowed reference, taken as a new one.
    unsafe {
        let frame = ffi::PyEval_GetFrame();
        Bound::from_borrowed_ptr_or_opt(py, frame.cast())
    }
}

/// Run pending Python signal handlers (`PyErr_CheckSignals`): a `KeyboardInterrupt` or any
/// exception a handler raises comes back as `Err`.
pub fn check_signals(py: Python<'_>) -> PyResult<()> {
    // SAFETY: the GIL is held; PyErr_CheckSignals sets an exception iff it returns -1.
    if unsafe { ffi::PyErr_CheckSignals() } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}

/// The contents of the calling thread's current context: the address of its `ctx_vars`
/// mapping. `ctx_vars` is an immutable HAMT that `ContextVar.set`/`reset` replace, so two
/// contexts with the same `ctx_vars` hold the same values. The loop keeps a snapshot context
/// alive, and with it the snapshot's HAMT, so an equal address can never be a reused one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextKey(usize);

/// Byte offsets of `PyThreadState.context` and `PyContext.ctx_vars`, found at run time
/// (pyo3 keeps both structures opaque); `None` when they could not be established, and then
/// no snapshot is ever shared.
static CONTEXT_FIELDS: PyOnceLock<Option<(usize, usize)>> = PyOnceLock::new();

/// Largest `PyThreadState` offset probed: every supported version's structure is at least
/// 280 bytes (3.10), and `context` sits at 208..=240 in 3.10-3.13.
const THREAD_STATE_PROBE_END: usize = 256;

/// The key of the calling thread's current context, if it can be read.
#[inline]
pub fn current_context_key(py: Python<'_>) -> Option<ContextKey> {
    let (context_offset, vars_offset) = (*CONTEXT_FIELDS.get_or_init(py, || discover(py)))?;
    // SAFETY: the GIL is held, so PyThreadState_Get returns this thread's live state;
    // `context_offset` was verified to be its `context` field (a Context or NULL) and
    // `vars_offset` the `ctx_vars` field of a Context.
    unsafe {
        let state = ffi::PyThreadState_Get() as *const u8;
        let context = ptr::read_unaligned(state.add(context_offset) as *const *const u8);
        if context.is_null() {
            return None;
        }
        Some(ContextKey(ptr::read_unaligned(
            context.add(vars_offset) as *const usize
        )))
    }
}

/// The key of a Context object's contents.
#[inline]
pub fn context_key(py: Python<'_>, context: &Py<PyAny>) -> Option<ContextKey> {
    // SAFETY: `context` is a live Context object (we only pass contexts we copied).
    let field = unsafe { vars_field(py, context.bind(py))? };
    // SAFETY: `field` points into the live context.
    Some(ContextKey(unsafe { *field } as usize))
}

fn discover(py: Python<'_>) -> Option<(usize, usize)> {
    let context_offset = discover_thread_state_context(py)?;
    let vars_offset = discover_context_vars(py)?;
    Some((context_offset, vars_offset))
}

/// Find `PyThreadState.context`: enter two fresh contexts in turn and look for the word that
/// holds each of them.
fn discover_thread_state_context(py: Python<'_>) -> Option<usize> {
    // SAFETY: the GIL is held. We only read within the first THREAD_STATE_PROBE_END + 8
    // bytes of this thread's PyThreadState (smaller than the structure on every supported
    // version), and every Enter is paired with an Exit.
    unsafe {
        let state = ffi::PyThreadState_Get() as *const u8;
        let first = Bound::from_owned_ptr_or_err(py, ffi::PyContext_New()).ok()?;
        let second = Bound::from_owned_ptr_or_err(py, ffi::PyContext_New()).ok()?;
        let read = |offset: usize| ptr::read_unaligned(state.add(offset) as *const usize);
        if ffi::PyContext_Enter(first.as_ptr()) < 0 {
            PyErr::fetch(py);
            return None;
        }
        let candidates: Vec<usize> = (0..=THREAD_STATE_PROBE_END)
            .step_by(8)
            .filter(|&offset| read(offset) == first.as_ptr() as usize)
            .collect();
        ffi::PyContext_Exit(first.as_ptr());
        if ffi::PyContext_Enter(second.as_ptr()) < 0 {
            PyErr::fetch(py);
            return None;
        }
        let found = candidates
            .into_iter()
            .find(|&offset| read(offset) == second.as_ptr() as usize);
        ffi::PyContext_Exit(second.as_ptr());
        found
    }
}

/// Find `PyContext.ctx_vars`: the one word after the object header that a context and its
/// copy share (the same HAMT), and that changes in the copy when a variable is set in it.
fn discover_context_vars(py: Python<'_>) -> Option<usize> {
    const HEADER: usize = std::mem::size_of::<ffi::PyObject>();
    // SAFETY: the GIL is held; we read the first words after the header of Context objects
    // we own (a Context has at least four pointer-sized fields after its header), and the
    // Enter/Exit pair is balanced.
    unsafe {
        let original = Bound::from_owned_ptr_or_err(py, ffi::PyContext_New()).ok()?;
        let copy = Bound::from_owned_ptr_or_err(py, ffi::PyContext_Copy(original.as_ptr())).ok()?;
        let read = |obj: &Bound<'_, PyAny>, offset: usize| {
            ptr::read_unaligned((obj.as_ptr() as *const u8).add(offset) as *const usize)
        };
        let candidates: Vec<usize> = (HEADER..HEADER + 24)
            .step_by(8)
            .filter(|&offset| {
                let value = read(&original, offset);
                value != 0 && value == read(&copy, offset)
            })
            .collect();
        let name = std::ffi::CString::new("ferroloop_probe").ok()?;
        let var =
            Bound::from_owned_ptr_or_err(py, ffi::PyContextVar_New(name.as_ptr(), ptr::null_mut()))
                .ok()?;
        if ffi::PyContext_Enter(copy.as_ptr()) < 0 {
            PyErr::fetch(py);
            return None;
        }
        let token = ffi::PyContextVar_Set(var.as_ptr(), py.None().as_ptr());
        if token.is_null() {
            PyErr::fetch(py);
        } else {
            ffi::Py_DECREF(token);
        }
        ffi::PyContext_Exit(copy.as_ptr());
        candidates
            .into_iter()
            .find(|&offset| read(&original, offset) != read(&copy, offset))
    }
}

/// The `ctx_vars` field of a Context object, if its offset is known.
///
/// # Safety
/// `context` is a live `contextvars.Context`.
#[inline]
unsafe fn vars_field(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
) -> Option<*mut *mut ffi::PyObject> {
    let (_, vars_offset) = (*CONTEXT_FIELDS.get_or_init(py, || discover(py)))?;
    // SAFETY: see above; `vars_offset` was verified to be the `ctx_vars` field.
    Some(unsafe { (context.as_ptr() as *mut u8).add(vars_offset) as *mut *mut ffi::PyObject })
}

/// How [`call_in_snapshot`] went. `raised`: the callback (or leaving the snapshot) raised,
/// and the exception is still set: the caller fetches it before it calls any other API.
pub enum SnapshotRun<'py> {
    /// The callback ran in the snapshot and left its variables as they were.
    Unchanged { raised: bool },
    /// The callback ran in the snapshot and set or reset variables: the snapshot now holds
    /// them; `before` is the mapping it had before the run.
    Changed {
        raised: bool,
        before: Bound<'py, PyAny>,
    },
    /// The snapshot could not be entered (a callback running in it is running this one):
    /// nothing ran.
    NotRun,
}

/// The variables mapping of a context snapshot (a new reference), if its layout is known.
pub fn snapshot_vars<'py>(snapshot: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = snapshot.py();
    // SAFETY: snapshots are live Contexts (made by PyContext_CopyCurrent); the field holds a
    // strong reference to a live mapping.
    unsafe { vars_field(py, snapshot).map(|field| Bound::from_borrowed_ptr(py, *field)) }
}

/// Run `callback(*args)` inside the shared context snapshot itself, rather than inside a copy
/// of it, and tell whether the callback changed its variables (see `docs/decisions/0003`).
/// `before` is the snapshot's mapping ([`snapshot_vars`]).
#[inline(always)]
pub fn call_in_snapshot<'py>(
    py: Python<'py>,
    callback: &Py<PyAny>,
    args: Option<&Args>,
    native: impl FnOnce() -> Option<bool>,
    snapshot: &Bound<'py, PyAny>,
    before: Bound<'py, PyAny>,
) -> SnapshotRun<'py> {
    // SAFETY: a live Context; Enter fails (with an exception set) if it is entered already.
    if unsafe { ffi::PyContext_Enter(snapshot.as_ptr()) } < 0 {
        drop(PyErr::fetch(py));
        return SnapshotRun::NotRun;
    }
    // SAFETY: the GIL is held; the caller keeps `callback` and `args` alive. Exit is paired
    // with the Enter above, by this thread, on a snapshot the caller holds; it runs with the
    // callback's exception still set, as in `Context.run`.
    let raised = unsafe {
        !call_discarding(callback, args, native) | (ffi::PyContext_Exit(snapshot.as_ptr()) < 0)
    };
    // SAFETY: the snapshot is a live Context whose layout `before` was read with.
    let now = unsafe { vars_field(py, snapshot).map(|field| *field) };
    if now == Some(before.as_ptr()) {
        SnapshotRun::Unchanged { raised }
    } else {
        SnapshotRun::Changed { raised, before }
    }
}

/// A new Context holding `vars` (a mapping taken from [`SnapshotRun::Changed`]): the
/// replacement of a snapshot whose callback changed it.
pub fn context_with_vars(
    py: Python<'_>,
    model: &Bound<'_, PyAny>,
    vars: Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held; `model` is a live Context, so its copy is a new Context of the
    // same layout. The copy's mapping reference is released and replaced by the one `vars`
    // owns (moved into the field).
    unsafe {
        let copy = Bound::from_owned_ptr_or_err(py, ffi::PyContext_Copy(model.as_ptr()))?;
        let field = vars_field(py, &copy).ok_or_else(|| {
            pyo3::exceptions::PySystemError::new_err("contextvars.Context layout unknown")
        })?;
        let previous = std::mem::replace(&mut *field, vars.into_ptr());
        ffi::Py_DECREF(previous);
        Ok(copy.unbind())
    }
}

/// `contextvars.copy_context()`-like copy of a context snapshot (`PyContext_Copy`).
#[inline]
pub fn copy_of(py: Python<'_>, context: &Py<PyAny>) -> PyResult<Py<PyAny>> {
    // SAFETY: the GIL is held; `context` is a live Context object; the result is a new
    // reference or NULL with an exception set.
    unsafe { Ok(Bound::from_owned_ptr_or_err(py, ffi::PyContext_Copy(context.as_ptr()))?.unbind()) }
}

/// Keyword-name tuples for [`call_with_keywords`], built once.
pub struct KeywordNames {
    names: &'static [&'static str],
    tuple: PyOnceLock<Py<PyTuple>>,
}

impl KeywordNames {
    pub const fn new(names: &'static [&'static str]) -> Self {
        KeywordNames {
            names,
            tuple: PyOnceLock::new(),
        }
    }

    fn get<'py>(&self, py: Python<'py>) -> PyResult<&Bound<'py, PyTuple>> {
        self.tuple
            .get_or_try_init(py, || {
                let names = self
                    .names
                    .iter()
                    .map(|n| pyo3::types::PyString::intern(py, n));
                Ok::<_, PyErr>(PyTuple::new(py, names)?.unbind())
            })
            .map(|t| t.bind(py))
    }
}

/// `callable(*args, **dict(zip(names, values)))` with vectorcall, without building a dict.
/// At most 3 positional and 4 keyword arguments.
pub fn call_with_keywords<'py>(
    py: Python<'py>,
    callable: &Bound<'py, PyAny>,
    args: &[&Bound<'py, PyAny>],
    names: &KeywordNames,
    values: &[&Bound<'py, PyAny>],
) -> PyResult<Bound<'py, PyAny>> {
    let mut stack: [*mut ffi::PyObject; 7] = [ptr::null_mut(); 7];
    if args.len() > 3 || values.len() > 4 || values.len() != names.names.len() {
        return Err(pyo3::exceptions::PySystemError::new_err(
            "call_with_keywords: bad arity",
        ));
    }
    for (slot, arg) in stack.iter_mut().zip(args.iter()) {
        *slot = arg.as_ptr();
    }
    for (slot, value) in stack[args.len()..].iter_mut().zip(values.iter()) {
        *slot = value.as_ptr();
    }
    let names = names.get(py)?;
    // SAFETY: the GIL is held; `stack` holds args.len() + keywords.len() borrowed references
    // kept alive by the caller's `Bound`s; `names` is a tuple of str of the keyword count.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyObject_Vectorcall(
                callable.as_ptr(),
                stack.as_ptr(),
                args.len(),
                names.as_ptr(),
            ),
        )
    }
}

/// The reference count of `obj`.
#[inline]
pub fn ref_count(obj: &Py<PyAny>) -> isize {
    // SAFETY: `obj` is a live object; reading its reference count is always valid.
    unsafe { ffi::Py_REFCNT(obj.as_ptr()) }
}

/// `cls(*args, **kwargs)` with a ready-made keyword dictionary.
///
/// For a class whose metaclass is `type` this does what `type.__call__` does (`tp_new`, then
/// `tp_init` if the result is an instance), without the call machinery building a new
/// dictionary; other classes are simply called.
pub fn construct<'py>(
    cls: &Bound<'py, pyo3::types::PyType>,
    args: &Bound<'py, PyTuple>,
    kwargs: &Bound<'py, pyo3::types::PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    // SAFETY: the GIL is held; `cls` is a live type. tp_new returns a new reference or NULL
    // with an exception set; tp_init returns -1 with an exception set on failure. This is
    // type_call's sequence for a plain `type` metaclass.
    unsafe {
        let raw = cls.as_type_ptr();
        if ffi::Py_TYPE(raw.cast()) != ptr::addr_of_mut!(ffi::PyType_Type) {
            return cls.call(args, Some(kwargs));
        }
        let Some(new) = (*raw).tp_new else {
            return cls.call(args, Some(kwargs));
        };
        let obj = Bound::from_owned_ptr_or_err(py, new(raw, args.as_ptr(), kwargs.as_ptr()))?;
        if ffi::PyObject_TypeCheck(obj.as_ptr(), raw) == 0 {
            return Ok(obj);
        }
        if let Some(init) = (*ffi::Py_TYPE(obj.as_ptr())).tp_init {
            if init(obj.as_ptr(), args.as_ptr(), kwargs.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(obj)
    }
}

/// `object.__new__(cls)`: `object`'s own `tp_new`, without the argument tuple and checks of
/// the `__new__` wrapper (for a class that does not override `__new__`).
pub fn object_new<'py>(cls: &Bound<'py, pyo3::types::PyType>) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    let args = PyTuple::empty(py);
    // SAFETY: `PyBaseObject_Type` is CPython's static `object` type, whose `tp_new` is set;
    // it returns a new reference or NULL with an exception set.
    unsafe {
        let Some(new) = (*ptr::addr_of!(ffi::PyBaseObject_Type)).tp_new else {
            return cls.call0();
        };
        Bound::from_owned_ptr_or_err(py, new(cls.as_type_ptr(), args.as_ptr(), ptr::null_mut()))
    }
}

/// The object slots (`__slots__`) of one class, read and written at their offsets in its
/// instances, as the slots' member descriptors do, without the generic attribute lookup
/// (`_PyType_Lookup` through the class's bases, then the descriptor's call).
pub struct Slots {
    class: Py<pyo3::types::PyType>,
    /// Open addressing on the name's address (interned names: one object per name), with
    /// linear probing; at most half full.
    table: Vec<Option<(Py<pyo3::types::PyString>, isize)>>,
}

/// The first index of `name` in a table of `len` (a power of two) entries.
fn slot_index(name: *mut ffi::PyObject, len: usize) -> usize {
    // Objects are 16-byte aligned: the low bits carry nothing.
    ((name as usize) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        >> (usize::BITS - len.trailing_zeros())
}

impl Slots {
    /// The writable object slots of `class` and its bases that an attribute lookup on its
    /// instances reaches (a slot that a class attribute or property of a class before it in
    /// the MRO shadows is left out).
    pub fn of(class: &Bound<'_, pyo3::types::PyType>) -> PyResult<Self> {
        let py = class.py();
        let mut slots = Vec::new();
        for klass in class.getattr(pyo3::intern!(py, "__mro__"))?.try_iter()? {
            let klass = klass?;
            let namespace = klass.getattr(pyo3::intern!(py, "__dict__"))?;
            for item in namespace
                .call_method0(pyo3::intern!(py, "items"))?
                .try_iter()?
            {
                let (name, value): (Bound<'_, pyo3::types::PyString>, Bound<'_, PyAny>) =
                    item?.extract()?;
                let Some(offset) = member_offset(&value) else {
                    continue;
                };
                if class.getattr(&name)?.is(&value) {
                    slots.push((name.unbind(), offset));
                }
            }
        }
        let len = (slots.len() * 2).next_power_of_two().max(16);
        let mut table: Vec<Option<(Py<pyo3::types::PyString>, isize)>> =
            (0..len).map(|_| None).collect();
        for (name, offset) in slots {
            let mut index = slot_index(name.as_ptr(), len);
            while table[index].is_some() {
                index = (index + 1) & (len - 1);
            }
            table[index] = Some((name, offset));
        }
        Ok(Slots {
            class: class.clone().unbind(),
            table,
        })
    }

    /// Whether `obj` is an instance of the class itself, whose slots these are (a subclass
    /// may lay out more).
    #[inline]
    pub fn holds(&self, obj: &Bound<'_, PyAny>) -> bool {
        // SAFETY: `obj` is a live object.
        unsafe { ffi::Py_TYPE(obj.as_ptr()).cast::<ffi::PyObject>() == self.class.as_ptr() }
    }

    /// The offset of slot `name` in the class's instances.
    pub fn offset_of(&self, name: &Bound<'_, pyo3::types::PyString>) -> Option<isize> {
        // Interned names: the type dict's keys and `intern!`'s are the same objects (a name
        // that is not interned is not found, and takes the plain lookup).
        let len = self.table.len();
        let mut index = slot_index(name.as_ptr(), len);
        loop {
            match &self.table[index] {
                Some((slot, offset)) if slot.as_ptr() == name.as_ptr() => return Some(*offset),
                Some(_) => index = (index + 1) & (len - 1),
                None => return None,
            }
        }
    }

    /// The address of `obj`'s slot `name`, when it is one of these slots.
    /// The slot at `offset` of `obj`, `None` when empty.
    ///
    /// # Safety
    /// `obj` is an instance of the class ([`holds`](Self::holds)) and `offset` one its slots
    /// have ([`offset_of`](Self::offset_of)).
    #[inline]
    pub unsafe fn read_at<'py>(
        obj: &Bound<'py, PyAny>,
        offset: isize,
    ) -> Option<Bound<'py, PyAny>> {
        // SAFETY: (the caller's) a live object slot: a `PyObject *` field, NULL when empty.
        unsafe { Bound::from_borrowed_ptr_or_opt(obj.py(), *Self::field_at(obj, offset)) }
    }

    /// Store `value` in the slot at `offset` of `obj`.
    ///
    /// # Safety
    /// As for [`read_at`](Self::read_at).
    #[inline]
    pub unsafe fn write_at(obj: &Bound<'_, PyAny>, offset: isize, value: &Bound<'_, PyAny>) {
        // SAFETY: (the caller's) a live object slot. The new value is stored with its own
        // reference before the old one is released (which may run arbitrary code), as
        // `PyMember_SetOne` does.
        unsafe {
            let field = Self::field_at(obj, offset);
            let old = *field;
            *field = value.clone().into_ptr();
            ffi::Py_XDECREF(old);
        }
    }

    /// The address of the slot at `offset` of `obj` (the caller's contract as for
    /// [`read_at`](Self::read_at)).
    #[inline]
    unsafe fn field_at(obj: &Bound<'_, PyAny>, offset: isize) -> *mut *mut ffi::PyObject {
        // SAFETY: (the caller's) `offset` is an object slot (`Py_T_OBJECT_EX`) inside `obj`.
        unsafe {
            obj.as_ptr()
                .cast::<u8>()
                .offset(offset)
                .cast::<*mut ffi::PyObject>()
        }
    }
}

/// The offset of the field a writable object member descriptor (a `__slots__` entry) reads.
pub fn member_offset(descriptor: &Bound<'_, PyAny>) -> Option<isize> {
    // SAFETY: the type check first; a member descriptor's `d_member` points at its
    // `PyMemberDef` (declared as `PyGetSetDef *` by pyo3-ffi before 3.11, the same pointer).
    unsafe {
        if ffi::Py_TYPE(descriptor.as_ptr()) != ptr::addr_of_mut!(ffi::PyMemberDescr_Type) {
            return None;
        }
        let member = (*descriptor.as_ptr().cast::<ffi::PyMemberDescrObject>())
            .d_member
            .cast::<ffi::PyMemberDef>();
        if member.is_null()
            || (*member).type_code != ffi::Py_T_OBJECT_EX
            || (*member).flags & ffi::Py_READONLY != 0
        {
            return None;
        }
        Some((*member).offset)
    }
}

/// `descriptor.__get__(obj, type(obj))` through the descriptor type's `tp_descr_get` (see
/// [`descriptor_set`]).
pub fn descriptor_get<'py>(
    descriptor: &Bound<'py, PyAny>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = descriptor.py();
    // SAFETY: live objects; `tp_descr_get`, when set, takes (descriptor, instance, type) and
    // returns a new reference, or NULL with an exception set.
    unsafe {
        let Some(get) = (*ffi::Py_TYPE(descriptor.as_ptr())).tp_descr_get else {
            return descriptor.call_method1(pyo3::intern!(py, "__get__"), (obj, obj.get_type()));
        };
        let value = get(
            descriptor.as_ptr(),
            obj.as_ptr(),
            ffi::Py_TYPE(obj.as_ptr()).cast(),
        );
        Bound::from_owned_ptr_or_err(py, value)
    }
}

/// `descriptor.__set__(obj, value)` through the descriptor type's `tp_descr_set`, without
/// the bound method-wrapper a Python-level call makes (a base class's slot that a subclass
/// shadows with a property).
pub fn descriptor_set(
    descriptor: &Bound<'_, PyAny>,
    obj: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = descriptor.py();
    // SAFETY: live objects; `tp_descr_set`, when set, takes (descriptor, instance, value) and
    // returns 0, or -1 with an exception set.
    unsafe {
        let Some(set) = (*ffi::Py_TYPE(descriptor.as_ptr())).tp_descr_set else {
            descriptor.call_method1(pyo3::intern!(py, "__set__"), (obj, value))?;
            return Ok(());
        };
        if set(descriptor.as_ptr(), obj.as_ptr(), value.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
    }
    Ok(())
}

/// `del dict[key]` if the key is there; nothing otherwise (no `KeyError` object is made
/// visible: the one CPython raises is cleared).
pub fn dict_discard(dict: &Bound<'_, pyo3::types::PyDict>, key: &Bound<'_, PyAny>) {
    // SAFETY: a live dict and key; on failure (a missing key) the error is cleared.
    if unsafe { ffi::PyDict_DelItem(dict.as_ptr(), key.as_ptr()) } < 0 {
        drop(PyErr::fetch(dict.py()));
    }
}

extern "C" {
    // CPython's exported (not limited-API) lookup on a type's MRO, 3.10 to 3.14, which
    // pyo3-ffi does not declare.
    fn _PyType_Lookup(
        class: *mut ffi::PyTypeObject,
        name: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject;
}

/// `name` looked up on `class` and its bases as attribute lookups do (`_PyType_Lookup`,
/// through the type attribute cache), without the metatype's descriptors that
/// `getattr(class, name)` also considers: for identity checks of a class's own methods.
#[inline]
pub fn type_lookup<'py>(
    class: &Bound<'py, pyo3::types::PyType>,
    name: &Bound<'py, pyo3::types::PyString>,
) -> Option<Bound<'py, PyAny>> {
    // SAFETY: a live type and a str; `_PyType_Lookup` returns a borrowed reference (or NULL,
    // without an exception), taken as a new one at once.
    unsafe {
        let found = _PyType_Lookup(class.as_ptr().cast(), name.as_ptr());
        Bound::from_borrowed_ptr_or_opt(class.py(), found)
    }
}

extern "C" {
    // CPython's exported (not limited-API) method lookup of `obj.name(...)` calls (3.7 to
    // 3.13 checked), which pyo3-ffi does not declare.
    fn _PyObject_GetMethod(
        obj: *mut ffi::PyObject,
        name: *mut ffi::PyObject,
        method: *mut *mut ffi::PyObject,
    ) -> std::os::raw::c_int;
}

/// The function that `obj.<name>(...)` would call with `obj` as its first argument, as a
/// method call looks it up (`_PyObject_GetMethod`): the class's function, when no attribute of
/// the instance shadows it. `None` when anything else would be called (an instance
/// attribute, a descriptor that is not a method) or the lookup fails (its error dropped).
#[inline]
pub fn unbound_method<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, pyo3::types::PyString>,
) -> Option<Bound<'py, PyAny>> {
    let py = obj.py();
    let mut method: *mut ffi::PyObject = ptr::null_mut();
    // SAFETY: a live object and a str; `method` receives a new reference or NULL (with an
    // exception set).
    let unbound = unsafe { _PyObject_GetMethod(obj.as_ptr(), name.as_ptr(), &mut method) };
    if method.is_null() {
        drop(PyErr::fetch(py));
        return None;
    }
    // SAFETY: a new reference, owned from here.
    let method = unsafe { Bound::from_owned_ptr(py, method) };
    (unbound == 1).then_some(method)
}

/// `bytearray += data` for an exact `bytearray` (what `bytearray.extend` does with a bytes-like
/// argument): its `PyByteArray_Resize`, with the error it raises while the bytearray is
/// exported (`BufferError`), then the copy.
pub fn bytearray_append(buffer: &Bound<'_, PyAny>, data: &[u8]) -> PyResult<()> {
    let py = buffer.py();
    // SAFETY: an exact bytearray (checked); after a successful resize its storage has
    // `old + data.len()` bytes, of which the last `data.len()` are written here.
    unsafe {
        let raw = buffer.as_ptr();
        if ffi::PyByteArray_CheckExact(raw) == 0 {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "expected a bytearray",
            ));
        }
        let old = ffi::PyByteArray_Size(raw);
        let Some(new) = old.checked_add(data.len() as ffi::Py_ssize_t) else {
            return Err(pyo3::exceptions::PyMemoryError::new_err(()));
        };
        if ffi::PyByteArray_Resize(raw, new) < 0 {
            return Err(PyErr::fetch(py));
        }
        let start = ffi::PyByteArray_AsString(raw)
            .cast::<u8>()
            .add(old as usize);
        ptr::copy_nonoverlapping(data.as_ptr(), start, data.len());
    }
    Ok(())
}

/// `ref()` for an exact `weakref.ref`: `Some(Some(referent))`, or `Some(None)` once it is
/// gone; `None` when `obj` is not an exact `weakref.ref` (or the call fails, its error dropped).
pub fn weakref_target<'py>(obj: &Bound<'py, PyAny>) -> Option<Option<Bound<'py, PyAny>>> {
    let py = obj.py();
    let mut target: *mut ffi::PyObject = ptr::null_mut();
    // SAFETY: a live object; PyWeakref_GetRef gives a new reference (1), NULL for a dead
    // referent (0) or NULL with an exception (-1).
    unsafe {
        let raw = obj.as_ptr();
        if ffi::PyWeakref_CheckRefExact(raw) == 0 {
            return None;
        }
        match ffi::compat::PyWeakref_GetRef(raw, &mut target) {
            1 => Some(Some(Bound::from_owned_ptr(py, target))),
            0 => Some(None),
            _ => {
                drop(PyErr::fetch(py));
                None
            }
        }
    }
}

/// `type(obj).<name>` when it is a plain class attribute (found by [`type_lookup`], and not a
/// descriptor: its type has no `__get__`), which is then what `obj.<name>` gives for an
/// object whose instance dict does not have the name. `None` otherwise.
#[inline]
pub fn plain_class_attribute<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, pyo3::types::PyString>,
) -> Option<Bound<'py, PyAny>> {
    let found = type_lookup(&obj.get_type(), name)?;
    // SAFETY: a live object's type; `tp_descr_get` is a public slot.
    let descriptor = unsafe { (*ffi::Py_TYPE(found.as_ptr())).tp_descr_get.is_some() };
    (!descriptor).then_some(found)
}

/// `obj.__dict__` (`PyObject_GenericGetDict`), `None` when it has none.
pub fn instance_dict<'py>(obj: &Bound<'py, PyAny>) -> Option<Bound<'py, pyo3::types::PyDict>> {
    let py = obj.py();
    // SAFETY: a live object; PyObject_GenericGetDict returns a new reference to its __dict__
    // or NULL with an exception set (no __dict__).
    let attributes = unsafe { ffi::PyObject_GenericGetDict(obj.as_ptr(), ptr::null_mut()) };
    if attributes.is_null() {
        drop(PyErr::fetch(py));
        return None;
    }
    // SAFETY: a new reference, owned from here.
    let attributes = unsafe { Bound::from_owned_ptr(py, attributes) };
    attributes.cast_into::<pyo3::types::PyDict>().ok()
}

/// `f()` with `exc` as the exception being handled (`sys.exc_info()`, which `logging`'s
/// `exc_info=True` reads), as inside the `except` block asyncio's code calls from; the one
/// handled before is restored afterwards, also if `f` panics.
pub fn while_handling<R>(exc: &Bound<'_, PyAny>, f: impl FnOnce() -> R) -> R {
    struct Restore([*mut ffi::PyObject; 3]);
    impl Drop for Restore {
        fn drop(&mut self) {
            let [kind, value, traceback] = self.0;
            // SAFETY: the GIL is held (the caller's `Bound`); SetExcInfo steals the three
            // references GetExcInfo gave (each may be NULL).
            unsafe { ffi::PyErr_SetExcInfo(kind, value, traceback) };
        }
    }
    let mut saved = [ptr::null_mut(); 3];
    // SAFETY: the GIL is held. GetExcInfo gives new references (or NULL); SetExcInfo steals
    // one reference to each of its arguments, made here: the type, the value and its
    // traceback (a new reference or NULL).
    unsafe {
        let [kind, value, traceback] = &mut saved;
        ffi::PyErr_GetExcInfo(kind, value, traceback);
        let raw = exc.as_ptr();
        let kind = ffi::Py_TYPE(raw).cast::<ffi::PyObject>();
        ffi::Py_INCREF(kind);
        ffi::Py_INCREF(raw);
        ffi::PyErr_SetExcInfo(kind, raw, ffi::PyException_GetTraceback(raw));
    }
    let _restore = Restore(saved);
    f()
}

/// `obj.__dict__.get(name)`: an attribute of the instance itself, not of its class; `None`
/// when it has no such attribute or no `__dict__`.
pub fn instance_attribute<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, pyo3::types::PyString>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    match instance_dict(obj) {
        Some(attributes) => attributes.get_item(name),
        None => Ok(None),
    }
}

/// True when `obj` is referenced by the caller alone and by no weak reference: nothing else
/// can observe it, so it may be reused for something else.
///
/// The weak-reference list pointer lives at the type's `tp_weaklistoffset`: a positive offset
/// into the object (3.10-3.13 for types with a `__weakref__` slot, pyo3's `weakref` classes),
/// 0 when the type has no weak references, or negative on 3.12+ for a type with
/// `Py_TPFLAGS_MANAGED_WEAKREF` (plain Python classes), whose list sits before the object
/// header at that offset (CPython's own `_PyObject_GET_WEAKREFS_LISTPTR` adds the offset in
/// both cases). An immortal object (3.12+) has a reference count far above 1, so it is never
/// a sole owner. `tests/test_cpython_contract.py` checks each case on every version.
#[inline]
pub fn sole_owner(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: the GIL is held and `obj` is alive. A non-zero `tp_weaklistoffset` is the
    // (possibly negative) offset from the object's address of its weak-reference list
    // pointer, which we only read. Type objects (whose static builtin types keep their weak
    // references elsewhere on 3.12+) are never passed: only loop handles are.
    unsafe {
        let raw = obj.as_ptr();
        if ffi::Py_REFCNT(raw) != 1 {
            return false;
        }
        let offset = (*ffi::Py_TYPE(raw)).tp_weaklistoffset;
        if offset != 0 {
            let list = ptr::read((raw as *const u8).offset(offset) as *const *mut ffi::PyObject);
            if !list.is_null() {
                return false;
            }
        }
        true
    }
}

/// `PyCallable_Check` without the function call: the type has a `tp_call` slot.
#[inline(always)]
pub fn is_callable(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: a live object's type is a live type object.
    unsafe { (*ffi::Py_TYPE(obj.as_ptr())).tp_call.is_some() }
}

/// `type(obj) is int` (`PyLong_CheckExact`).
#[inline]
pub fn is_exact_int(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: type check of a live object.
    unsafe { ffi::PyLong_CheckExact(obj.as_ptr()) != 0 }
}

/// The value of an exact `int` that fits in an `i32` (a fd number), without the layers of
/// pyo3's conversion; `None` for anything else (the caller converts the general way).
#[inline]
pub fn exact_int_i32(obj: &Bound<'_, PyAny>) -> Option<i32> {
    exact_int_i64(obj).and_then(|value| i32::try_from(value).ok())
}

/// The value of an exact `int` that fits in an `i64`, without the layers of pyo3's conversion
/// (whose `u64` path goes through `_PyLong_AsByteArray` for any int of more than one digit);
/// `None` for anything else.
#[inline]
pub fn exact_int_i64(obj: &Bound<'_, PyAny>) -> Option<i64> {
    if !is_exact_int(obj) {
        return None;
    }
    let mut overflow = 0;
    // SAFETY: an exact int: PyLong_AsLongLongAndOverflow cannot fail on it, and reports a
    // value out of `long long`'s range in `overflow` (no exception).
    let value = unsafe { ffi::PyLong_AsLongLongAndOverflow(obj.as_ptr(), &mut overflow) };
    (overflow == 0).then_some(value)
}

/// `len(data)` of a `bytes` object (`PyBytes_Size`); the caller checked the type.
#[inline]
pub fn bytes_len(data: &Bound<'_, PyAny>) -> isize {
    // SAFETY: a live object; PyBytes_Size of a non-bytes sets an exception and returns -1,
    // which we clear (callers only pass bytes).
    let n = unsafe { ffi::PyBytes_Size(data.as_ptr()) };
    if n < 0 {
        drop(PyErr::take(data.py()));
    }
    n
}

/// `bytes(data[:len])` of raw memory (`PyBytes_FromStringAndSize`), or this thread's spare
/// `bytes` object refilled ([`keep_spare_bytes`]).
///
/// # Safety
/// `data` is readable for `len` bytes.
#[inline]
pub unsafe fn bytes_from_raw<'py>(
    py: Python<'py>,
    data: *const u8,
    len: usize,
) -> PyResult<Bound<'py, PyAny>> {
    if let Some(spare) = take_spare_bytes(py, len) {
        // SAFETY: `spare` is a `bytes` object that nothing else references, allocated for at
        // least `len` bytes of data and its terminating NUL (`take_spare_bytes`); `data` is
        // readable for `len` bytes (the caller's).
        unsafe {
            let raw = spare.as_ptr();
            (*raw.cast::<ffi::PyVarObject>()).ob_size = len as ffi::Py_ssize_t;
            let bytes = raw.cast::<ffi::PyBytesObject>();
            // The hash cache (deprecated for readers since 3.11, still what `hash()` fills
            // in on 3.10-3.14): not computed for the new contents.
            #[allow(deprecated)]
            {
                (*bytes).ob_shash = -1;
            }
            let target = ptr::addr_of_mut!((*bytes).ob_sval).cast::<u8>();
            ptr::copy_nonoverlapping(data, target, len);
            *target.add(len) = 0;
        }
        return Ok(spare);
    }
    // SAFETY: the GIL is held; see above.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyBytes_FromStringAndSize(data.cast(), len as ffi::Py_ssize_t),
        )
    }
}

thread_local! {
    /// This thread's spare `bytes` object and the data size it was made for (null: none).
    /// Left to leak when the thread ends: one object.
    static SPARE_BYTES: std::cell::Cell<(*mut ffi::PyObject, usize)> =
        const { std::cell::Cell::new((ptr::null_mut(), 0)) };
}

/// The spare `bytes` object, if it holds `len` bytes without wasting more than a quarter of
/// its size.
#[inline]
fn take_spare_bytes(py: Python<'_>, len: usize) -> Option<Bound<'_, PyAny>> {
    SPARE_BYTES.with(|spare| {
        let (object, capacity) = spare.get();
        if object.is_null() || len > capacity || len * 4 < capacity * 3 {
            return None;
        }
        spare.set((ptr::null_mut(), 0));
        // SAFETY: the spare's reference, owned by the cell until now.
        Some(unsafe { Bound::from_owned_ptr(py, object) })
    })
}

/// Keep `data`, a `bytes` object that a native reader made with [`bytes_from_raw`] and passed
/// to a protocol's callback, for the next received data, if the caller's reference is the
/// only one left (the callback kept nothing): nothing can observe that its contents change.
/// A received `bytes` of more than 512 bytes is a `malloc` and a `free` each (pymalloc takes
/// up to 512, glibc's per-thread cache up to 1,032), and for 1 KiB messages those two cost
/// more than the rest of a read. Empty and one-byte `bytes` are CPython's shared objects:
/// never kept (their reference count is not 1 anyway).
#[inline]
pub fn keep_spare_bytes(data: Bound<'_, PyAny>) {
    // SAFETY: a live object; exact-type check and reference count only.
    let (is_bytes, sole) = unsafe {
        let raw = data.as_ptr();
        (ffi::PyBytes_CheckExact(raw) != 0, ffi::Py_REFCNT(raw) == 1)
    };
    if !is_bytes || !sole {
        return;
    }
    let len = bytes_len(&data);
    if len < 2 {
        return;
    }
    let py = data.py();
    let previous = SPARE_BYTES.with(|spare| spare.replace((data.into_ptr(), len as usize)));
    if !previous.0.is_null() {
        // SAFETY: the previous spare's reference, owned by the cell until now.
        drop(unsafe { Bound::from_owned_ptr(py, previous.0) });
    }
}

extern "C" {
    // CPython's `bytes` resize for an object nothing else references (3.10-3.14, exported,
    // not limited API; pyo3-ffi declares it crate-private).
    fn _PyBytes_Resize(
        bytes: *mut *mut ffi::PyObject,
        size: ffi::Py_ssize_t,
    ) -> std::os::raw::c_int;
}

/// A `bytes` object filled in place: made with room for some bytes, written through a
/// writable `memoryview` of its unused part, then cut to what was written. Only this value
/// references the object until [`finish`](Self::finish) hands it out, so nothing can see its
/// contents change.
pub struct BytesBuilder<'py> {
    object: Option<Bound<'py, PyAny>>,
    len: usize,
    capacity: usize,
}

impl<'py> BytesBuilder<'py> {
    /// Room for `capacity` bytes (at least one).
    pub fn new(py: Python<'py>, capacity: usize) -> PyResult<Self> {
        let capacity = capacity.max(1);
        // SAFETY: the GIL is held; a NULL source makes an uninitialised `bytes` of that size
        // (a new reference, or NULL with an exception set).
        let object = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyBytes_FromStringAndSize(ptr::null(), capacity as ffi::Py_ssize_t),
            )?
        };
        Ok(BytesBuilder {
            object: Some(object),
            len: 0,
            capacity,
        })
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many more bytes fit.
    pub fn room(&self) -> usize {
        self.capacity - self.len
    }

    /// Room for `more` bytes beyond what was written.
    pub fn reserve(&mut self, more: usize) -> PyResult<()> {
        if self.room() >= more {
            return Ok(());
        }
        self.resize(self.len + more)?;
        self.capacity = self.len + more;
        Ok(())
    }

    /// `fill(view)` with a writable `memoryview` of the unused part; `fill` returns how many
    /// bytes it wrote at the start of it (at most its length). The view is released before
    /// this returns: `fill` may hand it to code that keeps it, which then finds it released.
    pub fn fill(
        &mut self,
        fill: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<usize>,
    ) -> PyResult<usize> {
        let Some(object) = self.object.as_ref() else {
            return Ok(0);
        };
        let py = object.py();
        let room = self.room();
        // SAFETY: `object` is a `bytes` of `capacity` bytes that only this value references;
        // the view covers its bytes from `len` to `capacity`, and is released (below) before
        // the object is resized or handed out.
        let view = unsafe {
            let data = ffi::PyBytes_AsString(object.as_ptr()).add(self.len);
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyMemoryView_FromMemory(data, room as ffi::Py_ssize_t, ffi::PyBUF_WRITE),
            )?
        };
        let written = fill(&view);
        if let Err(error) = view.call_method0(pyo3::intern!(py, "release")) {
            // Still exported (a consumer kept a `Py_buffer` of it): the memory must outlive
            // it, so the object is left to leak rather than freed or resized.
            std::mem::forget(self.object.take());
            return Err(error);
        }
        let written = written?.min(room);
        self.len += written;
        Ok(written)
    }

    /// The `bytes` of what was written (CPython's empty `bytes` when nothing was).
    pub fn finish(mut self) -> PyResult<Bound<'py, PyAny>> {
        self.resize(self.len)?;
        self.object
            .take()
            .ok_or_else(|| pyo3::exceptions::PyBufferError::new_err("bytes still exported"))
    }

    fn resize(&mut self, size: usize) -> PyResult<()> {
        let Some(object) = self.object.take() else {
            return Err(pyo3::exceptions::PyBufferError::new_err(
                "bytes still exported",
            ));
        };
        let py = object.py();
        let mut raw = object.into_ptr();
        // SAFETY: `raw` is a `bytes` that nothing else references (this value's reference,
        // given up here): `_PyBytes_Resize` reallocates it, or frees it and sets NULL with an
        // exception set.
        if unsafe { _PyBytes_Resize(&mut raw, size as ffi::Py_ssize_t) } < 0 {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: the (possibly moved) object, our reference.
        self.object = Some(unsafe { Bound::from_owned_ptr(py, raw) });
        Ok(())
    }
}

/// `memoryview(obj)` (`PyMemoryView_FromObject`).
pub fn memoryview<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the GIL is held; a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(obj.py(), ffi::PyMemoryView_FromObject(obj.as_ptr())) }
}

/// A new empty `contextvars.Context()` (`PyContext_New`).
pub fn new_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: the GIL is held; a new reference or NULL with an exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_New()) }
}

/// CPython's per-thread state, only ever compared by address here.
pub type ThreadState = ffi::PyThreadState;

/// The calling thread's `PyThreadState` (`PyThreadState_Get`).
#[inline(always)]
pub fn thread_state(_py: Python<'_>) -> *mut ThreadState {
    // SAFETY: the GIL is held (`_py`), so the thread has a live thread state.
    unsafe { ffi::PyThreadState_Get() }
}

/// An object from the address of a live one (a borrowed reference, taken as a new one).
///
/// # Safety
/// `address` is the address of an object that something keeps alive during the call.
#[inline]
pub unsafe fn object_at(py: Python<'_>, address: usize) -> Bound<'_, PyAny> {
    // SAFETY: see above.
    unsafe { Bound::from_borrowed_ptr(py, address as *mut ffi::PyObject) }
}

/// Size of the object header (`PyObject`: reference count and type): the offset of a
/// C object's first field.
pub const OBJECT_HEADER_SIZE: usize = std::mem::size_of::<ffi::PyObject>();

/// Buffer-protocol request flags (`PyBUF_SIMPLE`, `PyBUF_WRITABLE`).
pub const BUFFER_SIMPLE: std::os::raw::c_int = ffi::PyBUF_SIMPLE;
pub const BUFFER_WRITABLE: std::os::raw::c_int = ffi::PyBUF_WRITABLE;

/// A buffer exported by a Python object, released on drop.
pub struct Buffer {
    view: ffi::Py_buffer,
}

impl Buffer {
    /// `PyObject_GetBuffer(obj, flags)`.
    pub fn get(obj: &Bound<'_, PyAny>, flags: std::os::raw::c_int) -> PyResult<Buffer> {
        // SAFETY: the GIL is held; `view` is written by PyObject_GetBuffer on success and
        // released once in `drop`; on failure an exception is set, which we fetch.
        unsafe {
            let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::uninit();
            if ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), flags) < 0 {
                return Err(PyErr::fetch(obj.py()));
            }
            Ok(Buffer {
                view: view.assume_init(),
            })
        }
    }

    /// The buffer of exactly a `bytes` object, as its `bf_getbuffer` would export it for
    /// `PyBUF_SIMPLE` (`PyBuffer_FillInfo`: the data, read-only, one reference to the object),
    /// without the lookup of the slot; `None` for any other type.
    #[inline]
    pub fn of_bytes(obj: &Bound<'_, PyAny>) -> Option<Buffer> {
        let raw = obj.as_ptr();
        // SAFETY: the exact type is checked first; the view holds a new reference to the
        // object (released by `PyBuffer_Release` in `drop`, as for an exported buffer: bytes
        // have no `bf_releasebuffer`), so its data stays valid while the view lives.
        unsafe {
            if ffi::PyBytes_CheckExact(raw) == 0 {
                return None;
            }
            let mut view = std::mem::MaybeUninit::<ffi::Py_buffer>::zeroed().assume_init();
            view.buf = ffi::PyBytes_AS_STRING(raw) as *mut std::os::raw::c_void;
            view.obj = obj.clone().into_ptr();
            view.len = ffi::Py_SIZE(raw);
            view.itemsize = 1;
            view.readonly = 1;
            view.ndim = 1;
            Some(Buffer { view })
        }
    }

    pub fn len(&self) -> usize {
        self.view.len as usize
    }

    /// The start of the exported bytes (writable if the buffer was asked for writable).
    pub fn as_mut_ptr(&self) -> *mut u8 {
        self.view.buf.cast()
    }

    pub fn as_slice(&self) -> &[u8] {
        if self.view.len == 0 {
            return &[];
        }
        // SAFETY: an exported buffer is `len` readable bytes at `buf` while it is held.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, self.len()) }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: `view` was filled by a successful PyObject_GetBuffer and is released once.
        // Buffers are only held with the GIL (they live inside functions taking `py`).
        unsafe { ffi::PyBuffer_Release(&mut self.view) }
    }
}

/// `type(obj)` is exactly `bytes`, `bytearray` or `memoryview`.
pub fn is_exact_byte_type(obj: &Bound<'_, PyAny>) -> bool {
    let raw = obj.as_ptr();
    // SAFETY: type checks of a live object.
    unsafe {
        ffi::PyBytes_CheckExact(raw) != 0
            || ffi::PyByteArray_CheckExact(raw) != 0
            || ptr::eq(ffi::Py_TYPE(raw), ptr::addr_of_mut!(ffi::PyMemoryView_Type))
    }
}

extern "C" {
    /// `PyMethod_Type` and `PyMethod_Function` of CPython's C API (bound methods), which
    /// pyo3's ffi does not declare.
    static mut PyMethod_Type: ffi::PyTypeObject;
    fn PyMethod_Function(method: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// The function of a bound method (`PyMethod_Function`, compared by address only), or
/// `None` when `obj` is not exactly a bound method.
pub fn bound_method_function(obj: &Bound<'_, PyAny>) -> Option<*mut ffi::PyObject> {
    // SAFETY: the GIL is held; `obj` is alive. PyMethod_Function is called only on a bound
    // method (exact type checked first) and returns a borrowed reference.
    unsafe {
        let raw = obj.as_ptr();
        if ffi::Py_TYPE(raw) != ptr::addr_of_mut!(PyMethod_Type) {
            return None;
        }
        Some(PyMethod_Function(raw))
    }
}

/// The layout facts probed at run time, for `_core._contract_probes()` (tests and
/// `python -m ferroloop --info`): the offsets of `PyThreadState.context` and
/// `PyContext.ctx_vars` (`None` if the probe failed), and each type's `tp_weaklistoffset`.
pub fn context_offsets(py: Python<'_>) -> Option<(usize, usize)> {
    *CONTEXT_FIELDS.get_or_init(py, || discover(py))
}

/// `type(obj).tp_weaklistoffset`.
pub fn weaklist_offset(obj: &Bound<'_, PyAny>) -> isize {
    // SAFETY: a live object's type is a live type object.
    unsafe { (*ffi::Py_TYPE(obj.as_ptr())).tp_weaklistoffset }
}

/// `os.fsencode(text)` for a `str`: its bytes in the file system encoding (`surrogateescape`).
pub fn fs_encode<'py>(text: &Bound<'py, PyAny>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
    // SAFETY: `text` is a live object (PyUnicode_EncodeFSDefault raises TypeError for anything
    // but a str); a new reference or NULL with an exception set.
    let encoded = unsafe {
        Bound::from_owned_ptr_or_err(text.py(), ffi::PyUnicode_EncodeFSDefault(text.as_ptr()))
    }?;
    Ok(encoded.cast_into::<pyo3::types::PyBytes>()?)
}

/// `os.fsdecode(data)`: a `str` from bytes in the file system encoding (`surrogateescape`).
pub fn fs_decode<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `data` is readable for its length; a new reference or NULL with an exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyUnicode_DecodeFSDefaultAndSize(
                data.as_ptr().cast(),
                data.len() as ffi::Py_ssize_t,
            ),
        )
    }
}
