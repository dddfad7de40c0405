//! The reactor side of the loop: polling for readiness and queueing the reader/writer
//! handles of ready fds in asyncio's `_process_events` order, and the bookkeeping behind
//! `_add_reader`/`_remove_reader`/`_add_writer`/`_remove_writer`.

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ferroloop_core::reactor::{Interest, IoEvent};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyInt, PyTuple, PyWeakrefMethods, PyWeakrefReference};

use super::{Loop, Ready, IO_POOL_SIZE};
use crate::errors::os_error;
use crate::ffi::{check_signals, sole_owner};
use crate::handles::{Args, Handle, Kind};

/// `(fileobj, events, reader, writer)` of one fd, as `loop._fd_key` returns it.
pub(super) type FdKey = (Py<PyAny>, u8, Option<Py<Handle>>, Option<Py<Handle>>);

#[derive(Default)]
pub(super) struct IoHandles {
    pub(super) reader: Option<Py<Handle>>,
    pub(super) writer: Option<Py<Handle>>,
    /// The object the fd was first registered with, when it was not an int (asyncio's
    /// `SelectorKey.fileobj`): a socket closed since still finds its registration by it.
    pub(super) fileobj: Option<Py<PyAny>>,
}

/// asyncio: `selectors._fileobj_to_fd`. `Ok(None)`: a valid integer too large for a C int
/// (asyncio's selector then fails with OverflowError on add, and finds nothing on remove).
fn to_fd(fileobj: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = fileobj.py();
    let number = if fileobj.is_instance_of::<PyInt>() {
        fileobj.clone()
    } else {
        // `int(fileobj.fileno())`; AttributeError, TypeError, ValueError: not a file object.
        let converted = fileobj
            .call_method0("fileno")
            .and_then(|fd| py.get_type::<PyInt>().call1((fd,)));
        match converted {
            Ok(fd) => fd,
            Err(error)
                if error.is_instance_of::<pyo3::exceptions::PyAttributeError>(py)
                    || error.is_instance_of::<PyTypeError>(py)
                    || error.is_instance_of::<PyValueError>(py) =>
            {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    fileobj.repr()?
                )))
            }
            Err(error) => return Err(error),
        }
    };
    if number.lt(0)? {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {number}"
        )));
    }
    Ok(number
        .extract::<i64>()
        .ok()
        .and_then(|fd| RawFd::try_from(fd).ok()))
}

fn c_int_overflow() -> PyErr {
    pyo3::exceptions::PyOverflowError::new_err("Python int too large to convert to C int")
}

impl Loop {
    /// Poll the reactor and queue the reader/writer handles of ready fds, in the order
    /// asyncio's `_process_events` does.
    pub(super) fn poll_io(&self, py: Python<'_>, timeout: Option<Duration>) -> PyResult<()> {
        let mut events = {
            let mut state = self.state.borrow_mut(py);
            if timeout == Some(Duration::ZERO) && state.io.is_empty() {
                return Ok(());
            }
            // Removals since the last poll reach the kernel now (see `Registrar`).
            state.registrar.flush();
            std::mem::take(&mut state.events)
        };
        events.clear();
        let result = if timeout == Some(Duration::ZERO) {
            self.poll_locked(timeout, &mut events)
        } else {
            self.shared.parked.store(true, Ordering::SeqCst);
            let parked_at = self.shared.probe.park();
            let result = py.detach(|| {
                let result = self.poll_locked(timeout, &mut events);
                // Stop other threads' wakeups now, not after the GIL is back.
                self.shared.parked.store(false, Ordering::SeqCst);
                result
            });
            self.shared.probe.unpark(parked_at);
            result
        };
        if let Err(error) = result {
            self.state.borrow_mut(py).events = events;
            if error.kind() == std::io::ErrorKind::Interrupted {
                // A signal arrived: run the Python-level handlers (KeyboardInterrupt, or
                // asyncio.Runner's SIGINT handler), as select() does under PEP 475.
                return check_signals(py);
            }
            return Err(os_error(error));
        }
        let mut garbage: Vec<Py<Handle>> = Vec::new();
        {
            let mut state = self.state.borrow_mut(py);
            let state = &mut *state;
            for event in &events {
                let fd = event.fd;
                state.registrar.rearm(fd);
                let Some(entry) = state.io.get_mut(&fd) else {
                    // Reported for an interest nobody wants any more: it was parked.
                    state.registrar.unpark(fd);
                    continue;
                };
                let mut drop_interest = Interest::NONE;
                if event.readable {
                    if let Some(reader) = &entry.reader {
                        if reader.get().is_cancelled(py) {
                            garbage.extend(entry.reader.take());
                            drop_interest = drop_interest | Interest::READ;
                        } else {
                            state.ready.push_back(Ready::Native(reader.clone_ref(py)));
                        }
                    } else {
                        state.registrar.unpark(fd);
                    }
                }
                if event.writable {
                    if let Some(writer) = &entry.writer {
                        if writer.get().is_cancelled(py) {
                            garbage.extend(entry.writer.take());
                            drop_interest = drop_interest | Interest::WRITE;
                        } else {
                            state.ready.push_back(Ready::Native(writer.clone_ref(py)));
                        }
                    } else {
                        state.registrar.unpark(fd);
                    }
                }
                if !drop_interest.is_empty() {
                    let interest = state.registrar.interest(fd).without(drop_interest);
                    state.registrar.shrink_interest(fd, interest);
                    if interest.is_empty() {
                        state.io.remove(&fd);
                    }
                }
            }
            state.events = events;
        }
        drop(garbage);
        Ok(())
    }

