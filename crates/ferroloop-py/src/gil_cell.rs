//! `GilCell`: interior mutability guarded by the GIL.
//!
//! `#[pyclass]` types must be `Sync`, but the loop's state is only ever touched by a thread
//! that holds the GIL: the loop's own thread, or another thread inside
//! `call_soon_threadsafe` (Python code always runs with the GIL held). So a `RefCell` is
//! enough, provided every access proves it holds the GIL by passing a `Python` token.
//!
//! Rules:
//! 1. Every borrow takes a `Python<'_>` token (the GIL is held for the borrow's lifetime).
//! 2. Never call into Python while a borrow is alive: Python code may re-enter the loop
//!    (a `__del__`, a callback) and borrow again. Take what you need, drop the borrow, then
//!    call. Objects popped out of a cell are dropped after the borrow ends for the same reason.
//! 3. The module is declared `gil_used = true`: a free-threaded CPython (`Py_GIL_DISABLED`)
//!    turns its GIL back on when it imports ferroloop (with a warning), which is what makes
//!    this sound there. Nothing refuses such a build yet, and running it with the GIL forced
//!    off (`PYTHON_GIL=0`) would make this unsound (issue #10).

use std::cell::{Ref, RefCell, RefMut};

use pyo3::Python;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: all access goes through `borrow`/`borrow_mut`, which require a `Python` token, so
// only one thread (the one holding the GIL) can reach the `RefCell` at any time. The module
// is declared `gil_used = true`, so the interpreter keeps a GIL while it is loaded (unless
// forced off with `PYTHON_GIL=0` on a free-threaded build: see rule 3).
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        Self(RefCell::new(value))
    }

    #[inline]
    pub fn borrow<'a>(&'a self, _py: Python<'_>) -> Ref<'a, T> {
        self.0.borrow()
    }

    #[inline]
    pub fn borrow_mut<'a>(&'a self, _py: Python<'_>) -> RefMut<'a, T> {
        self.0.borrow_mut()
    }
}
