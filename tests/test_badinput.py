"""Bad input: same exceptions as asyncio (exact type and message), never a Rust panic."""

import asyncio
import contextvars
import math
import sys
import weakref

import pytest

import ferroloop

from conftest import asyncio_loop


async def _coro_func():
    pass


def noncallable_outcome(method, callback):
    """asyncio's ``_check_callback`` error, written down (call_later reports call_at)."""
    name = "call_at" if method == "call_later" else method
    if asyncio.iscoroutine(callback) or asyncio.iscoroutinefunction(callback):
        return TypeError, f"coroutines cannot be used with {name}()"
    return TypeError, f"a callable object was expected by {name}(), got {callback!r}"


def outcome(func):
    try:
        func()
    except BaseException as e:  # noqa: BLE001
        return type(e), str(e)
    return None


def compare(loop, call, debug, inside=False):
    """(asyncio's outcome, this loop's outcome) for call(loop); with `inside`, the call is
    made from a callback of the running loop (ferroloop's fast methods take a shorter path
    there, see event_loop/fast.rs)."""
    ref = asyncio_loop()
    ref.set_debug(debug)
    loop.set_debug(debug)
    try:
        expected = outcome_of(ref, call, inside)
    finally:
        ref.close()
    got = outcome_of(loop, call, inside)
    return expected, got


def outcome_of(lp, call, inside):
    if not inside:
        return outcome(lambda: call(lp))
    result = []

    def callback():
        result.append(outcome(lambda: call(lp)))
        lp.stop()

    lp.call_soon(callback)
    lp.run_forever()
    return result[0]


SCHEDULERS = {
    "call_soon": lambda lp, cb: lp.call_soon(cb),
    "call_soon_threadsafe": lambda lp, cb: lp.call_soon_threadsafe(cb),
    "call_later": lambda lp, cb: lp.call_later(1, cb),
    "call_at": lambda lp, cb: lp.call_at(1, cb),
}

NONCALLABLES = {
    "int": lambda: 1,
    "None": lambda: None,
    "str": lambda: "text",
    "coroutine_function": lambda: _coro_func,
}


@pytest.mark.parametrize("inside", [False, True], ids=["outside", "inside"])
@pytest.mark.parametrize("kind", list(NONCALLABLES))
@pytest.mark.parametrize("method", list(SCHEDULERS))
def test_noncallable_debug_same_as_asyncio(loop, method, kind, inside):
    cb = NONCALLABLES[kind]()
    expected, got = compare(loop, lambda lp: SCHEDULERS[method](lp, cb), debug=True, inside=inside)
    assert expected == noncallable_outcome(method, cb)
    assert got == expected


def test_coroutine_object_debug_same_as_asyncio(loop):
    for method in SCHEDULERS:
        coro = _coro_func()
        try:
            expected, got = compare(loop, lambda lp: SCHEDULERS[method](lp, coro), debug=True)
        finally:
            coro.close()
        assert expected == noncallable_outcome(method, coro)
        assert got == expected


@pytest.mark.parametrize("kind", ["int", "None", "str", "coroutine_object"])
@pytest.mark.parametrize("method", list(SCHEDULERS))
def test_noncallable_ferroloop_always_typeerror(method, kind):
    # deliberate deviation: ferroloop checks outside debug mode too (asyncio fails later)
    lp = ferroloop.new_event_loop()
    try:
        cb = _coro_func() if kind == "coroutine_object" else NONCALLABLES[kind]()
        ref = asyncio_loop()
        ref.set_debug(True)
        try:
            expected = outcome(lambda: SCHEDULERS[method](ref, cb))
        finally:
            ref.close()
        assert expected == noncallable_outcome(method, cb)
        assert outcome(lambda: SCHEDULERS[method](lp, cb)) == expected
    finally:
        lp.close()
        if kind == "coroutine_object":
            cb.close()


BAD_DELAYS = {
    "None": None,
    "str": "1",
    "list": [1],
    "complex": 1j,
    "object": object(),
}


def _unsupported_plus(value):
    return TypeError, f"unsupported operand type(s) for +: 'float' and '{type(value).__name__}'"


