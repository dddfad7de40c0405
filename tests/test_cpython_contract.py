"""The CPython internals ferroloop relies on hold on the running version (docs/cpython-contract.md).

Each test exercises one layout- or refcount-based shortcut through ferroloop's own code (the
private ``_core._contract_probes``/``_sole_owner``/... functions call the very helpers the loop
uses) and fails if its assumption broke on this version. ``scripts/test-all-pythons`` runs them
on every supported CPython. The version guard and the hook registration are tested in
subprocesses.
"""

import asyncio
import contextvars
import functools
import gc
import os
import socket
import subprocess
import sys
import textwrap
import weakref

import pytest

import ferroloop
from ferroloop import _compat, _core

PY312 = sys.version_info >= (3, 12)
VERIFIED = sys.version_info[:2] <= _compat.NEWEST_VERIFIED

var = contextvars.ContextVar("contract_var", default="unset")


def _run(code, **env_changes):
    env = dict(os.environ, **env_changes)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
        cwd="/",
    )


# --- context and thread-state offsets (probed at run time) ----------------------------------


@pytest.mark.skipif(not VERIFIED, reason="the probes may fail on an unverified version")
def test_context_offsets_are_found_on_every_verified_version():
    offsets = _core._contract_probes()["context_offsets"]
    assert offsets is not None, "PyThreadState.context / PyContext.ctx_vars probe failed"
    thread_state_context, context_vars = offsets
    header = _core._contract_probes()["header_size"]
    assert header == 2 * 8  # ob_refcnt (or 3.12's union) and ob_type on a 64-bit build
    # The ranges the probes search (ffi.rs): within the thread state's first 256 bytes, and
    # one of the first three words after a Context's header.
    assert 0 <= thread_state_context <= 256 and thread_state_context % 8 == 0
    assert header <= context_vars < header + 24


def test_current_context_key_reads_the_entered_context():
    if _core._contract_probes()["context_offsets"] is None:
        pytest.skip("offsets not found: ferroloop never reads them (checked above)")
    ctx = contextvars.copy_context()
    other = contextvars.Context()
    assert ctx.run(_core._context_key_matches, ctx) is True
    assert other.run(_core._context_key_matches, other) is True
    # A context holding other variables has another key.
    ctx.run(var.set, "changed")
    assert other.run(_core._context_key_matches, ctx) is False
    assert ctx.run(_core._context_key_matches, ctx) is True


def test_shared_context_snapshots_keep_variables_apart():
    # The loop shares one context snapshot between handles scheduled in the same context
    # (decision 0003), relying on the probed offsets; a callback that sets a variable must not
    # leak it into the others.
    loop = ferroloop.new_event_loop()
    try:
        seen = []

        def setter(value):
            var.set(value)
            seen.append(("set", var.get()))

        def reader():
            seen.append(("read", var.get()))

        var.set("outer")
        loop.call_soon(setter, "a")
        loop.call_soon(reader)
        loop.call_soon(setter, "b")
        loop.call_soon(reader)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert seen == [("set", "a"), ("read", "outer"), ("set", "b"), ("read", "outer")]
        assert var.get() == "outer"
    finally:
        loop.close()


# --- sole_owner: reference counts, weak references, immortal objects -------------------------


class Plain:
    pass


class Slotted:
    __slots__ = ("__weakref__",)


def partial():
    # A C type whose weak-reference list is a field inside the object on every version.
    return functools.partial(print)


_kept_refs = []


def _weakly_referenced(cls):
    obj = cls()
    _kept_refs.append(weakref.ref(obj))
    return obj


def test_weaklist_offsets_are_as_the_shortcut_expects():
    # 3.12+ keeps a Python class's weak references before the object header
    # (Py_TPFLAGS_MANAGED_WEAKREF: a negative offset), also with `__slots__ = ("__weakref__",)`;
    # earlier versions in a slot after it. C types keep a field inside the object.
    if PY312:
        assert _core._weaklist_offset(Plain()) < 0
        assert _core._weaklist_offset(Slotted()) < 0
    else:
        assert _core._weaklist_offset(Plain()) > 0
        assert _core._weaklist_offset(Slotted()) > 0
    assert _core._weaklist_offset(partial()) > 0
    assert _core._weaklist_offset(object()) == 0
    loop = ferroloop.new_event_loop()
    try:
        handle = loop.call_soon(lambda: None)
        # pyo3's `weakref` class: a slot inside the object.
        assert _core._weaklist_offset(handle) > 0
    finally:
        loop.close()


# The calls are outside `assert` statements: pytest's assertion rewriting keeps references to
# the sub-expressions of an assert (a temporary would not be the sole reference any more).


