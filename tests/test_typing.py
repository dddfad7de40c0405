"""What type checkers and ``inspect`` see of ferroloop: the signatures of the native methods
are asyncio's (the stub itself is checked by ``mypy.stubtest`` in scripts/test)."""

import asyncio
import inspect

import pytest

import ferroloop


@pytest.mark.parametrize(
    "name, expected",
    [
        ("call_soon", "(self, callback, *args, context=None)"),
        ("call_soon_threadsafe", "(self, callback, *args, context=None)"),
        ("call_later", "(self, delay, callback, *args, context=None)"),
        ("call_at", "(self, when, callback, *args, context=None)"),
        ("get_debug", "(self)"),
    ],
)
def test_native_method_signatures_are_asyncios(name, expected):
    # asyncio's own, for the record.
    assert str(inspect.signature(getattr(asyncio.BaseEventLoop, name))) == expected
    # The native method: self is positional-only, as on every method written in C.
    native = str(inspect.signature(getattr(ferroloop.Loop, name)))
    assert native == expected.replace("(self", "(self, /", 1)
    # Bound, without self: asyncio's exactly.
    loop = ferroloop.new_event_loop()
    ref = asyncio.new_event_loop()
    try:
        bound = str(inspect.signature(getattr(loop, name)))
        ref_bound = str(inspect.signature(getattr(ref, name)))
    finally:
        loop.close()
        ref.close()
    assert bound == ref_bound == expected.replace("self, ", "").replace("(self)", "()")


def test_package_is_typed():
    import importlib.resources

    files = importlib.resources.files("ferroloop")
    assert files.joinpath("py.typed").is_file()
    assert files.joinpath("_core.pyi").is_file()