# asyncio's outcome of call_later(delay, print): None where it accepts the value (a complex
# delay makes a complex deadline, which fails only once compared with another timer's).
ASYNCIO_BAD_DELAY = {
    "None": (TypeError, "delay must not be None")
    if sys.version_info >= (3, 11)
    else _unsupported_plus(None),
    "str": _unsupported_plus("1"),
    "list": _unsupported_plus([1]),
    "complex": None,
    "object": _unsupported_plus(object()),
}


@pytest.mark.parametrize("value", list(BAD_DELAYS))
def test_bad_delay_same_as_asyncio(loop, value):
    d = BAD_DELAYS[value]

    def call(lp):
        lp.call_later(d, print).cancel()

    expected, got = compare(loop, call, debug=False)
    assert expected == ASYNCIO_BAD_DELAY[value]
    if expected is None:
        # asyncio accepts it (e.g. a complex delay) and breaks later; a TypeError is fine
        assert got is None or got[0] is TypeError
    else:
        assert got == expected


@pytest.mark.parametrize("value", list(BAD_DELAYS))
def test_bad_when_same_as_asyncio(loop, value):
    w = BAD_DELAYS[value]

    def call(lp):
        h = lp.call_at(w, print)
        # asyncio may accept the value at scheduling time; make it fail the same way later
        h.cancel()

    expected, got = compare(loop, call, debug=False)
    # asyncio checks only None (3.10: an assert in TimerHandle); the rest fails later.
    if w is not None:
        assert expected is None
    elif sys.version_info >= (3, 11):
        assert expected == (TypeError, "when cannot be None")
    else:
        assert expected == (AssertionError, "")
    if w is None and sys.version_info < (3, 11) and isinstance(loop, ferroloop.Loop):
        # docs: deliberate deviation. asyncio 3.10's call_at(None) has no check (only an
        # `assert when is not None` in TimerHandle, gone under -O) and breaks later;
        # ferroloop raises 3.11+'s TypeError.
        assert expected is None or expected[0] is AssertionError
        assert got == (TypeError, "when cannot be None")
    elif expected is None:
        # asyncio accepted it (no check in call_at); ferroloop must not crash either
        assert got is None or got[0] is TypeError
    else:
        assert got == expected


def test_numeric_like_delays(loop):
    from decimal import Decimal
    from fractions import Fraction

    out = []
    for d in (0, 0.0, False, Fraction(1, 1000), Decimal("0.001")):
        expected, got = compare(
            loop, lambda lp: lp.call_later(d, out.append, d).cancel(), debug=False
        )
        if isinstance(d, Decimal):
            # float + Decimal is not defined
            plus = "unsupported operand type(s) for +: 'float' and 'decimal.Decimal'"
            assert expected == (TypeError, plus)
        else:
            assert expected is None, d
        assert got == expected, d


def test_nan_delay_ferroloop_valueerror():
    # deliberate deviation: asyncio accepts NaN and misbehaves later
    lp = ferroloop.new_event_loop()
    try:
        with pytest.raises(ValueError):
            lp.call_later(math.nan, print)
        with pytest.raises(ValueError):
            lp.call_at(math.nan, print)
    finally:
        lp.close()


def test_nan_accepted_by_asyncio():
    # What ferroloop deviates from (above): asyncio schedules a timer for a NaN deadline.
    lp = asyncio_loop()
    try:
        later = lp.call_later(math.nan, print)
        at = lp.call_at(math.nan, print)
        assert math.isnan(later.when()) and math.isnan(at.when())
        later.cancel()
        at.cancel()
    finally:
        lp.close()


@pytest.mark.parametrize("value", [math.inf, -math.inf, 1e308, -1e308])
def test_infinite_delay_no_panic(loop, value):
    out = []
    h = loop.call_later(value, out.append, 1)
    h2 = loop.call_at(value, out.append, 2)
    loop.call_soon(loop.stop)
    loop.run_forever()
    h.cancel()
    h2.cancel()
    if value < 0:
        assert sorted(out) == [1, 2]
    else:
        assert out == []


def test_infinite_timer_then_stop_from_timer(loop):
    out = []
    never = loop.call_later(math.inf, out.append, "inf")

    def stop():
        out.append("stop")
        loop.stop()

    loop.call_later(0.001, stop)
    loop.run_forever()
    # The finite timer ran and stopped the loop; the infinite one is still pending.
    assert out == ["stop"]
    assert never.when() == math.inf and not never.cancelled()
    never.cancel()