@pytest.mark.parametrize(
    "cls", [Plain, Slotted, partial], ids=["python-class", "python-slots", "c-type"]
)
def test_sole_owner_sees_weak_references(cls):
    alone = _core._sole_owner(cls())
    weakly_referenced = _core._sole_owner(_weakly_referenced(cls))
    del _kept_refs[:]
    assert alone is True
    assert weakly_referenced is False


def test_sole_owner_sees_other_references():
    alone = _core._sole_owner(object())
    kept = object()
    local = _core._sole_owner(kept)
    holder = [Plain()]
    contained = _core._sole_owner(holder[0])
    assert (alone, local, contained) == (True, False, False)


def test_sole_owner_refuses_immortal_and_shared_objects():
    # Immortal objects (3.12+) have a huge reference count; before 3.12 these are shared.
    results = [_core._sole_owner(obj) for obj in (None, True, False, (), 1, "", Ellipsis)]
    assert results == [False] * 7
    if PY312:
        assert sys.getrefcount(None) > 1 << 20


def test_weakly_referenced_handle_is_not_reused_by_the_pool():
    # The handle pool's own use of sole_owner, on this version's handle layout.
    loop = ferroloop.new_event_loop()
    try:
        calls = []
        refs = [weakref.ref(loop.call_soon(calls.append, i)) for i in range(50)]
        loop.call_soon(loop.stop)
        loop.run_forever()
        gc.collect()
        survivors = [r() for r in refs if r() is not None]
        new = [loop.call_soon(calls.append, i) for i in range(50, 100)]
        # A weakly referenced handle was either freed or kept out of the pool: never reused.
        assert not any(h is s for h in new for s in survivors)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert calls == list(range(100))
    finally:
        loop.close()


def test_unreferenced_handles_are_reused():
    # The shortcut still works on this version (it must not silently turn off): a handle
    # nobody references comes back from the pool.
    loop = ferroloop.new_event_loop()
    try:
        if loop.get_debug():
            pytest.skip("debug mode keeps every handle (its repr and traceback)")
        ids = set()
        for _ in range(3):
            ids.add(id(loop.call_soon(lambda: None)))
            ids.add(id(loop.call_soon(loop.stop)))
            loop.run_forever()
        first = loop.call_soon(lambda: None)
        assert id(first) in ids
    finally:
        loop.close()


# --- tuple layout (vectorcall argument arrays) ------------------------------------------------


def test_callback_arguments_from_tuples_reach_the_callback():
    # Args::as_array reads a tuple's item array (PyTupleObject.ob_item) directly.
    loop = ferroloop.new_event_loop()
    try:
        seen = []
        big = tuple(range(40))
        loop.call_soon(lambda *a: seen.append(a))
        loop.call_soon(lambda *a: seen.append(a), "one")
        loop.call_soon(lambda *a: seen.append(a), 1, 2, 3)
        loop.call_soon(lambda *a: seen.append(a), *big)
        loop.call_later(0, lambda *a: seen.append(a), "x", "y")
        loop.call_soon_threadsafe(lambda *a: seen.append(a), *big[:5])
        loop.call_later(0.01, loop.stop)
        loop.run_forever()
        assert seen == [(), ("one",), (1, 2, 3), big, big[:5], ("x", "y")]
    finally:
        loop.close()


# --- the version guard -----------------------------------------------------------------------


_FAKE_VERSION = """
    import importlib.util, sys, warnings
    # Load ferroloop._compat (which checks the version when it is imported) while
    # sys.version_info claims another version; `import ferroloop` then reuses it.
    spec = importlib.util.find_spec("ferroloop")  # the package is found, not imported
    path = spec.submodule_search_locations[0] + "/_compat.py"
    cspec = importlib.util.spec_from_file_location("ferroloop._compat", path)
    compat = importlib.util.module_from_spec(cspec)
    real = sys.version_info
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sys.version_info = {version!r}
        try:
            cspec.loader.exec_module(compat)
        finally:
            sys.version_info = real
        sys.modules["ferroloop._compat"] = compat
        import ferroloop
    for w in caught:
        print("WARNING", w.category.__name__, w.message)
    import asyncio
    async def main():
        await asyncio.sleep(0)
        return "ran"
    print("RESULT", ferroloop.run(main()))
"""


