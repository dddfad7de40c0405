"""The pytest plugin: ``pytest --ferroloop`` and ``pytest --ferroloop=both``.

Registered through the ``pytest11`` entry point, so it is loaded wherever ferroloop is installed,
and inert unless asked: without the flag (or ``--ferroloop-report``) it only adds the options and
the ``ferroloop_both`` marker. With it:

``--ferroloop``
    every test runs on ferroloop: ferroloop's policy is installed for each test (setup, call and
    teardown) and the previous policy put back after it, pytest-asyncio (1.4+) gets ferroloop
    from its ``pytest_asyncio_loop_factories`` hook (older versions through the policy), anyio's
    ``anyio_backend`` gets ``loop_factory=ferroloop.new_event_loop``, and
    ``unittest.IsolatedAsyncioTestCase`` and plain ``asyncio.run``/``asyncio.Runner`` use the
    policy.
``--ferroloop=both``
    each asyncio test runs twice, ``[asyncio]`` (what the test gets without the flag) and
    ``[ferroloop]``: through the same hooks, as parameters with those ids.
``--ferroloop-report``
    with or without the flag: at the end, the event loops that ran during the session, by
    class, with how many times each ran (``ferroloop: loops that ran: ferroloop._loop.Loop
    x12``), which shows what the tests really ran on. Changes no loop.

How each framework is hooked is in ``docs/pytest-plugin.md``. Importing this module imports
neither pytest-asyncio nor anyio.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import threading
import unittest
import warnings
import weakref
from collections.abc import Collection, Mapping

import pytest

ASYNCIO = "asyncio"
FERROLOOP = "ferroloop"
LOOPS = (ASYNCIO, FERROLOOP)

# The fixture that carries the loop of a test that no framework parametrizes (--ferroloop=both).
_LOOP_FIXTURE = "_ferroloop_loop"
# anyio backend options that choose a loop: a backend value with one of them is left alone.
_ANYIO_LOOP_OPTIONS = ("loop_factory", "use_uvloop", "policy")
# The class attribute set on the per-loop copies of an IsolatedAsyncioTestCase.
_CASE_LOOP_ATTR = "_ferroloop_loop"


def pytest_addoption(parser):
    group = parser.getgroup("ferroloop", "ferroloop event loop")
    group.addoption(
        "--ferroloop",
        dest="ferroloop",
        action="store_const",
        const=FERROLOOP,
        default=None,
        help="run the asyncio tests on ferroloop's event loop (pytest-asyncio, anyio, "
        "IsolatedAsyncioTestCase, asyncio.run in a test)",
    )
    # A second option string rather than an optional value: `--ferroloop tests/` must not
    # read `tests/` as the value (argparse matches a whole option string before splitting "=").
    group.addoption(
        "--ferroloop=both",
        dest="ferroloop",
        action="store_const",
        const="both",
        help="run each asyncio test twice, on asyncio's loop and on ferroloop, with "
        "[asyncio]/[ferroloop] in the test id",
    )
    group.addoption(
        "--ferroloop-report",
        dest="ferroloop_report",
        action="store_true",
        default=False,
        help="at the end, print the event loops that ran during the session, by class "
        "(with or without --ferroloop; changes no loop)",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "ferroloop_both: under --ferroloop=both, run this test once per loop (for a "
        "synchronous test that runs its own loop, e.g. with asyncio.run)",
    )
    if config.getoption("ferroloop_report", False):
        config.pluginmanager.register(_LoopReport(), "ferroloop-report")
    mode = config.getoption("ferroloop", None)
    if mode is not None:
        config.pluginmanager.register(_Switch(config, mode), "ferroloop-switch")


def _current_policy():
    """The policy object asyncio holds now, None if none was made yet (as asyncio keeps it)."""
    events = asyncio.events
    if hasattr(events, "_event_loop_policy"):
        return events._event_loop_policy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.get_event_loop_policy()


def _set_policy(policy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)


@contextlib.contextmanager
def _policy(policy):
    saved = _current_policy()
    _set_policy(policy)
    try:
        yield
    finally:
        _set_policy(saved)


def _is_async(func):
    func = inspect.unwrap(func)
    return inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)


def _anyio_backend(value):
    """``(name, options)`` of an ``anyio_backend`` value, None if it is not one."""
    if isinstance(value, str):
        return value, {}
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], dict)
    ):
        return value
    return None


class _AnyioLoop:
    """The parameter given to an unparametrized ``anyio_backend`` fixture under
    ``--ferroloop=both``: which loop its (asyncio) value is to run on."""

    __slots__ = ("loop",)

    def __init__(self, loop):
        self.loop = loop

    def __repr__(self):
        return f"<anyio backend on {self.loop}>"


class _Switch:
    """Everything the flag changes; registered only when the flag is given."""

    def __init__(self, config, mode):
        import ferroloop

        self.both = mode == "both"
        self.new_event_loop = ferroloop.new_event_loop
        self.policy = ferroloop.EventLoopPolicy()
        self.policy_type = ferroloop.EventLoopPolicy
        original = _current_policy()
        if isinstance(original, ferroloop.EventLoopPolicy):
            original = None
        # The policy of the [asyncio] runs: the session's own, or asyncio's default.
        self.original_policy = original
        self._asyncio_policy = original
        self._anyio_options = None
        self._kept_loops = []
        hook = getattr(config.hook, "pytest_asyncio_loop_factories", None)
        # pytest-asyncio >= 1.4: its loop-factory hook. Registered only when it exists, as
        # pytest-asyncio takes any implementation of it as the configuration of its loops.
        self.asyncio_hook = getattr(hook, "spec", None) is not None
        if self.asyncio_hook:
            config.pluginmanager.register(_AsyncioFactories(self), "ferroloop-pytest-asyncio")

    # -- the loops ----------------------------------------------------------------------------

    def asyncio_policy(self):
        if self._asyncio_policy is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                self._asyncio_policy = asyncio.DefaultEventLoopPolicy()
        return self._asyncio_policy

    def asyncio_loop(self):
        """A loop as the test gets it without the flag (asyncio's own, unless the session
        installed another policy before the plugin was configured)."""
        return self.asyncio_policy().new_event_loop()

    def item_loop(self, item):
        """The loop a test runs on: FERROLOOP or ASYNCIO."""
        if not self.both:
            return FERROLOOP
        cls = getattr(item, "cls", None)
        if cls is not None and _CASE_LOOP_ATTR in cls.__dict__:
            return cls.__dict__[_CASE_LOOP_ATTR]
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if _LOOP_FIXTURE in params:
            return params[_LOOP_FIXTURE]
        if "_asyncio_loop_factory" in params:
            return FERROLOOP if params["_asyncio_loop_factory"] is self.new_event_loop else ASYNCIO
        if "event_loop_policy" in params:
            policy = params["event_loop_policy"]
            return FERROLOOP if isinstance(policy, self.policy_type) else ASYNCIO
        if "anyio_backend" in params:
            return self.anyio_param_loop(params["anyio_backend"])
        # A test with no loop of its own (e.g. a synchronous test that calls asyncio.run):
        # it runs once, with ferroloop's policy.
        return FERROLOOP

    # -- the policy, around every test ------------------------------------------------------

    @contextlib.contextmanager
    def _around(self, item):
        if self.item_loop(item) != FERROLOOP:
            yield
            return
        with _policy(self.policy):
            self._keep_current_loop()
            try:
                yield
            finally:
                self._keep_current_loop()

    def _keep_current_loop(self):
        """Hold the loop our policy has as the thread's current loop until the session ends.

        A loop that a test or plugin leaves unclosed as the current loop (pytest-asyncio
        before 1.4 does, through asyncio.get_event_loop()) stays alive with asyncio's loop,
        whose reference cycles leave it to the garbage collector at the end of the session;
        a ferroloop loop would be freed, with its "unclosed event loop" ResourceWarning, in
        whichever later test replaces it (asyncio.run does), failing that test under
        ``filterwarnings = error``. Kept here, it goes at the end of the session as asyncio's.
        """
        local = getattr(self.policy, "_local", None)
        loop = getattr(local, "_loop", None)
        if loop is not None and not any(kept is loop for kept in self._kept_loops):
            self._kept_loops.append(loop)

    def pytest_unconfigure(self, config):
        self._kept_loops.clear()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        with self._around(item):
            yield

    # Again around the call itself: a fixture may have installed a policy of its own for the
    # test's duration (pytest-asyncio's runner fixtures do).
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        with self._around(item):
            yield

    def pytest_report_header(self, config):
        what = "each asyncio test on asyncio and on ferroloop" if self.both else "on ferroloop"
        return [f"ferroloop: asyncio tests run {what}"]

    # -- parametrization (--ferroloop=both) -------------------------------------------------

    @pytest.fixture(scope="session")
    def _ferroloop_loop(self, request):
        return getattr(request, "param", FERROLOOP)

    @pytest.hookimpl(tryfirst=True)
    def pytest_generate_tests(self, metafunc):
        # Before pytest parametrizes fixtures from their params: the anyio_backend fixture
        # gets a ferroloop twin of each of its asyncio values.
        if self.both and "anyio_backend" in metafunc.fixturenames:
            defs = getattr(metafunc, "_arg2fixturedefs", {}).get("anyio_backend")
            if defs:
                self._anyio_twins(defs[-1])

    @pytest.hookimpl(specname="pytest_generate_tests", trylast=True)
    def pytest_generate_tests_for_other_tests(self, metafunc):  # (pytest wants "pytest_")
        # After pytest-asyncio (which parametrizes its tests through our hook) and anyio.
        if not self.both:
            return
        names = metafunc.fixturenames
        if "_asyncio_loop_factory" in names or "anyio_backend" in names or _LOOP_FIXTURE in names:
            return
        definition = metafunc.definition
        if definition.get_closest_marker("ferroloop_both") is None:
            if not _is_async(metafunc.function) or definition.get_closest_marker("trio"):
                return
        if "event_loop_policy" in names and not self.asyncio_hook:
            # pytest-asyncio before 1.4: its loops come from the event_loop_policy fixture.
            metafunc.parametrize(
                "event_loop_policy",
                [self.asyncio_policy(), self.policy],
                ids=list(LOOPS),
                scope="session",
            )
            return
        names.append(_LOOP_FIXTURE)
        metafunc.parametrize(
            _LOOP_FIXTURE, list(LOOPS), ids=list(LOOPS), indirect=True, scope="function"
        )

    @pytest.hookimpl(hookwrapper=True)
    def pytest_pycollect_makeitem(self, collector, name, obj):
        outcome = yield
        if not self.both or not isinstance(obj, type):
            return
        if not issubclass(obj, unittest.IsolatedAsyncioTestCase):
            return
        result = outcome.get_result()
        if result is None or isinstance(result, list) or type(result).__name__ != "UnitTestCase":
            return
        # One collector per loop, each with its own subclass (setUpClass state stays apart):
        # `test_mod.py::Case[asyncio]::test_x` and `test_mod.py::Case[ferroloop]::test_x`.
        twins = []
        for loop in LOOPS:
            twin = type(
                obj.__name__,
                (obj,),
                {
                    "__module__": obj.__module__,
                    "__qualname__": obj.__qualname__,
                    "__doc__": obj.__doc__,
                    _CASE_LOOP_ATTR: loop,
                },
            )
            node = type(result).from_parent(collector, name=f"{name}[{loop}]")
            node._obj = twin  # the collector's object, which it would otherwise look up by name
            twins.append(node)
        outcome.force_result(twins)

    # -- anyio ------------------------------------------------------------------------------

    def anyio_options(self):
        """The anyio asyncio backend options that select ferroloop."""
        if self._anyio_options is None:
            try:
                from anyio._backends._asyncio import TestRunner

                accepted: Collection[str] = inspect.signature(TestRunner).parameters
            except Exception:
                accepted = ()
            if "loop_factory" in accepted:  # anyio 4
                self._anyio_options = {"loop_factory": self.new_event_loop}
            elif "policy" in accepted:  # anyio 3
                self._anyio_options = {"policy": self.policy}
            else:  # asyncio.new_event_loop(): the installed policy
                self._anyio_options = {}
        return self._anyio_options

    def anyio_on_ferroloop(self, value):
        backend = _anyio_backend(value)
        if backend is None or backend[0] != "asyncio":
            return value
        options = {k: v for k, v in backend[1].items() if k not in _ANYIO_LOOP_OPTIONS}
        return ("asyncio", {**options, **self.anyio_options()})

    def anyio_param_loop(self, param):
        if isinstance(param, _AnyioLoop):
            return param.loop
        backend = _anyio_backend(param)
        if backend is not None and backend[1].get("loop_factory") is self.new_event_loop:
            return FERROLOOP
        if backend is not None and backend[1].get("policy") is self.policy:
            return FERROLOOP
        return ASYNCIO

    def _anyio_twins(self, fixturedef):
        if getattr(fixturedef, "_ferroloop_twins", False):
            return
        fixturedef._ferroloop_twins = True
        if fixturedef.params is None:
            # A fixture that returns its backend: the value is chosen at setup (see
            # pytest_fixture_setup), these parameters only say which loop.
            fixturedef.params = [_AnyioLoop(ASYNCIO), _AnyioLoop(FERROLOOP)]
            fixturedef.ids = list(LOOPS)
            return
        ids = fixturedef.ids
        params = []
        for index, param in enumerate(fixturedef.params):
            marks = ()
            pid = None
            value = param
            if type(param).__name__ == "ParameterSet":
                value, marks, pid = param.values[0], param.marks, param.id
            if pid is None and ids is not None:
                pid = ids(value) if callable(ids) else (ids[index] if index < len(ids) else None)
            if pid is None:
                backend = _anyio_backend(value)
                pid = backend[0] if backend is not None else f"anyio_backend{index}"
            params.append(pytest.param(value, id=str(pid), marks=marks))
            backend = _anyio_backend(value)
            if backend is None or backend[0] != "asyncio":
                continue
            if any(option in backend[1] for option in _ANYIO_LOOP_OPTIONS):
                continue  # the test chose its loop
            twin_id = pid.replace("asyncio", FERROLOOP) if "asyncio" in pid else f"{pid}-ferroloop"
            params.append(pytest.param(self.anyio_on_ferroloop(value), id=twin_id, marks=marks))
        fixturedef.params = params
        fixturedef.ids = None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        name = fixturedef.argname
        if (
            name == "event_loop_policy"
            and self.both
            and self.asyncio_hook
            and getattr(fixturedef.func, "__module__", "").startswith("pytest_asyncio")
        ):
            # pytest-asyncio's session-wide policy, taken from whatever test sets it up
            # first: it must be the session's own, not ferroloop's, or the [asyncio] runs
            # would see ferroloop's policy.
            with _policy(self.original_policy):
                yield
            return
        outcome = yield
        if name != "anyio_backend" or outcome.excinfo is not None:
            return
        value = outcome.get_result()
        param = getattr(request, "param", None)
        if isinstance(param, _AnyioLoop):
            on_ferroloop = param.loop == FERROLOOP
        else:
            on_ferroloop = not self.both
        if not on_ferroloop:
            return
        new = self.anyio_on_ferroloop(value)
        if new is value:
            return
        outcome.force_result(new)
        cached = fixturedef.cached_result
        if cached is not None and cached[2] is None:
            fixturedef.cached_result = (new, *cached[1:])


class _LoopReport:
    """``--ferroloop-report``: counts the event loops that ran during the session, by class
    (each loop once).

    A loop that starts running announces itself with ``asyncio.events._set_running_loop(loop)``
    (asyncio's ``run_forever`` does, so ``run_until_complete``, ``asyncio.run`` and
    ``asyncio.Runner``; ferroloop's loop does the same): the report wraps that function from
    ``pytest_configure`` to ``pytest_unconfigure``, in every thread. A loop that took its own
    reference to the function before the session (a compiled loop may) is not counted.
    """

    def __init__(self):
        self.ran: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        events = asyncio.events
        self._original = original = events._set_running_loop
        ran, lock = self.ran, self._lock
        # Each loop counts once, however often it starts (asyncio.run starts its loop three
        # times: the coroutine, then the shutdown of async generators and of the executor).
        seen: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

        def _set_running_loop(loop):
            if loop is not None:
                cls = type(loop)
                with lock:
                    try:
                        new = loop not in seen
                        if new:
                            seen.add(loop)
                    except TypeError:  # a loop class without weak references: each start
                        new = True
                    if new:
                        ran[f"{cls.__module__}.{cls.__qualname__}"] += 1
            original(loop)

        self._wrapper = _set_running_loop
        events._set_running_loop = _set_running_loop
        # The same function, re-exported: for code that calls it as asyncio._set_running_loop.
        self._package = getattr(asyncio, "_set_running_loop", None) is original
        if self._package:
            asyncio._set_running_loop = _set_running_loop

    def pytest_unconfigure(self, config):
        # Put the function back unless something wrapped it after us (it keeps our wrapper).
        if asyncio.events._set_running_loop is self._wrapper:
            asyncio.events._set_running_loop = self._original
        if self._package and getattr(asyncio, "_set_running_loop", None) is self._wrapper:
            asyncio._set_running_loop = self._original

    def summary(self):
        with self._lock:
            ran = self.ran.most_common()
        return ", ".join(f"{name} x{n}" for name, n in ran) or "none"

    def pytest_terminal_summary(self, terminalreporter):
        terminalreporter.write_line(f"ferroloop: loops that ran: {self.summary()}")


class _AsyncioFactories:
    """pytest-asyncio >= 1.4: the loops of its tests, through its loop-factory hook."""

    def __init__(self, switch):
        self.switch = switch

    @pytest.hookimpl(hookwrapper=True, optionalhook=True)
    def pytest_asyncio_loop_factories(self, config, item):
        outcome = yield
        theirs = outcome.get_result()
        if not isinstance(theirs, Mapping) or not theirs:
            theirs = None
        switch = self.switch
        if not switch.both:
            # Every factory of the project (or the default loop) becomes ferroloop; names are
            # kept so that mark.asyncio(loop_factories=[...]) still selects.
            names = list(theirs) if theirs is not None else [FERROLOOP]
            outcome.force_result({name: switch.new_event_loop for name in names})
            return
        factories = dict(theirs) if theirs is not None else {ASYNCIO: switch.asyncio_loop}
        factories.setdefault(FERROLOOP, switch.new_event_loop)
        outcome.force_result(factories)