def test_context_wrong_type(loop):
    for method in ("call_soon", "call_soon_threadsafe"):

        def call(lp, method=method):
            h = getattr(lp, method)(print, context=object())
            h.cancel()

        expected, got = compare(loop, call, debug=False)
        # asyncio accepts any object as the context (and fails when the handle runs, below).
        assert expected is None
        assert got is None or got[0] is TypeError


def test_context_wrong_type_runs_like_asyncio(loop):
    # asyncio accepts any context object and fails when the handle runs
    def scenario(lp):
        seen = []
        lp.set_exception_handler(lambda lp, ctx: seen.append(ctx))
        try:
            lp.call_soon(print, context=42)
        except TypeError as e:
            return ("rejected", str(e))
        lp.call_soon(lp.stop)
        lp.run_forever()
        return [(type(c["exception"]), str(c["exception"])) for c in seen]

    ref = asyncio_loop()
    try:
        expected = scenario(ref)
    finally:
        ref.close()
    assert expected == [(AttributeError, "'int' object has no attribute 'run'")]
    assert scenario(loop) == expected


def test_unknown_kwarg(loop):
    expected, got = compare(loop, lambda lp: lp.call_soon(print, foo=1), debug=False)
    assert expected == (
        TypeError,
        "BaseEventLoop.call_soon() got an unexpected keyword argument 'foo'",
    )
    assert got[0] is TypeError
    assert got[1].replace("BaseEventLoop.", "") == expected[1].replace("BaseEventLoop.", "")


# asyncio's outcome of each (None: accepted), written down.
_MULTIPLE = "BaseEventLoop.{}() got multiple values for argument '{}'"
_MISSING = "BaseEventLoop.{}() missing 1 required positional argument: 'callback'"
ASYNCIO_KEYWORD_OUTCOMES = {
    "callback=": None,
    "callback= context=": None,
    "duplicate callback": (TypeError, _MULTIPLE.format("call_soon", "callback")),
    "args and context=None": None,
    "delay= callback=": None,
    "delay given twice": (TypeError, _MULTIPLE.format("call_later", "delay")),
    "when= callback=": None,
    "threadsafe callback= context=None": None,
    "threadsafe unknown": (
        TypeError,
        "BaseEventLoop.call_soon_threadsafe() got an unexpected keyword argument 'bogus'",
    ),
    "later missing callback": (TypeError, _MISSING.format("call_later")),
    "at missing callback": (TypeError, _MISSING.format("call_at")),
}

KEYWORD_CALLS = {
    "callback=": lambda lp: lp.call_soon(callback=print),
    "callback= context=": lambda lp: lp.call_soon(
        callback=print, context=contextvars.copy_context()
    ),
    "duplicate callback": lambda lp: lp.call_soon(print, callback=print),
    "args and context=None": lambda lp: lp.call_soon(print, 1, 2, context=None),
    "delay= callback=": lambda lp: lp.call_later(delay=0, callback=print),
    "delay given twice": lambda lp: lp.call_later(print, delay=1),
    "when= callback=": lambda lp: lp.call_at(when=0, callback=print),
    "threadsafe callback= context=None": lambda lp: lp.call_soon_threadsafe(
        callback=print, context=None
    ),
    "threadsafe unknown": lambda lp: lp.call_soon_threadsafe(print, bogus=1),
    "later missing callback": lambda lp: lp.call_later(1),
    "at missing callback": lambda lp: lp.call_at(when=1),
}


@pytest.mark.parametrize("inside", [False, True], ids=["outside", "inside"])
@pytest.mark.parametrize("name", list(KEYWORD_CALLS))
def test_keyword_arguments_same_as_asyncio(loop, name, inside):
    # ferroloop parses these signatures itself (event_loop/fast.rs): the same outcomes and
    # messages as asyncio's Python signatures, outside the loop and inside a callback.
    expected, got = compare(loop, KEYWORD_CALLS[name], debug=False, inside=inside)
    assert expected == ASYNCIO_KEYWORD_OUTCOMES[name]
    if expected is None:
        assert got is None
    else:
        assert got is not None and got[0] is expected[0] is TypeError
        assert got[1].replace("BaseEventLoop.", "") == expected[1].replace("BaseEventLoop.", "")


