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


def _stub_names():
    """Module-level names and each class's members declared in ``_core.pyi``."""
    import ast
    import importlib.resources

    source = importlib.resources.files("ferroloop").joinpath("_core.pyi").read_text()
    module, classes = set(), {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef):
            members = classes[node.name] = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
            module.add(node.name)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            module.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            module.add(node.target.id)
    return module, classes


def test_stub_declares_every_private_name_too():
    # mypy.stubtest reports public names missing from the stub, not private ones (the
    # protocol between the Python and native halves): this does, for both.
    from ferroloop import _core

    module, classes = _stub_names()
    assert set(_core.__all__) <= module, set(_core.__all__) - module
    implicit = {"__doc__", "__module__", "__new__", "__repr__", "__class__"}
    for name in _core.__all__:
        runtime = getattr(_core, name)
        if isinstance(runtime, type):
            missing = set(vars(runtime)) - classes[name] - implicit
            assert not missing, (name, missing)
