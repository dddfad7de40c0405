"""ferroloop: a fast, faithful asyncio event loop written in Rust.

Use it with one line::

    ferroloop.run(main())
    asyncio.Runner(loop_factory=ferroloop.new_event_loop)
    asyncio.run(main(), loop_factory=ferroloop.new_event_loop)   # Python 3.12+
    ferroloop.install()                                          # sets the policy
"""

import asyncio as _asyncio
import sys
from asyncio import events as _asyncio_events
from collections.abc import Callable as _Callable
from collections.abc import Coroutine as _Coroutine
from typing import Any as _Any
from typing import TypeVar as _TypeVar

# First: refuses an unsupported CPython, warns on one newer than the verified ones.
from . import _compat  # noqa: F401
from ._core import __version__
from ._loop import Loop
from ._metrics import LoopMetrics
from ._policy import EventLoopPolicy
from ._watchdog import WatchdogReport

__all__ = (
    "Loop",
    "EventLoopPolicy",
    "LoopMetrics",
    "WatchdogReport",
    "new_event_loop",
    "install",
    "run",
    "__version__",
)

_T = _TypeVar("_T")


def new_event_loop() -> Loop:
    """Return a new ferroloop event loop."""
    return Loop()


def install() -> None:
    """Make ferroloop the loop that ``asyncio.run``/``asyncio.new_event_loop`` create."""
    _asyncio.set_event_loop_policy(EventLoopPolicy())


def run(
    main: _Coroutine[_Any, _Any, _T],
    *,
    debug: bool | None = None,
    loop_factory: _Callable[[], _asyncio.AbstractEventLoop] | None = None,
    watchdog: float | None = None,
) -> _T:
    """Run the coroutine ``main`` on a new ferroloop loop and return its result.

    The same as ``asyncio.run(main, debug=debug)`` with a ferroloop loop: the loop is closed,
    remaining tasks cancelled, async generators and the default executor shut down.
    ``watchdog=SECONDS`` reports callbacks that block the loop for longer than that (see
    ``Loop.set_watchdog``).
    """
    if _asyncio_events._get_running_loop() is not None:
        # asyncio.run's check, before any loop is created.
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if loop_factory is None:
        loop_factory = new_event_loop
    if watchdog is not None:
        loop_factory = _with_watchdog(loop_factory, watchdog)
    if sys.version_info >= (3, 11):
        with _asyncio.Runner(debug=debug, loop_factory=loop_factory) as runner:
            return runner.run(main)
    from ._runner310 import run as _run310

    return _run310(main, debug=debug, loop_factory=loop_factory)


def _with_watchdog(
    loop_factory: _Callable[[], _asyncio.AbstractEventLoop], threshold: float
) -> _Callable[[], _asyncio.AbstractEventLoop]:
    from ._watchdog import _parse_threshold

    parsed = _parse_threshold(threshold, "watchdog")

    def factory() -> _asyncio.AbstractEventLoop:
        loop = loop_factory()
        loop.set_watchdog(parsed)  # type: ignore[attr-defined]  # a ferroloop loop's
        return loop

    return factory