def test_missing_args(loop):
    for call in (
        lambda lp: lp.call_soon(),
        lambda lp: lp.call_later(1),
        lambda lp: lp.call_at(),
        lambda lp: lp.add_reader(0),
    ):
        expected, got = compare(loop, call, debug=False)
        assert got is not None and got[0] is expected[0] is TypeError


CLOSED_METHODS = {
    "call_soon": lambda lp: lp.call_soon(print),
    "call_soon_threadsafe": lambda lp: lp.call_soon_threadsafe(print),
    "call_later": lambda lp: lp.call_later(0, print),
    "call_at": lambda lp: lp.call_at(0, print),
    "run_forever": lambda lp: lp.run_forever(),
    "run_in_executor": lambda lp: lp.run_in_executor(None, print),
    "add_reader": lambda lp: lp.add_reader(0, print),
    "add_writer": lambda lp: lp.add_writer(0, print),
    "remove_reader": lambda lp: lp.remove_reader(0),
    "remove_writer": lambda lp: lp.remove_writer(0),
    "add_signal_handler": lambda lp: lp.add_signal_handler(10, print),
    "remove_signal_handler": lambda lp: lp.remove_signal_handler(10),
    "set_debug": lambda lp: lp.set_debug(True),
    "create_future": lambda lp: lp.create_future().cancel(),
    "stop": lambda lp: lp.stop(),
    "time": lambda lp: type(lp.time()),
    "close": lambda lp: lp.close(),
}


# What asyncio raises on a closed loop (None: nothing), written down.
CLOSED_RAISES = {
    "call_soon", "call_soon_threadsafe", "call_later", "call_at", "run_forever",
    "run_in_executor", "add_reader", "add_writer", "add_signal_handler",
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLOSED_METHODS))
def test_closed_loop_methods_same_as_asyncio(loop, name):
    ref = asyncio_loop()
    ref.close()
    expected = outcome(lambda: CLOSED_METHODS[name](ref))
    assert expected == ((RuntimeError, "Event loop is closed") if name in CLOSED_RAISES else None)
    loop.close()
    got = outcome(lambda: CLOSED_METHODS[name](loop))
    assert got == expected


def test_closed_loop_coroutine_methods(loop):
    async def noop():
        pass

    ref = asyncio_loop()
    ref.close()
    loop.close()
    for name in ("create_task", "run_until_complete"):
        c1, c2 = noop(), noop()
        expected = outcome(lambda: getattr(ref, name)(c1))
        got = outcome(lambda: getattr(loop, name)(c2))
        c1.close()
        c2.close()
        assert got == expected == (RuntimeError, "Event loop is closed"), name


# --- never a panic -------------------------------------------------------------------------


def _no_panic(func):
    try:
        func()
    except BaseException as e:  # noqa: BLE001
        assert type(e).__name__ != "PanicException", repr(e)
        assert isinstance(e, Exception), repr(e)
        return e
    return None


WEIRD_VALUES = [
    None,
    -1,
    0,
    2**31,
    2**64,
    -(2**64),
    2**200,
    1.5,
    math.inf,
    -math.inf,
    math.nan,
    "x",
    b"x",
    [],
    {},
    object(),
    print,
    True,
]


def _call_with_weird_args(m, handles):
    """Call m with every shape of weird arguments; the exception types (None: no error)."""
    outcomes = []
    for v in WEIRD_VALUES:
        for args in ((v,), (v, v), (v, print), (print, v), (v, v, v)):

            def call(args=args):
                r = m(*args)
                if isinstance(r, asyncio.Handle):
                    handles.append(r)

            e = _no_panic(call)
            outcomes.append(None if e is None else type(e))
    return outcomes


@pytest.mark.parametrize(
    "method",
    [
        "call_soon",
        "call_soon_threadsafe",
        "call_later",
        "call_at",
        "_add_reader",
        "_add_writer",
        "_remove_reader",
        "_remove_writer",
        "add_reader",
        "add_writer",
        "remove_reader",
        "remove_writer",
        "time",
        "stop",
        "get_debug",
        "_run_once",
        "set_debug",
        "is_closed",
        "is_running",
    ],
)
def test_native_methods_weird_args_no_panic(loop, method):
    m = getattr(loop, method)
    handles = []
    _call_with_weird_args(m, handles)
    for h in handles:
        h.cancel()
    for fd in (0, 1, 2):
        loop.remove_reader(fd)
        loop.remove_writer(fd)
    loop._test_errors.clear()
    loop.set_debug(False)
    loop._stopping = False


