"""The blocking watchdog: who blocked the event loop, where, and what to do about it.

A native thread (``ferroloop._core.Watchdog``, see ``crates/ferroloop-py/src/watchdog.rs``)
watches the loop's progress counter without the GIL. When one callback or task step has held
the loop for longer than the threshold, it takes the GIL and calls :func:`_report` here, *while
the loop thread is still blocked*; :func:`_report` reads the loop thread's stack from
``sys._current_frames()``, builds a :class:`WatchdogReport` and logs it through the ``asyncio``
logger (or gives it to the user's handler). When the callback returns, one more report gives
the total time. See ``docs/observability.md``.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import logging
import os
import sys
import traceback
import types
import weakref
from asyncio.log import logger
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from . import _core

__all__ = ("WatchdogReport", "ENV_VAR")

ENV_VAR = "FERROLOOP_WATCHDOG"

#: Set by ``python -m ferroloop --watchdog SECONDS``: the threshold of every ferroloop loop
#: that was not configured with ``set_watchdog``. Takes precedence over the environment.
default_threshold: float | None = None


#: Where the reports of a watchdog that only debug mode switched on go (see _report).
DEBUG_MODE_LOGGER = logging.getLogger("ferroloop.watchdog")


class _State:
    """A loop's watchdog settings. Kept out of the loop object: attributes added to a loop
    after ``__init__`` would slow every attribute lookup on it (CPython then gives up the
    instance's inline values for a real dict), and the tasks look up ``loop.call_soon``."""

    __slots__ = ("thread", "handler", "explicit", "last", "from_debug_mode")

    thread: _core.Watchdog | None
    handler: Callable[[WatchdogReport], object] | None
    explicit: bool
    last: WatchdogReport | None
    from_debug_mode: bool

    def __init__(self) -> None:
        self.thread = None
        self.handler = None
        # True once set_watchdog() was called: then neither the environment nor debug mode
        # changes the setting.
        self.explicit = False
        # The last "blocked" report, completed by the "released" one.
        self.last = None
        # On only because the loop is in debug mode: reports go to DEBUG_MODE_LOGGER, so that
        # asyncio's logger has exactly asyncio's records in debug mode.
        self.from_debug_mode = False


# Loop -> its _State. Also how live threads are found at exit and in a forked child.
_states: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()


def _state(loop: object) -> _State:
    state = _states.get(loop)
    if state is None:
        state = _states[loop] = _State()
    return state


# CPU share above which a block is called CPU-bound rather than a blocking call.
_CPU_BOUND = 0.5

_STACK_LIMIT = 30


@dataclasses.dataclass(frozen=True)
class WatchdogReport:
    """What the watchdog knows about one block of the event loop.

    ``kind`` is ``"blocked"`` (sent while the loop is still blocked), ``"released"`` (sent
    once the callback has returned; ``blocked_for`` is then the total), or ``"unseen"`` (the
    block ended before the watchdog could look: the code held the GIL throughout, so only its
    length is known).
    """

    kind: str
    blocked_for: float
    #: ``loop.time()`` at which the block began (within a quarter of the threshold).
    started_at: float
    #: ``loop.time()`` when this report was made.
    reported_at: float
    task: asyncio.Task[Any] | None = dataclasses.field(repr=False, default=None)
    task_name: str | None = None
    coro: str | None = None
    #: The function that the loop called (the task's coroutine, or a ``call_soon`` callback).
    callback: str | None = None
    filename: str | None = None
    lineno: int | None = None
    function: str | None = None
    #: The source line being executed.
    line: str | None = None
    stack: traceback.StackSummary | None = dataclasses.field(repr=False, default=None)
    #: Share of the block the loop thread spent on a CPU (None if unknown).
    cpu_fraction: float | None = None
    #: ``"cpu"`` (CPU-bound work), ``"blocking"`` (a blocking call) or ``"unknown"``.
    cause: str = "unknown"
    hint: str = ""
    #: Seconds the watchdog waited for the GIL before it could look. Long when the loop
    #: thread held the GIL in C code: the stack then shows where it let go, after the block.
    gil_wait: float = 0.0
    thread_id: int | None = None
    loop: Any = dataclasses.field(repr=False, compare=False, default=None)

    def where(self) -> str:
        if self.filename is None:
            return "an unknown place"
        return f"{self.function}() at {self.filename}:{self.lineno}"

    def who(self) -> str:
        if self.task_name is not None:
            return f"task {self.task_name!r} (coroutine {self.coro})"
        if self.callback is not None:
            return f"callback {self.callback}"
        return "a callback"

    def format(self) -> str:
        """The message of the log record."""
        if self.kind == "unseen":
            return (
                f"ferroloop watchdog: the event loop was blocked for {self.blocked_for:.3f} s by "
                f"code that held the GIL the whole time (C code such as sum() over a huge range, "
                f"a regular expression or an extension that does not release the GIL), so its "
                f"stack could not be taken while it ran.\n  {self.hint}"
            )
        if self.kind == "released":
            return (
                f"ferroloop watchdog: the event loop was blocked for {self.blocked_for:.3f} s "
                f"in total by {self.who()} in {self.where()}; it has returned."
            )
        lines = [
            f"ferroloop watchdog: the event loop has been blocked for {self.blocked_for:.3f} s "
            f"by {self.who()}, in {self.where()}" + (f": {self.line}" if self.line else ""),
            f"  {self.hint}",
        ]
        if self.gil_wait >= 0.05:
            lines.append(
                f"  (The loop thread held the GIL for {self.gil_wait:.3f} s more, in C code that "
                f"does not release it; the line shown is where it finally let go.)"
            )
        if self.stack:
            lines.append("  Stack of the loop thread (most recent call last):")
            for entry in self.stack.format():
                lines.append("  " + entry.rstrip("\n").replace("\n", "\n  "))
        return "\n".join(lines)

    def log_extra(self) -> dict[str, Any]:
        """The structured ``extra`` of the log record."""
        return {
            "ferroloop_watchdog": self,
            "watchdog_kind": self.kind,
            "watchdog_task": self.task_name,
            "watchdog_coro": self.coro,
            "watchdog_callback": self.callback,
            "watchdog_file": self.filename,
            "watchdog_line": self.lineno,
            "watchdog_function": self.function,
            "watchdog_source": self.line,
            "watchdog_stack": None if self.stack is None else "".join(self.stack.format()),
            "watchdog_blocked_for": self.blocked_for,
            "watchdog_cpu_fraction": self.cpu_fraction,
            "watchdog_cause": self.cause,
            "watchdog_hint": self.hint,
        }


# ---------------------------------------------------------------------------------------------
# Looking at the loop thread


def _library_prefixes() -> tuple[str, ...]:
    import sysconfig

    prefixes: set[str] = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = paths.get(key)
        if path:
            prefixes.add(os.path.realpath(path) + os.sep)
            prefixes.add(os.path.abspath(path) + os.sep)
    for path in sys.path:
        if path.endswith(("site-packages", "dist-packages")):
            prefixes.add(os.path.abspath(path) + os.sep)
    prefixes.add(os.path.dirname(os.path.abspath(__file__)) + os.sep)
    return tuple(prefixes)


_LIBRARY_PREFIXES: tuple[str, ...] | None = None


def _is_library(filename: str) -> bool:
    global _LIBRARY_PREFIXES
    if filename.startswith("<"):
        return True
    if _LIBRARY_PREFIXES is None:
        _LIBRARY_PREFIXES = _library_prefixes()
    return filename.startswith(_LIBRARY_PREFIXES)


_ANONYMOUS = frozenset({"<genexpr>", "<listcomp>", "<setcomp>", "<dictcomp>"})


def _loop_frames(loop: Any, thread_id: int) -> list[types.FrameType]:
    """The loop thread's frames above the loop's own machinery, innermost first."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return []
    # Up to (not including) the frame that called run_forever (which is native); if it is
    # not on the stack, the whole stack.
    caller = loop._run_forever_caller()
    frames = []
    while frame is not None and frame is not caller:
        frames.append(frame)
        frame = frame.f_back
    return frames


def _user_frame(frames: list[types.FrameType]) -> types.FrameType | None:
    """The innermost frame of user code (not the standard library, site-packages or us)."""
    for index, frame in enumerate(frames):
        if _is_library(frame.f_code.co_filename):
            continue
        # A generator expression's frame: name the function that wrote it.
        while (
            frame.f_code.co_name in _ANONYMOUS
            and index + 1 < len(frames)
            and frames[index + 1].f_code.co_filename == frame.f_code.co_filename
        ):
            index += 1
            frame = frames[index]
        return frame
    return frames[0] if frames else None


def _hint(cause: str, cpu_fraction: float | None, line: str | None) -> str:
    share = (
        ""
        if cpu_fraction is None
        else f" (the loop thread was running or runnable {cpu_fraction:.0%} of the time)"
    )
    if line and "time.sleep(" in line:
        return (
            f"time.sleep() blocks the whole event loop{share}: use `await asyncio.sleep(...)` "
            f"in a coroutine."
        )
    if cause == "cpu":
        return (
            f"This looks like CPU-bound work{share}: run it in a process pool, "
            f"`await loop.run_in_executor(concurrent.futures.ProcessPoolExecutor(), func, *args)`, "
            f"or split it into parts with `await asyncio.sleep(0)` between them."
        )
    if cause == "blocking":
        return (
            f"This looks like a blocking call{share}: run it in a thread with "
            f"`await asyncio.to_thread(func, *args)` or `await loop.run_in_executor(None, func, "
            f"*args)`, or use an asyncio library (asyncio streams, aiohttp/httpx instead of "
            f"requests, an async database driver)."
        )
    return (
        "Move blocking calls to a thread (`asyncio.to_thread`, `loop.run_in_executor`) and "
        "CPU-bound work to a `ProcessPoolExecutor`."
    )


def _cause(cpu_fraction: float | None) -> str:
    if cpu_fraction is None:
        return "unknown"
    return "cpu" if cpu_fraction >= _CPU_BOUND else "blocking"


def _describe_callback(loop: Any, entry: types.FrameType | None) -> str | None:
    handle = getattr(loop, "_current_handle", None)  # debug mode only
    if handle is not None:
        try:
            from asyncio import base_events

            return cast(str, base_events._format_handle(handle))  # type: ignore[attr-defined]
        except Exception:
            pass
    if entry is None:
        return None
    code = entry.f_code
    return f"{getattr(code, 'co_qualname', code.co_name)}()"


def _current_task(loop: Any) -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task(loop)
    except Exception:
        return None


def _build(
    loop: Any,
    kind: str,
    thread_id: int,
    started_at: float,
    blocked_for: float,
    cpu_fraction: float | None,
    gil_wait: float,
) -> WatchdogReport:
    cause = _cause(cpu_fraction)
    now = loop.time()
    if kind == "released":
        state = _states.get(loop)
        previous = None if state is None else state.last
        if previous is not None:
            return dataclasses.replace(
                previous,
                kind=kind,
                blocked_for=blocked_for,
                reported_at=now,
                stack=None,
                cpu_fraction=cpu_fraction,
                gil_wait=0.0,
            )
    if kind != "blocked":
        return WatchdogReport(
            kind=kind,
            blocked_for=blocked_for,
            started_at=started_at,
            reported_at=now,
            cpu_fraction=cpu_fraction,
            cause=cause,
            hint=_hint(cause, cpu_fraction, None),
            gil_wait=gil_wait,
            thread_id=thread_id,
            loop=loop,
        )
    frames = _loop_frames(loop, thread_id)
    user = _user_frame(frames)
    task = _current_task(loop)
    task_name = coro = None
    if task is not None:
        try:
            task_name = task.get_name()
            the_coro = task.get_coro()
            coro = f"{getattr(the_coro, '__qualname__', type(the_coro).__name__)}()"
        except Exception:
            pass
    filename = lineno = function = line = None
    stack = None
    if user is not None:
        filename = user.f_code.co_filename
        lineno = user.f_lineno
        function = getattr(user.f_code, "co_qualname", user.f_code.co_name)
        summary = traceback.StackSummary.extract(
            [(f, f.f_lineno) for f in reversed(frames[:_STACK_LIMIT])], lookup_lines=True
        )
        stack = summary
        for entry in summary:
            if entry.filename == filename and entry.lineno == lineno:
                line = entry.line or None
    callback = _describe_callback(loop, frames[-1] if frames else None)
    return WatchdogReport(
        kind=kind,
        blocked_for=blocked_for,
        started_at=started_at,
        reported_at=now,
        task=task,
        task_name=task_name,
        coro=coro,
        callback=callback,
        filename=filename,
        lineno=lineno,
        function=function,
        line=line,
        stack=stack,
        cpu_fraction=cpu_fraction,
        cause=cause,
        hint=_hint(cause, cpu_fraction, line),
        gil_wait=gil_wait,
        thread_id=thread_id,
        loop=loop,
    )


def _report(
    loop: Any,
    kind: str,
    thread_id: int,
    started_at: float,
    blocked_for: float,
    cpu_fraction: float | None,
    gil_wait: float,
) -> None:
    """Called by the watchdog thread, with the GIL, while the loop thread is blocked."""
    report = _build(loop, kind, thread_id, started_at, blocked_for, cpu_fraction, gil_wait)
    state = _state(loop)
    if kind == "blocked":
        state.last = report
    elif kind == "released":
        state.last = None
    handler = state.handler
    if handler is not None:
        try:
            handler(report)
        except Exception:
            logger.exception("ferroloop watchdog: the report handler %r failed", handler)
        return
    # A WARNING record of the asyncio logger, emitted with log() rather than warning(): code
    # that counts asyncio's own slow-callback warnings (by patching logger.warning, as
    # CPython's and uvloop's suites do) keeps seeing exactly asyncio's calls. Switched on by
    # debug mode alone, the watchdog reports at DEBUG level to its own logger instead (asyncio's
    # guide to debug mode has the DEBUG level switched on): the WARNING records of a program in
    # debug mode are then asyncio's, which tests of libraries check (anyio's do, of every
    # logger).
    if state.from_debug_mode:
        DEBUG_MODE_LOGGER.log(logging.DEBUG, report.format(), extra=report.log_extra())
    else:
        logger.log(logging.WARNING, report.format(), extra=report.log_extra())


# ---------------------------------------------------------------------------------------------
# The loop's API


def _parse_threshold(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a number of seconds or None, got {value!r}")
    try:
        threshold = float(value)  # type: ignore[arg-type]  # any object: float() decides
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a number of seconds or None, got {value!r}") from None
    if not threshold > 0 or threshold == float("inf"):
        raise ValueError(f"{what} must be a positive number of seconds, got {value!r}")
    return threshold


def _env_threshold() -> float | None:
    value = os.environ.get(ENV_VAR, "").strip()
    if not value or value.lower() in {"0", "off", "no", "false", "none"}:
        return None
    try:
        return _parse_threshold(value, ENV_VAR)
    except (TypeError, ValueError) as exc:
        logger.warning("ferroloop: ignoring %s=%r: %s", ENV_VAR, value, exc)
        return None


class WatchdogMixin:
    """``set_watchdog``/``get_watchdog`` for ``ferroloop.Loop``."""

    if TYPE_CHECKING:
        # What the mixin uses of ferroloop.Loop.
        _debug: bool
        slow_callback_duration: float

        def is_closed(self) -> bool: ...

    def set_watchdog(
        self,
        threshold: float | None,
        *,
        handler: Callable[[WatchdogReport], object] | None = None,
    ) -> None:
        """Report callbacks that hold the loop for longer than ``threshold`` seconds.

        ``None`` switches the watchdog off. Reports go to the ``asyncio`` logger as
        ``WARNING`` records, or, if ``handler`` is given, to ``handler(report)`` (a
        :class:`WatchdogReport`), called on the watchdog's thread while the loop is blocked:
        it must not touch the loop other than through thread-safe methods.
        """
        threshold = _parse_threshold(threshold, "watchdog threshold")
        if handler is not None and not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if threshold is not None and self.is_closed():
            raise RuntimeError("Event loop is closed")
        _state(self).explicit = True
        _state(self).from_debug_mode = False
        self._watchdog_apply(threshold, handler)

    def get_watchdog(self) -> float | None:
        """The watchdog's threshold in seconds, or ``None`` when it is off."""
        state = _states.get(self)
        thread = None if state is None else state.thread
        return None if thread is None else thread.threshold

    def _watchdog_apply(
        self, threshold: float | None, handler: Callable[[WatchdogReport], object] | None
    ) -> None:
        state = _states.get(self)
        if state is None:
            if threshold is None:
                return
            state = _state(self)
        current = state.thread
        if current is not None and threshold == current.threshold:
            state.handler = handler
            return
        # The old thread's last reports (the end of a block) go to the old handler.
        self._watchdog_stop()
        state.handler = handler
        if threshold is not None:
            state.thread = _core.Watchdog(cast(_core.Loop, self), threshold)

    def _watchdog_stop(self) -> None:
        state = _states.get(self)
        if state is None:
            return
        thread = state.thread
        if thread is not None:
            state.thread = None
            thread.stop()
        state.last = None

    def _watchdog_run_starting(self) -> None:
        """At each run_forever: the CLI default, ``FERROLOOP_WATCHDOG``, or debug mode."""
        state = _states.get(self)
        if state is not None and state.explicit:
            return
        threshold = default_threshold
        if threshold is None:
            threshold = _env_threshold()
        from_debug_mode = threshold is None and self._debug
        if from_debug_mode:
            threshold = self.slow_callback_duration
            # asyncio accepts any duration (0 logs every callback); the watchdog needs a
            # positive one, so a non-positive or odd value leaves it off.
            try:
                if not threshold > 0:
                    threshold = None
            except TypeError:
                threshold = None
        if threshold is not None or state is not None:
            self._watchdog_apply(threshold, None)
            _state(self).from_debug_mode = from_debug_mode

    def _watchdog_close(self) -> None:
        self._watchdog_stop()


def _stop_all() -> None:
    for loop in list(_states.keys()):
        try:
            loop._watchdog_stop()
        except Exception:
            pass


def _after_fork_in_child() -> None:
    for state in list(_states.values()):
        thread, state.thread = state.thread, None
        if thread is not None:
            thread._forget_after_fork()


# The watchdog thread calls ``_report``: registered with the native module at import, which
# never imports ``ferroloop._watchdog`` by name.
_core._register_watchdog_report(_report)
atexit.register(_stop_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