    pub(super) fn poll_locked(
        &self,
        timeout: Option<Duration>,
        events: &mut Vec<IoEvent>,
    ) -> std::io::Result<()> {
        let mut poller = self
            .poller
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        poller.poll(timeout, events)
    }

    pub(super) fn set_io_handle(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        interest: Interest,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        slf.get().check_closed(py)?;
        let fd = slf
            .get()
            .lookup_fd(py, fileobj)?
            .0
            .ok_or_else(c_int_overflow)?;
        let handle = Loop::set_io_handle_fd(
            slf,
            fd,
            callback,
            Args::from_tuple(args),
            None,
            interest,
            false,
        )?;
        if !fileobj.is_instance_of::<PyInt>() {
            let mut state = slf.get().state.borrow_mut(py);
            if let Some(entry) = state.io.get_mut(&fd) {
                entry
                    .fileobj
                    .get_or_insert_with(|| fileobj.clone().unbind());
            }
        }
        Ok(handle)
    }

    /// asyncio: `_BaseSelectorImpl._fileobj_lookup`, the fd of `fileobj`, and whether it was
    /// found by the object it was registered with because the object itself no longer has a
    /// valid fd (a socket closed since: `fileno()` is -1).
    pub(super) fn lookup_fd(
        &self,
        py: Python<'_>,
        fileobj: &Bound<'_, PyAny>,
    ) -> PyResult<(Option<RawFd>, bool)> {
        match to_fd(fileobj) {
            Ok(fd) => Ok((fd, false)),
            Err(error) if error.is_instance_of::<PyValueError>(py) => {
                let state = self.state.borrow(py);
                let found = state.io.iter().find(|(_, entry)| {
                    entry
                        .fileobj
                        .as_ref()
                        .is_some_and(|o| o.as_ptr() == fileobj.as_ptr())
                });
                match found {
                    Some((fd, _)) => Ok((Some(fd), true)),
                    None => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// `_add_reader`/`_add_writer` on a known fd, with an optional context (`None`: a copy
    /// of the current one, as asyncio's `Handle` takes). `same_file`: the caller knows that
    /// `fd` has named the same open file since the loop last registered it (see
    /// `Registrar::set_interest_same_file`).
    pub(crate) fn set_io_handle_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        callback: Bound<'_, PyAny>,
        args: Option<Args>,
        context: Option<Bound<'_, PyAny>>,
        interest: Interest,
        same_file: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed(py)?;
        let handle = this.pooled_or_new(py, Kind::Io, callback, args, context)?;
        let previous = {
            let mut state = this.state.borrow_mut(py);
            let state = &mut *state;
            let wanted = state.registrar.interest(fd) | interest;
            if same_file {
                state.registrar.set_interest_same_file(fd, wanted)
            } else {
                state.registrar.set_interest(fd, wanted)
            }
            .map_err(os_error)?;
            let entry = state.io.get_or_default(fd);
            let slot = if interest == Interest::READ {
                &mut entry.reader
            } else {
                &mut entry.writer
            };
            slot.replace(handle.clone_ref(py))
        };
        if let Some(previous) = previous {
            Handle::cancel_impl(previous.bind(py))?;
        }
        Ok(handle)
    }

    pub(super) fn clear_io_handle(
        slf: &Bound<'_, Self>,
        fileobj: &Bound<'_, PyAny>,
        interest: Interest,
    ) -> PyResult<bool> {
        let py = slf.py();
        if slf.get().state.borrow(py).closed {
            return Ok(false);
        }
        let (Some(fd), closed) = slf.get().lookup_fd(py, fileobj)? else {
            return Ok(false);
        };
        if closed {
            return Loop::clear_closed_io_handle(slf, fd, interest);
        }
        Loop::clear_io_handle_fd(slf, fd, interest, false)
    }

    /// `_remove_reader`/`_remove_writer` of an object closed since it was registered, as
    /// asyncio's selector does it: with no interest left the registration goes, as usual, and
    /// with the removed interest not registered nothing changes; with the other interest
    /// left, the selector's `modify` of the closed fd fails, drops the
    /// whole registration (its handles are not cancelled) and raises `OSError(EBADF)`.
    fn clear_closed_io_handle(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        interest: Interest,
    ) -> PyResult<bool> {
        let py = slf.py();
        let removed = {
            let mut state = slf.get().state.borrow_mut(py);
            let state = &mut *state;
            let current = state.registrar.interest(fd);
            let remaining = current.without(interest);
            // Unchanged events: asyncio's `modify` makes no system call.
            if remaining.is_empty() || remaining == current {
                None
            } else {
                state.registrar.shrink_interest(fd, Interest::NONE);
                state.io.remove(&fd)
            }
        };
        match removed {
            None => Loop::clear_io_handle_fd(slf, fd, interest, false),
            Some(entry) => {
                drop(entry);
                Err(os_error(std::io::Error::from_raw_os_error(libc::EBADF)))
            }
        }
    }

    /// `_remove_reader`/`_remove_writer` on a known fd. `park`: leave the kernel's
    /// registration as it is until a poll reports the fd for nothing (see `Registrar::park`).
    pub(crate) fn clear_io_handle_fd(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        interest: Interest,
        park: bool,
    ) -> PyResult<bool> {
        let py = slf.py();
        let this = slf.get();
        if this.state.borrow(py).closed {
            return Ok(false);
        }
        let previous = {
            let mut state = this.state.borrow_mut(py);
            let state = &mut *state;
            let Some(entry) = state.io.get_mut(&fd) else {
                return Ok(false);
            };
            let slot = if interest == Interest::READ {
                &mut entry.reader
            } else {
                &mut entry.writer
            };
            let Some(previous) = slot.take() else {
                return Ok(false);
            };
            let empty = entry.reader.is_none() && entry.writer.is_none();
            let remaining = state.registrar.interest(fd).without(interest);
            // Applied before the next poll; as asyncio's selector, a failure to unregister
            // (the fd was closed already) is ignored.
            if park {
                state.registrar.park(fd, remaining);
            } else {
                state.registrar.shrink_interest(fd, remaining);
            }
            if empty {
                state.io.remove(&fd);
            }
            previous
        };
        Handle::cancel_impl(previous.bind(py))?;
        this.recycle_io(py, previous);
        Ok(true)
    }

    /// Keep a removed (cancelled) reader or writer handle for reuse, if nothing else can see
    /// it: not the ready queue (an event of this iteration), not a caller that holds it (the
    /// selector view gives handles out), not a weak reference. Not in debug mode, where
    /// handles carry the traceback of where they were made.
    fn recycle_io(&self, py: Python<'_>, handle: Py<Handle>) {
        if self.is_debug() || !sole_owner(handle.bind(py).as_any()) {
            handle.drop_ref(py);
            return;
        }
        handle.get().clear(py);
        let mut state = self.state.borrow_mut(py);
        if state.io_pool.len() < IO_POOL_SIZE {
            state.io_pool.push(handle);
            return;
        }
        drop(state);
        handle.drop_ref(py);
    }

    /// Remember the socket object (a weak reference) whose `sock_*` wait parked `fd`'s reader.
    pub(crate) fn set_parked_owner(&self, py: Python<'_>, fd: RawFd, owner: Py<PyAny>) {
        let previous = self.state.borrow_mut(py).parked_owners.insert(fd, owner);
        drop(previous);
    }

    /// Whether `sock` itself, still alive, parked `fd`'s reader: then the fd has named the
    /// same open file since (a socket object never gets another fd).
    pub(crate) fn parked_owner_is(
        &self,
        py: Python<'_>,
        fd: RawFd,
        sock: &Bound<'_, PyAny>,
    ) -> bool {
        let owner = self
            .state
            .borrow(py)
            .parked_owners
            .get(&fd)
            .map(|owner| owner.clone_ref(py));
        owner.is_some_and(|owner| {
            owner
                .bind(py)
                .cast::<PyWeakrefReference>()
                .ok()
                .and_then(|owner| owner.upgrade())
                .is_some_and(|owner| owner.is(sock))
        })
    }
}