@pytest.mark.parametrize("method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at"])
def test_fast_methods_weird_args_inside_the_loop_no_panic(loop, method):
    # Inside a callback these methods skip pyo3's trampoline (event_loop/fast.rs): the same
    # outcomes as outside, never a panic.
    m = getattr(loop, method)
    handles, inside = [], []

    def attempt_all():
        inside.extend(_call_with_weird_args(m, handles))
        loop.stop()

    loop.call_soon(attempt_all)
    loop.run_forever()
    for h in handles:
        h.cancel()
    outcomes = _call_with_weird_args(m, handles)
    loop.stop()
    for h in handles:
        h.cancel()
    loop._stopping = False
    if method != "call_at":
        # asyncio's call_at fails on a non-number deadline only when the heap holds another
        # timer to compare it with, so its outcome depends on what is pending.
        assert inside == outcomes


def test_handle_methods_weird_args_no_panic(loop):
    h = loop.call_soon(print)
    t = loop.call_later(10, print)
    for v in WEIRD_VALUES:
        _no_panic(lambda: h.cancel(v))
        _no_panic(lambda: t == v)
        _no_panic(lambda: t < v)
        _no_panic(lambda: t.when(v))
        _no_panic(lambda: hash(t))
    h.cancel()
    t.cancel()


@pytest.mark.expect_errors
def test_callbacks_that_raise_no_panic(loop, loop_errors):
    class WeirdError(Exception):
        def __str__(self):
            raise RuntimeError("str fails")

    class BadRepr:
        def __repr__(self):
            raise RuntimeError("repr fails")

    def raise_weird(*a):
        raise WeirdError

    loop.call_soon(raise_weird, BadRepr())
    loop.call_later(0, raise_weird)
    loop.call_later(0.01, loop.stop)
    assert _no_panic(loop.run_forever) is None
    loop.stop()
    loop.call_soon(loop.stop)
    loop.run_forever()
    # Both errors reached the exception handler, as on asyncio, despite the failing reprs.
    assert [type(c["exception"]) for c in loop_errors] == [WeirdError, WeirdError]
    assert all(c["message"].startswith("Exception in callback ") for c in loop_errors)


def test_bad_repr_args_handle_repr_same_as_asyncio(loop):
    class BadRepr:
        def __repr__(self):
            raise RuntimeError("repr fails")

    def call(lp):
        h = lp.call_soon(print, BadRepr())
        try:
            return repr(h)
        finally:
            h.cancel()

    expected, got = compare(loop, call, debug=False)
    # asyncio's repr of a handle whose argument's repr fails: reprlib gives a placeholder.
    assert expected is None
    assert got == expected


def test_reentrant_run_once_in_callback(loop):
    ref = asyncio_loop()
    results = {}

    def scenario(lp, key):
        out = []

        def cb():
            out.append(outcome(lp._run_once))

        lp.call_soon(cb)
        lp.call_soon(lp.stop)
        e = _no_panic(lp.run_forever)
        results[key] = (out, None if e is None else (type(e), str(e)))

    try:
        scenario(ref, "asyncio")
    finally:
        ref.close()
    scenario(loop, "loop")
    # asyncio runs the nested iteration (which runs the stop callback), then its own
    # iteration, counting on the callbacks it saw, fails popping an empty queue.
    assert results["asyncio"] == ([None], (IndexError, "pop from an empty deque"))
    if isinstance(loop, ferroloop.Loop):
        # ferroloop runs the nested iteration too, and its own ends cleanly (a deviation:
        # no IndexError), the loop stopped and reusable.
        assert results["loop"] == ([None], None)
        loop.call_soon(loop.stop)
        assert _no_panic(loop.run_forever) is None
    else:
        assert results["loop"] == results["asyncio"]


