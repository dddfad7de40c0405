//! What asyncio's streams run beneath `StreamReader` for each received chunk:
//! `StreamReaderProtocol.data_received(data)`, its `_stream_reader` property,
//! `StreamReader.feed_data(data)` and `_wakeup_waiter()`, four Python frames, done here by a
//! native reader (`stream.rs`, and `tls.rs` for a TLS transport's application data).
//!
//! Only for asyncio's own classes, as they are: the protocol's type is exactly
//! `asyncio.streams.StreamReaderProtocol`, the reader's exactly `StreamReader`, and the four
//! methods a call would take are asyncio's functions (looked up on each call as Python looks
//! them up: an attribute of the instance or a patched class shadows them, and then asyncio's
//! code runs). Every attribute is read and written by name, in asyncio's order, so a property
//! or an odd value behaves as there; `_eof` set (asyncio asserts) and anything unexpected
//! before the first write leave the call to Python. `StreamReader` and `StreamWriter` stay
//! asyncio's classes; only the frames go (about 2,000 instructions a chunk on 3.11).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyType};

use crate::ffi::{bytearray_append, is_exact_int, type_lookup, unbound_method, weakref_target};

/// asyncio's classes and the functions of theirs that the chain runs, as `asyncio.streams`
/// held them when first needed.
struct Streams {
    protocol: Py<PyType>,
    reader: Py<PyType>,
    data_received: Py<PyAny>,
    /// The `_stream_reader` property object itself.
    stream_reader: Py<PyAny>,
    feed_data: Py<PyAny>,
    wakeup_waiter: Py<PyAny>,
}

static STREAMS: PyOnceLock<Option<Streams>> = PyOnceLock::new();

fn streams(py: Python<'_>) -> Option<&Streams> {
    STREAMS
        .get_or_init(py, || {
            let load = || -> PyResult<Streams> {
                let module = py.import("asyncio.streams")?;
                let protocol = module
                    .getattr("StreamReaderProtocol")?
                    .cast_into::<PyType>()?;
                let reader = module.getattr("StreamReader")?.cast_into::<PyType>()?;
                let own = |class: &Bound<'_, PyType>, name: &str| -> PyResult<Py<PyAny>> {
                    type_lookup(class, &pyo3::types::PyString::intern(py, name))
                        .map(Bound::unbind)
                        .ok_or_else(|| pyo3::exceptions::PyAttributeError::new_err(name.to_owned()))
                };
                Ok(Streams {
                    data_received: own(&protocol, "data_received")?,
                    stream_reader: own(&protocol, "_stream_reader")?,
                    feed_data: own(&reader, "feed_data")?,
                    wakeup_waiter: own(&reader, "_wakeup_waiter")?,
                    protocol: protocol.unbind(),
                    reader: reader.unbind(),
                })
            };
            // An asyncio without these names: every call stays Python's.
            load().ok()
        })
        .as_ref()
}

/// `protocol.data_received(data)` for a `data` a native reader received (a `bytes`): done
/// here when `protocol` is asyncio's `StreamReaderProtocol` as it is, else the method's call.
/// An error is what `data_received` raised (or asyncio's code would have raised from it).
#[inline]
pub(crate) fn data_received(protocol: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = protocol.py();
    let handled = match streams(py) {
        Some(streams) if protocol.get_type().is(streams.protocol.bind(py)) => {
            feed(streams, protocol, data)?
        }
        _ => false,
    };
    if !handled {
        protocol.call_method1(intern!(py, "data_received"), (data,))?;
    }
    Ok(())
}

/// The chain for a `StreamReaderProtocol`: `Ok(true)` when done here, `Ok(false)` when the
/// caller has to call `data_received` (nothing was changed then).
fn feed(streams: &Streams, protocol: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let Ok(data) = data.cast::<PyBytes>() else {
        return Ok(false);
    };
    let is = |found: Option<Bound<'_, PyAny>>, function: &Py<PyAny>| {
        found.is_some_and(|found| found.is(function.bind(py)))
    };
    if !is(
        unbound_method(protocol, intern!(py, "data_received")),
        &streams.data_received,
    ) || !is(
        type_lookup(&protocol.get_type(), intern!(py, "_stream_reader")),
        &streams.stream_reader,
    ) {
        return Ok(false);
    }
    // StreamReaderProtocol.data_received: `reader = self._stream_reader`, the property:
    // `self._stream_reader_wr`, None or a weak reference.
    let reference = protocol.getattr(intern!(py, "_stream_reader_wr"))?;
    if reference.is_none() {
        return Ok(true);
    }
    let Some(reader) = weakref_target(&reference) else {
        return Ok(false);
    };
    let Some(reader) = reader else {
        // `if reader is not None: reader.feed_data(data)`.
        return Ok(true);
    };
    if !reader.get_type().is(streams.reader.bind(py))
        || !is(
            unbound_method(&reader, intern!(py, "feed_data")),
            &streams.feed_data,
        )
        || !is(
            unbound_method(&reader, intern!(py, "_wakeup_waiter")),
            &streams.wakeup_waiter,
        )
    {
        return Ok(false);
    }
    // StreamReader.feed_data: `assert not self._eof` (left to asyncio's code, which raises
    // or, under -O, goes on); `if not data: return`.
    if reader.getattr(intern!(py, "_eof"))?.is_truthy()? {
        return Ok(false);
    }
    let bytes = data.as_bytes();
    if bytes.is_empty() {
        return Ok(true);
    }
    // `self._buffer.extend(data)`.
    let buffer = reader.getattr(intern!(py, "_buffer"))?;
    if buffer.is_exact_instance_of::<PyByteArray>() {
        bytearray_append(&buffer, bytes)?;
    } else {
        buffer.call_method1(intern!(py, "extend"), (data,))?;
    }
    // `self._wakeup_waiter()`.
    let waiter = reader.getattr(intern!(py, "_waiter"))?;
    if !waiter.is_none() {
        reader.setattr(intern!(py, "_waiter"), py.None())?;
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
    }
    // Pause reading once the buffer holds more than twice the limit.
    let transport = reader.getattr(intern!(py, "_transport"))?;
    if transport.is_none() || reader.getattr(intern!(py, "_paused"))?.is_truthy()? {
        return Ok(true);
    }
    let size = reader.getattr(intern!(py, "_buffer"))?.len()?;
    let limit = reader.getattr(intern!(py, "_limit"))?;
    let twice = match is_exact_int(&limit) {
        true => limit.extract::<i64>().ok().and_then(|l| l.checked_mul(2)),
        false => None,
    };
    let over = match twice {
        Some(twice) => i64::try_from(size).map_or(true, |size| size > twice),
        None => size
            .into_pyobject(py)?
            .gt(2i64.into_pyobject(py)?.mul(&limit)?)?,
    };
    if over {
        match transport.call_method0(intern!(py, "pause_reading")) {
            Ok(_) => reader.setattr(intern!(py, "_paused"), true)?,
            Err(error) if error.is_instance_of::<pyo3::exceptions::PyNotImplementedError>(py) => {
                reader.setattr(intern!(py, "_transport"), py.None())?
            }
            Err(error) => return Err(error),
        }
    }
    Ok(true)
}
