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
    "test_unix_events": [
        ("SelectorEventLoopSignalTests", "setUp"),
        ("SelectorEventLoopUnixSocketTests", "setUp"),
    ],
}

PREFIX = "LoopUnderTest_"

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
    if kind == "setUp":

        def setUp(self, _factory=factory):
            # The original setUp does ``self.loop = asyncio.SelectorEventLoop()``.
            saved = asyncio.SelectorEventLoop
            asyncio.SelectorEventLoop = lambda *a, **k: _factory()
            try:
                orig.setUp(self)
            finally:
                asyncio.SelectorEventLoop = saved

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
                _subclass(mod, obj, ns)