def test_newer_cpython_imports_with_a_runtime_warning_naming_it():
    result = _run(_FAKE_VERSION.format(version=(3, 99, 1, "final", 0)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    warnings_ = [line for line in lines if line.startswith("WARNING RuntimeWarning")]
    assert len(warnings_) == 1, result.stdout
    assert "CPython 3.99.1" in warnings_[0] and "up to 3.13" in warnings_[0]
    assert "RESULT ran" in lines


def test_verified_cpython_imports_without_a_warning():
    result = _run(_FAKE_VERSION.format(version=(3, 13, 0, "final", 0)))
    assert result.returncode == 0, result.stderr
    assert not [line for line in result.stdout.splitlines() if line.startswith("WARNING")]
    assert "RESULT ran" in result.stdout.splitlines()


def test_older_cpython_is_refused_with_import_error():
    result = _run(_FAKE_VERSION.format(version=(3, 9, 18, "final", 0)))
    assert result.returncode != 0
    assert "ImportError: ferroloop requires CPython 3.10 or later; this is 3.9.18" in result.stderr


def test_running_version_is_within_the_verified_range():
    # The versions this suite runs on are the verified ones (docs/cpython-contract.md).
    assert _compat.OLDEST_SUPPORTED <= sys.version_info[:2] <= _compat.NEWEST_VERIFIED


# --- hooks registered at import, not looked up by name ---------------------------------------


def test_hooks_are_registered_not_imported_by_name():
    # With the modules made unimportable after import, the native code still reaches the
    # registered callback-error hook and watchdog report.
    result = _run(
        """
        import sys, time
        import ferroloop
        for name in ("ferroloop._hooks", "ferroloop._watchdog"):
            sys.modules[name] = None  # `import` of it now raises
        loop = ferroloop.new_event_loop()
        errors, reports = [], []
        loop.set_exception_handler(lambda loop, context: errors.append(context["message"]))
        loop.set_watchdog(0.05, handler=reports.append)
        def fail():
            1 / 0
        loop.call_soon(fail)
        loop.call_soon(time.sleep, 1.0)
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.close()
        print("ERRORS", errors)
        print("REPORTS", len(reports) > 0)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "ERRORS ['Exception in callback fail()" in result.stdout, result.stdout
    assert "REPORTS True" in result.stdout, result.stdout


def test_native_module_has_registration_functions():
    assert callable(_core._register_hooks) and callable(_core._register_watchdog_report)
    # The loop reports through the registered hooks module (the one asyncio's messages come
    # from), also when a second registration is attempted: the first one stays.
    _core._register_hooks(object())
    loop = ferroloop.new_event_loop()
    try:
        messages = []
        loop.set_exception_handler(lambda loop, context: messages.append(context["message"]))
        loop.call_soon(lambda: 1 / 0)
        loop.call_soon(loop.stop)
        loop.run_forever()
        assert len(messages) == 1 and messages[0].startswith("Exception in callback")
    finally:
        loop.close()


def test_asyncio_loop_is_unaffected():
    # Guard against the tests above leaking a patched module into this process.
    assert sys.modules["ferroloop._compat"] is _compat
    assert asyncio.run(asyncio.sleep(0, "ok")) == "ok"


@pytest.mark.nodebug
def test_slotted_transport_slots_are_member_descriptors():
    """ffi::Slots reads the slotted stream transport's attributes at the offsets of its
    `__slots__` member descriptors: each of asyncio's attribute names that is a slot there is
    a member descriptor reached first by attribute lookup, and what native code writes at
    those offsets is what Python reads (a transport made natively, read back)."""
    import types

    from ferroloop import _stream_transport

    cls = _stream_transport._SelectorSocketTransport
    slots = ("_socket", "_sock_fd", "_protocol", "_server", "_conn_lost", "_closing", "_eof")
    for name in slots:
        assert type(getattr(cls, name)) is types.MemberDescriptorType, name
    # Properties (two of them native data descriptors) shadow the slots behind them.
    for name in ("_buffer", "_read_ready_cb", "_read_ready"):
        assert type(getattr(cls, name)) is property, name
    assert type(cls._sock) is ferroloop._core._SocketAttribute
    assert type(cls._extra) is ferroloop._core._ExtraAttribute

    loop = ferroloop.new_event_loop()
    try:
        a, b = socket.socketpair()
        protocol = asyncio.Protocol()
        t = loop._make_socket_transport(a, protocol)
        assert type(t) is cls
        assert (t._sock, t._sock_fd, t._protocol, t._conn_lost, t._closing) == (
            a,
            a.fileno(),
            protocol,
            0,
            False,
        )
        t.close()
        loop.run_until_complete(asyncio.sleep(0))
        assert (t._sock, t._protocol, t._conn_lost, t._closing) == (None, None, 1, True)
        b.close()
    finally:
        loop.close()