def test_close_inside_callback(loop):
    ref = asyncio_loop()
    try:
        res = []

        def cb(lp):
            res.append(outcome(lp.close))
            lp.stop()

        ref.call_soon(cb, ref)
        ref.run_forever()
        expected = res.pop()
        loop.call_soon(cb, loop)
        _no_panic(loop.run_forever)
        assert res == [expected]
        assert expected == (RuntimeError, "Cannot close a running event loop")
    finally:
        ref.close()


def test_run_forever_inside_callback(loop):
    res = []

    def cb():
        res.append(outcome(loop.run_forever))
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert res == [(RuntimeError, "This event loop is already running")]


def _returns_within(func, seconds=5):
    import threading

    box = []
    t = threading.Thread(target=lambda: box.append(outcome(func)), daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"{func} did not return within {seconds} s (blocked)"
    return box[0]


def test_native_close_native_twice_no_panic():
    # ferroloop's own: the native part closed again after close() is a no-op.
    loop = ferroloop.new_event_loop()
    loop.close()
    assert _no_panic(loop._close_native) is None
    assert loop.is_closed()


def test_run_once_on_closed_loop_no_hang(loop):
    # asyncio: AttributeError("'NoneType' object has no attribute 'select'"); any Exception
    # is acceptable, blocking forever is not
    loop.close()
    res = _returns_within(loop._run_once)
    assert res is None or (issubclass(res[0], Exception) and res[0].__name__ != "PanicException")


def test_cancel_handle_inside_own_callback(loop):
    out = []
    holder = {}

    def cb():
        holder["h"].cancel()
        out.append(holder["h"].cancelled())

    holder["h"] = loop.call_soon(cb)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == [True]


def test_cancel_timer_inside_own_callback(loop):
    out = []
    holder = {}

    def cb():
        holder["t"].cancel()
        out.append(holder["t"].cancelled())

    holder["t"] = loop.call_later(0, cb)
    loop.call_later(0.01, loop.stop)
    loop.run_forever()
    assert out == [True]


def test_exception_handler_that_raises(loop, caplog):
    def bad_handler(lp, ctx):
        raise RuntimeError("handler fails")

    loop.set_exception_handler(bad_handler)

    def bad():
        raise ValueError("cb")

    loop.call_soon(bad)
    loop.call_soon(loop.stop)
    with caplog.at_level("ERROR", logger="asyncio"):
        loop.run_forever()
    msgs = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(msgs) == 1
    assert msgs[0].startswith("Unhandled error in exception handler\ncontext: {'message': ")


def test_exception_handler_raising_baseexception(loop):
    def bad_handler(lp, ctx):
        raise KeyboardInterrupt

    loop.set_exception_handler(bad_handler)
    out = []

    def bad():
        raise ValueError("cb")

    loop.call_soon(bad)
    loop.call_soon(out.append, "after")
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()
    loop.set_exception_handler(lambda lp, ctx: None)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert out == ["after"]


def test_set_exception_handler_bad(loop):
    expected, got = compare(loop, lambda lp: lp.set_exception_handler(1), debug=False)
    assert expected == (TypeError, "A callable object or None is expected, got 1")
    assert got == expected


class _Probe:
    pass


@pytest.mark.parametrize("inside", [False, True], ids=["outside", "inside"])
@pytest.mark.parametrize("method", list(SCHEDULERS))
def test_a_refused_call_releases_its_arguments_at_once(loop, method, inside):
    # The arguments of a call that fails are released before it returns, inside the loop
    # (ferroloop's direct path) as outside (through pyo3's bookkeeping), as on asyncio.
    calls = {
        "call_soon": lambda lp, arg: lp.call_soon(1, arg, arg),
        "call_soon_threadsafe": lambda lp, arg: lp.call_soon_threadsafe(1, arg, arg),
        "call_later": lambda lp, arg: lp.call_later(1, 1, arg, arg),
        "call_at": lambda lp, arg: lp.call_at(1, 1, arg, arg),
    }
    loop.set_debug(True)  # asyncio checks the callback in debug mode only

    def attempt():
        arg = _Probe()
        ref = weakref.ref(arg)
        with pytest.raises(TypeError):
            calls[method](loop, arg)
        del arg
        return ref() is None

    if not inside:
        assert attempt()
        return
    results = []

    def callback():
        results.append(attempt())
        loop.stop()

    loop.call_soon(callback)
    loop.run_forever()
    assert results == [True]
