"""ferroloop reuses `call_soon` handles that ran and that nobody references any more.

A reused handle must never be one the program can still see: these tests hold handles in
every way a program can (a reference, a weak reference, a cancelled handle) and check that
callbacks, arguments and contexts never leak from one use to the next. They run on both loops:
on asyncio they simply describe asyncio's behaviour.
"""

import contextvars
import gc
import weakref

var = contextvars.ContextVar("var", default="unset")


def test_many_ignored_handles_run_once_in_order_with_their_args(loop):
    seen = []
    for round_ in range(5):
        for i in range(600):
            loop.call_soon(seen.append, (round_, i))
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert seen == [(r, i) for r in range(5) for i in range(600)]


def test_a_kept_handle_is_never_reused(loop):
    calls = []
    kept = loop.call_soon(calls.append, "first")
    loop.call_soon(loop.stop)
    loop.run_forever()
    others = [loop.call_soon(calls.append, n) for n in range(10)]
    assert all(other is not kept for other in others)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", *range(10)]
    assert not kept.cancelled()


def test_a_weakly_referenced_handle_is_never_reused(loop):
    calls = []
    ref = weakref.ref(loop.call_soon(calls.append, "first"))
    loop.call_soon(loop.stop)
    loop.run_forever()
    gc.collect()
    for n in range(10):
        loop.call_soon(calls.append, n)
    assert all(ref() is None or not ref().cancelled() for _ in range(1))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", *range(10)]


def test_cancelled_and_reused_handles_do_not_mix(loop):
    calls = []
    for i in range(300):
        h = loop.call_soon(calls.append, ("cancelled", i))
        h.cancel()
        loop.call_soon(calls.append, ("ran", i))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [("ran", i) for i in range(300)]
    for i in range(300):
        loop.call_soon(calls.append, ("again", i))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls[300:] == [("again", i) for i in range(300)]


def test_reused_handles_get_the_new_callers_context(loop):
    seen = []
    for i in range(400):
        token = var.set(f"v{i}")
        loop.call_soon(lambda: seen.append(var.get()))
        var.reset(token)
        if i % 50 == 0:
            loop.call_soon(loop.stop)
            loop.run_forever()
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == [f"v{i}" for i in range(400)]


def test_a_callback_that_sets_a_variable_does_not_leak_it(loop):
    seen = []

    def setter():
        var.set("leaked")

    for _ in range(200):
        loop.call_soon(setter)
        loop.call_soon(lambda: seen.append(var.get()))
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == ["unset"] * 200
    assert var.get() == "unset"


def test_get_context_after_the_run_has_what_the_callback_set(loop):
    if not hasattr(loop.call_soon(lambda: None), "get_context"):
        return

    def setter():
        var.set("set by callback")

    h = loop.call_soon(setter)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert h.get_context()[var] == "set by callback"
    assert var.get() == "unset"


def test_exception_handler_sees_the_callbacks_context_on_312(loop):
    # asyncio 3.12+ (gh-96704) runs the handler in the handle's context.
    import sys

    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(var.get()))

    def failing():
        var.set("bar")
        1 / 0

    loop.call_soon(failing)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert seen == (["bar"] if sys.version_info >= (3, 12) else ["unset"])
