"""The ``LoopUnderTest_*`` classes: the suites' own test classes, on the loop under test.

Where a suite builds its loops through an overridable method (``create_event_loop`` of
test_events' ``EventLoopTestsMixin``, ``new_loop`` of ``FunctionalTestCaseMixin`` and of
uvloop's ``_testbase``) or constructs ``asyncio.SelectorEventLoop()`` in ``setUp``, the
original class is excluded (see ``expected_failures.txt``) and a subclass named
``LoopUnderTest_<original>`` is added to the module, whose loop is:

* ``--loop ferroloop``: ``ferroloop.new_event_loop()``;
* ``--loop asyncio``: ``asyncio.SelectorEventLoop()`` (the platform's default selector).

So both runs select exactly the same test ids.
"""

import asyncio

# module -> [(original class, how its loop is made)]
CPYTHON = {
    "test_events": [("SelectEventLoopTests", "create_event_loop")],
    "test_sock_lowlevel": [("SelectEventLoopTests", "create_event_loop")],
    "test_sendfile": [("SelectEventLoopTests", "create_event_loop")],
    "test_buffered_proto": [("BufferedProtocolSelectorTests", "new_loop")],
    "test_server": [("SelectorStartServerTests", "new_loop")],
    "test_sslproto": [("SelectorStartTLSTests", "new_loop")],
    "test_base_events": [("BaseEventLoopWithSelectorTests", "setUp")],
    # pep492's BaseTest.setUp builds a mocked asyncio.BaseEventLoop()
    "test_pep492": [
        ("LockTests", "setUp:BaseEventLoop"),
        ("StreamReaderTests", "setUp:BaseEventLoop"),
        ("CoroutineTests", "setUp:BaseEventLoop"),
    ],
    "test_unix_events": [
        ("SelectorEventLoopSignalTests", "setUp"),
        ("SelectorEventLoopUnixSocketTests", "setUp"),
    ],
}

# Modules whose test_utils.TestCase classes get a twin whose ``new_test_loop()`` (no virtual
# time generator) returns the loop under test instead of CPython's TestLoop (a BaseEventLoop
# with a virtual clock that ferroloop cannot be). With a ``gen`` (the test drives the virtual
# clock) the twin keeps TestLoop.
TEST_LOOP_MODULES = ("test_futures", "test_tasks")

# Twin tests that keep TestLoop even without a ``gen``: they read ``loop._ready`` (asyncio's
# private ready deque, which TestLoop has), as upstream runs them.
NEEDS_TEST_LOOP = frozenset(
    {
        "cpython/test_tasks::LoopUnderTest_CTaskSubclass_PyFuture_Tests::test_log_destroyed_pending_task",
        "cpython/test_tasks::LoopUnderTest_CTask_CFuture_SubclassTests::test_log_destroyed_pending_task",
        "cpython/test_tasks::LoopUnderTest_CTask_CFuture_Tests::test_log_destroyed_pending_task",
        "cpython/test_tasks::LoopUnderTest_CTask_PyFuture_Tests::test_log_destroyed_pending_task",
        "cpython/test_tasks::LoopUnderTest_CoroutineGatherTests::test_duplicate_coroutines",
        "cpython/test_tasks::LoopUnderTest_CoroutineGatherTests::test_issue46672",
        "cpython/test_tasks::LoopUnderTest_CoroutineGatherTests::test_one_exception",
        "cpython/test_tasks::LoopUnderTest_CoroutineGatherTests::test_result_exception_success",
        "cpython/test_tasks::LoopUnderTest_CoroutineGatherTests::test_return_exceptions",
        "cpython/test_tasks::LoopUnderTest_CoroutineGatherTests::test_success",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_constructor_empty_sequence_use_global_loop",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_constructor_empty_sequence_use_running_loop",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_constructor_homogenous_futures",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_one_cancellation",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_one_exception",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_result_exception_one_cancellation",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_result_exception_success",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_return_exceptions",
        "cpython/test_tasks::LoopUnderTest_FutureGatherTests::test_success",
        "cpython/test_tasks::LoopUnderTest_PyTask_CFutureSubclass_Tests::test_log_destroyed_pending_task",
        "cpython/test_tasks::LoopUnderTest_PyTask_CFuture_Tests::test_log_destroyed_pending_task",
        "cpython/test_tasks::LoopUnderTest_PyTask_PyFuture_SubclassTests::test_log_destroyed_pending_task",
        "cpython/test_tasks::LoopUnderTest_PyTask_PyFuture_Tests::test_log_destroyed_pending_task",
    }
)

# test_runners' BaseTest.new_loop builds a mocked asyncio.BaseEventLoop; the twins of these
# classes get the loop under test, with the same shutdown_asyncgens probe.
RUNNER_CLASSES = ("RunTests", "RunnerTests")

PREFIX = "LoopUnderTest_"
_MISSING = object()

_ORIG_SELECTOR_LOOP = asyncio.SelectorEventLoop


def loop_factory(loop):
    if loop == "ferroloop":
        import ferroloop

        return ferroloop.new_event_loop
    return lambda: _ORIG_SELECTOR_LOOP()


def _subclass(mod, orig, ns):
    name = PREFIX + orig.__name__
    ns = dict(ns, __module__=mod.__name__, __qualname__=name)
    cls = type(orig)(name, (orig,), ns)
    setattr(mod, name, cls)
    return cls


def _make(kind, factory, orig):
    if kind == "create_event_loop":
        return {"create_event_loop": lambda self: factory()}
    if kind == "new_loop":
        return {"new_loop": lambda self: factory()}
    if kind.startswith("setUp"):
        attr = kind.partition(":")[2] or "SelectorEventLoop"

        def setUp(self, _factory=factory):
            # The original setUp does ``self.loop = asyncio.SelectorEventLoop()`` (or
            # ``asyncio.BaseEventLoop()``).
            saved = getattr(asyncio, attr)
            created = []

            def make(*args, **kwargs):
                loop = _factory()
                created.append((loop, loop.__dict__.get("_selector", _MISSING)))
                return loop

            setattr(asyncio, attr, make)
            try:
                orig.setUp(self)
            finally:
                setattr(asyncio, attr, saved)
            # A setUp written for BaseEventLoop() mocks its selector and _process_events: undo
            # that on a real loop.
            for loop, selector in created:
                loop.__dict__.pop("_process_events", None)
                if selector is _MISSING:
                    loop.__dict__.pop("_selector", None)
                else:
                    loop._selector = selector

        return {"setUp": setUp}
    raise ValueError(kind)


def adapt(suite, mod, loop):
    factory = loop_factory(loop)
    short = mod.__name__.rsplit(".", 1)[-1]
    if suite == "cpython":
        for cls_name, kind in CPYTHON.get(short, ()):
            orig = getattr(mod, cls_name, None)
            if orig is not None:
                _subclass(mod, orig, _make(kind, factory, orig))
        if short in TEST_LOOP_MODULES:
            from test.test_asyncio import utils as test_utils

            for name, obj in list(vars(mod).items()):
                if (
                    isinstance(obj, type)
                    and issubclass(obj, test_utils.TestCase)
                    and obj.__module__ == mod.__name__
                    and not name.startswith(PREFIX)
                ):
                    _subclass(mod, obj, {"new_test_loop": _new_test_loop(factory, short)})
        if short == "test_runners":
            for cls_name in RUNNER_CLASSES:
                orig = getattr(mod, cls_name, None)
                if orig is not None:
                    _subclass(mod, orig, {"new_loop": _runner_new_loop(factory)})
    elif suite == "uvloop":
        from uvloop import _testbase as tb

        for name, obj in list(vars(mod).items()):
            if (
                isinstance(obj, type)
                and issubclass(obj, tb.AIOTestCase)
                and obj.__module__ == mod.__name__
                and not name.startswith(PREFIX)
            ):
                ns = {"new_loop": lambda self: factory()}
                if loop == "ferroloop":
                    import ferroloop

                    # ferroloop claims asyncio's behaviour: take the asyncio branches.
                    ns["new_policy"] = lambda self: ferroloop.EventLoopPolicy()
                    ns["is_asyncio_loop"] = lambda self: True
                    if "NEW_LOOP" in vars(obj):
                        # test_signals runs this expression in a child process.
                        ns["NEW_LOOP"] = "__import__('ferroloop').new_event_loop()"
                _subclass(mod, obj, ns)


def _new_test_loop(factory, short):
    from test.test_asyncio import utils as test_utils

    def new_test_loop(self, gen=None):
        tid = f"cpython/{short}::{type(self).__name__}::{self._testMethodName}"
        if gen is not None or tid in NEEDS_TEST_LOOP:
            return test_utils.TestCase.new_test_loop(self, gen)
        loop = factory()
        self.set_event_loop(loop)
        return loop

    return new_test_loop


def _runner_new_loop(factory):
    def new_loop(self):
        loop = factory()
        loop.shutdown_ag_run = False
        real = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await real()

        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    return new_loop
